/**
 * The OpenBLAS kernels (worker/native) against the wasm backend's own (XNNPACK and its loops):
 * every transpose combination, batches and their broadcasts, the fused product's bias and
 * activations, the cases left to the original kernels, and the fallback when the addon is hidden.
 */
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { addonPath, loadAddon } from '../../../worker/native/addon.js';
import {
  compileNativeOptions,
  nativeKernelsActive,
  setupNativeKernels,
  uninstallNativeKernels,
} from '../../../worker/native/index.js';
import { matMul, matMulTransposeB } from '../../../worker/model/matmul.js';
import type { Logger } from '../../../common/logging.js';

const available = loadAddon(addonPath()).ok;
if (!available) {
  process.stderr.write(`test/unit/native: the addon is not built (${addonPath()}); run scripts/build-native.sh\n`);
}

function rand(shape: number[], seed: number): tf.Tensor {
  return tf.randomUniform(shape, -1, 1, 'float32', seed);
}

/** Runs `f` with the XNNPACK kernels and with the OpenBLAS ones; returns both results. */
function both(f: () => tf.Tensor): [Float32Array, Float32Array, number[], number[]] {
  setupNativeKernels({ enabled: false });
  expect(nativeKernelsActive()).toBe(false);
  const x = tf.tidy(f);
  setupNativeKernels({ enabled: true });
  expect(nativeKernelsActive()).toBe(true);
  const y = tf.tidy(f);
  const r: [Float32Array, Float32Array, number[], number[]] = [
    x.dataSync() as Float32Array,
    y.dataSync() as Float32Array,
    x.shape,
    y.shape,
  ];
  tf.dispose([x, y]);
  return r;
}

function expectClose(a: Float32Array, b: Float32Array): void {
  expect(b.length).toBe(a.length);
  let maxErr = 0;
  let maxAbs = 0;
  for (let i = 0; i < a.length; i++) {
    maxErr = Math.max(maxErr, Math.abs(a[i]! - b[i]!));
    maxAbs = Math.max(maxAbs, Math.abs(a[i]!));
  }
  expect(maxErr).toBeLessThanOrEqual(1e-5 * Math.max(1, maxAbs));
}

