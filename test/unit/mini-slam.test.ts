import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { bundledTokenizerDir } from '../../worker/commands/init-model.js';
import { applyTemplate } from '../../worker/data/encode.js';
import { makeWordProblems } from '../../worker/data/word-problems.js';
import {
  corpusTexts,
  makeProblemSets,
  NON_ENGLISH,
  pretrainRecords,
  translationRecords,
  type DataSizes,
} from '../../scripts/mini-slam/data.js';
import { parseWatch } from '../../scripts/mini-slam/run.js';
import { accuracyTable, evalJsonSchema, parseResultsTable, type ArmRow } from '../../scripts/mini-slam/table.js';
import { cutTokenizer } from '../../scripts/mini-slam/vocab.js';

const SIZES: DataSizes = {
  pretrainEnglish: 40,
  pretrainPlain: 4,
  tune: 5,
  test: 6,
  probe: 3,
  ranges: { addSub: [10, 30], addend: [1, 20], mul: [2, 6] },
};

describe('mini-slam data', () => {
  it('keeps the quickstart draws without options, and keys each problem by its arithmetic', () => {
    // What makeWordProblems(2, 1) gave before it took options (main at a865ea8).
    const p = makeWordProblems(2, 1);
    expect(p.slice(0, 3).map((x) => x.output)).toEqual([
      '10 - 5 = 5. The answer is 5.',
      '12 * 5 = 60. Die Antwort ist 60.',
      '74 - 32 = 42. La réponse est 42.',
    ]);
    expect(p.at(-1)!.output).toBe('9 * 12 = 108. উত্তর হল 108.');
    expect(p.slice(0, 3).map((x) => x.key)).toEqual(['sub 10 5', 'mul 12 5', 'sub 74 32']);
  });

  it('makes line-parallel held-out problems that no other set repeats', () => {
    const sets = makeProblemSets(SIZES, 7);
    expect(sets.test).toHaveLength(6 * 10);
    for (let i = 0; i < 6; i++) {
      const row = sets.test.slice(i * 10, i * 10 + 10);
      expect(new Set(row.map((p) => p.key)).size).toBe(1);
      expect(new Set(row.map((p) => p.answer)).size).toBe(1);
    }
    const held = new Set(sets.test.filter((p) => !p.key.startsWith('mul')).map((p) => p.key));
    expect(held.size).toBeGreaterThan(0);
    for (const p of [...sets.probe, ...sets.pretrainEnglish, ...sets.pretrainPlain, ...sets.tune])
      expect(held.has(p.key)).toBe(false);
    expect(sets.pretrainEnglish.every((p) => p.language === 'en')).toBe(true);
    expect(new Set(sets.pretrainPlain.map((p) => p.language))).toEqual(new Set(NON_ENGLISH));
    // Same seed, same sets.
    expect(makeProblemSets(SIZES, 7)).toEqual(sets);
    expect(makeProblemSets(SIZES, 8).test).not.toEqual(sets.test);
  });

  it('writes translation for every non-English problem, behind its instruction', () => {
    const sets = makeProblemSets(SIZES, 7);
    const lines = translationRecords(sets.tune)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, string>);
    expect(lines).toHaveLength(SIZES.tune * 9);
    const de = lines.find((l) => l['language'] === 'de')!;
    const src = sets.tune.find((p) => p.language === 'de')!;
    expect(de['instruction']).toBe(`Translate into English: ${src.instruction}`);
    expect(de['output']).toBe(src.english);
  });

  it('cuts the tokenizer without changing how the corpus encodes, and pretrains on every token', async () => {
    const dir = bundledTokenizerDir();
    const source = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    const cfg = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    const sets = makeProblemSets(SIZES, 7);
    const corpus = corpusTexts(sets, (q) => applyTemplate('slam', q));
    const cut = cutTokenizer(source, cfg, corpus);
    expect(cut.sourceVocabSize).toBe(32000);
    expect(cut.vocabSize).toBeGreaterThan(259);
    expect(cut.vocabSize).toBeLessThan(3000);
    const full = new Tokenizer(source, cfg);
    const small = new Tokenizer(cut.json, cfg);
    const text = sets.test.find((p) => p.language === 'th')!.instruction;
    expect(small.encode(text).tokens).toEqual(full.encode(text).tokens);
    expect(small.decode(small.encode(text, { add_special_tokens: false }).ids)).toBe(text);
    // A text outside the corpus still encodes (byte fallback), within the small vocabulary.
    const ids = small.encode('Zebra 😀', { add_special_tokens: false }).ids;
    expect(Math.max(...ids)).toBeLessThan(cut.vocabSize);

    const encoder = {
      encode: (t: string, o: { addBos: boolean }) => [
        ...(o.addBos ? [1] : []),
        ...small.encode(t, { add_special_tokens: false }).ids,
      ],
      eosId: 2,
    };
    const recs = pretrainRecords(sets.pretrainEnglish.slice(0, 1), sets.pretrainPlain.slice(0, 1), encoder, 'slam', 200)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { input_ids: number[]; labels: number[]; language: string });
    expect(recs.map((r) => r.language)).toEqual(['en', sets.pretrainPlain[0]!.language]);
    for (const r of recs) {
      expect(r.input_ids[0]).toBe(1);
      expect(r.input_ids.at(-1)).toBe(2);
      expect(r.labels).toEqual([-100, ...r.input_ids.slice(1)]);
    }
    expect(small.decode(recs[0]!.input_ids, { skip_special_tokens: true })).toContain('Assistant:');
  });
});

