/** The trainer tests' fixture: a directory with a tiny model and word problems, and SLAM job specs on it. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';

/**
 * A new temporary directory holding `model/` (the tiny preset, initialised from `modelSeed`) and
 * `data.jsonl` (`makeWordProblems(perLanguage, dataSeed)`), with the wasm backend up.
 */
export async function tinyTrainDir(
  prefix: string,
  modelSeed: number,
  perLanguage: number,
  dataSeed: number,
): Promise<string> {
  await initBackend('wasm');
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: modelSeed, write: () => {} });
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(perLanguage, dataSeed)));
  return dir;
}

export interface TinySlamSpec {
  readonly name: string;
  /** output.dir */
  readonly out: string;
  readonly steps: number;
  /** @default 1 */
  readonly workers?: number;
  /** @default [1, 3] */
  readonly layers?: readonly number[];
  /** @default 2 */
  readonly microBatchSize?: number;
  /** @default '{ name: adamw, lr: 1.0e-2 }' */
  readonly optimizer?: string;
  /** More `training:` lines, e.g. `['gradClip: 1.0']`. */
  readonly training?: readonly string[];
  /** The `checkpoint:` value, when the spec has one. */
  readonly checkpoint?: string;
}

/** A TrainJob on `tinyTrainDir(…)`'s model and data: SLAM, global batches of 6, maxSeqLen 64. */
export function tinySlamSpec(dir: string, s: TinySlamSpec): JobSpec {
  return parseJobSpec(
    `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${s.name} }
spec:
  model: { path: model }
  method: { name: slam, layers: [${(s.layers ?? [1, 3]).join(', ')}] }
  data:
    train: [{ path: data.jsonl, format: alpaca }]
    maxSeqLen: 64
  training:
    maxSteps: ${s.steps}
    globalBatchSize: 6
    microBatchSize: ${s.microBatchSize ?? 2}
    optimizer: ${s.optimizer ?? '{ name: adamw, lr: 1.0e-2 }'}
${(s.training ?? []).map((l) => `    ${l}\n`).join('')}  workers: { count: ${s.workers ?? 1} }
${s.checkpoint !== undefined ? `  checkpoint: ${s.checkpoint}\n` : ''}  output: { dir: ${s.out} }
`,
    { baseDir: dir },
  );
}
