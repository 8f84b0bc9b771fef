/**
 * What rank 0 writes at the end, in DESIGN.md's layout (checkpoints are in checkpoint.ts):
 *
 *   output.dir/final/   model.safetensors (whole model, HF names, input dtype),
 *                       trainable.safetensors, config.json, tokenizer files
 *
 * Written under a temporary name and renamed, so a reader never sees half of it.
 */
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaModel } from '../model/llama.js';
import { writeSafetensors, type FloatDtype, type NamedTensor } from '../model/safetensors.js';
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

/** The dtype to export in: the input's, when every tensor had the same float dtype. */
function exportDtype(inputDtypes: ReadonlyMap<string, string>): FloatDtype {
  const kinds = new Set(inputDtypes.values());
  const only = kinds.size === 1 ? [...kinds][0] : undefined;
  return only === 'BF16' || only === 'F16' ? only : 'F32';
}

export async function writeFinalOutputs(c: FinalContents): Promise<string> {
  const dir = join(c.outputDir, 'final');
  await mkdir(c.outputDir, { recursive: true });
  await writeDirAtomically(dir, async (tmp) => {
    await writeSafetensors(join(tmp, 'model.safetensors'), c.model.exportTensors(), {
      dtype: exportDtype(c.inputDtypes), metadata: { format: 'pt' },
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
