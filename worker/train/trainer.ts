/**
 * The training loop of one rank. Per optimizer step:
 *
 *   1. take this rank's share of the step's global batch (common/data-plan.ts), in micro-batches;
 *   2. compute the gradient of the summed token NLL of each micro-batch, accumulated on the device;
 *   3. all-reduce [nll sum, supervised tokens, tokens, ...gradients] over NATS, summed in rank order;
 *   4. divide by the global number of supervised tokens (DESIGN.md's loss), clip, and apply the
 *      optimizer to the float32 master copies; every rank does the same arithmetic on the same
 *      numbers, so every rank ends the step with bit-identical parameters.
 *
 * computeStepGradients → all-reduce → applyReducedGradients (step.ts) is the seam; every device step
 * runs in `tf.tidy`.
 *
 * A rank keeps its state (`TrainingState`: step, master copies, optimizer arrays) in a holder that
 * outlives one generation of the job. When a world is re-formed (a lost worker, a failed collective,
 * a restarted coordinator) or a job is resumed, the ranks first agree on the newest state any of
 * them holds, in memory or in a checkpoint, and all take it (`agreeOnState`); then they go on from
 * its step. Since the data order depends only on the step, the job ends as an uninterrupted one
 * would, whatever the world size.
 *
 * What trains, the forward hooks, the loss, the data encoding and extra final outputs are the
 * method's (worker/methods/, a `TrainingMethod`); a method's own modules train, are all-reduced and
 * checkpointed with the model's trainable tensors, after them.
 *
 * Beside this file: step.ts (the gradients of a step; applying the reduced gradients),
 * agree-on-state.ts, training-state.ts, sample-cache.ts, outputs.ts (final outputs and their retries),
 * checkpoint.ts.
 *
 * A step whose loss or gradient is not finite is skipped on every rank (they all see the same
 * reduced numbers), counted and reported; more than `maxNonFiniteSteps` in a row fail the job.
 */
import * as tf from '@tensorflow/tfjs-core';
import { epochOrder, globalBatch, planSteps, rankShare, stepPosition, type StepPlan } from '../../common/data-plan.js';
import { errorMessage, UserError } from '../../common/errors.js';
import type { JobSpec } from '../../common/jobspec.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { loadTrainingSet, UNKNOWN_LANGUAGE } from '../../common/data-mixture.js';
import { readLlamaConfig } from '../../common/model-config.js';
import { encodeRecord } from '../data/encode.js';
import {
  startingModules,
  trainingMethodFor,
  type MethodResources,
  type MethodRun,
  type TrainingMethod,
  type TrainingSamples,
} from '../methods/index.js';
import type { PromptPrefixer } from '../model/generate.js';
import type { ForwardHooks, PromptHooks } from '../model/hooks.js';
import { LlamaModel } from '../model/llama.js';
import { listModelTensors, type NamedTensor } from '../model/safetensors.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { agreeOnState } from './agree-on-state.js';
import { writeCheckpoint, type CheckpointLayout } from './checkpoint.js';
import { createOptimizer } from './optimizers.js';
import { FINAL_OUTPUTS_RETRY_MAX_MS, FINAL_OUTPUTS_RETRY_MS, writeFinalOutputsRetrying } from './outputs.js';
import { SampleCache } from './sample-cache.js';
import { learningRate } from './schedule.js';
import { checkReducedHead, headLength } from './reduced-head.js';
import { applyReducedGradients, computeStepGradients, stepHead, type RowLoss } from './step.js';
import type { StateHolder, TrainingState } from './training-state.js';

// What the trainer's callers import from here.
export { releaseHolder } from './training-state.js';
export type { StateHolder, TrainingState } from './training-state.js';
export { FINAL_OUTPUTS_RETRY_MAX_MS, FINAL_OUTPUTS_RETRY_MS };

