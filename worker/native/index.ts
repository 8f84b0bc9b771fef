/**
 * Native products for the wasm backend (issue 18): the polytune-blas addon (OpenBLAS sgemm on the
 * wasm heap) registered as the backend's BatchMatMul and _FusedMatMul kernels.
 *
 * On by default when the addon loads; off with `--no-native` or POLYTUNE_NATIVE=0, for comparison
 * or to rule it out. When it cannot load (not built, no libopenblas.so.0), the worker says so in one
 * warning line, once a process, and runs the XNNPACK kernels: nothing fails for want of it.
 * Single-threaded by default (one worker a core is the rule); `--threads N` gives OpenBLAS N.
 */
import { UserError } from '../../common/errors.js';
import type { Logger } from '../../common/logging.js';
import { addonPath, loadAddon } from './addon.js';
import { installNativeKernels, nativeKernelsActive, uninstallNativeKernels } from './kernels.js';

export interface NativeOptions {
  /** Use the OpenBLAS kernels when the addon loads. @default true unless POLYTUNE_NATIVE=0 */
  readonly enabled?: boolean;
  /** OpenBLAS threads. @default 1 (DEFAULT_NATIVE_THREADS), or POLYTUNE_NATIVE_THREADS */
  readonly threads?: number;
  /** Where the warning goes when the addon cannot load. @default stderr, one line */
  readonly logger?: Logger;
}

/** @default 1: one worker a core. */
export const DEFAULT_NATIVE_THREADS = 1;
export const NATIVE_ENV = 'POLYTUNE_NATIVE';
export const NATIVE_THREADS_ENV = 'POLYTUNE_NATIVE_THREADS';

export const ProductKernels = { openblas: 'openblas', xnnpack: 'xnnpack' } as const;
export type ProductKernels = keyof typeof ProductKernels;

export type NativeStatus =
  | { readonly kernels: 'openblas'; readonly threads: number; readonly config: string; readonly path: string }
  | { readonly kernels: 'xnnpack'; readonly reason: string };

const OFF = new Set(['0', 'false', 'off', 'no']);

/** The options with their defaults applied and checked (env vars fill what the caller left unset). */
export function compileNativeOptions(
  options: NativeOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): { enabled: boolean; threads: number } {
  const enabledEnv = env[NATIVE_ENV];
  const enabled = options.enabled ?? !(enabledEnv !== undefined && OFF.has(enabledEnv.trim().toLowerCase()));
  let threads = options.threads;
  let source = 'threads';
  if (threads === undefined && env[NATIVE_THREADS_ENV]) {
    threads = Number(env[NATIVE_THREADS_ENV]);
    source = NATIVE_THREADS_ENV;
  }
  threads ??= DEFAULT_NATIVE_THREADS;
  if (!Number.isInteger(threads) || threads < 1 || threads > 1024) {
    throw new UserError(`${source}: must be an integer in [1, 1024], got ${String(threads)}`);
  }
  return { enabled, threads };
}

const warned = new Set<string>();

/**
 * Installs the OpenBLAS kernels on the (initialised) wasm backend, or takes them out when disabled
 * or when the addon cannot load. Returns which product kernels run.
 */
export function setupNativeKernels(options: NativeOptions = {}): NativeStatus {
  const { enabled, threads } = compileNativeOptions(options);
  if (!enabled) {
    uninstallNativeKernels();
    return { kernels: 'xnnpack', reason: `disabled (--no-native or ${NATIVE_ENV}=0)` };
  }
  const load = loadAddon(addonPath());
  if (!load.ok) {
    uninstallNativeKernels();
    if (!warned.has(load.reason)) {
      warned.add(load.reason);
      const line = `native products unavailable, running the XNNPACK kernels: ${load.reason}`;
      if (options.logger) options.logger.warn(line);
      else process.stderr.write(`warning: ${line}\n`);
    }
    return { kernels: 'xnnpack', reason: load.reason };
  }
  load.addon.setNumThreads(threads);
  installNativeKernels(load.addon);
  return { kernels: 'openblas', threads: load.addon.numThreads(), config: load.addon.config(), path: load.path };
}

export { nativeKernelsActive, uninstallNativeKernels };
export type { BlasAddon } from './addon.js';
