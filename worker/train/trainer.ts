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
 * computeGradients → all-reduce → applyGradients is the seam; every device step runs in `tf.tidy`.
 *
 * A rank keeps its state (`TrainingState`: step, master copies, optimizer arrays) in a holder that
 * outlives one generation of the job. When a world is re-formed (a lost worker, a failed collective,
 * a restarted coordinator) or a job is resumed, the ranks first agree on the newest state any of
 * them holds, in memory or in a checkpoint, and all take it (`agreeOnState`); then they go on from
 * its step. Since the data order depends only on the step, the job ends as an uninterrupted one
 * would, whatever the world size.
 *
 * A step whose loss or gradient is not finite is skipped on every rank (they all see the same
 * reduced numbers), counted and reported; more than `maxNonFiniteSteps` in a row fail the job.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import * as tf from '@tensorflow/tfjs-core';
import { epochOrder, globalBatch, microBatches, planSteps, rankShare, stepPosition, type StepPlan } from '../../common/data-plan.js';
import { errorMessage, UserError } from '../../common/errors.js';
import type { JobSpec } from '../../common/jobspec.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { loadTrainingSet, UNKNOWN_LANGUAGE } from '../../common/data-mixture.js';
import type { DataRecord } from '../../common/records.js';
import { encodeRecord, padBatch, type EncodedSample } from '../data/encode.js';
import { trainableTensorNames } from '../../common/trainable.js';
import { LlamaModel } from '../model/llama.js';
import { readLlamaConfig } from '../../common/model-config.js';
import { listModelTensors } from '../model/safetensors.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { latestValidCheckpoint, listCheckpoints, writeCheckpoint, type CheckpointLayout, type CheckpointState } from './checkpoint.js';
import { writeFinalOutputs } from './outputs.js';
import { clipGradNorm, createOptimizer, type Optimizer } from './optimizers.js';
import { learningRate } from './schedule.js';
import { checkReducedHead } from './reduced-head.js';

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
export type BeginAllReduceFn = (step: number, length: number, options?: { output?: Float32Array }) => {
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
}



/** What a rank holds of a job: enough to go on from `step`. Updated in place after every step. */
export interface TrainingState {
  /** Optimizer steps completed = the next global step. */
  step: number;
  readonly params: readonly Float32Array[];
  readonly optimizer: Optimizer;
}

/** Outlives a generation: the worker keeps one per job, so a re-formed world can go on from it. */
export interface StateHolder {
  state: TrainingState | undefined;
  /**
   * The loaded model, kept for the job's next generation (loading 7B from disk takes minutes): its
   * frozen tensors never change, and a resuming generation sets the trainable ones from the state
   * the ranks agree on. Freed by `releaseHolder`.
   */
  model?: LlamaModel;
}

/** Frees what a holder keeps (when its job is over on this worker). */
export function releaseHolder(holder: StateHolder): void {
  holder.model?.dispose();
  holder.model = undefined;
  holder.state = undefined;
}