/**
 * Sums `data` over all ranks in rank order; identical on every rank. `exact` keeps the whole call in
 * float32 even when the spec compresses gradients on the wire (for state, never for gradients).
 */
export type AllReduceFn = (step: number, data: Float32Array, options?: { exact?: boolean }) => Promise<Float32Array>;

/**
 * Starts the same sum over `length` elements given in pieces (`append`, in order), so that the
 * first chunks are reduced while the rest is still being copied off the device; the result goes
 * into `output` when given (the previous step's result, done with) instead of a new array.
 */
export type BeginAllReduceFn = (
  step: number,
  length: number,
  options?: { output?: Float32Array },
) => {
  append(data: Float32Array): void;
  readonly result: Promise<Float32Array>;
};

export interface StepReport {
  /** Optimizer steps completed (1-based). */
  readonly step: number;
  readonly totalSteps: number;
  readonly epoch: number;
  /** Mean token NLL over the global batch (DESIGN.md's loss). */
  readonly loss: number;
  readonly lr: number;
  readonly gradNorm: number;
  /** Non-padding tokens of the global batch per second of this step. */
  readonly tokensPerSecond: number;
  readonly supervisedTokens: number;
  readonly stepSeconds: number;
  /** The step split in three: forward/backward and copying off the device, the all-reduce, the update. */
  readonly computeSeconds: number;
  readonly allReduceSeconds: number;
  readonly optimizerSeconds: number;
  /** Bytes of the all-reduced buffer (float32). */
  readonly allReduceBytes: number;
  /** True when the step was skipped for a non-finite loss or gradient. */
  readonly skipped: boolean;
  /** Skipped steps in this generation so far. */
  readonly nonFiniteSteps: number;
  /** Mean token NLL per language of the global batch (languages with supervised tokens in it). */
  readonly lossByLanguage: Readonly<Record<string, number>>;
  /** This rank's numbers of the method for the step (LinguaLIFT: the encoder's forward cost). */
  readonly methodStats?: Readonly<Record<string, number>>;
  /**
   * The step's choices per language, a count per layer, summed over the ranks, for a method whose
   * samples choose a layer (CC-Tuning's Decision Maker); absent otherwise.
   */
  readonly choicesByLanguage?: Readonly<Record<string, readonly number[]>>;
}

/** Too many non-finite steps in a row: the job fails (not retryable). */
export class NonFiniteLossError extends UserError {
  readonly step: number;
  constructor(step: number, count: number) {
    super(
      `step ${step}: ${count} steps in a row had a non-finite loss ` +
        `or gradient (spec.training.maxNonFiniteSteps); the job stops`,
    );
    this.name = 'NonFiniteLossError';
    this.step = step;
  }
}

export interface TrainResult {
  readonly steps: number;
  readonly firstLoss: number;
  readonly finalLoss: number;
  readonly outputDir: string;
  readonly seconds: number;
  readonly truncatedSamples: number;
}

/** Module variables get unique names (tfjs refuses two variables of one name). */
let moduleSeq = 0;

