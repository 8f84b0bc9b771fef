/**
 * What a worker does for each kind of job besides training (common/job-kinds.ts): an EvalJob's or
 * a LayerAnalysis's rank, and a TrainJob's preparation (`method.layers: auto` runs the layer
 * analysis first; `spec.eval` becomes the trainer's evaluation hook).
 *
 * The collective: these use the job's all-reduce with their own call numbers, before the trainer's
 * (the trainer's calls are shifted past them: `seqOffset`). Their sums are of counts, which must be
 * exact: the worker's `reduce` for them always asks the collective for float32 (`exact`), whatever
 * a TrainJob's `collective.compression` says for gradients.
 */
import type { AnyJobSpec, EvalJobSpec, LayerAnalysisJobSpec } from '../common/job-kinds.js';
import type { JobSpec } from '../common/jobspec.js';
import type { Logger } from '../common/logging.js';
import { join } from 'node:path';
import type { EvalReport } from './eval/report.js';
import { createEvalHook, runEvalJob, type EvalHook } from './eval/run-eval.js';
import { runLayerAnalysis } from './methods/layer-analysis.js';

/** The collective of a job: a TrainJob's spec says; the other kinds use float32 and 300 s. */
export function collectiveOf(spec: AnyJobSpec): { compression: 'none' | 'fp16' | 'bf16'; timeoutSeconds: number } {
  return spec.kind === 'TrainJob' ? spec.spec.collective : { compression: 'none', timeoutSeconds: 300 };
}

type Reduce = (data: Float32Array) => Promise<Float32Array>;


export interface KindContext {
  readonly rank: number;
  readonly worldSize: number;
  /** The next collective call of this generation (numbered by the caller). */
  readonly reduce: Reduce;
  readonly signal: AbortSignal;
  readonly logger: Logger;
  /** Rank 0's progress: done of total (problems or prompts), and what the job record should show. */
  readonly progress: (done: number, total: number, extra?: { chosenLayers?: number[]; evalJson?: string }) => void;
  readonly onEvalReport?: (report: EvalReport) => void;
}

export interface KindResult {
  readonly steps: number;
  readonly outputDir: string;
  readonly chosenLayers?: number[];
  readonly evalJson?: string;
}

/** Runs an EvalJob or a LayerAnalysis on this rank. */
export async function runOtherKind(spec: EvalJobSpec | LayerAnalysisJobSpec, ctx: KindContext): Promise<KindResult> {
  const base = { rank: ctx.rank, worldSize: ctx.worldSize, reduce: ctx.reduce, signal: ctx.signal, logger: ctx.logger };
  if (spec.kind === 'EvalJob') {
    const report = await runEvalJob({ ...base, spec, onProgress: (done, total) => ctx.rank === 0 && ctx.progress(done, total) });
    ctx.onEvalReport?.(report);
    const steps = report.benchmarks.reduce((n, b) => n + b.languages.reduce((m, l) => m + l.total, 0), 0);
    return { steps, outputDir: spec.spec.output.dir, evalJson: JSON.stringify(report) };
  }
  const s = spec.spec;
  const analysis = await runLayerAnalysis({
    ...base, modelPath: s.model.path, spec: s.analysis, outputDir: s.output.dir,
    // Rank 0's share scaled to the whole; the total is the record's (0 keeps it).
    onProgress: (done) => ctx.rank === 0 && ctx.progress(done * ctx.worldSize, 0),
  });
  const prompts = Object.values(analysis.promptsPerLanguage).reduce((a, b) => a + b, 0);
  return { steps: prompts, outputDir: s.output.dir, chosenLayers: [...analysis.chosenLayers] };
}

export interface PreparedTrainJob {
  /** The spec to train: `method.layers` filled in when it was `auto`. */
  readonly spec: JobSpec;
  readonly chosenLayers?: number[];
  readonly evaluate?: EvalHook;
}

/**
 * Before training: `method.layers: auto` runs the layer analysis (spread over the ranks, or on
 * rank 0 under compression) and every rank trains the same chosen layers; `spec.eval` makes the hook.
 * The analysis writes `output.dir/analysis/analysis.{json,png}`.
 */
export async function prepareTrainJob(spec: JobSpec, ctx: KindContext): Promise<PreparedTrainJob> {
  const s = spec.spec;
  let trainSpec = spec;
  let chosenLayers: number[] | undefined;
  if (s.method.layers === 'auto' && s.method.analysis) {
    const outputDir = join(s.output.dir, 'analysis');
    const common = { modelPath: s.model.path, spec: s.method.analysis, outputDir, signal: ctx.signal, logger: ctx.logger };
    chosenLayers = [...(await runLayerAnalysis({ ...common, rank: ctx.rank, worldSize: ctx.worldSize, reduce: ctx.reduce })).chosenLayers];
    ctx.logger.info('layers chosen by the analysis', { chosenLayers });
    if (ctx.rank === 0) ctx.progress(0, 0, { chosenLayers });
    trainSpec = { ...spec, spec: { ...s, method: { ...s.method, layers: chosenLayers } } };
  }
  const evaluate = s.eval
    ? createEvalHook({
      spec: s.eval, outputDir: s.output.dir, rank: ctx.rank, worldSize: ctx.worldSize, signal: ctx.signal, logger: ctx.logger,
      onReport: (r) => {
        ctx.onEvalReport?.(r);
        if (ctx.rank === 0) ctx.progress(0, 0, { evalJson: JSON.stringify(r) });
      },
    })
    : undefined;
  return { spec: trainSpec, ...(chosenLayers ? { chosenLayers } : {}), ...(evaluate ? { evaluate } : {}) };
}
