/**
 * How a rank runs each kind of job: the worker's half of the job-kind table (the other half, the
 * schema, checks, steps and description, is common/job-kinds.ts). worker/run-worker.ts looks the
 * kind up here and never tests it; a new kind is one more row.
 *
 * | kind | run |
 * |---|---|
 * | `TrainJob` | the trainer (worker/train/train-job.ts); with `spec.stages`, its stages in order (worker/train/stages.ts) |
 * | `EvalJob` | MGSM/MSVAMP scoring by greedy generation (worker/eval/run-eval.ts) |
 * | `LayerAnalysis` | the language-specific layers (worker/methods/layer-analysis.ts) |
 * | `PruneJob` | Wanda pruning calibrated on translation, layer by layer (worker/prune/run-prune.ts) |
 *
 * The collective: every kind's calls are numbered from the context's `calls`, in the order the
 * ranks make them. Sums of counts (analysis, evaluation, agreement) go through `ctx.reduce`, which
 * always asks for float32 (`exact`), whatever a TrainJob's `collective.compression` says for gradients.
 */
import type { AnyJobSpec, JobKind, JobSpecOf } from '../common/job-kinds.js';
import { isStaged } from '../common/stages.js';
import { runEvalJob } from './eval/run-eval.js';
import type { KindContext, KindResult } from './kind-context.js';
import { runLayerAnalysis } from './methods/layer-analysis.js';
import { runPruneJob } from './prune/run-prune.js';
import { runStages } from './train/stages.js';
import { runSingleStage } from './train/train-job.js';

export type { KindContext, KindResult } from './kind-context.js';

/** One row: runs a job of the kind on this rank. */
export interface WorkerJobKind<S extends AnyJobSpec> {
  readonly run: (spec: S, ctx: KindContext) => Promise<KindResult>;
}

function base(ctx: KindContext): Pick<KindContext, 'rank' | 'worldSize' | 'reduce' | 'signal' | 'logger'> {
  return { rank: ctx.rank, worldSize: ctx.worldSize, reduce: ctx.reduce, signal: ctx.signal, logger: ctx.logger };
}

export const WORKER_JOB_KINDS: { readonly [K in JobKind]: WorkerJobKind<JobSpecOf<K>> } = {
  TrainJob: {
    run: (spec, ctx) => (isStaged(spec) ? runStages(spec, ctx) : runSingleStage(spec, ctx)),
  },
  EvalJob: {
    run: async (spec, ctx) => {
      const report = await runEvalJob({
        ...base(ctx),
        spec,
        ...(ctx.storageRoots ? { storageRoots: ctx.storageRoots } : {}),
        onProgress: (done, total) => ctx.rank === 0 && ctx.progress(done, total),
      });
      ctx.onEvalReport?.(report);
      const steps = report.benchmarks.reduce((n, b) => n + b.languages.reduce((m, l) => m + l.total, 0), 0);
      return { steps, outputDir: spec.spec.output.dir, evalJson: JSON.stringify(report) };
    },
  },
  LayerAnalysis: {
    run: async (spec, ctx) => {
      const s = spec.spec;
      const analysis = await runLayerAnalysis({
        ...base(ctx),
        modelPath: s.model.path,
        spec: s.analysis,
        outputDir: s.output.dir,
        // Rank 0's share scaled to the whole; the total is the record's (0 keeps it).
        onProgress: (done) => ctx.rank === 0 && ctx.progress(done * ctx.worldSize, 0),
      });
      const prompts = Object.values(analysis.promptsPerLanguage).reduce((a, b) => a + b, 0);
      return { steps: prompts, outputDir: s.output.dir, chosenLayers: [...analysis.chosenLayers] };
    },
  },
  PruneJob: {
    run: async (spec, ctx) => {
      const report = await runPruneJob({
        ...base(ctx),
        spec,
        // A step is a layer: calibrated, and pruned when selected.
        onLayer: (done, total) => ctx.rank === 0 && ctx.progress(done, total),
        ...(ctx.onEvalReport ? { onEvalReport: ctx.onEvalReport } : {}),
      });
      return { steps: report.layers.length, outputDir: spec.spec.output.dir };
    },
  },
};

/** Runs `spec` on this rank with its kind's row. */
export function runJobKind(spec: AnyJobSpec, ctx: KindContext): Promise<KindResult> {
  return (WORKER_JOB_KINDS[spec.kind] as WorkerJobKind<AnyJobSpec>).run(spec, ctx);
}
