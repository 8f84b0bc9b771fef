/**
 * CC-Tuning on the worker (common/methods/cctuning.ts; the authors' code YYF-Tommy/CC-Tuning,
 * `llamawrapper_mlp.py` and `mytrainer_connector_mlp.py`). Per micro-batch:
 *
 *   1. `prepare` (before the gradient tape, so no gradient and no kept activations): the English
 *      prompts (each sample's `pairedPrompt`) through the model; at each prompt's last token, every
 *      decoder layer's FFN output before the residual add, e_l (hooks.ts `ffnOutput`): E [B, L, H].
 *   2. `loss`: the non-English sequence; at the `embeddings` hook point, v = mean_l(e_l) + the
 *      input embedding of the non-English prompt's last token (= mean_l(e_l + emb), the authors'),
 *      logits = v W^T with the Decision Maker W [L, H], a hard Gumbel-softmax at `gumbelTau`
 *      (straight-through: the forward takes the one-hot, the backward the softmax's gradient),
 *      noise a pure function of (seed, step, sample index) (`gumbelNoise`); after decoder layer
 *      `injectAfterLayer` (hooks.ts `afterLayer`) the chosen e_l is added at that token. The loss
 *      is the causal LM NLL on the response, as every TrainJob's.
 *   3. `finalOutputs`: the Transform Matrix (cctuning-transform.ts) from parallel prompt pairs of
 *      the training records through the tuned model, into `cctuning.safetensors` beside
 *      `decision_maker.weight`, and its inputs A, B into `transform-inputs.safetensors`.
 *
 * Inference (`ccTransformHooks`): a first pass gives the prompt's own FFN outputs at its last
 * token, mapped through X; the Decision Maker picks (argmax, no noise) and the pick is added after
 * `injectAfterLayer` at the prompt's last token, in the first forward pass (the prefill) only.
 */
import * as tf from '@tensorflow/tfjs-core';
import { epochOrder } from '../../common/data-plan.js';
import { UserError } from '../../common/errors.js';
import { CCTUNING_FILE } from '../../common/methods/cctuning.js';
import type { MethodSpecOf } from '../../common/methods/index.js';
import type { LlamaConfig } from '../../common/model-config.js';
import { encodePrompt, encodeRecord, type EncodedSample } from '../data/encode.js';
import type { ForwardHooks } from '../model/hooks.js';
import type { LlamaModel } from '../model/llama.js';
import { customOp, gatherRows } from '../model/ops.js';
import { readSafetensors, writeSafetensors } from '../model/safetensors.js';
import { solveTransform, type TransformSolution } from './cctuning-transform.js';
import { specTrainableTensors } from './layer-methods.js';
import type { MethodResources, TrainingMethod, TrainingSamples } from './training-method.js';

type CcSpec = MethodSpecOf<'cctuning'>;

export const DECISION_MAKER = 'decision_maker.weight';
export const TRANSFORM_MATRIX = 'transform_matrix';
export const TRANSFORM_INPUTS_FILE = 'transform-inputs.safetensors';
/** Decision Maker init: normal(0, 0.02), HF's `initializer_range` for the authors' nn.Linear under post_init. */
const DECISION_MAKER_STD = 0.02;
/** Prompt pairs per forward pass when collecting the Transform Matrix's inputs. */
const TRANSFORM_BATCH = 8;

// ---- Gumbel noise: a counter-based generator, the same on every rank and world size -------------

/** A 32-bit finaliser (lowbias32): a bijection with good avalanche, the core of the counter hash. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * Gumbel(0, 1) noise for one sample's `numLayers` logits: -log(-log(u)), u in (0, 1) from a hash of
 * (seed, step, sample index, layer). A pure function, so a sample's choice is the same whichever
 * rank computes it and however many ranks there are.
 */
export function gumbelNoise(seed: number, step: number, sampleIndex: number, numLayers: number): Float32Array {
  const out = new Float32Array(numLayers);
  const base = mix32(mix32(mix32(seed >>> 0) ^ (step >>> 0)) ^ (sampleIndex >>> 0));
  for (let l = 0; l < numLayers; l++) {
    const u = (mix32(base ^ mix32(l + 0x9e3779b9)) + 0.5) / 4294967296;
    out[l] = -Math.log(-Math.log(u));
  }
  return out;
}

