/**
 * The backends the model suites run on (`describe.each`): every path the code has. `wasm` and
 * `cpu` are themselves; `tensorflow` cannot be installed here (tfjs-node needs libtensorflow), so
 * its path is taken by a stand-in: the cpu backend's kernels registered under another name. Code
 * that branches on the backend's name (worker/model/matmul.ts materialises transposes only on
 * wasm and cpu; llama.ts writes into the heap only on wasm) then takes the choices it takes under
 * tfjs-node: products with transpose flags, batched products as one kernel, tensors made from
 * Float32Arrays. What it cannot check is TensorFlow's own kernels (scripts/gpu-check.sh does, on a
 * GPU node).
 *
 * The stand-in also keeps tfjs-node's account of host memory (NodeJSKernelBackend): a tensor
 * written from JS values (`tf.tensor(Float32Array)`) keeps them in JS, "pending", until its first
 * use as an op's input or an explicit `getInputTensorIds([t])` moves them into a TensorFlow tensor
 * (on a GPU, a device copy; the JS array is then free). Kernel outputs are born on the device. The
 * stand-in's kernels call `getInputTensorIds` on their inputs first, as tfjs-node's do, and it
 * counts the pending bytes and their peak, so a test can see what tfjs-node would hold in JS.
 */
import * as tf from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../worker/backend.js';

/** The name the stand-in registers under. */
export const NATIVE_PATH_STANDIN = 'native-path-standin';

export const MODEL_BACKENDS = ['wasm', 'cpu', NATIVE_PATH_STANDIN] as const;
export type ModelBackend = (typeof MODEL_BACKENDS)[number];

/** The cpu backend with tfjs-node's deferred upload of JS-written values, counted. */
export class NativePathStandIn extends MathBackendCPU {
  /** Bytes of each tensor written from JS and not yet moved to the "device". */
  private readonly pending = new Map<tf.DataId, number>();
  /** Inside a kernel: what it writes is an op output (on the device in tfjs-node). */
  private kernelDepth = 0;
  pendingBytes = 0;
  pendingPeak = 0;
  uploads = 0;

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): tf.DataId {
    const dataId = super.write(values, shape, dtype);
    if (this.kernelDepth === 0 && ArrayBuffer.isView(values)) {
      this.pending.set(dataId, values.byteLength);
      this.pendingBytes += values.byteLength;
      this.pendingPeak = Math.max(this.pendingPeak, this.pendingBytes);
    }
    return dataId;
  }

  /** tfjs-node's upload step: pending values become a TensorFlow tensor; returns the handles' ids. */
  getInputTensorIds(tensors: tf.TensorInfo[]): number[] {
    return this.upload(tensors);
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    const freed = super.disposeData(dataId, force);
    if (freed) this.settle(dataId, false);
    return freed;
  }

  /** Resets the peak to what is pending now (to measure one phase). */
  resetPeak(): void {
    this.pendingPeak = this.pendingBytes;
  }

  /** Runs `f` as a kernel: its inputs uploaded first, its outputs not pending. */
  runKernel<T>(inputs: tf.NamedTensorInfoMap, f: () => T): T {
    this.upload(Object.values(inputs).filter((t): t is tf.TensorInfo => t !== undefined));
    this.kernelDepth++;
    try {
      return f();
    } finally {
      this.kernelDepth--;
    }
  }

  private upload(tensors: tf.TensorInfo[]): number[] {
    for (const t of tensors) this.settle(t.dataId, true);
    return tensors.map((t) => (t.dataId as { id: number }).id);
  }

  private settle(dataId: tf.DataId, upload: boolean): void {
    const bytes = this.pending.get(dataId);
    if (bytes === undefined) return;
    this.pending.delete(dataId);
    this.pendingBytes -= bytes;
    if (upload) this.uploads++;
  }
}

/** Registers the stand-in (once): a NativePathStandIn with every cpu kernel under its name. */
function registerStandIn(): void {
  if (tf.findBackendFactory(NATIVE_PATH_STANDIN)) return;
  tf.registerBackend(NATIVE_PATH_STANDIN, () => new NativePathStandIn(), 0);
  for (const k of tf.getKernelsForBackend('cpu')) {
    const kernelFunc = k.kernelFunc;
    tf.registerKernel({
      ...k,
      backendName: NATIVE_PATH_STANDIN,
      kernelFunc: (args) => (args.backend as NativePathStandIn).runKernel(args.inputs, () => kernelFunc(args)),
    });
  }
}

/** Activates `name` and returns what tfjs reports as active. */
export async function useBackend(name: ModelBackend): Promise<string> {
  if (name !== NATIVE_PATH_STANDIN) return initBackend(name);
  await initBackend('cpu'); // registers the cpu kernels (and the project's gradients)
  registerStandIn();
  if (!(await tf.setBackend(NATIVE_PATH_STANDIN)))
    throw new Error(`backend ${NATIVE_PATH_STANDIN}: failed to initialise`);
  await tf.ready();
  return tf.getBackend();
}

/** The active stand-in backend (throws when another backend is active). */
export function standIn(): NativePathStandIn {
  const b = tf.backend();
  if (!(b instanceof NativePathStandIn)) throw new Error(`the active backend is ${tf.getBackend()}, not the stand-in`);
  return b;
}