export interface TrainerOptions {
  readonly spec: JobSpec;
  readonly rank: number;
  readonly worldSize: number;
  readonly allReduce: AllReduceFn;
  /** Each step's gradients, streamed into the all-reduce (the same sums as `allReduce`). */
  readonly beginAllReduce: BeginAllReduceFn;
  readonly onStep?: (report: StepReport) => void;
  /**
   * Rank 0 wrote the checkpoint of `step` (or, with `final`, the final outputs) in `seconds`, or
   * failed to (`error`) (for metrics).
   */
  readonly onCheckpoint?: (info: {
    readonly step: number;
    readonly seconds: number;
    readonly error?: string;
    readonly final?: true;
  }) => void;
  /**
   * The first pause before rank 0 tries the final outputs again after running out of space
   * (ENOSPC, EDQUOT); it doubles up to FINAL_OUTPUTS_RETRY_MAX_MS. @default FINAL_OUTPUTS_RETRY_MS (2 s)
   */
  readonly finalOutputsRetryMs?: number;
  /**
   * The method to run. @default the registry's for `spec.method.name` (worker/methods/registry.ts); tests give their
   * own
   */
  readonly method?: TrainingMethod;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
  /** This rank's state of the job from earlier generations; `train` keeps it current. */
  readonly holder?: StateHolder;
  /**
   * Agree on the newest state among the ranks (memory or checkpoint) before training: true for a
   * re-formed world (generation > 1) and a resumed job; false starts from the model at step 0.
   */
  readonly resume?: boolean;
  /**
   * Evaluation hook (worker/eval/run-eval.ts `createEvalHook`), called on every rank after each
   * step with the live model; it decides whether to evaluate and may use the collective.
   */
  readonly evaluate?: (ctx: {
    step: number;
    totalSteps: number;
    model: LlamaModel;
    tokenizer: ModelTokenizer;
    /** The method's forward hooks, when it has some: generation uses them as training does. */
    hooks?: ForwardHooks;
    /** The method's inference-time transform from the live model (`eval.ccTransform`), when it has one. */
    transformHooks?: () => PromptHooks;
    /** The method's prefix of each prompt, when it has one (LinguaLIFT). */
    prefixer?: PromptPrefixer;
    reduce: (data: Float32Array) => Promise<Float32Array>;
  }) => Promise<void>;
}

