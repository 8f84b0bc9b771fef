/**
 * A method with a module of its own (a test-only method: a bias vector added to the hidden state
 * after layer 0 at each row's second position, through the `afterLayer` hook) trains it with the
 * model's tensors on 2 ranks over a real nats-server: it starts from the job's seed, is saved in
 * every checkpoint and restored from one on resume (the resumed job ends as the uninterrupted
 * one), goes to `final/slam.safetensors` and not into the HF files, and the method's own final
 * output is written.
 */
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MethodSpecOf } from '../../common/methods/index.js';
import { readLlamaConfig } from '../../common/model-config.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { encodeRecord } from '../../worker/data/encode.js';
import { initModules } from '../../worker/methods/modules.js';
import { slam } from '../../worker/methods/slam.js';
import type { TrainingMethod } from '../../worker/methods/training-method.js';
import { checkpointName } from '../../worker/train/checkpoint.js';
import { train } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { tensorMap } from '../helpers/tensors.js';
import { tinySlamSpec, tinyTrainDir } from '../helpers/train-job.js';

let dir: string;
const nats = natsScope();
const STEPS = 4;
const SEED = 42; // tinySlamSpec's training.seed (the default)

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-modules-', 5, 2, 11);
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Calls of the probe's `encode` and `loss` (they do what the defaults do). */
const calls = { encode: 0, loss: 0 };

/**
 * SLAM plus `probe.bias` [hidden], normal(0, 0.05) from the seed, added after layer 0 at position 1
 * of every row; its `encode` and `loss` are the defaults, counted.
 */
const probe: TrainingMethod<MethodSpecOf<'slam'>> = {
  ...slam,
  encode: (_m, record, tokenizer, template, maxSeqLen) => {
    calls.encode++;
    return encodeRecord(record, tokenizer, template, maxSeqLen);
  },
  loss: ({ model }, { inputIds, labels, hooks }) => {
    calls.loss++;
    return model.nllRowSums(inputIds, labels, hooks ? { hooks } : {});
  },
  modules: (_m, config) => [{ name: 'probe.bias', shape: [config.hiddenSize], init: { kind: 'normal', std: 0.05 } }],
  hooks: ({ modules }) => ({
    afterLayer: (layer, hidden, { B, T }) => {
      if (layer !== 0) return undefined;
      const bias = modules.get('probe.bias')!;
      const rows = Int32Array.from({ length: B }, (_, b) => b * T + 1);
      return { add: tf.mul(tf.ones([B, 1]), tf.reshape(bias, [1, hidden.shape[1]])) as tf.Tensor2D, rows };
    },
  }),
  finalOutputs: async ({ dir: out, modules }) =>
    writeFile(join(out, 'probe.json'), JSON.stringify({ modules: modules.map((m) => m.name) })),
};

async function run(outDir: string, job: string, resume: boolean): Promise<number[]> {
  const server = await nats.start();
  const losses: number[] = [];
  await Promise.all(
    [0, 1].map(async (rank) => {
      const nc = await nats.connect(server);
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: resume ? 2 : 1,
        rank,
        worldSize: 2,
        timeoutMs: 20_000,
      });
      try {
        await train({
          spec: tinySlamSpec(dir, {
            name: 'modules-test',
            out: outDir,
            steps: STEPS,
            workers: 2,
            checkpoint: '{ everySteps: 2, keep: 3 }',
          }),
          rank,
          worldSize: 2,
          resume,
          method: probe,
          allReduce: (seq, data, o) => ar.allReduce(seq, data, undefined, o),
          beginAllReduce: (seq, length, o) => ar.begin(seq, length, undefined, o),
          onStep: (r) => rank === 0 && losses.push(r.loss),
        });
      } finally {
        await ar.close();
      }
    }),
  );
  return losses;
}

describe('a method with its own module', () => {
  it('trains it, checkpoints it, restores it on resume and writes final/<method>.safetensors', async () => {
    const clean = join(dir, 'clean');
    const losses = await run(clean, uniqueJobName('modules'), false);
    expect(losses).toHaveLength(STEPS);
    // The method's loss runs for every micro-batch with supervised tokens (at most 2 a rank a step:
    // 3 samples, micro-batches of 2), its encoding once a sample a rank.
    expect(calls.loss).toBeGreaterThan(0);
    expect(calls.loss).toBeLessThanOrEqual(2 * 2 * STEPS);
    expect(calls.encode).toBeGreaterThan(0);

    const config = await readLlamaConfig(join(dir, 'model'));
    const start = initModules('slam', probe.modules!({ name: 'slam' }, config), SEED, new Set())[0]!;
    const ckpt = await tensorMap(join(clean, 'checkpoints', checkpointName(2), 'trainable.safetensors'));
    const final = await tensorMap(join(clean, 'final', 'slam.safetensors'));
    expect([...final.keys()]).toEqual(['probe.bias']);
    const trained = final.get('probe.bias')!;
    expect(ckpt.get('probe.bias')).toBeDefined();
    // It trained: the checkpoint's value is neither the start nor the end.
    const differs = (a: Float32Array, b: Float32Array): boolean => a.some((x, i) => x !== b[i]);
    expect(differs(ckpt.get('probe.bias')!, trained)).toBe(true);
    expect(trained).toHaveLength(config.hiddenSize);
    expect(differs(start.data, ckpt.get('probe.bias')!)).toBe(true);
    // The HF side does not hold it; the method's own output is there.
    expect((await tensorMap(join(clean, 'final', 'trainable.safetensors'))).has('probe.bias')).toBe(false);
    expect(JSON.parse(await readFile(join(clean, 'final', 'probe.json'), 'utf8'))).toEqual({ modules: ['probe.bias'] });

    // Resumed from the step-2 checkpoint alone: the module comes back from it, and the job ends as
    // the uninterrupted one (same ranks, same arithmetic: bit for bit).
    const resumed = join(dir, 'resumed');
    await cp(join(clean, 'checkpoints', checkpointName(2)), join(resumed, 'checkpoints', checkpointName(2)), {
      recursive: true,
    });
    const later = await run(resumed, uniqueJobName('modules-resume'), true);
    expect(later).toEqual(losses.slice(2));
    expect(Array.from((await tensorMap(join(resumed, 'final', 'slam.safetensors'))).get('probe.bias')!)).toEqual(
      Array.from(trained),
    );
  }, 180_000);

  it('starts a module from the job seed, the same on every rank, and refuses a clash with the model', () => {
    const mods = [
      { name: 'a.w', shape: [4], init: { kind: 'normal', std: 1 } } as const,
      { name: 'b.w', shape: [2], init: { kind: 'zeros' } } as const,
    ];
    const one = initModules('x', mods, 7, new Set());
    expect(Array.from(one[0]!.data)).toEqual(Array.from(initModules('x', mods, 7, new Set())[0]!.data));
    expect(Array.from(one[0]!.data)).not.toEqual(Array.from(initModules('x', mods, 8, new Set())[0]!.data));
    expect(Array.from(one[1]!.data)).toEqual([0, 0]);
    expect(() => initModules('x', mods, 7, new Set(['a.w']))).toThrow(/module tensor a.w is an HF parameter name/);
  });
});
