/**
 * The code-switch generator (common/codeswitch.ts, `format: codeswitch`) on real English text:
 * GSM8K's questions (../shared/data/gsm8k-en) with a hand-made English-German/Spanish/Swahili
 * dictionary (test/fixtures/codeswitch).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { codeSwitch, codeSwitchSeed, readDictionary, type CodeSwitchDictionary } from '../../common/codeswitch.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { materialiseRecord, readDataSource, type DataRecord } from '../../common/records.js';

const ROOT = join(import.meta.dirname, '..', '..');
const GSM8K = join(ROOT, '..', 'shared', 'data', 'gsm8k-en', 'train.jsonl');
const DICT = join(ROOT, 'test', 'fixtures', 'codeswitch', 'en-de-es-sw.tsv');
const WORD = /\p{L}[\p{L}\p{N}'-]*/gu;

let records: DataRecord[];
let dictionary: CodeSwitchDictionary;
beforeAll(async () => {
  records = (
    await readDataSource({ path: GSM8K, format: 'codeswitch', dictionary: DICT, ratio: 0.4, field: 'question' })
  ).slice(0, 2000);
  dictionary = await readDictionary(DICT);
});

const question = (r: DataRecord): string => (r.kind === 'text' ? r.question : '');

describe('format codeswitch', () => {
  it('reads the field of an alpaca-style file; the target is the original text', () => {
    const r = records[0]!;
    expect(r.kind === 'text' && r.output).toMatch(/^Natalia sold clips to 48 of her friends/);
    const m = materialiseRecord(r, 42, 0, 0);
    expect(m.kind === 'text' && m.output).toBe(r.kind === 'text' && r.output);
    expect(m.kind === 'text' && m.codeSwitch).toBeUndefined();
  });

  it('same seed, same output; another epoch or seed, another draw', () => {
    const a = records.map((r, i) => question(materialiseRecord(r, 42, 0, i)));
    const b = records.map((r, i) => question(materialiseRecord(r, 42, 0, i)));
    expect(a).toEqual(b);
    const epoch1 = records.map((r, i) => question(materialiseRecord(r, 42, 1, i)));
    const seed7 = records.map((r, i) => question(materialiseRecord(r, 7, 0, i)));
    const differ = (x: string[]): number => x.filter((q, i) => q !== a[i]).length;
    expect(differ(epoch1)).toBeGreaterThan(100);
    expect(differ(seed7)).toBeGreaterThan(100);
  });

  it.each([0.1, 0.4, 0.8])('replaces the asked ratio %s of the dictionary words, within 2 percent', (ratio) => {
    let eligible = 0;
    let replaced = 0;
    records.forEach((r, i) => {
      const s = codeSwitch(question(r), dictionary, ratio, codeSwitchSeed(42, 0, i));
      eligible += s.eligible;
      replaced += s.replaced;
    });
    expect(eligible).toBeGreaterThan(1000);
    expect(Math.abs(replaced / eligible - ratio)).toBeLessThan(0.02);
  });

  it('leaves words absent from the dictionary, and everything between words, untouched', () => {
    let changedWords = 0;
    let keptWords = 0;
    const wrong: string[] = [];
    records.forEach((r, i) => {
      const original = question(r);
      const switched = codeSwitch(original, dictionary, 1, codeSwitchSeed(3, 0, i)).text;
      const ow = original.match(WORD) ?? [];
      const sw = switched.match(WORD) ?? [];
      if (sw.length !== ow.length) wrong.push(`record ${i}: word count`);
      ow.forEach((w, k) => {
        const entries = dictionary.get(w.toLowerCase());
        if (!entries) {
          keptWords++;
          if (sw[k] !== w) wrong.push(`record ${i}: ${w} -> ${sw[k]}`);
        } else {
          changedWords++;
          if (!entries.some((e) => e.target.toLowerCase() === sw[k]!.toLowerCase()))
            wrong.push(`record ${i}: ${w} -> ${sw[k]} is not a translation`);
        }
      });
      if (switched.split(WORD).join('|') !== original.split(WORD).join('|')) wrong.push(`record ${i}: separators`);
    });
    expect(wrong).toEqual([]);
    expect(changedWords).toBeGreaterThan(1000);
    expect(keptWords).toBeGreaterThan(10 * changedWords);
  });

  it('refuses a dictionary line with one column, naming file:line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-codeswitch-'));
    try {
      const bad = join(dir, 'dict.tsv');
      await writeFile(bad, 'apples\tÄpfel\tde\nmoney\n');
      await expect(readDictionary(bad)).rejects.toThrow(`${bad}:2: expected 3 tab-separated columns`);
      await expect(
        readDataSource({ path: GSM8K, format: 'codeswitch', dictionary: bad, field: 'question' }),
      ).rejects.toThrow(`${bad}:2:`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('accepts pre-built code-switched JSON Lines', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-codeswitch-'));
    try {
      const file = join(dir, 'cs.jsonl');
      await writeFile(file, JSON.stringify({ codeswitched: 'Sie kauft 3 Äpfel', text: 'She buys 3 apples' }) + '\n');
      const [r] = await readDataSource({ path: file, format: 'codeswitch' });
      expect(r).toEqual({
        kind: 'text',
        question: 'Sie kauft 3 Äpfel',
        output: 'She buys 3 apples',
        language: undefined,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('spec: the codeswitch fields only with format codeswitch, ratio and field only with a dictionary', () => {
    const spec = (src: Record<string, unknown>): string =>
      JSON.stringify({
        apiVersion: 'polytune/v1',
        kind: 'TrainJob',
        metadata: { name: 'cs' },
        spec: {
          model: { path: '/m' },
          method: { name: 'full' },
          data: { train: [src] },
          training: { epochs: 1, globalBatchSize: 1, microBatchSize: 1, optimizer: { name: 'sgd', lr: 0.1 } },
          workers: { count: 1 },
          output: { dir: '/o' },
        },
      });
    expect(() => parseJobSpec(spec({ path: 'a', format: 'alpaca', dictionary: 'd.tsv' }))).toThrow(
      /spec\.data\.train\[0\]\.dictionary: is only allowed for format codeswitch/,
    );
    expect(() => parseJobSpec(spec({ path: 'a', format: 'codeswitch', ratio: 0.2 }))).toThrow(
      /spec\.data\.train\[0\]\.ratio: needs a dictionary/,
    );
    expect(() => parseJobSpec(spec({ path: 'a', format: 'codeswitch', dictionary: 'd', ratio: 1.5 }))).toThrow(
      /spec\.data\.train\[0\]\.ratio: must be <= 1/,
    );
  });
});
