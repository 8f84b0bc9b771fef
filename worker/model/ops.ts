/**
 * Tensor ops the decoder is built from that tfjs lacks or that wasm runs badly: row gathers with a
 * gradient every backend can run, custom-gradient ops with typed inputs, gradients nested in a
 * backward pass (gradient checkpointing), RMSNorm, the causal mask, host-side transposes.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Additive attention-mask value for a masked key: exp(-1e9 - max) is exactly 0 in float32. */
export const MASKED = -1e9;

/**
 * Copies rows [r0, r0 + k) of a row-major [rows, cols] matrix (`src`, k*cols values) into `dst`,
 * the [cols, rows] transpose, in cache-friendly blocks.
 */
export function transposeRowsInto(src: Float32Array, r0: number, rows: number, cols: number, dst: Float32Array): void {
  const k = src.length / cols;
  const BS = 64;
  for (let c0 = 0; c0 < cols; c0 += BS) {
    const c1 = Math.min(cols, c0 + BS);
    for (let i0 = 0; i0 < k; i0 += BS) {
      const i1 = Math.min(k, i0 + BS);
      for (let c = c0; c < c1; c++) {
        const o = c * rows + r0;
        for (let i = i0; i < i1; i++) dst[o + i] = src[i * cols + c]!;
      }
    }
  }
}

/**
 * `table[indices]` along axis 0, with a gradient for `table` that runs on every backend:
 * ScatterNd (which sums duplicate indices) instead of UnsortedSegmentSum, which wasm lacks.
 */
export function gatherRows(table: tf.Tensor2D, indices: tf.Tensor1D): tf.Tensor2D {
  const shape = table.shape;
  return customOp([table, indices], ([t, idx], save) => {
    save([idx!]);
    return {
      value: tf.gather(t!, idx!),
      gradFunc: (dy, [i]) => [tf.scatterND(tf.expandDims(i!, 1), dy, shape), tf.zerosLike(i!)],
    };
  }) as tf.Tensor2D;
}

type CustomOpForward = (
  inputs: tf.Tensor[],
  save: tf.GradSaveFunc,
) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[] };

/**
 * `tf.customGrad` with typed inputs: `forward` runs untaped and returns the value and a gradient
 * function giving one gradient per input. Tensors the gradient needs must go through `save`
 * (anything else created in the forward pass may be disposed before the backward pass runs).
 */
export function customOp(inputs: tf.Tensor[], forward: CustomOpForward): tf.Tensor {
  const f = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const r = forward(args.slice(0, -1) as tf.Tensor[], save);
    return {
      value: r.value,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => r.gradFunc(dy as tf.Tensor, saved),
    };
  });
  return f(...inputs);
}

/**
 * `vectors` [k, H] added into rows `rows` of an [n, H] tensor of zeros: the delta that adds them
 * at given positions. Its gradient for `vectors` is the gather of those rows (duplicates sum).
 */
export function scatterRows(vectors: tf.Tensor2D, rows: Int32Array, n: number): tf.Tensor2D {
  const shape: [number, number] = [n, vectors.shape[1]];
  const idx = tf.tensor2d(rows, [rows.length, 1], 'int32');
  return customOp([vectors, idx], ([v, i], save) => {
    save([i!]);
    return {
      value: tf.scatterND(i!, v!, shape),
      gradFunc: (dy, [si]) => [tf.gatherND(dy, si!), tf.zerosLike(si!)],
    };
  }) as tf.Tensor2D;
}

/**
 * The gradients of `f` at `xs` for the upstream gradient `dy`, computed inside another gradient
 * computation's backward pass. tfjs keeps one tape: a gradient computation started at depth 0
 * (which a backward pass is) replaces it and clears it when done, so the outer tape is put back.
 */
export function nestedGradients(f: () => tf.Tensor, xs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  const engine = tf.engine();
  const outer = engine.state.activeTape;
  try {
    const { value, grads } = engine.gradients(f, xs, dy, true);
    value.dispose();
    return grads.map((g, i) => g ?? tf.zerosLike(xs[i]!));
  } finally {
    engine.state.activeTape = outer;
  }
}

/** The tensors concatenated along the first axis; one tensor as it is. */
export function concatOrOnly<T extends tf.Tensor>(ts: T[]): T {
  return ts.length === 1 ? ts[0]! : tf.concat(ts, 0);
}

/** HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * weight, over the last axis. */
export function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, eps: number): tf.Tensor2D {
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, eps))), weight);
}

/** Upper-triangular additive causal mask [1, 1, 1, T, past + T]: query i sees keys j <= past + i. */
export function causalMask(t: number, past = 0): tf.Tensor {
  const tk = past + t;
  const m = new Float32Array(t * tk);
  for (let i = 0; i < t; i++) for (let j = past + i + 1; j < tk; j++) m[i * tk + j] = MASKED;
  return tf.tensor(m, [1, 1, 1, t, tk]);
}

/** Transposes a row-major [rows, cols] matrix on the host, in cache-friendly blocks. */
export function transposeHost(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  const BS = 64;
  for (let r0 = 0; r0 < rows; r0 += BS) {
    const r1 = Math.min(rows, r0 + BS);
    for (let c0 = 0; c0 < cols; c0 += BS) {
      const c1 = Math.min(cols, c0 + BS);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = data[r * cols + c]!;
    }
  }
  return out;
}