// ---- The passes ----------------------------------------------------------------------------------

export interface LastTokenOutputs {
  /** FFN outputs (before the residual add) of every layer at each prompt's last token: [B, L, H]. */
  readonly ffn: tf.Tensor3D;
  /** The input embedding of each prompt's last token: [B, H]. */
  readonly embedding: tf.Tensor2D;
}

/**
 * Prompts (token ids, each non-empty) right-padded through the model, without a gradient tape
 * (call outside one): each layer's FFN output and the input embedding at each prompt's last token.
 * Right padding changes nothing before it (causal attention).
 */
export function lastTokenOutputs(model: LlamaModel, prompts: readonly ArrayLike<number>[]): LastTokenOutputs {
  const B = prompts.length;
  const T = Math.max(...prompts.map((p) => p.length));
  if (B === 0 || prompts.some((p) => p.length === 0)) throw new Error('lastTokenOutputs: an empty prompt');
  const ids = new Int32Array(B * T);
  prompts.forEach((p, b) => ids.set(Array.from(p), b * T));
  const rows = Int32Array.from(prompts, (p, b) => b * T + p.length - 1);
  const kept: tf.Tensor2D[] = [];
  let embedding: tf.Tensor2D | undefined;
  try {
    const hooks: ForwardHooks = {
      embeddings: (x) => {
        embedding = tf.keep(tf.gather(x, rows));
      },
      ffnOutput: (_l, out) => {
        kept.push(tf.keep(tf.gather(out, rows)));
      },
    };
    tf.tidy(() => {
      model.forwardHidden(tf.tensor2d(ids, [B, T], 'int32'), { hooks });
    });
    const ffn = tf.tidy(() => tf.stack(kept, 1) as tf.Tensor3D);
    return { ffn, embedding: embedding! };
  } finally {
    tf.dispose(kept);
  }
}

/** Rows b*T + promptLength_b - 1 of the [B*T, H] activations: each non-English prompt's last token. */
function lastPromptRows(samples: readonly EncodedSample[], T: number): Int32Array {
  return Int32Array.from(samples, (s, b) => {
    if (s.promptLength < 1) throw new UserError('method cctuning: a sample has no prompt token');
    return b * T + s.promptLength - 1;
  });
}

export interface CcTuningBatch {
  readonly inputIds: tf.Tensor2D;
  readonly labels: tf.Tensor2D;
  /** Flat row b*T + t of each row's last prompt token. */
  readonly rows: Int32Array;
  /** The English FFN outputs E [B, L, H] (no gradient). */
  readonly english: tf.Tensor3D;
  /** Gumbel noise [B * L]; absent: none (argmax of the logits). */
  readonly noise?: Float32Array;
}

/**
 * The fused CC-Tuning forward: per-row NLL sums [B] (differentiable in the model's variables and
 * the Decision Maker `dm` [L, H]) and each row's chosen layer.
 */
export function ccTuningRowSums(
  model: LlamaModel,
  dm: tf.Tensor2D,
  batch: CcTuningBatch,
  tau: number,
  injectAfterLayer: number,
): { rows: tf.Tensor1D; choices: Int32Array } {
  const [B, L, H] = batch.english.shape;
  const choices = new Int32Array(B);
  let inject: tf.Tensor2D | undefined;
  const hooks: ForwardHooks = {
    embeddings: (x) => {
      const v = tf.add(tf.mean(batch.english, 1), gatherRows(x, tf.tensor1d(batch.rows, 'int32')));
      let z = tf.matMul(v, dm, false, true);
      if (batch.noise) z = tf.add(z, tf.tensor2d(batch.noise, [B, L]));
      const soft = tf.softmax(tf.div(z, tau));
      const p = soft.dataSync();
      for (let b = 0; b < B; b++) {
        let best = 0;
        for (let l = 1; l < L; l++) if (p[b * L + l]! > p[b * L + best]!) best = l;
        choices[b] = best;
      }
      // Straight-through: the one-hot forward, the softmax's gradient backward.
      const hard = customOp([soft], () => ({
        value: tf.oneHot(tf.tensor1d(choices, 'int32'), L, 1, 0, 'float32'),
        gradFunc: (dy) => [dy],
      })) as tf.Tensor2D;
      inject = tf.reshape(tf.matMul(tf.reshape(hard, [B, 1, L]), batch.english), [B, H]);
    },
    afterLayer: (l) => (l === injectAfterLayer ? { add: inject!, rows: batch.rows } : undefined),
  };
  const rows = model.nllRowSums(batch.inputIds, batch.labels, { hooks });
  return { rows, choices };
}

