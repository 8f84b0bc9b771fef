/**
 * The trainer on a real nats-server: ranks share each global batch and all-reduce over core NATS.
 * Both ranks of a 2-rank job run in this process (each with its own connection), so the test can
 * compare a 1-rank and a 2-rank run of the same spec: DESIGN.md says the data order and the loss
 * do not depend on the world size.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { JobSpec } from '../../common/jobspec.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { WORD_PROBLEM_LANGUAGES } from '../../worker/data/word-problems.js';
import { train, type StepReport, type TrainResult } from '../../worker/train/trainer.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';
import { tinySlamSpec, tinyTrainDir } from '../helpers/train-job.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';

let dir: string;
const nats = natsScope();

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-trainer-', 7, 3, 5);
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spec(outDir: string, workers: number, microBatchSize: number, gradientCheckpointing = false): JobSpec {
  return tinySlamSpec(dir, {
    name: 'trainer-test',
    out: outDir,
    steps: 3,
    workers,
    layers: [0, 2],
    microBatchSize,
    training: ['gradClip: 1.0', `gradientCheckpointing: ${gradientCheckpointing}`],
  });
}

async function runJob(
  workers: number,
  outDir: string,
  microBatchSize = 2,
  gradientCheckpointing = false,
): Promise<{ results: TrainResult[]; reports: StepReport[][] }> {
  const server = await nats.start();
  const job = uniqueJobName('trainer');
  const reports: StepReport[][] = Array.from({ length: workers }, () => []);
  const results = await Promise.all(
    Array.from({ length: workers }, async (_, rank) => {
      const nc = await nats.connect(server);
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: 1,
        rank,
        worldSize: workers,
        timeoutMs: 60_000,
      });
      try {
        return await train({
          spec: spec(outDir, workers, microBatchSize, gradientCheckpointing),
          rank,
          worldSize: workers,
          allReduce: (step, data) => ar.allReduce(step, data),
          beginAllReduce: (step, length, opts) => ar.begin(step, length, undefined, opts),
          onStep: (r) => reports[rank]!.push(r),
        });
      } finally {
        await ar.close();
      }
    }),
  );
  return { results, reports };
}

describe('trainer over NATS', () => {
  it(
    '1 and 2 workers, and any micro-batch size, end with the ' +
      'same trainable tensors; frozen tensors stay bit-identical',
    async () => {
      const one = await runJob(1, join(dir, 'out-1'));
      const two = await runJob(2, join(dir, 'out-2'));
      const micro = await runJob(2, join(dir, 'out-micro'), 1);
      const ckpt = await runJob(2, join(dir, 'out-ckpt'), 2, true);

      // Same losses step by step, and both ranks of the 2-worker job saw the same global loss.
      expect(one.reports[0]!.map((r) => r.step)).toEqual([1, 2, 3]);
      two.reports[0]!.forEach((r, i) => {
        expect(r.loss).toBeCloseTo(one.reports[0]![i]!.loss, 4);
        expect(two.reports[1]![i]!.loss).toBe(r.loss);
      });

      const a = await tensorMap(join(dir, 'out-1', 'final', 'trainable.safetensors'));
      const b = await tensorMap(join(dir, 'out-2', 'final', 'trainable.safetensors'));
      const c = await tensorMap(join(dir, 'out-micro', 'final', 'trainable.safetensors'));
      expect([...a.keys()].sort()).toEqual([
        'model.layers.0.mlp.down_proj.weight',
        'model.layers.0.mlp.up_proj.weight',
        'model.layers.2.mlp.down_proj.weight',
        'model.layers.2.mlp.up_proj.weight',
      ]);
      expectSameTensors(a, b);
      expectSameTensors(a, c);
      // Gradient checkpointing changes what is kept, not a single number.
      const d = await tensorMap(join(dir, 'out-ckpt', 'final', 'trainable.safetensors'));
      for (const [name, x] of b) expect([...d.get(name)!], name).toEqual([...x]);
      expect(ckpt.reports[0]!.map((r) => r.loss)).toEqual(two.reports[0]!.map((r) => r.loss));
      micro.reports[0]!.forEach((r, i) => expect(r.loss).toBeCloseTo(one.reports[0]![i]!.loss, 4));

      // Loss per language: the languages of the data; the global loss is their token-weighted mean.
      for (const r of two.reports[0]!) {
        const per = Object.values(r.lossByLanguage);
        expect(
          Object.keys(r.lossByLanguage).every((l) => (WORD_PROBLEM_LANGUAGES as readonly string[]).includes(l)),
        ).toBe(true);
        expect(per.length).toBeGreaterThan(1);
        expect(r.loss).toBeGreaterThanOrEqual(Math.min(...per) - 1e-6);
        expect(r.loss).toBeLessThanOrEqual(Math.max(...per) + 1e-6);
      }

      // The exported model: frozen tensors bit-identical to the input, trained ones changed.
      const input = await tensorMap(join(dir, 'model', 'model.safetensors'));
      const output = await tensorMap(join(dir, 'out-2', 'final', 'model.safetensors'));
      expect([...output.keys()].sort()).toEqual([...input.keys()].sort());
      for (const [name, x] of input) {
        const y = output.get(name)!;
        const same = Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
          Buffer.from(y.buffer, y.byteOffset, y.byteLength),
        );
        expect(same, name).toBe(!a.has(name));
        if (a.has(name)) expect([...y]).toEqual([...b.get(name)!]);
      }
      const config = await readFile(join(dir, 'out-2', 'final', 'config.json'), 'utf8');
      expect(config).toBe(await readFile(join(dir, 'model', 'config.json'), 'utf8'));
    },
    300_000,
  );
});
