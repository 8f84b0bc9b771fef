/** Applying a step's reduced sums (worker/train/step.ts), a pure function of the reduced vector: no NATS needed. */
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../worker/backend.js';
import { createOptimizer } from '../../worker/train/optimizers.js';
import { headLength } from '../../worker/train/reduced-head.js';
import { applyReducedGradients, stepHead } from '../../worker/train/step.js';

beforeAll(async () => {
  await initBackend('wasm');
});

/** [head, gradients] as the all-reduce returns it: 2 languages (de, sw), tensors of 2 and 1 elements. */
function reducedOf(nll: number, supervised: number, grads: number[]): Float32Array {
  const head = stepHead({
    grads: undefined,
    nllSum: nll,
    supervised,
    tokens: 50,
    langNll: Float64Array.from([nll / 4, (3 * nll) / 4]),
    langTokens: Float64Array.from([supervised / 2, supervised / 2]),
    choices: new Float64Array(0),
  });
  expect(head.length).toBe(headLength(2));
  return Float32Array.from([...head, ...grads]);
}

function run(reduced: Float32Array, gradClip: number) {
  const master = [Float32Array.from([1, 2]), Float32Array.from([3])];
  const vars = master.map((m) => tf.variable(tf.tensor(m)));
  const applied = applyReducedGradients({
    reduced,
    languages: ['de', 'sw'],
    sizes: [2, 1],
    gradClip,
    optimizer: createOptimizer({ name: 'sgd', lr: 0.5 }, [2, 1]),
    master,
    vars,
    lr: 0.5,
  });
  const values = vars.map((v) => Array.from(v.dataSync()));
  tf.dispose(vars);
  return { applied, master: master.map((m) => Array.from(m)), values };
}

describe('applyReducedGradients', () => {
  it('reads the choices per language and layer after the per-language sums, before the gradients', () => {
    const head = stepHead({
      grads: undefined,
      nllSum: 8,
      supervised: 4,
      tokens: 50,
      langNll: Float64Array.from([2, 6]),
      langTokens: Float64Array.from([2, 2]),
      choices: Float64Array.from([0, 0, 0, 1, 0, 2]), // de: none; sw: layer 0 once, layer 2 twice
    });
    expect(head.length).toBe(headLength(2, 3));
    const master = [Float32Array.from([1, 2])];
    const vars = master.map((m) => tf.variable(tf.tensor(m)));
    const applied = applyReducedGradients({
      reduced: Float32Array.from([...head, 4, -8]),
      languages: ['de', 'sw'],
      sizes: [2],
      gradClip: 0,
      optimizer: createOptimizer({ name: 'sgd', lr: 0.5 }, [2]),
      master,
      vars,
      lr: 0.5,
      choiceLayers: 3,
    });
    tf.dispose(vars);
    expect(applied.choicesByLanguage).toEqual({ sw: [1, 0, 2] });
    expect(Array.from(master[0]!)).toEqual([0.5, 3]);
  });

  it('divides by the global supervised tokens, applies SGD to the master copies and the variables', () => {
    const { applied, master, values } = run(reducedOf(8, 4, [4, -8, 0]), 0);
    expect(applied.loss).toBe(2);
    expect(applied.gradNorm).toBeCloseTo(Math.sqrt(1 + 4), 6);
    expect(applied.lossByLanguage).toEqual({ de: 1, sw: 3 });
    expect(applied.skipped).toBe(false);
    expect(master).toEqual([[1 - 0.5 * 1, 2 + 0.5 * 2], [3]]);
    expect(values).toEqual(master);
  });

  it('clips by the global norm', () => {
    const { applied, master } = run(reducedOf(8, 4, [12, 0, 16]), 1); // grads [3, 0, 4]: norm 5
    expect(applied.gradNorm).toBeCloseTo(5, 6);
    expect(master[0]![0]).toBeCloseTo(1 - (0.5 * 3) / 5, 5);
    expect(master[1]![0]).toBeCloseTo(3 - (0.5 * 4) / 5, 5);
  });

  it('skips a non-finite step and changes nothing without supervised tokens', () => {
    const nan = run(reducedOf(8, 4, [NaN, 0, 0]), 1);
    expect(nan.applied.skipped).toBe(true);
    expect(nan.master).toEqual([[1, 2], [3]]);
    const none = run(reducedOf(0, 0, [0, 0, 0]), 1);
    expect(none.applied.skipped).toBe(false);
    expect(Number.isNaN(none.applied.loss)).toBe(true);
    expect(none.master).toEqual([[1, 2], [3]]);
  });
});