// ---- The Transform Matrix ------------------------------------------------------------------------

/** Pairs of (non-English prompt, English prompt) token ids: the samples the Transform Matrix uses. */
export interface PromptPair {
  readonly prompt: ArrayLike<number>;
  readonly english: ArrayLike<number>;
}

/** A and B [pairs * L, H] (sample-major: row s*L + l), float32: the FFN outputs of both prompts. */
export function transformInputs(model: LlamaModel, pairs: readonly PromptPair[]): { a: Float32Array; b: Float32Array } {
  const L = model.config.numHiddenLayers;
  const H = model.config.hiddenSize;
  const a = new Float32Array(pairs.length * L * H);
  const b = new Float32Array(pairs.length * L * H);
  for (let i = 0; i < pairs.length; i += TRANSFORM_BATCH) {
    const chunk = pairs.slice(i, i + TRANSFORM_BATCH);
    for (const [side, out] of [
      ['prompt', a],
      ['english', b],
    ] as const) {
      const r = lastTokenOutputs(
        model,
        chunk.map((p) => p[side]),
      );
      out.set(r.ffn.dataSync() as Float32Array, i * L * H);
      tf.dispose([r.ffn, r.embedding]);
    }
  }
  return { a, b };
}

// ---- Inference -----------------------------------------------------------------------------------

export interface CcTransform {
  /** [L, H] */
  readonly decisionMaker: Float32Array;
  /** [H, H] */
  readonly transform: Float32Array;
  readonly injectAfterLayer: number;
}

/**
 * Forward hooks for `prompts` (token ids): the first pass here computes each prompt's own FFN
 * outputs at its last token, maps them through X, and the Decision Maker picks a layer (argmax, no
 * noise); the pick is added after `injectAfterLayer` at that token in the first forward pass the
 * hooks see (generation's prefill, a choice's scoring pass) and never again. That token's column
 * is `lastColumn[b]` of row b, by default the last column (generate.ts left-pads the prompts).
 * `injected` reports where it went.
 */
export function ccTransformHooks(
  model: LlamaModel,
  cc: CcTransform,
  prompts: readonly (readonly number[])[],
  lastColumn?: Int32Array,
): { hooks: ForwardHooks; choices: Int32Array; injected: { forward: number; layer: number }[] } {
  const L = model.config.numHiddenLayers;
  const H = model.config.hiddenSize;
  const B = prompts.length;
  const choices = new Int32Array(B);
  const vectors = tf.tidy(() => {
    const r = lastTokenOutputs(model, prompts);
    try {
      const mapped = tf.reshape(tf.matMul(tf.reshape(r.ffn, [B * L, H]), tf.tensor2d(cc.transform, [H, H])), [
        B,
        L,
        H,
      ]) as tf.Tensor3D;
      const v = tf.add(tf.mean(mapped, 1), r.embedding);
      const logits = tf.matMul(v, tf.tensor2d(cc.decisionMaker, [L, H]), false, true);
      choices.set(tf.argMax(logits, 1).dataSync());
      const picked = tf.gather(
        tf.reshape(mapped, [B * L, H]),
        Int32Array.from(choices, (c, b) => b * L + c),
      );
      return picked.dataSync() as Float32Array;
    } finally {
      r.embedding.dispose(); // kept by lastTokenOutputs: not freed by this scope
    }
  });
  const injected: { forward: number; layer: number }[] = [];
  let forward = -1;
  const hooks: ForwardHooks = {
    embeddings: () => {
      forward++;
    },
    afterLayer: (l, _hidden, shape) => {
      if (forward !== 0 || l !== cc.injectAfterLayer) return undefined;
      injected.push({ forward, layer: l });
      return {
        add: tf.tensor2d(vectors, [B, H]),
        rows: Int32Array.from({ length: shape.B }, (_, b) => b * shape.T + (lastColumn?.[b] ?? shape.T - 1)),
      };
    },
  };
  return { hooks, choices, injected };
}