export async function train(options: TrainerOptions): Promise<TrainResult> {
  const { spec, rank, worldSize, signal } = options;
  const log = options.logger ?? silentLogger;
  const s = spec.spec;
  const started = performance.now();
  // Each collective call of this generation gets the next sequence number, the same on every rank.
  let seq = 0;
  const reduce = (data: Float32Array, opts?: { exact?: boolean }): Promise<Float32Array> =>
    options.allReduce(seq++, data, opts);

  const method = options.method ?? trainingMethodFor(s.method);
  const config = await readLlamaConfig(s.model.path);
  const tensors = await listModelTensors(s.model.path);
  const held = options.resume ? options.holder?.model : undefined;
  if (options.holder?.model && options.holder.model !== held) {
    options.holder.model.dispose();
    options.holder.model = undefined;
  }
  const model =
    held ??
    (await LlamaModel.load(s.model.path, {
      trainable: new Set(method.trainableTensors(s.method, config, [...tensors.keys()])),
      maxSeqLen: s.data.maxSeqLen,
      gradientCheckpointing: s.training.gradientCheckpointing,
    }));
  if (held) log.info('model kept from the previous generation', { path: s.model.path });
  if (options.holder) options.holder.model = model;
  let moduleVars: tf.Variable[] = [];
  let frozenVars: tf.Variable[] = [];
  let resources: MethodResources | undefined;
  try {
    resources = await method.load?.(s.method, { config, modelDir: s.model.path });
    // The method's own modules: variables of this generation, their values from the seed (or the
    // method's source file: a previous stage's final/) or, when resuming, from the state the ranks
    // agree on (the trainable ones are part of it). Frozen modules only come from their file.
    const moduleSpecs = method.modules?.(s.method, config, resources) ?? [];
    const source = method.moduleSource?.(s.method, s.model.path);
    const initial = await startingModules(method.name, moduleSpecs, s.training.seed, new Set(tensors.keys()), source);
    if (source && initial.fromFile) log.info('modules loaded', { file: source.file });
    const variable = (m: NamedTensor, trainable: boolean): tf.Variable =>
      tf.tidy(() =>
        tf.variable(tf.tensor(m.data, m.shape, 'float32'), trainable, `polytune-module/${m.name}/${moduleSeq++}`),
      );
    const isTrainable = (i: number): boolean => moduleSpecs[i]!.trainable !== false;
    const moduleInit = initial.tensors.filter((_, i) => isTrainable(i));
    const frozenInit = initial.tensors.filter((_, i) => !isTrainable(i));
    moduleVars = moduleInit.map((m) => variable(m, true));
    frozenVars = frozenInit.map((m) => variable(m, false));
    const run: MethodRun = {
      method: s.method,
      model,
      modules: new Map([
        ...moduleInit.map((m, i) => [m.name, moduleVars[i]!] as const),
        ...frozenInit.map((m, i) => [m.name, frozenVars[i]!] as const),
      ]),
      seed: s.training.seed,
      ...(resources ? { resources } : {}),
    };
    const hooks = method.hooks?.(run);
    const withHooks = (b: Parameters<RowLoss>[0]) => (hooks ? { ...b, hooks } : b);
    const loss: RowLoss = method.loss
      ? (b) => method.loss!(run, withHooks(b))
      : (b) => model.nllRowSums(b.inputIds, b.labels, hooks ? { hooks } : {});
    if (method.prepare) loss.prepare = (b) => method.prepare!(run, withHooks(b));
    const tokenizer = await ModelTokenizer.load(s.model.path, model.config);
    if (tokenizer.eosId === undefined) throw new UserError(`${s.model.path}: the tokenizer has no EOS token`);
    const withEos = tokenizer as ModelTokenizer & { eosId: number };
    const { records, samples: sampleRecords } = await loadTrainingSet(s.data, s.training.seed);
    const encode = method.encode
      ? (r: (typeof records)[number]) =>
          method.encode!(s.method, r, withEos, s.data.template, s.data.maxSeqLen, resources)
      : (r: (typeof records)[number]) => encodeRecord(r, withEos, s.data.template, s.data.maxSeqLen);
    const samples = new SampleCache(records, encode, config.vocabSize, s.training.seed);
    const trainingSamples: TrainingSamples = { count: records.length, get: (i) => samples.get(i) };
    const padId = tokenizer.padId ?? tokenizer.eosId;
    const prefixer = method.prefixer?.(run, { tokenizer: withEos, maxSeqLen: s.data.maxSeqLen });
    const plan: StepPlan = planSteps(sampleRecords.length, s.training);
    // Languages in a fixed order on every rank: per-language sums travel in the all-reduce.
    const languages = [...new Set(records.map((r) => r.language ?? UNKNOWN_LANGUAGE))].sort();
    const languageIndex = new Map(languages.map((l, i) => [l, i]));

    // What trains: the model's tensors (HF order), then the method's modules.
    const modelTrainable = model.trainableNames;
    const names = [...modelTrainable, ...moduleInit.map((m) => m.name)];
    const vars = [...modelTrainable.map((n) => model.variable(n)), ...moduleVars];
    const master = vars.map((v) => Float32Array.from(v.dataSync() as Float32Array));
    const sizes = master.map((m) => m.length);
    const totalParams = sizes.reduce((a, b) => a + b, 0);
    const state: TrainingState = { step: 0, params: master, optimizer: createOptimizer(s.training.optimizer, sizes) };
    const layout: CheckpointLayout = {
      names,
      shapes: vars.map((v) => v.shape),
      bufferNames: state.optimizer.bufferNames,
    };
    if (options.resume) {
      await agreeOnState(state, options.holder, layout, s.output.dir, rank, worldSize, reduce, log);
      vars.forEach((v, i) => tf.tidy(() => v.assign(tf.tensor(master[i]!, v.shape))));
    }
    if (options.holder) options.holder.state = state;
    const startStep = state.step;
    log.info('training', {
      rank,
      worldSize,
      samples: plan.numSamples,
      steps: plan.totalSteps,
      fromStep: startStep,
      trainableTensors: names.length,
      trainableParams: totalParams,
    });

    let order: Uint32Array | undefined;
    let orderEpoch = -1;
    let firstLoss = NaN;
    let lastLoss = NaN;
    let nonFiniteInARow = 0;
    let nonFiniteSteps = 0;
    const choiceLayers = method.choiceLayers?.(s.method, config) ?? 0;
    const HEAD = headLength(languages.length, choiceLayers);
    /** The last step's all-reduce result, used up by then: the next streamed step writes into it. */
    let lastReduced: Float32Array | undefined;
    const aborted = (): void => {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('training cancelled');
    };

    const evaluate = async (): Promise<void> =>
      options.evaluate?.({
        step: state.step,
        totalSteps: plan.totalSteps,
        model,
        tokenizer,
        ...(hooks ? { hooks } : {}),
        ...(method.transformHooks ? { transformHooks: () => method.transformHooks!(run, trainingSamples) } : {}),
        ...(prefixer ? { prefixer } : {}),
        reduce: (d) => reduce(d, { exact: true }),
      });

    for (let step = startStep; step < plan.totalSteps; step++) {
      aborted();
      const t0 = performance.now();
      const { epoch, stepInEpoch } = stepPosition(plan, step);
      if (epoch !== orderEpoch) {
        order = epochOrder(plan.numSamples, epoch, s.data.shuffle, s.training.seed);
        orderEpoch = epoch;
      }
      const mine = rankShare(globalBatch(plan, order!, stepInEpoch), rank, worldSize);

      // 1-2. Gradients of the summed NLL, accumulated on the device across micro-batches.
      const g = await computeStepGradients({
        mine,
        microBatchSize: s.training.microBatchSize,
        samples,
        epoch,
        sampleRecords,
        padId,
        vars,
        loss,
        languageIndex,
        aborted,
        step,
        choiceLayers,
      });

      // 3. One all-reduce of [head, gradients], streamed tensor by tensor: the first chunks travel
      // while later tensors are still being copied off the device, into the last step's result array.
      const t1 = performance.now();
      const handle = options.beginAllReduce(seq++, HEAD + totalParams, lastReduced ? { output: lastReduced } : {});
      handle.append(stepHead(g));
      if (g.grads) {
        for (const grad of g.grads) {
          handle.append((await grad.data()) as Float32Array);
          grad.dispose();
        }
      } else {
        handle.append(new Float32Array(totalParams));
      }
      const reduced = await handle.result;
      lastReduced = reduced;
      checkReducedHead(reduced, {
        step,
        languages: languages.length,
        maxTokens: s.training.globalBatchSize * s.data.maxSeqLen,
        choiceLayers,
        maxSamples: s.training.globalBatchSize,
      });
      const t2 = performance.now();

      // 4. DESIGN.md's loss: summed NLL over the global batch's supervised tokens; the update.
      const lr = learningRate(s.training.optimizer.lr, s.training.schedule, step, plan.totalSteps);
      const applied = applyReducedGradients({
        reduced,
        languages,
        sizes,
        gradClip: s.training.gradClip,
        optimizer: state.optimizer,
        master,
        vars,
        lr,
        choiceLayers,
      });
      const { loss: stepLoss, gradNorm, skipped } = applied;
      if (!(applied.globalSupervised > 0)) log.warn('a global batch without supervised tokens: no update', { step });
      if (skipped) {
        nonFiniteSteps++;
        nonFiniteInARow++;
        log.warn('non-finite loss or gradient: step skipped', {
          step,
          loss: stepLoss,
          gradNorm,
          inARow: nonFiniteInARow,
        });
        if (nonFiniteInARow > s.training.maxNonFiniteSteps) throw new NonFiniteLossError(step, nonFiniteInARow);
      } else {
        nonFiniteInARow = 0;
        if (Number.isNaN(firstLoss)) firstLoss = stepLoss;
        lastLoss = stepLoss;
      }
      state.step = step + 1;

      const t3 = performance.now();
      const stepSeconds = (t3 - t0) / 1000;
      options.onStep?.({
        step: step + 1,
        totalSteps: plan.totalSteps,
        epoch,
        loss: stepLoss,
        lr,
        gradNorm,
        tokensPerSecond: applied.globalTokens / stepSeconds,
        supervisedTokens: applied.globalSupervised,
        stepSeconds,
        computeSeconds: (t1 - t0) / 1000,
        allReduceSeconds: (t2 - t1) / 1000,
        optimizerSeconds: (t3 - t2) / 1000,
        allReduceBytes: reduced.byteLength,
        skipped,
        nonFiniteSteps,
        lossByLanguage: applied.lossByLanguage,
        ...(resources?.takeStepStats ? { methodStats: resources.takeStepStats() } : {}),
        ...(choiceLayers > 0 ? { choicesByLanguage: applied.choicesByLanguage } : {}),
      });

      const every = s.checkpoint.everySteps;
      if (rank === 0 && every > 0 && state.step % every === 0 && state.step < plan.totalSteps) {
        const tc = performance.now();
        try {
          await writeCheckpoint(
            s.output.dir,
            s.checkpoint.keep,
            layout,
            {
              step: state.step,
              optimizerStep: state.optimizer.stepCount,
              params: master,
              buffers: state.optimizer.buffers,
            },
            stepPosition(plan, state.step).epoch,
          );
          options.onCheckpoint?.({ step: state.step, seconds: (performance.now() - tc) / 1000 });
        } catch (e) {
          // A full disk, say: the write left no partial checkpoint and kept the older ones, and every
          // rank still holds the state, so training goes on; the next interval tries again.
          log.error('checkpoint failed; training goes on from memory, the older checkpoints stay', {
            step: state.step,
            error: errorMessage(e),
          });
          options.onCheckpoint?.({
            step: state.step,
            seconds: (performance.now() - tc) / 1000,
            error: errorMessage(e),
          });
        }
      }
      // Evaluation (spec.eval): every rank, same step; the hook decides whether this step evaluates.
      await evaluate();
    }

    if (startStep === plan.totalSteps) {
      // A world re-formed after the last step (a rank was lost during the final evaluation or the
      // export): the final evaluation runs again rather than being lost.
      await evaluate();
    }
    if (rank === 0) {
      const named = names.map((name, i) => ({ name, shape: [...vars[i]!.shape], data: master[i]! }));
      // The method's own modules: the trained ones, then the frozen ones as they were read.
      const modules = [...named.slice(modelTrainable.length), ...frozenInit];
      const seconds = await writeFinalOutputsRetrying(
        {
          job: spec.metadata.name,
          modelDir: s.model.path,
          outputDir: s.output.dir,
          model,
          trainable: named.slice(0, modelTrainable.length),
          inputDtypes: new Map([...tensors].map(([n, t]) => [n, t.dtype])),
          method: {
            name: method.name,
            modules,
            ...(method.moduleMetadata
              ? { metadata: method.moduleMetadata(s.method, { maxSeqLen: s.data.maxSeqLen }) }
              : {}),
            ...(method.finalOutputs
              ? {
                  write: (dir: string) =>
                    method.finalOutputs!({
                      method: s.method,
                      model,
                      modules,
                      dir,
                      samples: trainingSamples,
                      seed: s.training.seed,
                    }),
                }
              : {}),
          },
        },
        {
          logger: log,
          ...(signal ? { signal } : {}),
          ...(options.finalOutputsRetryMs !== undefined ? { retryMs: options.finalOutputsRetryMs } : {}),
          onFailure: (f) =>
            options.onCheckpoint?.({ step: state.step, seconds: f.seconds, error: f.error, final: true }),
        },
      );
      options.onCheckpoint?.({ step: state.step, seconds, final: true });
    }
    return {
      steps: plan.totalSteps,
      firstLoss,
      finalLoss: lastLoss,
      outputDir: s.output.dir,
      seconds: (performance.now() - started) / 1000,
      truncatedSamples: samples.truncated,
    };
  } finally {
    tf.dispose(moduleVars);
    tf.dispose(frozenVars);
    resources?.dispose();
    if (!options.holder) model.dispose();
  }
}
