/**
 * Matrix products that stay on the fast path of every backend.
 *
 * On the wasm backend (tfjs 4.22) only an unbatched product without transpose flags runs through
 * XNNPACK; everything else falls to a naive blocked loop (`slow_batch_matmul` in
 * tfjs-backend-wasm's batch_mat_mul_impl.cc). Measured, one thread, [1024,1024] x [1024,1024]:
 * plain 78 ms, `transposeB` 720 ms, `transposeA` 3200 ms; an explicit transpose of a
 * [1024,1024] tensor costs 11 ms. A batched product [16,256,64] x [16,64,128] runs at ~3 GFLOP/s
 * against ~35 for the same work as 16 unbatched products. So on wasm and cpu, transposes are
 * materialised and the product runs plain, and on wasm a batched product is a loop of unbatched
 * ones; backends with native transposed/batched GEMM (tensorflow, webgl, webgpu) get the flags,
 * and so does wasm while its products run in OpenBLAS (worker/native), whose sgemm takes them.
 */
import * as tf from '@tensorflow/tfjs-core';
import { nativeKernelsActive } from '../native/index.js';

const MATERIALISE_TRANSPOSE = new Set(['wasm', 'cpu']);

/** Swaps the last two axes. */
export function transposeLast<T extends tf.Tensor>(x: T): T {
  const perm = [...Array(x.rank).keys()];
  perm[x.rank - 2] = x.rank - 1;
  perm[x.rank - 1] = x.rank - 2;
  return tf.transpose(x, perm);
}

/** What the batch split uses of the wasm backend: allocate a tensor, and view its heap memory. */
interface HeapBackend {
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

/**
 * The n matrices of a float32 [n, m, k] tensor on wasm, each copied straight from the heap. (The
 * wasm Slice kernel first copies its whole input out of the heap, so n slices would cost n
 * whole copies.)
 */
function unbatch(x: tf.Tensor3D): tf.Tensor2D[] {
  const [n, m, k] = x.shape;
  const be = tf.backend() as unknown as HeapBackend;
  const size = m * k;
  const out: tf.Tensor2D[] = [];
  for (let i = 0; i < n; i++) {
    const info = be.makeOutput([m, k], 'float32');
    // Viewed after the allocation: the heap (and its buffer) may grow.
    be.typedArrayFromHeap(info).set(be.typedArrayFromHeap(x).subarray(i * size, (i + 1) * size));
    out.push(tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor2D);
  }
  return out;
}

/** a [n, m, k] x b [n, k, p] as n unbatched products (no gradient: see `batchedMatMul`). */
function loopMatMul(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  const [n, m] = a.shape;
  const p = b.shape[2];
  const as = unbatch(a);
  const bs = unbatch(b);
  const outs = as.map((ai, i) => tf.matMul(ai, bs[i]!));
  const r = tf.reshape(tf.concat(outs, 0), [n, m, p]) as tf.Tensor3D;
  tf.dispose([...as, ...bs, ...outs]);
  return r;
}

/**
 * a [n, m, k] x b [n, k, p] on wasm: n unbatched (XNNPACK) products, with a gradient that is
 * itself made of unbatched products (da = dy bᵀ, db = aᵀ dy, transposes materialised).
 */
const batchedMatMul = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [a, b] = args as [tf.Tensor3D, tf.Tensor3D];
  const save = args[2] as tf.GradSaveFunc;
  save([a, b]);
  return {
    value: loopMatMul(a, b),
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
      const [sa, sb] = saved as [tf.Tensor3D, tf.Tensor3D];
      const g = dy as tf.Tensor3D;
      return [loopMatMul(g, transposeLast(sb)), loopMatMul(transposeLast(sa), g)];
    },
  };
});

/** `tf.matMul` with the same meaning, choosing how transposes and batches are done per backend. */
export function matMul<T extends tf.Tensor>(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false): T {
  const backend = tf.getBackend();
  if (!MATERIALISE_TRANSPOSE.has(backend) || nativeKernelsActive()) return tf.matMul(a, b, transposeA, transposeB) as T;
  const x = transposeA ? transposeLast(a) : a;
  const y = transposeB ? transposeLast(b) : b;
  if (
    backend === 'wasm' &&
    x.rank === 3 &&
    y.rank === 3 &&
    x.shape[0] > 1 &&
    x.shape[0] === y.shape[0] &&
    x.dtype === 'float32' &&
    y.dtype === 'float32'
  ) {
    return batchedMatMul(x, y) as T;
  }
  return tf.matMul(x, y) as T;
}

/**
 * a bᵀ for a small a [m, k] and a large b [n, k] (the loss head's [vocab, hidden] weight). Where
 * transposes are materialised, as (b aᵀ)ᵀ: only the small operands are transposed, and the large
 * one is the left operand, of which XNNPACK keeps no packed copy (it packs and caches the right
 * operand of a product, per tensor).
 */
export function matMulTransposeB(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  if (!MATERIALISE_TRANSPOSE.has(tf.getBackend()) || nativeKernelsActive()) return tf.matMul(a, b, false, true);
  return transposeLast(tf.matMul(b, transposeLast(a)));
}