/** A tuned model directory's (a job's `final/`) Decision Maker, Transform Matrix and injection layer. */
export async function loadCcTransform(modelDir: string, config: LlamaConfig): Promise<CcTransform> {
  const file = `${modelDir}/${CCTUNING_FILE}`;
  const { tensors, metadata } = await readSafetensors(file).catch((e: NodeJS.ErrnoException) => {
    throw new UserError(
      e.code === 'ENOENT' ? `${file}: no such file (a CC-Tuning job's final/ has it)` : (e as Error).message,
    );
  });
  const t = new Map(tensors.map((x) => [x.name, x]));
  const L = config.numHiddenLayers;
  const H = config.hiddenSize;
  const dm = t.get(DECISION_MAKER);
  const x = t.get(TRANSFORM_MATRIX);
  if (!dm || dm.shape.join() !== `${L},${H}`) throw new UserError(`${file}: no ${DECISION_MAKER} [${L}, ${H}]`);
  if (!x || x.shape.join() !== `${H},${H}`)
    throw new UserError(`${file}: no ${TRANSFORM_MATRIX} [${H}, ${H}] (transformSamples was 0?)`);
  const k = Number(metadata.inject_after_layer);
  if (!Number.isInteger(k) || k < 0 || k >= L)
    throw new UserError(`${file}: metadata inject_after_layer is missing or outside 0-${L - 1}`);
  return { decisionMaker: dm.data, transform: x.data, injectAfterLayer: k };
}

// ---- The method ----------------------------------------------------------------------------------

/**
 * The Transform Matrix of a tuned model from `transformSamples` prompt pairs of the training
 * records (a seeded shuffle: the same pairs on every rank), with its inputs A and B; undefined
 * when `transformSamples` is 0.
 */
function trainedTransform(
  method: CcSpec,
  model: LlamaModel,
  samples: TrainingSamples,
  seed: number,
): { n: number; a: Float32Array; b: Float32Array; x: TransformSolution } | undefined {
  const n = Math.min(method.transformSamples, samples.count);
  if (n === 0) return undefined;
  const order = epochOrder(samples.count, 0, true, seed).subarray(0, n);
  const pairs = Array.from(order, (i) => {
    const s = samples.get(i);
    return { prompt: s.inputIds.subarray(0, s.promptLength), english: s.pairedPrompt! };
  });
  const { a, b } = transformInputs(model, pairs);
  const L = model.config.numHiddenLayers;
  const H = model.config.hiddenSize;
  const x = solveTransform(a, b, n * L, H, method.transformRidge, `transform matrix (${n} samples x ${L} layers)`);
  return { n, a, b, x };
}

/**
 * The English pass's cost, reported with each step (`StepReport.methodStats`, logged by the worker):
 * the host wall time of `prepare` (tfjs runs the pass eagerly) and the number of passes.
 */
class EnglishPassMeter implements MethodResources {
  private ms = 0;
  private passes = 0;

  record(ms: number): void {
    this.ms += ms;
    this.passes++;
  }

  takeStepStats(): Record<string, number> {
    const out = { englishPassMs: this.ms, englishPasses: this.passes };
    this.ms = this.passes = 0;
    return out;
  }

  dispose(): void {}
}

