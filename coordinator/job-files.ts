/**
 * What a job may touch on the coordinator's file system, checked at Submit and again before a
 * gang is formed (a stored spec is not trusted: job-store.ts):
 *
 * - storage roots (`coordinator serve --storage-root DIR`, repeatable; common/storage-roots.ts):
 *   when set, every path field of the spec (found through its kind's schema) must lie under a root,
 *   and every directory it writes strictly inside one, after symbolic links are resolved; a path
 *   outside is refused with the path and its field before anything reads it. Unset (local use,
 *   on loopback), any path is allowed.
 * - the output directory: it must be missing, empty, or this job's (it holds the marker file
 *   `.polytune` naming the job, written here when a job is accepted: common/output-marker.ts). A
 *   directory holding someone else's files, or marked by another job, is refused, so that a job never
 *   writes (and `final/` never replaces) files it does not own.
 * - then the files themselves (common/jobspec.ts, common/job-kinds.ts).
 *
 * Errors name the field path and the file, never a file's contents.
 */
import { lstat, mkdir, readdir, realpath } from 'node:fs/promises';
import { JobSpecError, type SpecIssue } from '../common/errors.js';
import { errnoCode } from '../common/fs-checks.js';
import { jobKindOf, type AnyJobSpec } from '../common/job-kinds.js';
import { isMarkerTemporary, MARKER_NAME, markerMismatch, readMarker, writeMarker } from '../common/output-marker.js';
import { checkStorageRoots, specPaths, type StorageRoots } from '../common/storage-roots.js';

/** The marker of a directory polytune writes (`output.dir/.polytune`; `final/.polytune` by the worker). */
export const OUTPUT_MARKER = MARKER_NAME;

/** The directories a spec writes, with their field paths. */
function outputPaths(spec: AnyJobSpec): { at: string; path: string }[] {
  return specPaths(spec).filter((p) => p.kind === 'output');
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
  await checkStorageRoots(spec, roots, source);
  const files = await validateFiles();
  const job = spec.metadata.name;
  const outIssues = (await Promise.all(outputPaths(spec).map((o) => outputDirIssues(o.path, job, o.at)))).flat();
  if (outIssues.length > 0) throw new JobSpecError(outIssues, source);
  return files;
}

/** `checkJobFiles` with the file checks of the spec's kind (the scheduler's re-check of a stored spec). */
export async function checkStoredJobFiles(spec: AnyJobSpec, roots: StorageRoots, source?: string): Promise<void> {
  await checkJobFiles(spec, roots, () => jobKindOf(spec).validateFiles(spec, source), source);
}

/** Creates and marks the spec's output directories as its job's (once a job is accepted). */
export async function markOutputDirs(spec: AnyJobSpec): Promise<void> {
  for (const o of outputPaths(spec)) await markOutputDir(o.path, spec.metadata.name, o.at);
}
