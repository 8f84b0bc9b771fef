/**
 * The stand-in for tfjs-node (test/helpers/backends.ts) takes the native path's choices: products
 * keep their transpose flags (one BatchMatMul, no Transpose kernel), where cpu and wasm materialise
 * the transpose first; and it computes what the cpu backend computes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { matMul } from '../../../worker/model/matmul.js';
import { NATIVE_PATH_STANDIN, useBackend } from '../../helpers/backends.js';

async function kernelsOfTransposedProduct(): Promise<{ kernels: string[]; values: number[] }> {
  const a = tf.tensor2d([
    [1, 2, 3],
    [4, 5, 6],
  ]);
  const b = tf.tensor2d([
    [1, 0, 1],
    [0, 1, 0],
  ]);
  let values: number[] = [];
  const info = await tf.profile(() => {
    const y = matMul<tf.Tensor2D>(a, b, false, true);
    values = Array.from(y.dataSync());
    y.dispose();
  });
  tf.dispose([a, b]);
  return { kernels: info.kernels.map((k) => k.name), values };
}

describe('native-path stand-in', () => {
  it('runs a transposed product as one flagged BatchMatMul; cpu materialises the transpose; same numbers', async () => {
    expect(await useBackend(NATIVE_PATH_STANDIN)).toBe(NATIVE_PATH_STANDIN);
    const native = await kernelsOfTransposedProduct();
    expect(native.kernels).toEqual(['BatchMatMul']);
    expect(await useBackend('cpu')).toBe('cpu');
    const cpu = await kernelsOfTransposedProduct();
    expect(cpu.kernels).toContain('Transpose');
    expect(native.values).toEqual(cpu.values);
    expect(native.values).toEqual([4, 2, 10, 5]);
  });
});
