/**
 * The backends the model suites run on (`describe.each`): every path the code has. `wasm` and
 * `cpu` are themselves; `tensorflow` cannot be installed here (tfjs-node needs libtensorflow), so
 * its path is taken by a stand-in: the cpu backend's kernels registered under another name. Code
 * that branches on the backend's name (worker/model/matmul.ts materialises transposes only on
 * wasm and cpu; llama.ts writes into the heap only on wasm) then takes the choices it takes under
 * tfjs-node: products with transpose flags, batched products as one kernel, tensors made from
 * Float32Arrays. What it cannot check is TensorFlow's own kernels (scripts/gpu-check.sh does, on a
 * GPU node).
 */
import * as tf from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../worker/backend.js';

/** The name the stand-in registers under. */
export const NATIVE_PATH_STANDIN = 'native-path-standin';

export const MODEL_BACKENDS = ['wasm', 'cpu', NATIVE_PATH_STANDIN] as const;
export type ModelBackend = (typeof MODEL_BACKENDS)[number];

/** Registers the stand-in (once): a cpu backend instance with every cpu kernel under its name. */
function registerStandIn(): void {
  if (tf.findBackendFactory(NATIVE_PATH_STANDIN)) return;
  tf.registerBackend(NATIVE_PATH_STANDIN, () => new MathBackendCPU(), 0);
  for (const k of tf.getKernelsForBackend('cpu')) tf.registerKernel({ ...k, backendName: NATIVE_PATH_STANDIN });
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
