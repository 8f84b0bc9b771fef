/**
 * What rank 0 writes: checkpoints and the final model, in DESIGN.md's layout.
 *
 *   output.dir/checkpoints/step-NNNNNNNN/  trainable.safetensors, optimizer.safetensors,
 *                                          state.json (step, data cursor), manifest.json (sha256)
 *   output.dir/final/                      model.safetensors (whole model, HF names, input dtype),
 *                                          trainable.safetensors, config.json, tokenizer files
 *
 * Both are written under a temporary name and renamed, so a reader never sees half of one.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaModel } from '../model/llama.js';
import { writeSafetensors, type FloatDtype, type NamedTensor } from '../model/safetensors.js';

/** Files copied from the input model directory to `final/` when present. */
export const MODEL_SIDE_FILES = [
  'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model',
] as const;

export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Write every file of `dir` into `manifest.json` with its sha256 and size. */
async function writeManifest(dir: string, extra: Record<string, unknown>): Promise<void> {
  const files: Record<string, { sha256: string; bytes: number }> = {};
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name);
    files[name] = { sha256: await sha256(path), bytes: (await stat(path)).size };
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...extra, files }, null, 2) + '\n');
}

/** Build `dir` via `fill(tmp)` in a sibling temporary directory, then rename it into place. */
async function writeDirAtomically(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await fill(tmp);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

export interface CheckpointContents {
  readonly outputDir: string;
  /** Optimizer steps completed. */
  readonly step: number;
  readonly keep: number;
  readonly trainable: readonly NamedTensor[];
  readonly optimizer: { step: number; tensors: Map<string, Float32Array> };
  /** Where the data plan goes on: the next global step and its epoch. */
  readonly cursor: { nextStep: number; epoch: number };
}

export async function writeCheckpoint(c: CheckpointContents): Promise<string> {
  const root = join(c.outputDir, 'checkpoints');
  const dir = join(root, checkpointName(c.step));
  await writeDirAtomically(dir, async (tmp) => {
    await writeSafetensors(join(tmp, 'trainable.safetensors'), c.trainable, { dtype: 'F32', metadata: { format: 'pt' } });
    const opt = [...c.optimizer.tensors].map(([name, data]) => ({ name, shape: [data.length], data }));
    await writeSafetensors(join(tmp, 'optimizer.safetensors'), opt, { dtype: 'F32' });
    await writeFile(join(tmp, 'state.json'), JSON.stringify({ step: c.step, optimizerStep: c.optimizer.step, cursor: c.cursor }, null, 2) + '\n');
    await writeManifest(tmp, { step: c.step });
  });
  // Keep the newest `keep` checkpoints.
  const all = (await readdir(root)).filter((n) => /^step-\d{8}$/.test(n)).sort();
  for (const old of all.slice(0, Math.max(0, all.length - c.keep))) await rm(join(root, old), { recursive: true, force: true });
  return dir;
}

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
