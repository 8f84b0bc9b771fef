/**
 * Pure checks of the untrusted store and the files a job may touch: stored records parsed back,
 * List page tokens, storage roots (symbolic links resolved), output directories, the final/ marker.
 */
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { markerContent } from '../../common/output-marker.js';
import { outputDirIssues, resolveStorageRoots, specPaths, storageRootIssues } from '../../coordinator/job-files.js';
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
  it('finds every input path and output dir with its field path', () => {
    const p = specPaths(spec('/x'));
    expect(p.inputs.map((i) => i.at)).toEqual(['spec.model.path', 'spec.data.train[0].path', 'spec.eval.sets[0].mgsm']);
    expect(p.outputs).toEqual([{ at: 'spec.output.dir', path: '/x/runs/job' }]);
  });

  it('storage roots: inside is fine; outside, or escaping through a link, is refused with the path', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'data'));
    mkdirSync(join(dir, 'runs'));
    symlinkSync('/etc', join(dir, 'data', 'etc'));
    const roots = await resolveStorageRoots({ dataRoots: [join(dir, 'data')], outputRoots: [join(dir, 'runs')] });
    expect(await storageRootIssues(spec(dir), roots)).toEqual([]);
    const escaped = await storageRootIssues(spec(dir, join(dir, 'data', 'etc', 'passwd'), join(dir, 'runs')), roots);
    expect(escaped.map((i) => i.path)).toEqual(['spec.data.train[0].path', 'spec.output.dir']);
    expect(escaped[0]!.message).toMatch(/data\/etc\/passwd \(\/etc\/passwd\) is not under a data root/);
    expect(escaped[1]!.message).toMatch(/is not inside an output root/);
    await expect(resolveStorageRoots({ dataRoots: [join(dir, 'nope')] })).rejects.toThrow(
      /--data-root: .*nope: ENOENT/,
    );
  });

  it('storage roots: a path through a link and `..` is normalised at parse: checked as opened', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'data'));
    mkdirSync(join(dir, 'elsewhere', 'deep'), { recursive: true });
    writeFileSync(join(dir, 'elsewhere', 'secret.jsonl'), '{}\n');
    symlinkSync(join('..', 'elsewhere', 'deep'), join(dir, 'data', 'link'));
    // Followed by the operating system, data/link/../secret.jsonl is elsewhere/secret.jsonl.
    const written = join(dir, 'data', 'link') + '/../secret.jsonl';
    const parsed = spec(dir, written);
    const train = (parsed.spec as { data: { train: { path: string }[] } }).data.train;
    expect(train[0]!.path).toBe(join(dir, 'data', 'secret.jsonl'));
    const roots = await resolveStorageRoots({ dataRoots: [join(dir, 'data')] });
    expect(await storageRootIssues(parsed, roots)).toEqual([]);
    // Through the link without `..`: resolved to its target and refused.
    const through = await storageRootIssues(spec(dir, join(dir, 'data', 'link', 'x.jsonl')), roots);
    expect(through.map((i) => i.path)).toEqual(['spec.data.train[0].path']);
  });

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
