/**
 * A checkpoint that cannot be written, on a real full filesystem (a 2 MiB tmpfs mounted at the
 * job's checkpoints directory; skipped where this process may not mount): training goes on from
 * memory and finishes, the failure is reported, no partial checkpoint is left, and the older
 * checkpoint stays and verifies.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, statfsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseJobSpec } from '../../common/jobspec.js';
import { initBackend } from '../../worker/backend.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { verifyManifest } from '../../worker/train/atomic-dir.js';
import { listCheckpoints } from '../../worker/train/checkpoint.js';
import { train } from '../../worker/train/trainer.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';

let dir: string;
let mounted: string | undefined;
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
  await initBackend('wasm');
  dir = await mkdtemp(join(tmpdir(), 'polytune-fulldisk-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(2, 9)));
  mounted = mountTmpfs(join(dir, 'out', 'checkpoints'), 2 * 1024 * 1024);
}, 120_000);

afterAll(async () => {
  await nats.cleanup();
  if (mounted) execFileSync('umount', [mounted]);
  await rm(dir, { recursive: true, force: true });
});

describe('a full disk under the checkpoints', () => {
  it('training goes on and finishes; the older checkpoint stays, no partial one is left', async (ctx) => {
    if (!mounted) ctx.skip();
    const out = join(dir, 'out');
    const spec = parseJobSpec(`
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: full-disk-test }
spec:
  model: { path: model }
  method: { name: slam, layers: [1, 3] }
  data:
    train: [{ path: data.jsonl, format: alpaca }]
    maxSeqLen: 64
  training:
    maxSteps: 6
    globalBatchSize: 6
    microBatchSize: 2
    optimizer: { name: adamw, lr: 1.0e-2 }
  workers: { count: 1 }
  checkpoint: { everySteps: 2, keep: 3 }
  output: { dir: ${out} }
`, { baseDir: dir });
    const server = await nats.start();
    const ar = await GradientAllReduce.create({ nc: await nats.connect(server), job: uniqueJobName('fulldisk'), generation: 1, rank: 0, worldSize: 1 });
    const checkpoints: Array<{ step: number; error?: string }> = [];
    const result = await train({
      spec, rank: 0, worldSize: 1,
      allReduce: (s, d, o) => ar.allReduce(s, d, undefined, o),
      beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
      onCheckpoint: (c) => {
        checkpoints.push({ step: c.step, ...(c.error !== undefined ? { error: c.error } : {}) });
        // After the first one, the disk fills up.
        if (c.step === 2) {
          const fs = statfsSync(mounted!);
          writeFileSync(join(mounted!, 'filler'), Buffer.alloc(fs.bavail * fs.bsize));
        }
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
