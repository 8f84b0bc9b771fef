/**
 * The marker of a directory polytune owns, `.polytune`: written into `output.dir` by the
 * coordinator when a job is accepted (coordinator/job-files.ts) and into each `final/` by the
 * worker with the final model (worker/train/outputs.ts, stages.ts). It names the job that wrote it:
 *
 *   {"job":"<metadata.name>","by":"polytune"}
 *
 * A job is named by its `metadata.name`, which both the coordinator and the worker (in the spec it
 * is assigned) know, and which a resumed job (`submit --resume`: a new job id, the same spec) keeps,
 * so that its own markers still match. A directory marked by another job is not this job's: the
 * coordinator refuses it at Submit, a worker never counts or replaces it as its own.
 *
 * A marker is read as untrusted: at most `MARKER_MAX_BYTES`; anything that is not such an object with
 * a valid job name is "not ours". The empty or one-sentence marker of polytune before job names
 * (`legacy`) matches no job either; the messages say how to proceed.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isJobName } from './subjects.js';

export const MARKER_NAME = '.polytune';
/** The most of a marker file that is read; a longer one is not polytune's. */
export const MARKER_MAX_BYTES = 1024;

/** What a directory's marker says. */
export type MarkerState =
  | { readonly kind: 'missing' }
  | { readonly kind: 'job'; readonly job: string }
  /** Written by polytune before markers named their job (empty, or one of its sentences). */
  | { readonly kind: 'legacy' }
  /** Present but not a marker polytune writes (too long, not JSON, another shape, a bad name). */
  | { readonly kind: 'invalid' };

/** The sentences the markers held before they named their job. */
const LEGACY_LINES = new Set([
  'This directory is written by polytune jobs.',
  'written by polytune; a final/ without this file is never replaced',
]);

/** The content of the marker of `job` (a `metadata.name`). */
export function markerContent(job: string): string {
  if (!isJobName(job)) throw new RangeError(`marker: ${JSON.stringify(job)} is not a job name`);
  return `${JSON.stringify({ job, by: 'polytune' })}\n`;
}

/** What a marker's text says; never throws. */
export function parseMarker(text: string): MarkerState {
  if (text.length > MARKER_MAX_BYTES) return { kind: 'invalid' };
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  if (lines.every((l) => LEGACY_LINES.has(l))) return { kind: 'legacy' };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { kind: 'invalid' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { kind: 'invalid' };
  const { job, by } = v as Record<string, unknown>;
  if (by !== 'polytune' || typeof job !== 'string' || !isJobName(job)) return { kind: 'invalid' };
  return { kind: 'job', job };
}

/**
 * The marker of `dir`, read as untrusted (at most `MARKER_MAX_BYTES` + 1 bytes; anything but a regular
 * file is `invalid`). A missing marker, or a missing `dir`, is `missing`.
 */
export async function readMarker(dir: string): Promise<MarkerState> {
  let fh;
  try {
    fh = await open(join(dir, MARKER_NAME), 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? { kind: 'missing' } : { kind: 'invalid' };
  }
  try {
    if (!(await fh.stat()).isFile()) return { kind: 'invalid' };
    const buf = Buffer.alloc(MARKER_MAX_BYTES + 1);
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return parseMarker(buf.subarray(0, n).toString('utf8'));
  } catch {
    return { kind: 'invalid' };
  } finally {
    await fh.close();
  }
}

/** Whether a directory entry is a marker being written (`writeMarker`'s temporary file). */
export function isMarkerTemporary(entry: string): boolean {
  return /^\.polytune\.\d+\.[0-9a-f]{12}\.tmp$/.test(entry);
}

/**
 * Writes `dir`'s marker naming `job` (nothing when it already does), replacing any marker there
 * atomically (a temporary file renamed over it), so a concurrent reader never sees it empty or half written.
 */
export async function writeMarker(dir: string, job: string): Promise<void> {
  if (isMarkerOf(await readMarker(dir), job)) return;
  const tmp = join(dir, `${MARKER_NAME}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, markerContent(job), { flag: 'wx' });
    await rename(tmp, join(dir, MARKER_NAME));
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => {});
    throw e;
  }
}

/** Whether `state` is the marker of `job`. */
export function isMarkerOf(state: MarkerState, job: string): boolean {
  return state.kind === 'job' && state.job === job;
}

/**
 * Why `dir`, marked `state`, is not `job`'s, for a message (`undefined`: it is `job`'s). Names the
 * other job (a valid job name, nothing else of the file) and, for an old marker, how to proceed.
 */
export function markerMismatch(state: MarkerState, job: string, dir: string): string | undefined {
  switch (state.kind) {
    case 'job':
      return state.job === job ? undefined : `${dir} belongs to job "${state.job}" (its ${MARKER_NAME} marker)`;
    case 'legacy':
      return (
        `${dir} has a ${MARKER_NAME} marker from a polytune before markers named their job; ` +
        `if it is job "${job}"'s ` +
        `(or no longer needed), write {"job":"${job}","by":"polytune"} into ${join(dir, MARKER_NAME)}`
      );
    case 'invalid':
      return `${dir} has a ${MARKER_NAME} marker polytune did not write`;
    case 'missing':
      return `${dir} has no ${MARKER_NAME} marker`;
  }
}