export const cctuning: TrainingMethod<CcSpec> = {
  name: 'cctuning',
  trainableTensors: specTrainableTensors,
  modules: (_m, config: LlamaConfig) => [
    {
      name: DECISION_MAKER,
      shape: [config.numHiddenLayers, config.hiddenSize],
      init: { kind: 'normal', std: DECISION_MAKER_STD },
    },
  ],
  encode: (_m, record, tokenizer, template, maxSeqLen) => {
    if (record.kind !== 'text' || record.questionEn === undefined) {
      throw new UserError(
        'method cctuning: a training record has no English prompt (instruction_en; ' +
          'data format cctuning, or parallel with answers)',
      );
    }
    const sample = encodeRecord(record, tokenizer, template, maxSeqLen);
    const english = encodePrompt(record.questionEn, tokenizer, template).slice(0, maxSeqLen);
    if (english.length === 0) throw new UserError('method cctuning: an English prompt encodes to no tokens');
    return { ...sample, pairedPrompt: Int32Array.from(english) };
  },
  choiceLayers: (_m, config) => config.numHiddenLayers,
  load: () => Promise.resolve(new EnglishPassMeter()),
  prepare: (run, batch) => {
    const t0 = performance.now();
    const r = lastTokenOutputs(
      run.model,
      batch.samples.map((s) => s.pairedPrompt!),
    );
    r.embedding.dispose();
    if (run.resources instanceof EnglishPassMeter) run.resources.record(performance.now() - t0);
    return [r.ffn];
  },
  loss: (run, batch) => {
    const english = batch.prepared![0] as tf.Tensor3D;
    const L = run.model.config.numHiddenLayers;
    const noise = new Float32Array(batch.samples.length * L);
    batch.sampleIndices.forEach((idx, b) => noise.set(gumbelNoise(run.seed, batch.step, idx, L), b * L));
    const { rows, choices } = ccTuningRowSums(
      run.model,
      run.modules.get(DECISION_MAKER)! as unknown as tf.Tensor2D,
      {
        inputIds: batch.inputIds,
        labels: batch.labels,
        rows: lastPromptRows(batch.samples, batch.inputIds.shape[1]),
        english,
        noise,
      },
      run.method.gumbelTau,
      run.method.injectAfterLayer,
    );
    choices.forEach((layer, b) => batch.choose?.(b, layer));
    return rows;
  },
  transformHooks: (run, samples) => {
    const t = trainedTransform(run.method, run.model, samples, run.seed);
    if (!t) throw new UserError('spec.eval.ccTransform: spec.method.transformSamples is 0 (no Transform Matrix)');
    const cc: CcTransform = {
      decisionMaker: run.modules.get(DECISION_MAKER)!.dataSync() as Float32Array,
      transform: Float32Array.from(t.x.x),
      injectAfterLayer: run.method.injectAfterLayer,
    };
    return (prompts, lastColumn) => ccTransformHooks(run.model, cc, prompts, lastColumn).hooks;
  },
  finalOutputs: async ({ method, model, modules, dir, samples, seed }) => {
    const t = trainedTransform(method, model, samples, seed);
    if (!t) return;
    const { n, a, b, x } = t;
    const L = model.config.numHiddenLayers;
    const H = model.config.hiddenSize;
    const rowsN = n * L;
    await writeSafetensors(
      `${dir}/${TRANSFORM_INPUTS_FILE}`,
      [
        { name: 'A', shape: [rowsN, H], data: a },
        { name: 'B', shape: [rowsN, H], data: b },
      ],
      { dtype: 'F32', metadata: { format: 'pt', samples: String(n), layers: String(L) } },
    );
    await writeSafetensors(
      `${dir}/${CCTUNING_FILE}`,
      [...modules, { name: TRANSFORM_MATRIX, shape: [H, H], data: Float32Array.from(x.x) }],
      {
        dtype: 'F32',
        metadata: {
          format: 'pt',
          inject_after_layer: String(method.injectAfterLayer),
          transform_condition_estimate: x.conditionEstimate.toExponential(3),
          transform_relative_residual: x.relativeResidual.toExponential(3),
        },
      },
    );
  },
};
