/**
 * What rank 0 writes at the end, in DESIGN.md's layout (checkpoints are in checkpoint.ts):
 *
 *   output.dir/final/   model.safetensors, or shards + model.safetensors.index.json like the
 *                       input's (whole model, HF names, each tensor in its input dtype),
 *                       trainable.safetensors (none when no model tensor trained: a PruneJob,
 *                       LinguaLIFT's align stage), config.json, tokenizer files,
 *                       <method>.safetensors: the method's own modules, when it has some,
 *                       and whatever else the method writes (its `finalOutputs`)
 *
 * Written under a temporary name and renamed, so a reader never sees half of it. The trained
 * state exists only in memory past the last checkpoint, so a write that fails for want of space is
 * tried again (`writeFinalOutputsRetrying`) rather than failing the job and losing it.
 */
import { copyFile, lstat, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, UserError } from '../../common/errors.js';
import type { Logger } from '../../common/logging.js';
import { MARKER_NAME, markerMismatch, readMarker, writeMarker } from '../../common/output-marker.js';
import type { LlamaModel } from '../model/llama.js';
import { exportModel } from '../model/export.js';
import { writeSafetensors, type NamedTensor } from '../model/safetensors.js';
import { writeDirAtomically } from './atomic-dir.js';

/** Files copied from the input model directory to `final/` when present. */
export const MODEL_SIDE_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
] as const;

export interface FinalContents {
  /** The job writing it (its `metadata.name`), named in `final/`'s marker. */
  readonly job: string;
  readonly modelDir: string;
  readonly outputDir: string;
  readonly model: LlamaModel;
  readonly trainable: readonly NamedTensor[];
  /** Each input tensor's dtype, so the export keeps it (a bf16 model comes back bf16). */
  readonly inputDtypes: ReadonlyMap<string, string>;
  /** The method's own modules, written to `<name>.safetensors`; none: no file. */
  readonly method?: {
    readonly name: string;
    readonly modules: readonly NamedTensor[];
    /** Metadata of `<name>.safetensors` besides `format`. @default none */
    readonly metadata?: Readonly<Record<string, string>>;
    /** More files the method writes into the temporary directory that becomes `final/`. */
    readonly write?: (dir: string) => Promise<void>;
  };
}

/** The marker of a `final/` polytune wrote, naming the job (common/output-marker.ts): only such a one is replaced. */
export const FINAL_MARKER = MARKER_NAME;

/**
 * Throws unless `dir` is missing or holds the marker of job `job` (its `metadata.name`): a user's own
 * `final/`, or another job's, is never replaced.
 */
export async function assertFinalReplaceable(dir: string, job: string): Promise<void> {
  const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (st === undefined) return;
  const keep = 'it is left as it is: move it away';
  if (!st.isDirectory()) throw new UserError(`${dir}: exists and is not a directory; ${keep}`);
  const marker = await readMarker(dir);
  if (marker.kind === 'missing') {
    const why = `exists and was not written by polytune (no ${FINAL_MARKER} marker): it is left as it is; move it away`;
    throw new UserError(`${dir}: ${why}`);
  }
  const why = markerMismatch(marker, job, dir);
  if (why !== undefined) throw new UserError(`${why}; ${keep}`);
}

export async function writeFinalOutputs(c: FinalContents): Promise<string> {
  const dir = join(c.outputDir, 'final');
  await mkdir(c.outputDir, { recursive: true });
  await assertFinalReplaceable(dir, c.job);
  await writeDirAtomically(dir, async (tmp) => {
    await writeMarker(tmp, c.job);
    // Tensor by tensor, each in its input dtype, sharded like the input (worker/model/export.ts);
    // trained tensors from the trainer's float32 master copies.
    await exportModel(tmp, c.model, {
      inputDir: c.modelDir,
      dtypes: c.inputDtypes,
      values: new Map(c.trainable.map((t) => [t.name, t.data])),
    });
    // A job that trains no model tensor (a PruneJob, LinguaLIFT's align stage) has no trainable.safetensors.
    if (c.trainable.length > 0) {
      await writeSafetensors(join(tmp, 'trainable.safetensors'), c.trainable, {
        dtype: 'F32',
        metadata: { format: 'pt' },
      });
    }
    if (c.method && c.method.modules.length > 0) {
      await writeSafetensors(join(tmp, `${c.method.name}.safetensors`), c.method.modules, {
        dtype: 'F32',
        metadata: { ...c.method.metadata, format: 'pt' },
      });
    }
    await c.method?.write?.(tmp);
    for (const name of MODEL_SIDE_FILES) {
      await copyFile(join(c.modelDir, name), join(tmp, name)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
  });
  return dir;
}

/** The first pause before the final outputs are tried again, and the longest. */
export const FINAL_OUTPUTS_RETRY_MS = 2_000;
export const FINAL_OUTPUTS_RETRY_MAX_MS = 60_000;
/** Write errors that freeing space clears: the ones the final outputs are tried again after. */
const OUT_OF_SPACE = new Set(['ENOSPC', 'EDQUOT']);

export interface RetryOptions {
  /** The first pause; it doubles up to FINAL_OUTPUTS_RETRY_MAX_MS. @default FINAL_OUTPUTS_RETRY_MS (2 s) */
  readonly retryMs?: number;
  readonly signal?: AbortSignal;
  readonly logger: Logger;
  /** Each failed attempt (for metrics): its seconds and error. */
  readonly onFailure?: (info: { readonly seconds: number; readonly error: string }) => void;
}

/**
 * `writeFinalOutputs`, tried again after running out of space (ENOSPC, EDQUOT) with growing
 * pauses until it succeeds or `signal` aborts (its reason is thrown); other errors are thrown.
 * Returns the seconds of the attempt that succeeded.
 */
export async function writeFinalOutputsRetrying(c: FinalContents, options: RetryOptions): Promise<number> {
  let pause = Math.max(1, options.retryMs ?? FINAL_OUTPUTS_RETRY_MS);
  for (;;) {
    const tw = performance.now();
    try {
      await writeFinalOutputs(c);
      return (performance.now() - tw) / 1000;
    } catch (e) {
      if (!OUT_OF_SPACE.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
      options.logger.error(
        'final outputs could not be written; the trained state stays in memory and they are tried again',
        {
          dir: c.outputDir,
          retryInSeconds: pause / 1000,
          error: errorMessage(e),
        },
      );
      options.onFailure?.({ seconds: (performance.now() - tw) / 1000, error: errorMessage(e) });
      await sleep(pause, undefined, options.signal ? { signal: options.signal } : {}).catch(() => undefined);
      if (options.signal?.aborted) {
        throw options.signal.reason instanceof Error ? options.signal.reason : new Error('training cancelled');
      }
      pause = Math.min(2 * pause, FINAL_OUTPUTS_RETRY_MAX_MS);
    }
  }
}
