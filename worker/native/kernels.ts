/**
 * OpenBLAS products as the wasm backend's BatchMatMul and _FusedMatMul kernels (issue 18), and
 * glibc's vector expf as its Exp kernel.
 *
 * XNNPACK's wasm kernels have 128-bit SIMD and no FMA: on this machine's AVX-512 cores a
 * [512,512]x[512,1408] product ran at 32 GFLOP/s in wasm against 187 in OpenBLAS, and the
 * products are most of a training step. These kernels call the addon's sgemm on the operands
 * where they already are, in the wasm heap (`dataIdMap.get(dataId).memoryOffset`), and write into
 * an output the backend allocated there: no copy in or out. Transposes and batches are sgemm's
 * own arguments, so nothing is materialised (worker/model/matmul.ts skips its wasm workarounds
 * while these kernels are in).
 *
 * What they do not cover goes to the original kernel, kept at install time: non-float32 operands,
 * empty tensors, batch shapes that broadcast other than one side being a single matrix, a bias
 * other than one value a column, PReLU. Installing replaces the registered kernels for backend
 * 'wasm' (tf.unregisterKernel/registerKernel) after the backend is set up, so the originals have
 * already run their setup (their cwrap'ed functions) and stay callable; uninstalling puts them
 * back. Both are idempotent.
 *
 * Exp: after the products, the loss head's exponentials over [131, 32000] chunks of logits were
 * the largest kernel of a training step (the wasm backend's Exp is a scalar loop: 30 ms of CPU a
 * chunk, against 2 ms for libmvec's AVX-512 expf, 7 % of the step).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BlasAddon } from './addon.js';

/** What the kernels use of tfjs-backend-wasm 4.22's BackendWasm. */
interface WasmHeapBackend {
  dataIdMap: { get(dataId: tf.DataId): { memoryOffset: number | null } | undefined };
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  wasm: { HEAPF32: Float32Array };
}

/** The activations sgemm applies itself (polytune-blas.c `activate`); PReLU is left to XNNPACK. */
const ACTIVATION_CODE: Readonly<Record<string, number>> = {
  linear: 0,
  relu: 1,
  relu6: 2,
  leakyrelu: 3,
  sigmoid: 4,
  elu: 5,
};

const KERNELS = [tf.BatchMatMul, tf._FusedMatMul, tf.Exp] as const;

interface Installed {
  readonly addon: BlasAddon;
  readonly originals: ReadonlyMap<string, tf.KernelConfig>;
  readonly funcs: ReadonlyMap<string, tf.KernelFunc>;
}

let installed: Installed | undefined;

/** Float offset of a tensor in the heap, or undefined when it has none usable. */
function heapOffset(be: WasmHeapBackend, t: tf.TensorInfo): number | undefined {
  const off = be.dataIdMap.get(t.dataId)?.memoryOffset;
  return off === null || off === undefined || off % 4 !== 0 ? undefined : off / 4;
}

interface Product {
  a: tf.TensorInfo;
  b: tf.TensorInfo;
  transposeA: boolean;
  transposeB: boolean;
  bias?: tf.TensorInfo | undefined;
  activation: number;
  alpha: number;
}

/**
 * act(op(a) op(b) + bias) into a new heap tensor, or undefined when this case is not covered.
 * Throws tfjs's own message when the inner dimensions differ.
 */
function product(addon: BlasAddon, be: WasmHeapBackend, p: Product): tf.TensorInfo | undefined {
  const { a, b, transposeA, transposeB } = p;
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || a.shape.length < 2 || b.shape.length < 2) return undefined;
  const ar = a.shape.length;
  const br = b.shape.length;
  const m = transposeA ? a.shape[ar - 1]! : a.shape[ar - 2]!;
  const kA = transposeA ? a.shape[ar - 2]! : a.shape[ar - 1]!;
  const kB = transposeB ? b.shape[br - 1]! : b.shape[br - 2]!;
  const n = transposeB ? b.shape[br - 2]! : b.shape[br - 1]!;
  tf.util.assert(
    kA === kB,
    () =>
      `Error in matMul: inner shapes (${kA}) and (${kB}) of Tensors with shapes ${a.shape} and ${b.shape} and ` +
      `transposeA=${transposeA} and transposeB=${transposeB} must match.`,
  );
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const batch = tf.util.sizeFromShape(outer);
  const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
  if ((batchA !== batch && batchA !== 1) || (batchB !== batch && batchB !== 1)) return undefined;
  if (batch === 0 || m === 0 || n === 0 || kA === 0) return undefined;
  const aOff = heapOffset(be, a);
  const bOff = heapOffset(be, b);
  if (aOff === undefined || bOff === undefined) return undefined;
  let biasOff = -1;
  if (p.bias) {
    if (p.bias.dtype !== 'float32' || p.bias.shape.length !== 1 || p.bias.shape[0] !== n) return undefined;
    const off = heapOffset(be, p.bias);
    if (off === undefined) return undefined;
    biasOff = off;
  }
  const out = be.makeOutput([...outer, m, n], 'float32');
  const cOff = heapOffset(be, out)!;
  // Read after makeOutput: an allocation may grow the memory, which replaces its buffer.
  addon.sgemm(
    be.wasm.HEAPF32,
    batch,
    m,
    n,
    kA,
    transposeA ? 1 : 0,
    transposeB ? 1 : 0,
    aOff,
    batchA === 1 ? 0 : m * kA,
    bOff,
    batchB === 1 ? 0 : kA * n,
    cOff,
    biasOff,
    p.activation,
    p.alpha,
  );
  return out;
}

