/**
 * Compute backend selection. Ops always come from `@tensorflow/tfjs-core`; a backend package only
 * registers kernels, so it is imported on demand and only the chosen one is loaded.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from '../common/errors.js';
import { loadTensorflowBackend, type BackendInfo, type TensorflowOptions } from './backend-tensorflow.js';
import './model/gradients.js';
import { setupNativeKernels, type NativeOptions, type NativeStatus } from './native/index.js';

export const BackendName = { wasm: 'wasm', cpu: 'cpu', tensorflow: 'tensorflow' } as const;
export type BackendName = keyof typeof BackendName;

/** @default 'wasm' */
export const DEFAULT_BACKEND: BackendName = 'wasm';

let lastNativeStatus: NativeStatus | undefined;
let tensorflowInfo: BackendInfo | undefined;

/** Which product kernels the last `initBackend('wasm')` left in (undefined before one). */
export function nativeStatus(): NativeStatus | undefined {
  return lastNativeStatus;
}

/**
 * Registers and activates a backend; returns the name tfjs reports as active.
 * `tensorflow` uses `@tensorflow/tfjs-node-gpu`, else `@tensorflow/tfjs-node`, on a GPU unless
 * `tensorflow.allowCpu`, with TF32 as `tensorflow.tf32` (backend-tensorflow.ts).
 * On wasm, the products run in OpenBLAS when the native addon loads (worker/native), unless
 * `native.enabled` is false.
 */
export async function initBackend(
  name: BackendName = DEFAULT_BACKEND,
  native: NativeOptions = {},
  tensorflow: TensorflowOptions = {},
): Promise<string> {
  switch (name) {
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      break;
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      break;
    case 'tensorflow':
      tensorflowInfo = await loadTensorflowBackend(tensorflow);
      break;
    default: {
      const never: never = name;
      throw new UserError(`unknown backend ${String(never)}: expected wasm, cpu or tensorflow`);
    }
  }
  const ok = await tf.setBackend(name);
  if (!ok) throw new UserError(`backend ${name}: failed to initialise`);
  await tf.ready();
  lastNativeStatus = undefined;
  if (name === 'wasm') {
    shareIdentityOnWasm();
    lastNativeStatus = setupNativeKernels(native);
  }
  return tf.getBackend();
}

/** What the active backend runs on, for the log and the `polytune_worker_backend_info` metric. */
export function backendInfo(): BackendInfo {
  const backend = tf.getBackend();
  if (backend === 'tensorflow' && tensorflowInfo) return tensorflowInfo;
  return {
    backend,
    device: 'cpu',
    tf32: 'n/a',
    package: `@tensorflow/tfjs-backend-${backend}@${tf.version_core}`,
    cuda: '',
    cudnn: '',
  };
}

/** What the Identity kernel uses of the wasm backend: its reference count of a tensor's memory. */
interface RefCountingBackend {
  incRef(dataId: tf.DataId): void;
}

/**
 * tfjs-backend-wasm's Identity kernel copies its input. The engine clones (through Identity) every
 * tensor it saves for the backward pass, so training held a second copy of every activation and
 * weight the tape saved. Tensors are immutable, so the clone can share the memory under a reference
 * count, as the cpu backend's Identity and wasm's own Reshape do. Idempotent.
 */
function shareIdentityOnWasm(): void {
  const kernel = tf.getKernel(tf.Identity, 'wasm');
  if (kernel?.kernelFunc === sharedIdentity) return;
  if (kernel) tf.unregisterKernel(tf.Identity, 'wasm');
  tf.registerKernel({ kernelName: tf.Identity, backendName: 'wasm', kernelFunc: sharedIdentity });
}

const sharedIdentity: tf.KernelFunc = ({ inputs, backend }) => {
  const x = (inputs as tf.IdentityInputs).x as tf.TensorInfo;
  (backend as unknown as RefCountingBackend).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};