describe.skipIf(!available)('native products on wasm', () => {
  beforeAll(async () => {
    await initBackend('wasm');
  });
  afterAll(() => {
    setupNativeKernels({ enabled: true });
  });

  const SHAPES: Array<[string, number[], number[]]> = [
    ['2-D', [37, 53], [53, 29]],
    ['batched', [3, 17, 33], [3, 33, 21]],
    ['a broadcast', [1, 17, 33], [4, 33, 21]],
    ['b broadcast', [4, 17, 33], [33, 21]],
    ['rank 4', [2, 3, 9, 16], [2, 3, 16, 5]],
    ['vector-like', [1, 64], [64, 1]],
  ];
  describe.each(SHAPES)('%s', (_name, aShape, bShape) => {
    it.each([
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ])('transposeA %s transposeB %s', (ta, tb) => {
      const swap = (s: number[]): number[] => [...s.slice(0, -2), s[s.length - 1]!, s[s.length - 2]!];
      const a = rand(ta ? swap(aShape) : aShape, 1);
      const b = rand(tb ? swap(bShape) : bShape, 2);
      const before = tf.memory().numTensors;
      const [want, got, wantShape, gotShape] = both(() => tf.matMul(a, b, ta, tb));
      expect(tf.memory().numTensors).toBe(before);
      expect(gotShape).toEqual(wantShape);
      expectClose(want, got);
      tf.dispose([a, b]);
    });
  });

  it('gradients of a batched product with transposes match', () => {
    const a = rand([2, 8, 12], 3);
    const b = rand([2, 10, 12], 4);
    const g = (): tf.Tensor => {
      const loss = (x: tf.Tensor, y: tf.Tensor): tf.Tensor => tf.sum(tf.square(tf.matMul(x, y, false, true)));
      const [ga, gb] = tf.grads(loss)([a, b]);
      return tf.concat([tf.reshape(ga!, [-1]), tf.reshape(gb!, [-1])]);
    };
    const [want, got] = both(g);
    expectClose(want, got);
    tf.dispose([a, b]);
  });

  type Activation = 'linear' | 'relu' | 'relu6' | 'leakyrelu' | 'sigmoid' | 'elu';
  const ACTIVATIONS: Record<Activation, (x: tf.Tensor) => tf.Tensor> = {
    linear: (x) => x,
    relu: (x) => tf.relu(x),
    relu6: (x) => tf.relu6(x),
    leakyrelu: (x) => tf.leakyRelu(x, 0.3),
    sigmoid: (x) => tf.sigmoid(x),
    elu: (x) => tf.elu(x),
  };
  it.each(Object.keys(ACTIVATIONS) as Activation[])('fused product with a bias and %s', (activation) => {
    // One matrix: the wasm backend's own fused kernel adds the wrong bias to a batch (tfjs 4.22: from
    // the second row of each matrix on), so it is the reference only here.
    const a1 = tf.mul(rand([1, 7, 11], 5), 4);
    const b1 = rand([1, 11, 13], 6);
    const bias = rand([13], 7);
    const [want, got] = both(() => tf.fused.matMul({ a: a1, b: b1, bias, activation, leakyreluAlpha: 0.3 }));
    expectClose(want, got);
    // A batch, against the unfused ops.
    const a = tf.mul(rand([3, 7, 11], 8), 4);
    const b = rand([3, 11, 13], 9);
    const [want3, got3] = both(() => ACTIVATIONS[activation](tf.add(tf.matMul(a, b), bias)));
    setupNativeKernels({ enabled: true });
    const fused = tf.fused.matMul({ a, b, bias, activation, leakyreluAlpha: 0.3 });
    expectClose(want3, got3);
    expectClose(want3, fused.dataSync() as Float32Array);
    tf.dispose([a1, b1, a, b, bias, fused]);
  });

  it('leaves PReLU, a broadcast bias and int32 operands to the original kernels', () => {
    const a = rand([1, 5, 6], 8);
    const b = rand([1, 6, 4], 9);
    const alpha = rand([4], 10);
    const [want, got] = both(() => tf.fused.matMul({ a, b, activation: 'prelu', preluActivationWeights: alpha }));
    expectClose(want, got);
    const scalarBias = tf.tensor1d([0.5]);
    const [want2, got2] = both(() => tf.fused.matMul({ a, b, bias: scalarBias, activation: 'linear' }));
    expect(got2).toEqual(want2);
    const ia = tf.tensor2d([[1, 2]], [1, 2], 'int32');
    const ib = tf.tensor2d([[3], [4]], [2, 1], 'int32');
    setupNativeKernels({ enabled: true });
    expect(() => tf.matMul(ia, ib)).toThrow(/non-float32|not yet supported/);
    tf.dispose([a, b, alpha, scalarBias, ia, ib]);
  });

  it('exp matches the wasm kernel, infinities and NaN included, and leaves int32 to it', () => {
    const special = tf.tensor1d([-Infinity, Infinity, NaN, 88, -104]);
    const x = tf.tidy(() => tf.concat([tf.reshape(tf.mul(rand([131, 300], 18), 40), [-1]), special]));
    special.dispose();
    const [want, got, wantShape, gotShape] = both(() => tf.exp(x));
    expect(gotShape).toEqual(wantShape);
    const n = want.length;
    expect([...got.subarray(n - 5)]).toEqual([...want.subarray(n - 5)]);
    let maxRel = 0;
    for (let i = 0; i < n - 5; i++) maxRel = Math.max(maxRel, Math.abs(got[i]! - want[i]!) / Math.max(want[i]!, 1e-30));
    expect(maxRel).toBeLessThan(1e-6);
    const ints = tf.tensor1d([0, 1, 2], 'int32');
    const [wantI, gotI] = both(() => tf.exp(ints));
    expect(gotI).toEqual(wantI);
    tf.dispose([x, ints]);
  });

  it('the exp gradient is unchanged', () => {
    const x = rand([7, 9], 19);
    const [want, got] = both(() => tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.exp(t), t)))(x));
    expectClose(want, got);
    x.dispose();
  });

  it('throws tfjs own error when the inner dimensions differ', () => {
    const a = rand([3, 4], 11);
    const b = rand([5, 6], 12);
    expect(() => tf.matMul(a, b)).toThrow(/inner shapes \(4\) and \(5\)/);
    tf.dispose([a, b]);
  });

  it('the addon refuses operands outside the heap instead of reading them', () => {
    const load = loadAddon(addonPath());
    if (!load.ok) throw new Error(load.reason);
    const heap = new Float32Array(10);
    expect(() => load.addon.sgemm(heap, 1, 2, 2, 2, 0, 0, 0, 0, 4, 0, 7, -1, 0, 0)).toThrow(RangeError);
    load.addon.sgemm(heap.fill(1), 1, 2, 2, 2, 0, 0, 0, 0, 4, 0, 6, -1, 0, 0);
    expect([...heap.subarray(6)]).toEqual([2, 2, 2, 2]);
  });

  it('falls back to the XNNPACK kernels with one warning when the addon is hidden', () => {
    const warnings: string[] = [];
    const logger: Logger = {
      debug: () => {},
      info: () => {},
      error: () => {},
      warn: (m) => void warnings.push(m),
      child: () => logger,
    };
    const saved = process.env['POLYTUNE_NATIVE_ADDON'];
    process.env['POLYTUNE_NATIVE_ADDON'] = '/nonexistent/hidden-polytune-blas.node';
    try {
      expect(setupNativeKernels({ logger }).kernels).toBe('xnnpack');
      expect(setupNativeKernels({ logger }).kernels).toBe('xnnpack');
      expect(nativeKernelsActive()).toBe(false);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/XNNPACK.*hidden-polytune-blas\.node not found/);
      const a = rand([4, 4], 13);
      expect(tf.matMul(a, a).shape).toEqual([4, 4]);
      a.dispose();
    } finally {
      if (saved === undefined) delete process.env['POLYTUNE_NATIVE_ADDON'];
      else process.env['POLYTUNE_NATIVE_ADDON'] = saved;
    }
    expect(setupNativeKernels({ logger }).kernels).toBe('openblas');
    expect(nativeKernelsActive()).toBe(true);
  });

  it('model products pass transposes and batches straight to sgemm: no Transpose, no split', async () => {
    const a = rand([4, 16, 8], 14);
    const b = rand([4, 12, 8], 15);
    const w = rand([40, 8], 16);
    const x = rand([5, 8], 17);
    const kernelsOf = async (f: () => tf.Tensor): Promise<string[]> =>
      (await tf.profile(() => tf.dispose(f()))).kernels.map((k) => k.name);
    setupNativeKernels({ enabled: true });
    expect(await kernelsOf(() => matMul(a, b, false, true))).toEqual(['BatchMatMul']);
    expect(await kernelsOf(() => matMulTransposeB(x as tf.Tensor2D, w as tf.Tensor2D))).toEqual(['BatchMatMul']);
    const [want, got] = both(() => matMul(a, b, false, true));
    expectClose(want, got);
    setupNativeKernels({ enabled: false });
    expect(await kernelsOf(() => matMul(a, b, false, true))).toContain('Transpose');
    setupNativeKernels({ enabled: true });
    tf.dispose([a, b, w, x]);
  });

  it('reads POLYTUNE_NATIVE and POLYTUNE_NATIVE_THREADS when the options leave them unset', () => {
    expect(compileNativeOptions({}, {})).toEqual({ enabled: true, threads: 1 });
    expect(compileNativeOptions({}, { POLYTUNE_NATIVE: '0' }).enabled).toBe(false);
    expect(compileNativeOptions({}, { POLYTUNE_NATIVE: 'off' }).enabled).toBe(false);
    expect(compileNativeOptions({}, { POLYTUNE_NATIVE: '1' }).enabled).toBe(true);
    expect(compileNativeOptions({ enabled: true }, { POLYTUNE_NATIVE: '0' }).enabled).toBe(true);
    expect(compileNativeOptions({}, { POLYTUNE_NATIVE_THREADS: '3' }).threads).toBe(3);
    expect(compileNativeOptions({ threads: 2 }, { POLYTUNE_NATIVE_THREADS: '3' }).threads).toBe(2);
    expect(() => compileNativeOptions({}, { POLYTUNE_NATIVE_THREADS: 'two' })).toThrow(
      /POLYTUNE_NATIVE_THREADS: must be an integer/,
    );
  });

  it('is single-threaded unless told, and takes a thread count', () => {
    const s = setupNativeKernels({ threads: 2 });
    expect(s.kernels === 'openblas' && s.threads).toBe(2);
    const t = setupNativeKernels({});
    expect(t.kernels === 'openblas' && t.threads).toBe(1);
    expect(() => setupNativeKernels({ threads: 0 })).toThrow(/threads: must be an integer/);
    uninstallNativeKernels();
    expect(nativeKernelsActive()).toBe(false);
  });
});
