/**
 * The `tensorflow` backend: `@tensorflow/tfjs-node-gpu` (else `@tensorflow/tfjs-node`), loaded on
 * demand, checked to be on a GPU, with TF32 decided before TensorFlow loads.
 *
 * - No silent CPU fallback: when TensorFlow finds no GPU it runs on the CPU, 10-100x slower, and
 *   the worker would still call itself `tensorflow`. So a backend that is not on a GPU is refused
 *   with what was found (package, devices TensorFlow reported, CUDA_VISIBLE_DEVICES, the NVIDIA
 *   driver), unless `allowCpu` (`worker --allow-cpu`: the CPU build on purpose).
 * - TF32: TensorFlow 2.9 runs float32 matmuls and convolutions in TF32 on Ampere and Hopper by
 *   default (10-bit mantissa: about 1e-3 relative error, so the 1e-4 golden parity does not hold).
 *   cuBLAS and cuDNN read `NVIDIA_TF32_OVERRIDE` when TensorFlow creates the GPU device, which is
 *   when the package is imported, so it is set here, before the import: 0 (off, the default, as
 *   HF's `tf32`) or 1. It is a property of the process: a TrainJob whose `training.tf32` differs
 *   is refused by the worker (`checkTf32`).
 * - The package is resolved from `POLYTUNE_TFJS_NODE_DIR` when set (a directory whose
 *   node_modules holds it), else from the worker's own node_modules.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { GpuNotFoundError, UserError, errorMessage } from '../common/errors.js';

export const TFJS_NODE_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;
/** Env var: a directory whose node_modules holds the package. @default the worker's own */
export const TFJS_NODE_DIR_ENV = 'POLYTUNE_TFJS_NODE_DIR';
export const TF32_ENV = 'NVIDIA_TF32_OVERRIDE';

export interface TensorflowOptions {
  /** Run on TensorFlow's CPU when it finds no GPU. @default false */
  readonly allowCpu?: boolean;
  /** TF32 matmuls on Ampere and newer. @default false */
  readonly tf32?: boolean;
  /** Where the package is resolved from. @default $POLYTUNE_TFJS_NODE_DIR, else this module */
  readonly resolveFrom?: string;
}

/** What the backend runs on, for the log and the `polytune_worker_backend_info` metric. */
export interface BackendInfo {
  readonly backend: string;
  /** `gpu` or `cpu`. */
  readonly device: string;
  /** `on`, `off`, or `n/a` (not a TensorFlow GPU). */
  readonly tf32: string;
  /** The package that provides the backend, with its version. */
  readonly package: string;
  /** From the CUDA image's environment (`CUDA_VERSION`, `NV_CUDNN_VERSION`), or empty. */
  readonly cuda: string;
  readonly cudnn: string;
}

/** What tfjs-node's backend says about itself (NodeJSKernelBackend). */
interface NodeBackend {
  isUsingGpuDevice?: boolean;
  isGPUPackage?: boolean;
}

/** The package's entry file from `dir`, or undefined when it is not installed there. */
function resolvePackage(pkg: string, dir: string): string | undefined {
  try {
    return createRequire(join(dir, 'noop.js')).resolve(pkg);
  } catch (e) {
    if ((e as { code?: unknown }).code === 'MODULE_NOT_FOUND') return undefined;
    throw e;
  }
}

function packageVersion(entry: string, pkg: string): string {
  const at = entry.lastIndexOf(join('node_modules', pkg));
  if (at < 0) return '';
  try {
    return (
      (
        JSON.parse(readFileSync(join(entry.slice(0, at), 'node_modules', pkg, 'package.json'), 'utf8')) as {
          version?: string;
        }
      ).version ?? ''
    );
  } catch {
    return '';
  }
}

