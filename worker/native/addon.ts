/**
 * Finding and loading the polytune-blas addon (polytune-blas.c, built by scripts/build-native.sh
 * into .cache/native/). Loading never throws: a missing file, a missing libopenblas.so.0 or an
 * addon built for another platform is a reason, and the caller runs the XNNPACK kernels instead.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { errorMessage } from '../../common/errors.js';

/** The addon's exports (polytune-blas.c's header says what each argument means). */
export interface BlasAddon {
  sgemm(
    heap: Float32Array,
    batch: number,
    m: number,
    n: number,
    k: number,
    transA: number,
    transB: number,
    aOff: number,
    aStride: number,
    bOff: number,
    bStride: number,
    cOff: number,
    biasOff: number,
    activation: number,
    alpha: number,
  ): void;
  /** y = op(x) over n floats of the heap; op 0 is exp. */
  unary(heap: Float32Array, op: number, xOff: number, yOff: number, n: number): void;
  setNumThreads(n: number): void;
  numThreads(): number;
  config(): string;
}

export type AddonLoad =
  | { readonly ok: true; readonly path: string; readonly addon: BlasAddon }
  | { readonly ok: false; readonly path: string; readonly reason: string };

/** The environment variable naming another addon file (tests hide the addon with it). */
export const ADDON_PATH_ENV = 'POLYTUNE_NATIVE_ADDON';

/** The checkout's root: the first directory above this module with a package.json (source and dist/ alike). */
function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
    dir = up;
  }
}

/** Where the addon is looked for: $POLYTUNE_NATIVE_ADDON, else `.cache/native/polytune-blas.node`. */
export function addonPath(env: NodeJS.ProcessEnv = process.env): string {
  const override = env[ADDON_PATH_ENV];
  if (override !== undefined && override !== '') return resolve(override);
  return join(projectRoot(), '.cache', 'native', 'polytune-blas.node');
}

const loaded = new Map<string, AddonLoad>();

function isBlasAddon(x: unknown): x is BlasAddon {
  const o = x as Partial<Record<keyof BlasAddon, unknown>> | null;
  if (typeof o !== 'object' || o === null) return false;
  return (
    typeof o.sgemm === 'function' &&
    typeof o.unary === 'function' &&
    typeof o.setNumThreads === 'function' &&
    typeof o.numThreads === 'function' &&
    typeof o.config === 'function'
  );
}

/** Loads the addon at `path` once per process (a shared object cannot be unloaded anyway). */
export function loadAddon(path: string = addonPath()): AddonLoad {
  const cached = loaded.get(path);
  if (cached) return cached;
  let result: AddonLoad;
  if (!existsSync(path)) {
    result = { ok: false, path, reason: `${path} not found (scripts/setup.sh builds it with libopenblas-dev)` };
  } else {
    try {
      const mod: unknown = createRequire(import.meta.url)(path);
      result = isBlasAddon(mod)
        ? { ok: true, path, addon: mod }
        : { ok: false, path, reason: `${path} is not the polytune-blas addon` };
    } catch (e) {
      result = { ok: false, path, reason: `${path} failed to load: ${errorMessage(e)}` };
    }
  }
  loaded.set(path, result);
  return result;
}
