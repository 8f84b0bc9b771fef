/**
 * Gradient functions for the kernels the model (and code built on it) differentiates.
 *
 * `@tensorflow/tfjs-core`'s Node entry point (`dist/tf-core.node.js`) registers no gradients: the
 * union package `@tensorflow/tfjs` does that, and this project depends on tfjs-core alone. Without
 * them `tf.variableGrads` fails with "gradient function not found for Sum". This module registers
 * the same math as tfjs-core's `src/gradients/*_grad.ts` for the kernels below, each only when no
 * gradient is registered yet (so loading `@tensorflow/tfjs-node`, which brings the full set,
 * changes nothing). Importing the module is enough; `registerGradients()` is idempotent.
 */
import * as tf from '@tensorflow/tfjs-core';
import { matMul } from './matmul.js';

type Grads = Record<string, () => tf.Tensor>;

/** Sums a broadcast gradient back to an input's shape. */
function unbroadcast(g: tf.Tensor, shape: number[]): tf.Tensor {
  const axes = tf.broadcast_util.getReductionAxes(shape, g.shape);
  return tf.reshape(axes.length > 0 ? tf.sum(g, axes) : g, shape);
}

/** dy of a reduction over `axis`, reshaped to keepDims form and broadcast back to `shape`. */
function unreduce(dy: tf.Tensor, shape: number[], axis: number | number[]): tf.Tensor {
  const axes = tf.util.parseAxisParam(axis, shape);
  const kept = shape.map((d, i) => (axes.includes(i) ? 1 : d));
  return tf.mul(tf.reshape(dy, kept), tf.ones(shape, dy.dtype));
}

