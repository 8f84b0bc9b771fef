/**
 * Pure checks of the untrusted store and the files a job may touch: stored records parsed back,
 * List page tokens, output directories, the final/ marker (storage roots: storage-roots.test.ts).
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { markerContent } from '../../common/output-marker.js';
import { outputDirIssues } from '../../coordinator/job-files.js';
import { newJobRecord, parseStoredRecord } from '../../coordinator/job-record.js';
import { decodePageToken, encodePageToken, listPage } from '../../coordinator/list-pages.js';
import { assertFinalReplaceable, FINAL_MARKER } from '../../worker/train/outputs.js';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'polytune-store-'));

function spec(dir: string, data = join(dir, 'data', 'a.jsonl'), out = join(dir, 'runs', 'job')) {
  return parseAnyJobSpec(
    JSON.stringify({
      apiVersion: 'polytune/v1',
      kind: 'TrainJob',
      metadata: { name: 'store-check' },
      spec: {
        model: { path: join(dir, 'data', 'model') },
        method: { name: 'slam', layers: [0] },
        data: { train: [{ path: data, format: 'alpaca' }] },
        training: { epochs: 1, globalBatchSize: 2, optimizer: { name: 'sgd', lr: 0.1 } },
        workers: { count: 1 },
        output: { dir: out },
        eval: { sets: [{ mgsm: join(dir, 'data', 'mgsm'), languages: ['sw'] }] },
      },
    }),
  );
}

describe('stored records', () => {
  const good = newJobRecord('store-check-abcde', spec('/x'), 2, 1_000);
  it('a record the coordinator wrote parses back to itself', () => {
    const r = parseStoredRecord(good.id, JSON.stringify(good));
    expect(r.ok && r.record).toEqual(good);
  });
  it('not JSON, the wrong shape, another key, an invalid spec: each refused with why', () => {
    expect(parseStoredRecord(good.id, 'root:x:0:0')).toMatchObject({
      ok: false,
      reason: 'unreadable',
      message: 'not JSON',
    });
    expect(parseStoredRecord(good.id, JSON.stringify({ ...good, step: -1 }))).toMatchObject({
      ok: false,
      reason: 'unreadable',
    });
    expect(parseStoredRecord('other-abcde', JSON.stringify(good))).toMatchObject({
      ok: false,
      message: expect.stringMatching(/not other-abcde/),
    });
    const bad = { ...good, spec: { ...good.spec, spec: { ...good.spec.spec, collective: { timeoutSeconds: 1e9 } } } };
    const r = parseStoredRecord(good.id, JSON.stringify(bad));
    expect(r).toMatchObject({
      ok: false,
      reason: 'spec',
      message: expect.stringMatching(/spec.collective.timeoutSeconds: must be <= 2147483/),
    });
    expect(!r.ok && r.record?.id).toBe(good.id);
  });
});

describe('List pages', () => {
  const jobs = [3, 1, 2, 2, 5].map((t, i) => ({ ...newJobRecord(`j${i}-abcde`, spec('/x'), 1, t) }));
  it('walks every job once, newest first, in pages', () => {
    const seen: string[] = [];
    let token = '';
    do {
      const { page, next } = listPage(jobs, 2, token);
      seen.push(...page.map((j) => j.id));
      token = next;
    } while (token);
    expect(seen).toEqual(['j4-abcde', 'j0-abcde', 'j2-abcde', 'j3-abcde', 'j1-abcde']);
  });
  it('a token round-trips and a forged one is refused', () => {
    expect(decodePageToken(encodePageToken({ createdAt: 7, id: 'a-b' }))).toEqual({ createdAt: 7, id: 'a-b' });
    expect(() => decodePageToken(Buffer.from('[1,"../x"]').toString('base64url'))).toThrow(/page_token/);
    expect(() => decodePageToken('!!')).toThrow(/page_token/);
  });
});

describe('files a job may touch', () => {
  it("an output dir: missing, empty or marked is fine; someone else's files or a file are refused", async () => {
    const dir = tmp();
    expect(await outputDirIssues(join(dir, 'missing'), 'mine')).toEqual([]);
    mkdirSync(join(dir, 'empty'));
    expect(await outputDirIssues(join(dir, 'empty'), 'mine')).toEqual([]);
    mkdirSync(join(dir, 'theirs'));
    writeFileSync(join(dir, 'theirs', 'secret.txt'), 'top secret');
    const [issue] = await outputDirIssues(join(dir, 'theirs'), 'mine');
    expect(issue!.message).toMatch(/holds files polytune did not write \(1 entries, no .polytune marker\)/);
    expect(issue!.message).not.toMatch(/secret/);
    writeFileSync(join(dir, 'theirs', '.polytune'), markerContent('mine'));
    expect(await outputDirIssues(join(dir, 'theirs'), 'mine')).toEqual([]);
    writeFileSync(join(dir, 'file'), '');
    expect((await outputDirIssues(join(dir, 'file'), 'mine'))[0]!.message).toMatch(/exists and is not a directory/);
  });

  it('an output dir marked by another job is refused naming it; an old empty marker says how to proceed', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'out'));
    writeFileSync(join(dir, 'out', 'checkpoints'), '');
    writeFileSync(join(dir, 'out', '.polytune'), markerContent('other-job'));
    expect(await outputDirIssues(join(dir, 'out'), 'other-job')).toEqual([]);
    const [issue] = await outputDirIssues(join(dir, 'out'), 'mine');
    expect(issue).toEqual({
      path: 'spec.output.dir',
      message: expect.stringMatching(/out belongs to job "other-job"/),
    });
    writeFileSync(join(dir, 'out', '.polytune'), '');
    const [old] = await outputDirIssues(join(dir, 'out'), 'mine');
    expect(old!.message).toMatch(/from a polytune before markers named their job; .*\{"job":"mine","by":"polytune"\}/);
    writeFileSync(join(dir, 'out', '.polytune'), '{"job":"</x>","by":"polytune"}');
    const [forged] = await outputDirIssues(join(dir, 'out'), 'mine');
    expect(forged!.message).toMatch(/a .polytune marker polytune did not write/);
    expect(forged!.message).not.toContain('</x>');
  });

  it('final/ is replaced only when this job wrote it', async () => {
    const dir = tmp();
    await assertFinalReplaceable(join(dir, 'final'), 'mine');
    mkdirSync(join(dir, 'final'));
    writeFileSync(join(dir, 'final', 'mine.txt'), 'a user file');
    const replaceable = (): Promise<void> => assertFinalReplaceable(join(dir, 'final'), 'mine');
    await expect(replaceable()).rejects.toThrow(/final: exists and was not written by polytune/);
    writeFileSync(join(dir, 'final', FINAL_MARKER), markerContent('other-job'));
    await expect(replaceable()).rejects.toThrow(/final belongs to job "other-job".*move it away/);
    writeFileSync(join(dir, 'final', FINAL_MARKER), '');
    await expect(replaceable()).rejects.toThrow(/before markers named their job/);
    writeFileSync(join(dir, 'final', FINAL_MARKER), markerContent('mine'));
    await assertFinalReplaceable(join(dir, 'final'), 'mine');
  });
});
