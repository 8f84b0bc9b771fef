/**
 * What a job may touch on the coordinator's file system, checked at Submit and again before a
 * gang is formed (a stored spec is not trusted: job-store.ts):
 *
 * - storage roots (`coordinator serve --data-root DIR --output-root DIR`, repeatable): when set,
 *   every input path of the spec (model, data, problem sets) must lie under a data root and
 *   `output.dir` under an output root, after symbolic links are resolved; a path outside is refused
 *   with the path and its field before anything reads it. Unset (local use), any path is allowed.
 * - the output directory: it must be missing, empty, or this job's (it holds the marker file
 *   `.polytune` naming the job, written here when a job is accepted: common/output-marker.ts). A
 *   directory holding someone else's files, or marked by another job, is refused, so that a job never
 *   writes (and `final/` never replaces) files it does not own.
 * - then the files themselves (common/jobspec.ts, common/job-kinds.ts).
 *
 * Errors name the field path and the file, never a file's contents.
 */
import { lstat, mkdir, readdir, realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { JobSpecError, type SpecIssue } from '../common/errors.js';
import { jobKindOf, type AnyJobSpec } from '../common/job-kinds.js';
import { isMarkerTemporary, MARKER_NAME, markerMismatch, readMarker, writeMarker } from '../common/output-marker.js';

/** The marker of a directory polytune writes (`output.dir/.polytune`; `final/.polytune` by the worker). */
export const OUTPUT_MARKER = MARKER_NAME;

export interface StorageRoots {
  /** Directories inputs (model, data) must be under; empty: anywhere. */
  readonly dataRoots: readonly string[];
  /** Directories `output.dir` must be under; empty: anywhere. */
  readonly outputRoots: readonly string[];
}

export const NO_ROOTS: StorageRoots = { dataRoots: [], outputRoots: [] };

/** Field names whose string values are input paths, wherever they are in a spec (stages included). */
const INPUT_FIELDS = new Set(['path', 'target', 'mgsm', 'msvamp']);

/** Every input path of a spec with its field path (`spec.data.train[0].path`), and every `output.dir`. */
/** A path of a spec and its field path. */
export interface SpecPath {
  readonly at: string;
  readonly path: string;
}

export function specPaths(spec: AnyJobSpec): { inputs: SpecPath[]; outputs: SpecPath[] } {
  const inputs: SpecPath[] = [];
  const outputs: SpecPath[] = [];
  const walk = (v: unknown, at: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${at}[${i}]`));
    else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) walk(x, `${at}.${k}`);
    } else if (typeof v === 'string') {
      if (at.endsWith('.output.dir')) outputs.push({ at, path: v });
      else if (INPUT_FIELDS.has(at.slice(at.lastIndexOf('.') + 1))) inputs.push({ at, path: v });
    }
  };
  walk((spec as { spec: unknown }).spec, 'spec');
  return { inputs, outputs };
}

/** The real path of `p`, or of its nearest existing ancestor joined with the rest (for paths not yet created). */
async function realish(p: string): Promise<string> {
  const abs = resolve(p);
  try {
    return await realpath(abs);
  } catch {
    const parent = dirname(abs);
    if (parent === abs) return abs;
    return join(await realish(parent), basename(abs));
  }
}

const errnoCode = (e: unknown, fallback = 'error'): string => (e as NodeJS.ErrnoException).code ?? fallback;

/** A path as given, with its real path when a link made them differ. */
const shown = (path: string, real: string): string => (real !== path ? `${path} (${real})` : path);

function isUnder(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** Resolves the roots once (they must exist): `--data-root`/`--output-root` as given to `serve`. */
export async function resolveStorageRoots(roots: Partial<StorageRoots>): Promise<StorageRoots> {
  const real = async (dirs: readonly string[] | undefined, flag: string): Promise<string[]> => {
    const out: string[] = [];
    for (const d of dirs ?? []) {
      try {
        out.push(await realpath(resolve(d)));
      } catch (e) {
        throw new JobSpecError([{ path: flag, message: `${d}: ${errnoCode(e, 'cannot resolve')}` }]);
      }
    }
    return out;
  };
  return {
    dataRoots: await real(roots.dataRoots, '--data-root'),
    outputRoots: await real(roots.outputRoots, '--output-root'),
  };
}

/** Paths of the spec outside the storage roots (nothing is read). */
export async function storageRootIssues(spec: AnyJobSpec, roots: StorageRoots): Promise<SpecIssue[]> {
  const issues: SpecIssue[] = [];
  const { inputs, outputs } = specPaths(spec);
  if (roots.dataRoots.length > 0) {
    for (const { at, path } of inputs) {
      const real = await realish(path);
      if (!roots.dataRoots.some((r) => isUnder(real, r))) {
        const message = `${shown(path, real)} is not under a data root (${roots.dataRoots.join(', ')})`;
        issues.push({ path: at, message });
      }
    }
  }
  if (roots.outputRoots.length > 0) {
    for (const { at, path } of outputs) {
      const real = await realish(path);
      if (!roots.outputRoots.some((r) => isUnder(real, r) && real !== r)) {
        const message = `${shown(path, real)} is not inside an output root (${roots.outputRoots.join(', ')})`;
        issues.push({ path: at, message });
      }
    }
  }
  return issues;
}

/** Whether `dir` may be written by job `job` (its `metadata.name`): missing, empty, or marked as its own. */
export async function outputDirIssues(dir: string, job: string, at = 'spec.output.dir'): Promise<SpecIssue[]> {
  let st;
  try {
    st = await lstat(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    return [{ path: at, message: `${dir}: cannot be checked (${errnoCode(e)})` }];
  }
  // A link is checked at its target (the roots, if any, were checked on the target too).
  if (st.isSymbolicLink()) return outputDirIssues(await realpath(dir), job, at);
  if (!st.isDirectory()) return [{ path: at, message: `${dir}: exists and is not a directory` }];
  let entries: string[];
  try {
    // A marker another Submit is writing is not a file of someone else's.
    entries = (await readdir(dir)).filter((e) => !isMarkerTemporary(e));
  } catch (e) {
    return [{ path: at, message: `${dir}: cannot be listed (${errnoCode(e)})` }];
  }
  if (entries.length === 0) return [];
  if (entries.includes(OUTPUT_MARKER)) {
    const why = markerMismatch(await readMarker(dir), job, dir);
    return why === undefined ? [] : [{ path: at, message: `${why}; or choose a new or empty directory` }];
  }
  return [
    {
      path: at,
      message:
        `${dir} holds files polytune did not write (${entries.length} entries, no ${OUTPUT_MARKER} marker): ` +
        'choose a new or empty directory',
    },
  ];
}

/** Marks `dir` (created if missing) as job `job`'s (once `outputDirIssues` found it missing, empty or `job`'s). */
export async function markOutputDir(dir: string, job: string, at = 'spec.output.dir'): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
    await writeMarker(dir, job);
  } catch (e) {
    throw new JobSpecError([{ path: at, message: `${dir}: cannot be written (${errnoCode(e)})` }]);
  }
}

/**
 * Every file check of a job, in order: roots (before anything is read), the files, the output
 * directory. Throws `JobSpecError` naming each field. With `mark`, the output directory is
 * created and marked as polytune's (Submit).
 */
export async function checkJobFiles<T>(
  spec: AnyJobSpec,
  roots: StorageRoots,
  validateFiles: () => Promise<T>,
  source?: string,
): Promise<T> {
  const rootIssues = await storageRootIssues(spec, roots);
  if (rootIssues.length > 0) throw new JobSpecError(rootIssues, source);
  const files = await validateFiles();
  const job = spec.metadata.name;
  const outIssues = (await Promise.all(specPaths(spec).outputs.map((o) => outputDirIssues(o.path, job, o.at)))).flat();
  if (outIssues.length > 0) throw new JobSpecError(outIssues, source);
  return files;
}

/** `checkJobFiles` with the file checks of the spec's kind (the scheduler's re-check of a stored spec). */
export async function checkStoredJobFiles(spec: AnyJobSpec, roots: StorageRoots, source?: string): Promise<void> {
  await checkJobFiles(spec, roots, () => jobKindOf(spec).validateFiles(spec, source), source);
}

/** Creates and marks the spec's output directories as its job's (once a job is accepted). */
export async function markOutputDirs(spec: AnyJobSpec): Promise<void> {
  for (const o of specPaths(spec).outputs) await markOutputDir(o.path, spec.metadata.name, o.at);
}
