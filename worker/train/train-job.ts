/**
 * A single-stage TrainJob on this rank: its preparation (`method.layers: auto` runs the layer
 * analysis first; `spec.eval` becomes the trainer's evaluation hook), then the trainer. A job of
 * several stages runs each stage through `runSingleStage` (worker/train/stages.ts).
 *
 * The collective: the analysis and the evaluation use the job's all-reduce with their own call
 * numbers, before the trainer's (the trainer's calls are shifted past them). Their sums are of
 * counts, which must be exact: `ctx.reduce` always asks the collective for float32, whatever
 * `collective.compression` says for gradients.
 */
import { join } from 'node:path';
import type { JobSpec } from '../../common/jobspec.js';
import { createEvalHook, type EvalHook } from '../eval/run-eval.js';
import type { JobStepPosition, KindContext, KindResult, StagePosition } from '../kind-context.js';
import { runLayerAnalysis } from '../methods/layer-analysis.js';
import { train } from './trainer.js';

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
    const common = {
      modelPath: s.model.path,
      spec: s.method.analysis,
      outputDir,
      signal: ctx.signal,
      logger: ctx.logger,
    };
    chosenLayers = [
      ...(await runLayerAnalysis({ ...common, rank: ctx.rank, worldSize: ctx.worldSize, reduce: ctx.reduce }))
        .chosenLayers,
    ];
    ctx.logger.info('layers chosen by the analysis', { chosenLayers });
    if (ctx.rank === 0) ctx.progress(0, 0, { chosenLayers });
    trainSpec = { ...spec, spec: { ...s, method: { ...s.method, layers: chosenLayers } } };
  }
  const evaluate = s.eval
    ? createEvalHook({
        spec: s.eval,
        outputDir: s.output.dir,
        rank: ctx.rank,
        worldSize: ctx.worldSize,
        signal: ctx.signal,
        logger: ctx.logger,
        onReport: (r) => {
          ctx.onEvalReport?.(r);
          if (ctx.rank === 0) ctx.progress(0, 0, { evalJson: JSON.stringify(r) });
        },
      })
    : undefined;
  return { spec: trainSpec, ...(chosenLayers ? { chosenLayers } : {}), ...(evaluate ? { evaluate } : {}) };
}

/** Where a stage's steps sit in the job: its first job step and the job's total (a single stage: 0 of its own). */
export interface StagePlacement {
  readonly offset: number;
  readonly totalSteps: number;
  readonly stage: StagePosition;
}

/**
 * Prepares and trains one single-stage spec. The trainer numbers its collective calls from 0;
 * they are shifted to `ctx.calls.next`, which moves past the last one it used, so that a next
 * stage in the same generation goes on with higher numbers.
 */
export async function runSingleStage(spec: JobSpec, ctx: KindContext, placement?: StagePlacement): Promise<KindResult> {
  const prepared = await prepareTrainJob(spec, ctx);
  const offset = ctx.calls.next;
  let used = 0;
  const seen = (step: number): number => {
    used = Math.max(used, step + 1);
    return offset + step;
  };
  try {
    const result = await train({
      spec: prepared.spec,
      rank: ctx.rank,
      worldSize: ctx.worldSize,
      signal: ctx.signal,
      logger: ctx.logger,
      holder: ctx.holder,
      resume: ctx.resume,
      allReduce: (step, data, opts) => ctx.collective.allReduce(seen(step), data, opts),
      beginAllReduce: (step, length, opts) => ctx.collective.begin(seen(step), length, opts),
      ...(prepared.evaluate ? { evaluate: prepared.evaluate } : {}),
      onCheckpoint: ctx.onCheckpoint,
      onStep: (r) => {
        const position: JobStepPosition = placement
          ? { step: placement.offset + r.step, totalSteps: placement.totalSteps, stage: placement.stage }
          : { step: r.step, totalSteps: r.totalSteps };
        ctx.onStep(r, position);
      },
    });
    return {
      steps: result.steps,
      outputDir: result.outputDir,
      firstLoss: result.firstLoss,
      finalLoss: result.finalLoss,
      ...(prepared.chosenLayers ? { chosenLayers: prepared.chosenLayers } : {}),
    };
  } finally {
    ctx.calls.next = offset + used;
  }
}
