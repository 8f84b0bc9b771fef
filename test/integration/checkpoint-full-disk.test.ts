/**
 * A checkpoint that cannot be written, on a real full filesystem (a 2 MiB tmpfs mounted at the
 * job's checkpoints directory; skipped where this process may not mount): training goes on from
 * memory and finishes, the failure is reported, no partial checkpoint is left, and the older
 * checkpoint stays and verifies. Final outputs that cannot be written (a tmpfs as the whole
 * output directory, filled after the last step) are tried again until the space is freed, or
 * until the job is cancelled.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSpec } from '../../common/jobspec.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { verifyManifest } from '../../worker/train/atomic-dir.js';
import { listCheckpoints } from '../../worker/train/checkpoint.js';
import { train } from '../../worker/train/trainer.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { tinySlamSpec, tinyTrainDir } from '../helpers/train-job.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';

let dir: string;
let mounted: string | undefined;
let outputs: string | undefined;
const nats = natsScope();

/** Mounts a tmpfs of `bytes` at `at`; undefined when this process may not. */
function mountTmpfs(at: string, bytes: number): string | undefined {
  mkdirSync(at, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', at], { stdio: 'ignore' });
    return at;
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-fulldisk-', 3, 2, 9);
  mounted = mountTmpfs(join(dir, 'out', 'checkpoints'), 2 * 1024 * 1024);
  outputs = mountTmpfs(join(dir, 'out2'), 64 * 1024 * 1024); // the final outputs take about 22 MB
}, 120_000);

afterAll(async () => {
  await nats.cleanup();
  if (mounted) execFileSync('umount', [mounted]);
  if (outputs) execFileSync('umount', [outputs]);
  await rm(dir, { recursive: true, force: true });
});

/** SLAM on the tiny model, one worker, `steps` steps of 6 samples, into `out`. */
function trainSpec(out: string, steps: number, checkpoint: string): JobSpec {
  return tinySlamSpec(dir, { name: 'full-disk-test', out, steps, checkpoint });
}

/** Fills the filesystem at `at` with a file named `filler`. */
function fill(at: string): void {
  const fs = statfsSync(at);
  writeFileSync(join(at, 'filler'), Buffer.alloc(fs.bavail * fs.bsize));
}

describe('a full disk under the checkpoints', () => {
  it('training goes on and finishes; the older checkpoint stays, no partial one is left', async (ctx) => {
    if (!mounted) ctx.skip();
    const out = join(dir, 'out');
    const spec = trainSpec(out, 6, '{ everySteps: 2, keep: 3 }');
    const server = await nats.start();
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: await nats.connect(server),
      job: uniqueJobName('fulldisk'),
      generation: 1,
      rank: 0,
      worldSize: 1,
    });
    const checkpoints: Array<{ step: number; error?: string }> = [];
    const result = await train({
      spec,
      rank: 0,
      worldSize: 1,
      allReduce: (s, d, o) => ar.allReduce(s, d, undefined, o),
      beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
      onCheckpoint: (c) => {
        if (c.final) return;
        checkpoints.push({ step: c.step, ...(c.error !== undefined ? { error: c.error } : {}) });
        // After the first one, the disk fills up.
        if (c.step === 2) fill(mounted!);
      },
    });
    await ar.close();
    expect(result.steps).toBe(6);
    expect(checkpoints.map((c) => c.step)).toEqual([2, 4]);
    expect(checkpoints[0]!.error).toBeUndefined();
    expect(checkpoints[1]!.error).toMatch(/^checkpoint .*step-00000004: ENOSPC: no space left/);
    expect((await listCheckpoints(out)).map((c) => c.step)).toEqual([2]);
    expect(readdirSync(mounted!).sort()).toEqual(['filler', 'step-00000002']);
    expect((await verifyManifest(join(mounted!, 'step-00000002')))['step']).toBe(2);
    expect(readdirSync(join(out, 'final'))).toContain('model.safetensors');
  }, 120_000);
});

describe('a full disk at the end', () => {
  async function trainInto(
    out: string,
    onFinal: (c: { error?: string }) => void,
    signal?: AbortSignal,
    fillAtEnd = true,
  ): Promise<unknown> {
    const server = await nats.start();
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: await nats.connect(server),
      job: uniqueJobName('fulldiskfinal'),
      generation: 1,
      rank: 0,
      worldSize: 1,
    });
    try {
      return await train({
        spec: trainSpec(out, 3, '{ everySteps: 100 }'),
        rank: 0,
        worldSize: 1,
        finalOutputsRetryMs: 50,
        ...(signal ? { signal } : {}),
        allReduce: (s, d, o) => ar.allReduce(s, d, undefined, o),
        beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
        onStep: (r) => {
          if (fillAtEnd && r.step === 3) fill(out);
        }, // the disk fills up during the last step
        onCheckpoint: (c) => {
          if (c.final) onFinal(c);
        },
      });
    } finally {
      await ar.close();
    }
  }

  it('keeps the trained state and writes the final outputs once there is room again', async (ctx) => {
    if (!outputs) ctx.skip();
    const finals: Array<{ error?: string }> = [];
    const result = await trainInto(outputs!, (c) => {
      finals.push(c);
      if (finals.length === 2) rmSync(join(outputs!, 'filler')); // the operator frees space
    });
    expect((result as { steps: number }).steps).toBe(3);
    expect(finals.map((c) => c.error === undefined)).toEqual([false, false, true]);
    expect(finals[0]!.error).toMatch(/ENOSPC: no space left/);
    expect(readdirSync(outputs!)).toEqual(['final']); // no partial directory left by the failed tries
    expect(readdirSync(join(outputs!, 'final'))).toEqual(
      expect.arrayContaining(['model.safetensors', 'trainable.safetensors', 'config.json']),
    );
  }, 120_000);

  it('fails at once on an error that freeing space does not clear', async () => {
    const finals: Array<{ error?: string }> = [];
    await expect(trainInto(join(dir, 'data.jsonl', 'out'), (c) => finals.push(c), undefined, false)).rejects.toThrow(
      /ENOTDIR/,
    );
    expect(finals).toEqual([]);
  }, 120_000);

  it('stops trying when the job is cancelled', async (ctx) => {
    if (!outputs) ctx.skip();
    rmSync(join(outputs!, 'final'), { recursive: true, force: true });
    const abort = new AbortController();
    let tries = 0;
    const run = trainInto(
      outputs!,
      () => {
        if (++tries === 2) abort.abort(new Error('job cancelled'));
      },
      abort.signal,
    );
    await expect(run).rejects.toThrow('job cancelled');
    expect(tries).toBe(2);
    expect(readdirSync(outputs!)).toEqual(['filler']);
  }, 120_000);
});
