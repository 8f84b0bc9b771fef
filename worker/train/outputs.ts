/**
 * What rank 0 writes at the end, in DESIGN.md's layout (checkpoints are in checkpoint.ts):
 *
 *   output.dir/final/   model.safetensors, or shards + model.safetensors.index.json like the
 *                       input's (whole model, HF names, each tensor in its input dtype),
 *                       trainable.safetensors, config.json, tokenizer files
 *
 * Written under a temporary name and renamed, so a reader never sees half of it.
 */
import { copyFile, lstat, mkdir, writeFile } from 'node:fs/promises';
import { UserError } from '../../common/errors.js';
import { join } from 'node:path';
import type { LlamaModel } from '../model/llama.js';
import { exportModel } from '../model/export.js';
import { writeSafetensors, type NamedTensor } from '../model/safetensors.js';
import { writeDirAtomically } from './atomic-dir.js';

/** Files copied from the input model directory to `final/` when present. */
export const MODEL_SIDE_FILES = [
  'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model',
] as const;

export interface FinalContents {
  readonly modelDir: string;
  readonly outputDir: string;
  readonly model: LlamaModel;
  readonly trainable: readonly NamedTensor[];
  /** Each input tensor's dtype, so the export keeps it (a bf16 model comes back bf16). */
  readonly inputDtypes: ReadonlyMap<string, string>;
}

/** The marker of a `final/` polytune wrote: only such a directory is ever replaced. */
export const FINAL_MARKER = '.polytune';

/** Throws unless `dir` is missing or holds polytune's marker (a user's own `final/` is never replaced). */
export async function assertFinalReplaceable(dir: string): Promise<void> {
  const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (st === undefined) return;
  const marked = st.isDirectory() && (await lstat(join(dir, FINAL_MARKER)).then(() => true, () => false));
  if (!marked) {
    const why = `exists and was not written by polytune (no ${FINAL_MARKER} marker): it is left as it is; move it away`;
    throw new UserError(`${dir}: ${why}`);
  }
}

export async function writeFinalOutputs(c: FinalContents): Promise<string> {
  const dir = join(c.outputDir, 'final');
  await mkdir(c.outputDir, { recursive: true });
  await assertFinalReplaceable(dir);
  await writeDirAtomically(dir, async (tmp) => {
    await writeFile(join(tmp, FINAL_MARKER), 'written by polytune; a final/ without this file is never replaced\n');
    // Tensor by tensor, each in its input dtype, sharded like the input (worker/model/export.ts);
    // trained tensors from the trainer's float32 master copies.
    await exportModel(tmp, c.model, {
      inputDir: c.modelDir, dtypes: c.inputDtypes, values: new Map(c.trainable.map((t) => [t.name, t.data])),
    });
    await writeSafetensors(join(tmp, 'trainable.safetensors'), c.trainable, { dtype: 'F32', metadata: { format: 'pt' } });
    for (const name of MODEL_SIDE_FILES) {
      await copyFile(join(c.modelDir, name), join(tmp, name)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
  });
  return dir;
}
