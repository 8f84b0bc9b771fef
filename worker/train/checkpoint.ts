/**
 * Checkpoints: `output.dir/checkpoints/step-NNNNNNNN/` holds
 *
 *   trainable.safetensors   the trainable tensors (float32 master copies), HF names
 *   optimizer.safetensors   the optimizer's state arrays (`exp_avg.<i>`, `exp_avg_sq.<i>`)
 *   state.json              step, optimizer step, data cursor (the next global step and its epoch)
 *   manifest.json           sha256 and size of each file
 *
 * The data order is a pure function of the spec and the step (common/data-plan.ts) and the
 * schedule a function of the step, so the step is the whole cursor: nothing else needs saving.
 * A checkpoint is written under a temporary name and renamed; a corrupt one is refused by its sums
 * and the one before it is used. Only the newest `keep` are kept.
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/logging.js';
import { readSafetensors, writeSafetensors, type NamedTensor } from '../model/safetensors.js';
import { verifyManifest, writeDirAtomically, writeManifest } from './atomic-dir.js';

export const CHECKPOINTS_DIR = 'checkpoints';

export function checkpointName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

/** What a checkpoint restores: everything a rank needs to go on from `step`. */
export interface CheckpointState {
  /** Optimizer steps completed = the next global step to run. */
  readonly step: number;
  readonly optimizerStep: number;
  /** Trainable tensors, in the trainer's order. */
  readonly params: readonly Float32Array[];
  /** Optimizer state arrays, in the optimizer's order. */
  readonly buffers: readonly Float32Array[];
}

/** Names and shapes the trainer expects, to check a checkpoint against. */
export interface CheckpointLayout {
  readonly names: readonly string[];
  readonly shapes: readonly (readonly number[])[];
  readonly bufferNames: readonly string[];
}

export async function writeCheckpoint(
  outputDir: string,
  keep: number,
  layout: CheckpointLayout,
  state: CheckpointState,
  epoch: number,
): Promise<string> {
  const root = join(outputDir, CHECKPOINTS_DIR);
  const dir = join(root, checkpointName(state.step));
  await writeDirAtomically(dir, async (tmp) => {
    const params: NamedTensor[] = layout.names.map((name, i) => ({
      name,
      shape: [...layout.shapes[i]!],
      data: state.params[i]!,
    }));
    await writeSafetensors(join(tmp, 'trainable.safetensors'), params, { dtype: 'F32', metadata: { format: 'pt' } });
    const buffers = layout.bufferNames.map((name, i) => ({
      name,
      shape: [state.buffers[i]!.length],
      data: state.buffers[i]!,
    }));
    await writeSafetensors(join(tmp, 'optimizer.safetensors'), buffers, { dtype: 'F32' });
    await writeFile(
      join(tmp, 'state.json'),
      JSON.stringify(
        {
          step: state.step,
          optimizerStep: state.optimizerStep,
          cursor: { nextStep: state.step, epoch },
        },
        null,
        2,
      ) + '\n',
    );
    await writeManifest(tmp, { step: state.step });
  }).catch((e: unknown) => {
    throw new Error(`checkpoint ${dir}: ${errorMessage(e)}`, { cause: e });
  });
  const all = await listCheckpoints(outputDir);
  for (const old of all.slice(keep)) await rm(old.dir, { recursive: true, force: true });
  return dir;
}

/** Checkpoint directories, newest first (by name; unverified). */
export async function listCheckpoints(outputDir: string): Promise<{ step: number; dir: string }[]> {
  const root = join(outputDir, CHECKPOINTS_DIR);
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^step-\d{8}$/.test(n))
    .map((n) => ({ step: Number(n.slice(5)), dir: join(root, n) }))
    .sort((a, b) => b.step - a.step);
}

/** Read and verify one checkpoint against the trainer's layout; throws naming what is wrong. */
export async function readCheckpoint(dir: string, layout: CheckpointLayout): Promise<CheckpointState> {
  await verifyManifest(dir);
  const meta = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as {
    step?: unknown;
    optimizerStep?: unknown;
  };
  if (!Number.isInteger(meta.step) || !Number.isInteger(meta.optimizerStep))
    throw new Error(`${join(dir, 'state.json')}: no integer step`);
  const params = new Map((await readSafetensors(join(dir, 'trainable.safetensors'))).tensors.map((t) => [t.name, t]));
  const buffers = new Map((await readSafetensors(join(dir, 'optimizer.safetensors'))).tensors.map((t) => [t.name, t]));
  const out: Float32Array[] = layout.names.map((name, i) => {
    const t = params.get(name);
    if (!t)
      throw new Error(
        `${join(dir, 'trainable.safetensors')}: no tensor ${name} (the checkpoint was made by another method or model)`,
      );
    if (t.shape.join('x') !== layout.shapes[i]!.join('x')) {
      throw new Error(
        `${join(dir, 'trainable.safetensors')}: ${name} has shape [${t.shape}], the model wants [${layout.shapes[i]}]`,
      );
    }
    return t.data;
  });
  if (params.size !== layout.names.length)
    throw new Error(
      `${join(dir, 'trainable.safetensors')}: holds ${params.size} tensors, the method trains ${layout.names.length}`,
    );
  const bufs = layout.bufferNames.map((name) => {
    const t = buffers.get(name);
    if (!t) throw new Error(`${join(dir, 'optimizer.safetensors')}: no ${name} (another optimizer?)`);
    return t.data;
  });
  return { step: meta.step as number, optimizerStep: meta.optimizerStep as number, params: out, buffers: bufs };
}

/** The newest checkpoint that verifies; corrupt ones are reported and skipped. */
export async function latestValidCheckpoint(
  outputDir: string,
  layout: CheckpointLayout,
  log: Logger,
): Promise<CheckpointState | undefined> {
  for (const { dir } of await listCheckpoints(outputDir)) {
    try {
      return await readCheckpoint(dir, layout);
    } catch (e) {
      log.warn('checkpoint refused; trying the one before', { dir, error: errorMessage(e) });
    }
  }
  return undefined;
}
