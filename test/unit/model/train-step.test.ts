/**
 * A SLAM-style training step on every model backend (test/helpers/backends.ts): gradients flow, loss falls, tensors do
 * not grow.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlamaModel } from '../../../worker/model/llama.js';
import { MODEL_BACKENDS, useBackend } from '../../helpers/backends.js';

const dir = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');

describe.each(MODEL_BACKENDS)('training step (%s)', (backend) => {
  let model: LlamaModel;
  beforeAll(async () => {
    await useBackend(backend);
    const trainable = new Set<string>();
    for (const l of [0, 1])
      for (const m of ['up_proj', 'down_proj']) trainable.add(`model.layers.${l}.mlp.${m}.weight`);
    model = await LlamaModel.load(dir, { trainable });
  });
  afterAll(() => model.dispose());

  it('SGD on up/down projections lowers the loss; frozen tensors stay put', () => {
    const ids = tf.tensor2d(
      [
        [1, 40, 41, 42, 43, 44, 45, 46],
        [1, 90, 91, 92, 93, 2, 2, 2],
      ],
      undefined,
      'int32',
    );
    const labels = tf.tensor2d(
      [
        [-100, -100, -100, 42, 43, 44, 45, 46],
        [-100, -100, 91, 92, 93, 2, -100, -100],
      ],
      undefined,
      'int32',
    );
    const vars = model.trainableNames.map((n) => model.variable(n));
    const frozen = model.tensor('model.layers.0.mlp.gate_proj.weight');
    const frozenBefore = frozen.dataSync().slice();
    const losses: number[] = [];
    let tensorsAfterFirst = 0;
    for (let step = 0; step < 6; step++) {
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
        losses.push(value.dataSync()[0]!);
        for (const v of vars) v.assign(tf.sub(v, tf.mul(grads[v.name]!, 0.01)));
      });
      if (step === 0) tensorsAfterFirst = tf.memory().numTensors;
    }
    expect(tf.memory().numTensors).toBe(tensorsAfterFirst);
    expect(losses[5]!).toBeLessThan(losses[0]! * 0.9);
    for (let i = 1; i < losses.length; i++) expect(losses[i]!).toBeLessThan(losses[i - 1]!);
    frozen.dispose();
    const after = model.tensor('model.layers.0.mlp.gate_proj.weight');
    expect(after.dataSync()).toEqual(frozenBefore);
    after.dispose();
    tf.dispose([ids, labels]);
  });
});