/** What the node says about its GPUs, for the error when TensorFlow found none. */
function gpuEnvironment(): string {
  const visible = process.env['CUDA_VISIBLE_DEVICES'];
  const driver = existsSync('/proc/driver/nvidia/version')
    ? readFileSync('/proc/driver/nvidia/version', 'utf8').split('\n')[0]!.replace(/\s+/g, ' ').trim()
    : 'no NVIDIA driver loaded (no /proc/driver/nvidia/version)';
  return `CUDA_VISIBLE_DEVICES=${visible === undefined ? '(unset)' : JSON.stringify(visible)}, ${driver}`;
}

/**
 * Sets TF32, imports the package, activates the `tensorflow` backend and checks that it is on a GPU.
 * Throws a one-line `UserError` when no package is installed, `GpuNotFoundError` when TensorFlow
 * found no GPU (unless `allowCpu`).
 */
export async function loadTensorflowBackend(options: TensorflowOptions = {}): Promise<BackendInfo> {
  const from = options.resolveFrom ?? process.env[TFJS_NODE_DIR_ENV] ?? import.meta.dirname;
  process.env[TF32_ENV] = options.tf32 ? '1' : '0';
  let found: { pkg: string; entry: string } | undefined;
  for (const pkg of TFJS_NODE_PACKAGES) {
    const entry = resolvePackage(pkg, from);
    if (entry) {
      found = { pkg, entry };
      break;
    }
  }
  if (!found) {
    throw new UserError(
      `backend tensorflow: neither ${TFJS_NODE_PACKAGES.join(' nor ')} is installed (looked from ${from}); ` +
        'install @tensorflow/tfjs-node-gpu@4.22 on a CUDA 11.2 / cuDNN ' +
        '8.1 node (the GPU worker image has it), or use --backend wasm',
    );
  }
  try {
    await import(pathToFileURL(found.entry).href);
  } catch (e) {
    throw new UserError(
      `backend tensorflow: ${found.pkg} is installed but failed to load: ${errorMessage(e).split('\n')[0]}`,
      { cause: e },
    );
  }
  if (!(await tf.setBackend('tensorflow')))
    throw new UserError(`backend tensorflow: ${found.pkg} loaded but the backend failed to initialise`);
  await tf.ready();
  const be = tf.backend() as unknown as NodeBackend;
  const onGpu = be.isUsingGpuDevice === true;
  const version = packageVersion(found.entry, found.pkg);
  const pkg = version ? `${found.pkg}@${version}` : found.pkg;
  if (!onGpu && !options.allowCpu) {
    const build = found.pkg === '@tensorflow/tfjs-node' ? 'the CPU build' : 'the GPU build';
    throw new GpuNotFoundError(
      `backend tensorflow: TensorFlow found no GPU (${pkg}, ${build}; ${gpuEnvironment()}); ` +
        'check the pod requests nvidia.com/gpu and the node runs the ' +
        'NVIDIA device plugin, or pass --allow-cpu to run on the CPU',
      { package: pkg, environment: gpuEnvironment() },
    );
  }
  return {
    backend: 'tensorflow',
    device: onGpu ? 'gpu' : 'cpu',
    tf32: onGpu ? (options.tf32 ? 'on' : 'off') : 'n/a',
    package: pkg,
    cuda: process.env['CUDA_VERSION'] ?? '',
    cudnn: process.env['NV_CUDNN_VERSION'] ?? process.env['CUDNN_VERSION'] ?? '',
  };
}

/**
 * A TrainJob's `training.tf32` against this process's setting (fixed when TensorFlow loaded):
 * a mismatch on a GPU is refused, naming the field and the worker flag.
 */
export function checkTf32(info: BackendInfo, wanted: boolean): void {
  if (info.tf32 === 'n/a') return;
  const have = info.tf32 === 'on';
  if (have === wanted) return;
  throw new UserError(
    `spec.training.tf32 is ${wanted} but this worker runs with TF32 ` +
      `${info.tf32} (NVIDIA_TF32_OVERRIDE is read when TensorFlow loads); ` +
      `start the workers with${wanted ? '' : 'out'} --tf32 (the ` +
      `chart's worker.tf32), or set spec.training.tf32: ${have}`,
  );
}
