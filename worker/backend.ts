/**
 * Compute backend selection. Ops always come from `@tensorflow/tfjs-core`; a backend package only
 * registers kernels, so it is imported on demand and only the chosen one is loaded.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UserError, errorMessage } from '../common/errors.js';
import './model/gradients.js';
import { setupNativeKernels, type NativeOptions, type NativeStatus } from './native/index.js';

export const BackendName = { wasm: 'wasm', cpu: 'cpu', tensorflow: 'tensorflow' } as const;
export type BackendName = keyof typeof BackendName;

/** @default 'wasm' */
export const DEFAULT_BACKEND: BackendName = 'wasm';

/** Whether a dynamic import failed because the package itself is not installed. */
function isModuleNotFound(e: unknown, pkg: string): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && errorMessage(e).includes(pkg);
}

/**
 * Dynamic import through a variable specifier, so that TypeScript does not need the optional
 * peer dependency's types and bundlers do not try to resolve it.
 */
async function importOptional(pkg: string): Promise<boolean> {
  try {
    await import(pkg);
    return true;
  } catch (e) {
    if (isModuleNotFound(e, pkg)) return false;
    throw new UserError(`backend tensorflow: ${pkg} is installed but failed to load: ${errorMessage(e)}`, { cause: e });
  }
}

let lastNativeStatus: NativeStatus | undefined;

/** Which product kernels the last `initBackend('wasm')` left in (undefined before one). */
export function nativeStatus(): NativeStatus | undefined {
  return lastNativeStatus;
}

/**
 * Registers and activates a backend; returns the name tfjs reports as active.
 * `tensorflow` uses `@tensorflow/tfjs-node-gpu`, else `@tensorflow/tfjs-node`.
 * On wasm, the products run in OpenBLAS when the native addon loads (worker/native), unless
 * `native.enabled` is false.
 */
export async function initBackend(name: BackendName = DEFAULT_BACKEND, native: NativeOptions = {}): Promise<string> {
  switch (name) {
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      break;
    case 'cpu':
      await import('@tensorflow/tfjs-backend-cpu');
      break;
    case 'tensorflow': {
      const found = (await importOptional('@tensorflow/tfjs-node-gpu')) || (await importOptional('@tensorflow/tfjs-node'));
      if (!found) {
        throw new UserError(
          'backend tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed; ' +
            'install one (`npm install @tensorflow/tfjs-node-gpu@4.22` on a CUDA 11.2 / cuDNN 8.1 node, ' +
            'or `npm install @tensorflow/tfjs-node@4.22`) or use --backend wasm',
        );
      }
      break;
    }
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