/** Too many non-finite steps in a row: the job fails (not retryable). */
export class NonFiniteLossError extends UserError {
  readonly step: number;
  constructor(step: number, count: number) {
    super(`step ${step}: ${count} steps in a row had a non-finite loss or gradient (spec.training.maxNonFiniteSteps); the job stops`);
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

/** The first pause before the final outputs are tried again, and the longest. */
export const FINAL_OUTPUTS_RETRY_MS = 2_000;
export const FINAL_OUTPUTS_RETRY_MAX_MS = 60_000;
/** Write errors that freeing space clears: the ones the final outputs are tried again after. */
const OUT_OF_SPACE = new Set(['ENOSPC', 'EDQUOT']);

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
  readonly onCheckpoint?: (info: { readonly step: number; readonly seconds: number; readonly error?: string; readonly final?: true }) => void;
  /**
   * The first pause before rank 0 tries the final outputs again after running out of space
   * (ENOSPC, EDQUOT); it doubles up to FINAL_OUTPUTS_RETRY_MAX_MS. @default FINAL_OUTPUTS_RETRY_MS (2 s)
   */
  readonly finalOutputsRetryMs?: number;
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
  readonly evaluate?: (ctx: { step: number; totalSteps: number; model: LlamaModel; tokenizer: ModelTokenizer; reduce: (data: Float32Array) => Promise<Float32Array> }) => Promise<void>;
}

/** Encodes samples on first use and keeps them: a rank touches only its shares. */
class SampleCache {
  private readonly cache = new Map<number, EncodedSample>();
  truncated = 0;
  constructor(
    private readonly records: readonly DataRecord[],
    private readonly tokenizer: ModelTokenizer & { eosId: number },
    private readonly template: string,
    private readonly maxSeqLen: number,
    private readonly vocabSize: number,
  ) {}
  get(index: number): EncodedSample {
    let s = this.cache.get(index);
    if (!s) {
      s = encodeRecord(this.records[index]!, this.tokenizer, this.template, this.maxSeqLen);
      const V = this.vocabSize;
      const bad = s.inputIds.find((t) => t >= V) ?? s.labels.find((t) => t >= V);
      if (bad !== undefined) throw new UserError(`training sample ${index}: token id ${bad} is outside the model's vocabulary [0, ${V})`);
      if (s.truncated) this.truncated++;
      this.cache.set(index, s);
    }
    return s;
  }
}

/** The state vector's head: [step, optimizer step]. */
const STATE_HEAD = 2;

/**
 * The ranks agree on the newest state any of them can restore and all take it. Every rank offers
 * the step it could restore (memory or newest checkpoint) and the step it holds in memory. When
 * every rank holds the newest step in memory (a world re-formed without newcomers), the states are
 * bit-identical and each rank keeps its own: nothing more travels. Else the rank with the highest
 * offer (the lowest such rank) contributes its whole state and the others zeros, so the sum is
 * exactly that state on every rank.
 */
async function agreeOnState(
  state: TrainingState, holder: StateHolder | undefined, layout: CheckpointLayout, outputDir: string,
  rank: number, worldSize: number, reduce: (data: Float32Array, options: { exact: true }) => Promise<Float32Array>, log: Logger,
): Promise<void> {
  const memory = holder?.state;
  const newestCheckpoint = (await listCheckpoints(outputDir))[0]?.step ?? -1;
  // [restorable step + 1 per rank, step in memory + 1 per rank]
  const offers = new Float32Array(2 * worldSize);
  offers[rank] = 1 + Math.max(memory?.step ?? -1, newestCheckpoint);
  offers[worldSize + rank] = 1 + (memory?.step ?? -1);
  const all = await reduce(offers, { exact: true });
  let source = 0;
  for (let r = 1; r < worldSize; r++) if (all[r]! > all[source]!) source = r;
  if (all[source] === 0) return; // nobody holds anything: start from the model
  if (memory && all.subarray(worldSize).every((m) => m === all[source])) {
    state.step = memory.step;
    state.optimizer.stepCount = memory.optimizer.stepCount;
    const into = [...state.params, ...state.optimizer.buffers];
    [...memory.params, ...memory.optimizer.buffers].forEach((a, i) => into[i]!.set(a));
    log.info('state source for this generation', { step: memory.step, from: 'memory, on every rank' });
    return;
  }

  const buffers = state.optimizer.buffers;
  const total = STATE_HEAD + [...state.params, ...buffers].reduce((n, a) => n + a.length, 0);
  const vec = new Float32Array(total);
  if (rank === source) {
    const fromMemory: CheckpointState | undefined = memory
      && { step: memory.step, optimizerStep: memory.optimizer.stepCount, params: memory.params, buffers: memory.optimizer.buffers };
    // Memory when it is the newest; else the newest checkpoint that verifies, else memory; else
    // (every checkpoint refused, nothing in memory) the model as loaded, at step 0.
    const fromCheckpoint = fromMemory && fromMemory.step >= newestCheckpoint ? undefined : await latestValidCheckpoint(outputDir, layout, log);
    const from = fromCheckpoint ?? fromMemory ?? { step: 0, optimizerStep: 0, params: state.params, buffers };
    vec[0] = from.step;
    vec[1] = from.optimizerStep;
    let off = STATE_HEAD;
    for (const a of [...from.params, ...from.buffers]) {
      vec.set(a, off);
      off += a.length;
    }
    log.info('state source for this generation', { step: from.step, from: fromCheckpoint ? 'checkpoint' : fromMemory ? 'memory' : 'model' });
  }
  const got = await reduce(vec, { exact: true });
  state.step = got[0]!;
  state.optimizer.stepCount = got[1]!;
  let off = STATE_HEAD;
  for (const a of [...state.params, ...buffers]) {
    a.set(got.subarray(off, off + a.length));
    off += a.length;
  }
}

export async function train(options: TrainerOptions): Promise<TrainResult> {
  const { spec, rank, worldSize, signal } = options;
  const log = options.logger ?? silentLogger;
  const s = spec.spec;
  const started = performance.now();
  // Each collective call of this generation gets the next sequence number, the same on every rank.
  let seq = 0;
  const reduce = (data: Float32Array, opts?: { exact?: boolean }): Promise<Float32Array> => options.allReduce(seq++, data, opts);

  const config = await readLlamaConfig(s.model.path);
  const tensors = await listModelTensors(s.model.path);
  const held = options.resume ? options.holder?.model : undefined;
  if (options.holder?.model && options.holder.model !== held) {
    options.holder.model.dispose();
    options.holder.model = undefined;
  }
  const model = held ?? await LlamaModel.load(s.model.path, {
    trainable: new Set(trainableTensorNames(s.method, config.numHiddenLayers, [...tensors.keys()])),
    maxSeqLen: s.data.maxSeqLen,
    gradientCheckpointing: s.training.gradientCheckpointing,
  });
  if (held) log.info('model kept from the previous generation', { path: s.model.path });
  if (options.holder) options.holder.model = model;
  try {
    const tokenizer = await ModelTokenizer.load(s.model.path, model.config);
    if (tokenizer.eosId === undefined) throw new UserError(`${s.model.path}: the tokenizer has no EOS token`);
    const { records, samples: sampleRecords } = await loadTrainingSet(s.data, s.training.seed);
    const samples = new SampleCache(records, tokenizer as ModelTokenizer & { eosId: number }, s.data.template, s.data.maxSeqLen, config.vocabSize);
    const padId = tokenizer.padId ?? tokenizer.eosId;
    const plan: StepPlan = planSteps(sampleRecords.length, s.training);
    // Languages in a fixed order on every rank: per-language sums travel in the all-reduce.
    const languages = [...new Set(records.map((r) => r.language ?? UNKNOWN_LANGUAGE))].sort();
    const languageIndex = new Map(languages.map((l, i) => [l, i]));
    const L = languages.length;

    const names = model.trainableNames;
    const vars = names.map((n) => model.variable(n));
    const master = vars.map((v) => Float32Array.from(v.dataSync() as Float32Array));
    const sizes = master.map((m) => m.length);
    const totalParams = sizes.reduce((a, b) => a + b, 0);
    const state: TrainingState = { step: 0, params: master, optimizer: createOptimizer(s.training.optimizer, sizes) };
    const layout: CheckpointLayout = { names, shapes: vars.map((v) => v.shape), bufferNames: state.optimizer.bufferNames };
    if (options.resume) {
      await agreeOnState(state, options.holder, layout, s.output.dir, rank, worldSize, reduce, log);
      vars.forEach((v, i) => tf.tidy(() => v.assign(tf.tensor(master[i]!, v.shape))));
    }
    if (options.holder) options.holder.state = state;
    const startStep = state.step;
    log.info('training', {
      rank, worldSize, samples: plan.numSamples, steps: plan.totalSteps, fromStep: startStep,
      trainableTensors: names.length, trainableParams: totalParams,
    });

    let order: Uint32Array | undefined;
    let orderEpoch = -1;
    let firstLoss = NaN;
    let lastLoss = NaN;
    let nonFiniteInARow = 0;
    let nonFiniteSteps = 0;
    // Ahead of the gradients: [nll sum, supervised tokens, tokens, nll per language (L), supervised per language (L)].
    const HEAD = 3 + 2 * L;
    /** The last step's all-reduce result, used up by then: the next streamed step writes into it. */
    let lastReduced: Float32Array | undefined;
    const aborted = (): void => {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('training cancelled');
    };

    const evaluate = async (): Promise<void> =>
      options.evaluate?.({ step: state.step, totalSteps: plan.totalSteps, model, tokenizer, reduce: (d) => reduce(d, { exact: true }) });

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
      let acc: tf.Tensor[] | undefined;
      let nllSum = 0;
      let supervised = 0;
      let tokens = 0;
      const langNll = new Float64Array(L);
      const langTokens = new Float64Array(L);
      try {
        for (const mb of microBatches(mine, s.training.microBatchSize)) {
          aborted();
          const batch = padBatch(mb.map((i) => samples.get(sampleRecords[i]!)), padId);
          supervised += batch.supervised;
          tokens += batch.tokens;
          if (batch.supervised === 0) continue;
          let rows: tf.Tensor1D | undefined;
          const { value, grads } = tf.tidy(() => {
            const ids = tf.tensor2d(batch.inputIds, [batch.batchSize, batch.seqLen], 'int32');
            const labels = tf.tensor2d(batch.labels, [batch.batchSize, batch.seqLen], 'int32');
            const r = tf.variableGrads(() => {
              rows = tf.keep(model.nllRowSums(ids, labels));
              return tf.sum(rows);
            }, vars);
            const g = vars.map((v) => r.grads[v.name]!);
            const summed = acc ? g.map((x, i) => tf.add(acc![i]!, x)) : g;
            return { value: r.value, grads: summed };
          });
          acc?.forEach((t) => t.dispose());
          acc = grads;
          nllSum += (await value.data())[0]!;
          value.dispose();
          const rowNll = await rows!.data();
          rows!.dispose();
          mb.forEach((i, b) => {
            const sample = samples.get(sampleRecords[i]!);
            const li = languageIndex.get(sample.language ?? UNKNOWN_LANGUAGE)!;
            langNll[li] = langNll[li]! + rowNll[b]!;
            langTokens[li] = langTokens[li]! + sample.supervised;
          });
        }
      } catch (e) {
        acc?.forEach((t) => t.dispose());
        throw e;
      }

      // 3. One all-reduce of [head, gradients], streamed tensor by tensor: the first chunks travel
      // while later tensors are still being copied off the device, into the last step's result array.
      const head = new Float32Array(HEAD);
      head[0] = nllSum;
      head[1] = supervised;
      head[2] = tokens;
      head.set(langNll, 3);
      head.set(langTokens, 3 + L);
      const t1 = performance.now();
      const handle = options.beginAllReduce(seq++, HEAD + totalParams, lastReduced ? { output: lastReduced } : {});
      handle.append(head);
      if (acc) {
        for (const g of acc) {
          handle.append(await g.data() as Float32Array);
          g.dispose();
        }
      } else {
        handle.append(new Float32Array(totalParams));
      }
      const reduced = await handle.result;
      lastReduced = reduced;
      checkReducedHead(reduced, { step, languages: L, maxTokens: s.training.globalBatchSize * s.data.maxSeqLen });
      const t2 = performance.now();

      // 4. DESIGN.md's loss: summed NLL over the global batch's supervised tokens.
      const globalSupervised = reduced[1]!;
      const globalTokens = reduced[2]!;
      const lr = learningRate(s.training.optimizer.lr, s.training.schedule, step, plan.totalSteps);
      let gradNorm = 0;
      let loss = NaN;
      let skipped = false;
      if (globalSupervised > 0) {
        loss = reduced[0]! / globalSupervised;
        const grads: Float32Array[] = [];
        let off = HEAD;
        for (const n of sizes) {
          const g = reduced.subarray(off, off + n);
          for (let j = 0; j < n; j++) g[j] = g[j]! / globalSupervised;
          grads.push(g);
          off += n;
        }
        gradNorm = clipGradNorm(grads, s.training.gradClip);
        skipped = !Number.isFinite(loss) || !Number.isFinite(gradNorm);
        if (!skipped) {
          state.optimizer.step(master, grads, lr);
          vars.forEach((v, i) => tf.tidy(() => v.assign(tf.tensor(master[i]!, v.shape))));
        }
      } else {
        log.warn('a global batch without supervised tokens: no update', { step });
      }
      if (skipped) {
        nonFiniteSteps++;
        nonFiniteInARow++;
        log.warn('non-finite loss or gradient: step skipped', { step, loss, gradNorm, inARow: nonFiniteInARow });
        if (nonFiniteInARow > s.training.maxNonFiniteSteps) throw new NonFiniteLossError(step, nonFiniteInARow);
      } else {
        nonFiniteInARow = 0;
        if (Number.isNaN(firstLoss)) firstLoss = loss;
        lastLoss = loss;
      }
      state.step = step + 1;

      const lossByLanguage: Record<string, number> = {};
      languages.forEach((lang, li) => {
        const n = reduced[3 + L + li]!;
        if (n > 0) lossByLanguage[lang] = reduced[3 + li]! / n;
      });
      const t3 = performance.now();
      const stepSeconds = (t3 - t0) / 1000;
      options.onStep?.({
        step: step + 1, totalSteps: plan.totalSteps, epoch, loss, lr, gradNorm,
        tokensPerSecond: globalTokens / stepSeconds, supervisedTokens: globalSupervised, stepSeconds,
        computeSeconds: (t1 - t0) / 1000, allReduceSeconds: (t2 - t1) / 1000, optimizerSeconds: (t3 - t2) / 1000,
        allReduceBytes: reduced.byteLength, skipped, nonFiniteSteps, lossByLanguage,
      });

      const every = s.checkpoint.everySteps;
      if (rank === 0 && every > 0 && state.step % every === 0 && state.step < plan.totalSteps) {
        const tc = performance.now();
        try {
          await writeCheckpoint(s.output.dir, s.checkpoint.keep, layout, {
            step: state.step, optimizerStep: state.optimizer.stepCount, params: master, buffers: state.optimizer.buffers,
          }, stepPosition(plan, state.step).epoch);
          options.onCheckpoint?.({ step: state.step, seconds: (performance.now() - tc) / 1000 });
        } catch (e) {
          // A full disk, say: the write left no partial checkpoint and kept the older ones, and every
          // rank still holds the state, so training goes on; the next interval tries again.
          log.error('checkpoint failed; training goes on from memory, the older checkpoints stay', { step: state.step, error: errorMessage(e) });
          options.onCheckpoint?.({ step: state.step, seconds: (performance.now() - tc) / 1000, error: errorMessage(e) });
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
      // The trained state exists only in memory past the last checkpoint: a write that fails for
      // want of space is tried again, with growing pauses, until it succeeds or the job is
      // cancelled, rather than failing the job and losing it. Other errors fail the job.
      let pause = Math.max(1, options.finalOutputsRetryMs ?? FINAL_OUTPUTS_RETRY_MS);
      let seconds: number;
      for (;;) {
        const tw = performance.now();
        try {
          await writeFinalOutputs({
            modelDir: s.model.path, outputDir: s.output.dir, model,
            trainable: names.map((name, i) => ({ name, shape: [...vars[i]!.shape], data: master[i]! })),
            inputDtypes: new Map([...tensors].map(([n, t]) => [n, t.dtype])),
          });
          seconds = (performance.now() - tw) / 1000;
          break;
        } catch (e) {
          if (!OUT_OF_SPACE.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
          log.error('final outputs could not be written; the trained state stays in memory and they are tried again', {
            dir: s.output.dir, retryInSeconds: pause / 1000, error: errorMessage(e),
          });
          options.onCheckpoint?.({ step: state.step, seconds: (performance.now() - tw) / 1000, error: errorMessage(e), final: true });
          await sleep(pause, undefined, signal ? { signal } : {}).catch(() => undefined);
          aborted();
          pause = Math.min(2 * pause, FINAL_OUTPUTS_RETRY_MAX_MS);
        }
      }
      options.onCheckpoint?.({ step: state.step, seconds, final: true });
    }
    return {
      steps: plan.totalSteps, firstLoss, finalLoss: lastLoss, outputDir: s.output.dir,
      seconds: (performance.now() - started) / 1000, truncatedSamples: samples.truncated,
    };
  } finally {
    if (!options.holder) model.dispose();
  }
}
