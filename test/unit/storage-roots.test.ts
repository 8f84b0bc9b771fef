/**
 * Storage roots (common/storage-roots.ts): every path field of every kind is found through the
 * schemas' marker, and a path outside the roots, an output dir outside them, or a link out of a
 * root is refused with its field path.
 */
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { JOB_KINDS, parseAnyJobSpec } from '../../common/job-kinds.js';
import { outputDirString, pathString } from '../../common/spec-primitives.js';
import {
  checkStorageRoots,
  markedPaths,
  resolveStorageRoots,
  specPaths,
  storageRootIssues,
  storageRootsGiven,
} from '../../common/storage-roots.js';

const CONFIGS = join(import.meta.dirname, '..', '..', 'configs');
const tmp = (): string => mkdtempSync(join(tmpdir(), 'polytune-roots-'));

function trainJob(dir: string, data = join(dir, 'data', 'a.jsonl'), out = join(dir, 'runs', 'job')) {
  return parseAnyJobSpec(
    JSON.stringify({
      apiVersion: 'polytune/v1',
      kind: 'TrainJob',
      metadata: { name: 'roots' },
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

describe('path fields, found through the schemas', () => {
  it('a TrainJob: model, data, eval sets and output, each with its field path', () => {
    expect(specPaths(trainJob('/x'))).toEqual([
      { at: 'spec.model.path', path: '/x/data/model', kind: 'input' },
      { at: 'spec.data.train[0].path', path: '/x/data/a.jsonl', kind: 'input' },
      { at: 'spec.output.dir', path: '/x/runs/job', kind: 'output' },
      { at: 'spec.eval.sets[0].mgsm', path: '/x/data/mgsm', kind: 'input' },
    ]);
  });

  it.each([
    ['two-stage-tiny.yaml', ['spec.stages[0].data.train[0].target', 'spec.stages[1].data.train[0].path']],
    ['layer-analysis-tiny.yaml', ['spec.analysis.probe[0].mgsm']],
    ['eval-mgsm-tiny.yaml', ['spec.model.path']],
  ])('%s: every path of the shipped config, resolved (absolute)', (file, some) => {
    const spec = parseAnyJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { baseDir: CONFIGS });
    const paths = specPaths(spec);
    for (const at of [...some, 'spec.output.dir']) expect(paths.map((p) => p.at)).toContain(at);
    expect(paths.filter((p) => p.kind === 'output').map((p) => p.at)).toEqual(['spec.output.dir']);
    for (const p of paths) expect(p.path.startsWith('/'), p.at).toBe(true);
  });

  it('a new field is covered by using pathString: nested in unions, arrays, optionals, records', () => {
    // What another kind or method might add (a calibration source, an encoder path).
    const schema = z.strictObject({
      spec: z.strictObject({
        method: z.discriminatedUnion('name', [
          z.strictObject({ name: z.literal('prune'), calibration: z.array(z.strictObject({ path: pathString })) }),
          z.strictObject({ name: z.literal('lingualift'), encoder: z.strictObject({ dir: pathString.optional() }) }),
        ]),
        extra: z.record(z.string(), pathString).optional(),
        scratch: outputDirString.default('/tmp/x'),
        note: z.string(),
      }),
    });
    const value = {
      spec: {
        method: { name: 'lingualift', encoder: { dir: '/enc' } },
        extra: { a: '/e' },
        scratch: '/s',
        note: '/not/a/path',
      },
    };
    expect(markedPaths(schema, value)).toEqual([
      { at: 'spec.method.encoder.dir', path: '/enc', kind: 'input' },
      { at: 'spec.extra.a', path: '/e', kind: 'input' },
      { at: 'spec.scratch', path: '/s', kind: 'output' },
    ]);
    const prune = { spec: { method: { name: 'prune', calibration: [{ path: '/c0' }, { path: '/c1' }] }, note: '' } };
    expect(markedPaths(schema, prune).map((p) => p.at)).toEqual([
      'spec.method.calibration[0].path',
      'spec.method.calibration[1].path',
    ]);
  });

  it('every kind has a path field found (a kind whose paths were not registered would have none)', () => {
    const byKind = new Map<string, string>([
      ['TrainJob', 'quickstart.yaml'],
      ['EvalJob', 'eval-mgsm-tiny.yaml'],
      ['LayerAnalysis', 'layer-analysis-tiny.yaml'],
      ['PruneJob', 'prune-tiny.yaml'],
    ]);
    expect([...byKind.keys()].sort()).toEqual([...JOB_KINDS].sort());
    for (const [, file] of byKind) {
      const spec = parseAnyJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { baseDir: CONFIGS });
      expect(specPaths(spec).some((p) => p.at === 'spec.model.path')).toBe(true);
    }
  });
});

describe('storage roots', () => {
  it('/etc/passwd as data and an output dir outside the roots are refused with their field paths', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'data'));
    const roots = await resolveStorageRoots([dir]);
    expect(await storageRootIssues(trainJob(dir), roots)).toEqual([]);
    const bad = await storageRootIssues(trainJob(dir, '/etc/passwd', join(tmpdir(), 'elsewhere-out')), roots);
    expect(bad.map((i) => i.path)).toEqual(['spec.data.train[0].path', 'spec.output.dir']);
    expect(bad[0]!.message).toBe(`/etc/passwd is outside the storage roots (${roots[0]})`);
    expect(bad[1]!.message).toMatch(/elsewhere-out is not inside a storage root/);
    // The root itself is not an output dir (its marker would claim the whole root).
    const [root] = await storageRootIssues(trainJob(dir, join(dir, 'data', 'a.jsonl'), dir), roots);
    expect(root!.path).toBe('spec.output.dir');
    await expect(checkStorageRoots(trainJob(dir, '/etc/passwd'), roots, 'job.yaml')).rejects.toThrow(
      /job\.yaml: invalid job spec\n {2}spec\.data\.train\[0\]\.path: \/etc\/passwd is outside the storage roots/,
    );
  });

  it('a link out of a root is refused, for a file that exists and one that does not yet', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'data'));
    symlinkSync('/etc', join(dir, 'data', 'etc'));
    const outside = tmp();
    symlinkSync(outside, join(dir, 'data', 'out'));
    const roots = await resolveStorageRoots([join(dir, 'data')]);
    const issues = await storageRootIssues(
      trainJob(dir, join(dir, 'data', 'etc', 'passwd'), join(dir, 'data', 'out', 'new', 'job')),
      roots,
    );
    expect(issues.map((i) => i.path)).toEqual(['spec.data.train[0].path', 'spec.output.dir']);
    expect(issues[0]!.message).toMatch(/data\/etc\/passwd \(\/etc\/passwd\) is outside the storage roots/);
    expect(issues[1]!.message).toContain(`(${outside}/new/job) is not inside a storage root`);
  });

  it('a path through a link and `..` is normalised at parse: checked as the system opens it', async () => {
    const dir = tmp();
    mkdirSync(join(dir, 'data'));
    mkdirSync(join(dir, 'elsewhere', 'deep'), { recursive: true });
    writeFileSync(join(dir, 'elsewhere', 'secret.jsonl'), '{}\n');
    symlinkSync(join('..', 'elsewhere', 'deep'), join(dir, 'data', 'link'));
    const parsed = trainJob(dir, join(dir, 'data', 'link') + '/../secret.jsonl');
    const train = (parsed.spec as { data: { train: { path: string }[] } }).data.train;
    expect(train[0]!.path).toBe(join(dir, 'data', 'secret.jsonl'));
    const roots = await resolveStorageRoots([dir]);
    expect(await storageRootIssues(parsed, roots)).toEqual([]);
    const narrow = await resolveStorageRoots([join(dir, 'data')]);
    const through = await storageRootIssues(trainJob(dir, join(dir, 'data', 'link', 'x.jsonl')), narrow);
    expect(through.map((i) => i.path)).toContain('spec.data.train[0].path');
  });

  it('no roots: any path; roots from the flag, else the environment; a missing root is refused', async () => {
    expect(await storageRootIssues(trainJob('/x', '/etc/passwd'), [])).toEqual([]);
    expect(storageRootsGiven(['/a'], { POLYTUNE_STORAGE_ROOTS: '/b:/c' })).toEqual(['/a']);
    expect(storageRootsGiven(undefined, { POLYTUNE_STORAGE_ROOTS: '/b::/c' })).toEqual(['/b', '/c']);
    expect(storageRootsGiven([], {})).toEqual([]);
    await expect(resolveStorageRoots([join(tmp(), 'nope')])).rejects.toThrow(/--storage-root: .*nope: ENOENT/);
  });
});