function evalJson(correct: Record<string, number>, total: number): unknown {
  const languages = Object.entries(correct).map(([language, c]) => ({
    language,
    correct: c,
    total,
    accuracy: c / total,
  }));
  return {
    name: 'final',
    benchmarks: [
      { benchmark: 'mgsm', languages, average: languages.reduce((a, l) => a + l.accuracy, 0) / languages.length },
    ],
  };
}

describe('mini-slam table', () => {
  const rows: ArmRow[] = [
    {
      arm: 'none',
      title: '(a) none',
      eval: evalJsonSchema.parse(evalJson({ en: 30, de: 3, zh: 1 }, 50)),
      trainable: 0,
      total: 1000,
      wallSeconds: 0,
      tokensPerSecond: 0,
    },
    {
      arm: 'slam',
      title: '(b) slam',
      eval: evalJsonSchema.parse(evalJson({ en: 29, de: 20, zh: 17 }, 50)),
      trainable: 80,
      total: 1000,
      wallSeconds: 12.4,
      tokensPerSecond: 900,
    },
  ];

  it('gives the accuracy per language, the averages and the share, from the counts', () => {
    const table = accuracyTable(rows);
    expect(table).toBe(
      [
        '| arm | en | de | zh | avg | avg non-en | trainable |',
        '|---|---:|---:|---:|---:|---:|---:|',
        '| (a) none | 60.0 | 6.0 | 2.0 | 22.7 | 4.0 | 0 |',
        '| (b) slam | 58.0 | 40.0 | 34.0 | 44.0 | 37.0 | 8.0% |',
        '',
      ].join('\n'),
    );
    const parsed = parseResultsTable(table);
    expect(parsed.get('(b) slam')!.get('de')).toBe(40);
    expect(parsed.get('(a) none')!.get('avg non-en')).toBe(4);
  });

  it('refuses arms evaluated on other languages, and a JSON that is not an evaluation', () => {
    const other = { ...rows[1]!, eval: evalJsonSchema.parse(evalJson({ en: 1, de: 1 }, 50)) };
    expect(() => accuracyTable([rows[0]!, other])).toThrow(/languages en,de, not en,de,zh/);
    expect(() => evalJsonSchema.parse({ name: 'final', benchmarks: [] })).toThrow(/exactly one benchmark/);
  });

  it('reads loss, rate and chosen layers from the watch lines', () => {
    const text = [
      '[j] step 1/3  loss 7.0528  276 tok/s  ETA 2m50s  elapsed 7.4s  de 7.05',
      '[j] step 1/3  loss 7.0528  276 tok/s  ETA 2m50s  elapsed 7.9s  de 7.05',
      '[j] step 2/3  loss 5.1  1000 tok/s  elapsed 20s',
      '[j] stage 2/2 answers  step 3/3  loss 4.5757  1405 tok/s  elapsed 35s',
      '  chosen layers: 0, 3',
    ].join('\n');
    expect(parseWatch(text)).toEqual({
      loss: [
        [1, 7.0528],
        [2, 5.1],
        [3, 4.5757],
      ],
      tokensPerSecond: 1000,
      chosenLayers: [0, 3],
    });
  });
});