function makeKernels(addon: BlasAddon, originals: ReadonlyMap<string, tf.KernelConfig>): Map<string, tf.KernelFunc> {
  type Args = Parameters<tf.KernelFunc>[0];
  const fallback = (name: string, args: Args): ReturnType<tf.KernelFunc> => originals.get(name)!.kernelFunc(args);
  const batchMatMul: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as unknown as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
    const be = args.backend as unknown as WasmHeapBackend;
    const out = product(addon, be, { a, b, transposeA, transposeB, activation: 0, alpha: 0 });
    return out ?? fallback(tf.BatchMatMul, args);
  };
  const fusedMatMul: tf.KernelFunc = (args) => {
    const { a, b, bias, preluActivationWeights } = args.inputs as unknown as {
      a: tf.TensorInfo;
      b: tf.TensorInfo;
      bias?: tf.TensorInfo;
      preluActivationWeights?: tf.TensorInfo;
    };
    const { transposeA, transposeB, activation, leakyreluAlpha } = args.attrs as unknown as tf._FusedMatMulAttrs;
    const code = ACTIVATION_CODE[activation];
    if (code === undefined || preluActivationWeights) return fallback(tf._FusedMatMul, args);
    const be = args.backend as unknown as WasmHeapBackend;
    const alpha = leakyreluAlpha ?? 0;
    const out = product(addon, be, { a, b, transposeA, transposeB, bias, activation: code, alpha });
    return out ?? fallback(tf._FusedMatMul, args);
  };
  const exp: tf.KernelFunc = (args) => {
    const { x } = args.inputs as unknown as { x: tf.TensorInfo };
    const be = args.backend as unknown as WasmHeapBackend;
    const n = tf.util.sizeFromShape(x.shape);
    const xOff = x.dtype === 'float32' && n > 0 ? heapOffset(be, x) : undefined;
    if (xOff === undefined) return fallback(tf.Exp, args);
    const out = be.makeOutput([...x.shape], 'float32');
    addon.unary(be.wasm.HEAPF32, 0, xOff, heapOffset(be, out)!, n);
    return out;
  };
  return new Map([
    [tf.BatchMatMul, batchMatMul],
    [tf._FusedMatMul, fusedMatMul],
    [tf.Exp, exp],
  ]);
}

/**
 * Registers the OpenBLAS kernels for backend 'wasm' (which must be initialised: call after
 * `tf.setBackend('wasm')` and `tf.ready()`). Idempotent; another addon replaces the first one's.
 */
export function installNativeKernels(addon: BlasAddon): void {
  if (installed?.addon === addon) return;
  uninstallNativeKernels();
  const originals = new Map<string, tf.KernelConfig>();
  for (const name of KERNELS) {
    const k = tf.getKernel(name, 'wasm');
    if (!k) throw new Error(`native kernels: the wasm backend has no ${name} kernel to fall back to`);
    originals.set(name, k);
  }
  const funcs = makeKernels(addon, originals);
  for (const name of KERNELS) {
    const original = originals.get(name)!;
    tf.unregisterKernel(name, 'wasm');
    // The original's setup goes along: should the backend be initialised again, the fallback's
    // wasm functions are bound to the new module.
    tf.registerKernel({
      kernelName: name,
      backendName: 'wasm',
      kernelFunc: funcs.get(name)!,
      ...(original.setupFunc ? { setupFunc: original.setupFunc } : {}),
      ...(original.disposeFunc ? { disposeFunc: original.disposeFunc } : {}),
    });
  }
  installed = { addon, originals, funcs };
}

/** Puts the original (XNNPACK) kernels back. Idempotent. */
export function uninstallNativeKernels(): void {
  if (!installed) return;
  for (const name of KERNELS) {
    const current = tf.getKernel(name, 'wasm');
    if (current?.kernelFunc !== installed.funcs.get(name)) continue; // replaced by someone else since
    tf.unregisterKernel(name, 'wasm');
    tf.registerKernel(installed.originals.get(name)!);
  }
  installed = undefined;
}

/** Whether the wasm backend is active and its products run in OpenBLAS. */
export function nativeKernelsActive(): boolean {
  if (!installed || tf.getBackend() !== 'wasm') return false;
  return tf.getKernel(tf.BatchMatMul, 'wasm')?.kernelFunc === installed.funcs.get(tf.BatchMatMul);
}