const configs: tf.GradConfig[] = [
  {
    kernelName: tf.Add,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, [a, b]) => ({
      a: () => unbroadcast(dy as tf.Tensor, a!.shape),
      b: () => unbroadcast(dy as tf.Tensor, b!.shape),
    }),
  },
  {
    kernelName: tf.AddN,
    saveAllInputs: true,
    gradFunc: (dy, saved) =>
      Object.fromEntries(saved.map((_, i) => [String(i), () => tf.clone(dy as tf.Tensor)])) as Grads,
  },
  {
    kernelName: tf.Sub,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, [a, b]) => ({
      a: () => unbroadcast(dy as tf.Tensor, a!.shape),
      b: () => tf.neg(unbroadcast(dy as tf.Tensor, b!.shape)),
    }),
  },
  {
    kernelName: tf.Multiply,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.mul(dy as tf.Tensor, tf.cast(b!, 'float32')), a!.shape),
      b: () => unbroadcast(tf.mul(dy as tf.Tensor, tf.cast(a!, 'float32')), b!.shape),
    }),
  },
  {
    kernelName: tf.RealDiv,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.div(dy as tf.Tensor, b!), a!.shape),
      b: () => unbroadcast(tf.neg(tf.div(tf.mul(dy as tf.Tensor, a!), tf.square(b!))), b!.shape),
    }),
  },
  { kernelName: tf.Neg, gradFunc: (dy) => ({ x: () => tf.neg(dy as tf.Tensor) }) },
  { kernelName: tf.Identity, gradFunc: (dy) => ({ x: () => tf.clone(dy as tf.Tensor) }) },
  { kernelName: tf.Cast, gradFunc: (dy) => ({ x: () => tf.clone(dy as tf.Tensor) }) },
  {
    kernelName: tf.Square,
    inputsToSave: ['x'],
    gradFunc: (dy, [x]) => ({ x: () => tf.mul(dy as tf.Tensor, tf.mul(x!, 2)) }),
  },
  {
    kernelName: tf.Sqrt,
    inputsToSave: ['x'],
    gradFunc: (dy, [x]) => ({ x: () => tf.div(dy as tf.Tensor, tf.mul(tf.sqrt(x!), 2)) }),
  },
  {
    // d rsqrt(x) = -0.5 x^-1.5 = -0.5 rsqrt(x)^3
    kernelName: tf.Rsqrt,
    inputsToSave: ['x'],
    gradFunc: (dy, [x]) => ({ x: () => tf.mul(dy as tf.Tensor, tf.mul(tf.pow(tf.rsqrt(x!), 3), -0.5)) }),
  },
  { kernelName: tf.Exp, outputsToSave: [true], gradFunc: (dy, [y]) => ({ x: () => tf.mul(dy as tf.Tensor, y!) }) },
  { kernelName: tf.Log, inputsToSave: ['x'], gradFunc: (dy, [x]) => ({ x: () => tf.div(dy as tf.Tensor, x!) }) },
  {
    kernelName: tf.Sigmoid,
    outputsToSave: [true],
    gradFunc: (dy, [y]) => ({ x: () => tf.mul(dy as tf.Tensor, tf.mul(y!, tf.sub(1, y!))) }),
  },
  {
    kernelName: tf.Tanh,
    outputsToSave: [true],
    gradFunc: (dy, [y]) => ({ x: () => tf.mul(dy as tf.Tensor, tf.sub(1, tf.square(y!))) }),
  },
  {
    kernelName: tf.Relu,
    inputsToSave: ['x'],
    gradFunc: (dy, [x]) => ({ x: () => tf.mul(dy as tf.Tensor, tf.cast(tf.greater(x!, 0), 'float32')) }),
  },
  {
    // softmax' : y * (dy - sum(dy * y))
    kernelName: tf.Softmax,
    outputsToSave: [true],
    gradFunc: (dy, [y], attrs) => {
      const dim = (attrs as unknown as tf.SoftmaxAttrs).dim;
      return {
        logits: () => {
          const dyTimesY = tf.mul(dy as tf.Tensor, y!);
          return tf.sub(dyTimesY, tf.mul(tf.sum(dyTimesY, [dim], true), y!));
        },
      };
    },
  },
  {
    kernelName: tf.Reshape,
    inputsToSave: ['x'],
    gradFunc: (dy, [x]) => ({ x: () => tf.reshape(dy as tf.Tensor, x!.shape) }),
  },
  {
    kernelName: tf.Transpose,
    gradFunc: (dy, _saved, attrs) => {
      const perm = (attrs as unknown as tf.TransposeAttrs).perm;
      const inverse = new Array<number>(perm.length);
      perm.forEach((p, i) => (inverse[p] = i));
      return { x: () => tf.transpose(dy as tf.Tensor, inverse) };
    },
  },
  {
    kernelName: tf.Reverse,
    gradFunc: (dy, _saved, attrs) => {
      const dims = (attrs as unknown as tf.ReverseAttrs).dims;
      return { x: () => tf.reverse(dy as tf.Tensor, dims) };
    },
  },
  {
    kernelName: tf.BatchMatMul,
    inputsToSave: ['a', 'b'],
    gradFunc: (dyRaw, [a, b], attrs) => {
      const dy = dyRaw as tf.Tensor;
      const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
      // Through matMul(): on wasm the transposed products run as plain ones.
      if (!transposeA && !transposeB)
        return { a: () => matMul(dy, b!, false, true), b: () => matMul(a!, dy, true, false) };
      if (!transposeA && transposeB)
        return { a: () => matMul(dy, b!, false, false), b: () => matMul(dy, a!, true, false) };
      if (transposeA && !transposeB)
        return { a: () => matMul(b!, dy, false, true), b: () => matMul(a!, dy, false, false) };
      return { a: () => matMul(b!, dy, true, true), b: () => matMul(dy, a!, true, true) };
    },
  },
  {
    kernelName: tf.Sum,
    inputsToSave: ['x'],
    gradFunc: (dy, [x], attrs) => ({
      x: () => unreduce(dy as tf.Tensor, x!.shape, (attrs as unknown as tf.SumAttrs).axis),
    }),
  },
  {
    kernelName: tf.Mean,
    inputsToSave: ['x'],
    gradFunc: (dy, [x], attrs) => {
      const axis = (attrs as unknown as tf.MeanAttrs).axis;
      const count = tf.util.parseAxisParam(axis, x!.shape).reduce((n, i) => n * x!.shape[i]!, 1);
      return { x: () => tf.div(unreduce(dy as tf.Tensor, x!.shape, axis), count) };
    },
  },
  {
    kernelName: tf.Concat,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const axis = tf.util.parseAxisParam((attrs as unknown as tf.ConcatAttrs).axis, saved[0]!.shape)[0]!;
      const sizes = saved.map((t) => t.shape[axis]!);
      const parts = tf.split(dy as tf.Tensor, sizes, axis);
      return Object.fromEntries(parts.map((p, i) => [String(i), () => p])) as Grads;
    },
  },
  {
    kernelName: tf.Slice,
    inputsToSave: ['x'],
    gradFunc: (dy, [x], attrs) => {
      const { begin, size } = attrs as unknown as tf.SliceAttrs;
      const [b, s] = tf.slice_util.parseSliceParams(x!, begin, size) as [number[], number[]];
      const paddings = x!.shape.map((d, i) => [b[i]!, d - b[i]! - s[i]!] as [number, number]);
      return { x: () => tf.pad(dy as tf.Tensor, paddings) };
    },
  },
];

let registered = false;

/** Registers the gradients above that are not registered yet. Idempotent. */
export function registerGradients(): void {
  if (registered) return;
  registered = true;
  for (const c of configs) if (!tf.getGradient(c.kernelName)) tf.registerGradient(c);
}

registerGradients();
