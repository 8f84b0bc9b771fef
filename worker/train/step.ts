/**
 * The two halves of an optimizer step around the all-reduce (the trainer streams the reduction in
 * between): `computeStepGradients`, the gradient of the summed token NLL of this rank's share,
 * accumulated on the device across micro-batches; and `applyReducedGradients`, which turns the
 * reduced sums into DESIGN.md's loss, clips, and applies the optimizer to the float32 master
 * copies. Every rank does the same arithmetic on the same reduced numbers, so every rank ends the
 * step with bit-identical parameters. Every device computation runs in `tf.tidy`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { microBatches } from '../../common/data-plan.js';
import { UNKNOWN_LANGUAGE } from '../../common/data-mixture.js';
import { padBatch, type EncodedSample } from '../data/encode.js';
import { clipGradNorm, type Optimizer } from './optimizers.js';
import { headLength } from './reduced-head.js';
import type { SampleCache } from './sample-cache.js';

/** One micro-batch as a method's loss sees it (training-method.ts `LossBatch` without the hooks). */
export interface RowLossInput {
  /** int32 [B, T] */
  readonly inputIds: tf.Tensor2D;
  /** int32 [B, T], -100 where no loss is taken */
  readonly labels: tf.Tensor2D;
  /** The encoded samples of the rows, in row order. */
  readonly samples: readonly EncodedSample[];
  /** Each row's index in the job's sample order: the same whatever the world size. */
  readonly sampleIndices: readonly number[];
  /** The optimizer step (0-based). */
  readonly step: number;
  /** What `RowLoss.prepare` computed for this micro-batch, outside the gradient tape. */
  readonly prepared?: readonly tf.Tensor[];
  /**
   * Counts row `row`'s choice of layer `layer` (< `StepGradientsInput.choiceLayers`), for a loss
   * whose samples choose a layer (CC-Tuning's Decision Maker); summed over the ranks in the head.
   */
  readonly choose?: (row: number, layer: number) => void;
}

/** A micro-batch's loss as per-row NLL sums [B] (the method's `loss`, or the model's `nllRowSums`). */
export interface RowLoss {
  (batch: RowLossInput): tf.Tensor1D;
  /** Work before the gradient tape (no gradient flows through it); disposed after the micro-batch. */
  prepare?(batch: RowLossInput): tf.Tensor[];
}

export interface StepGradientsInput {
  /** This rank's samples of the step (indices into `sampleRecords`). */
  readonly mine: ArrayLike<number>;
  readonly microBatchSize: number;
  readonly samples: SampleCache;
  /** The epoch of the step (code-switched samples differ per epoch). */
  readonly epoch: number;
  /** Sample -> record index. */
  readonly sampleRecords: ArrayLike<number>;
  readonly padId: number;
  /** What trains: the model's variables, then the method's modules. */
  readonly vars: readonly tf.Variable[];
  readonly loss: RowLoss;
  /** Language -> its index in the per-language sums (the same order on every rank). */
  readonly languageIndex: ReadonlyMap<string, number>;
  readonly aborted: () => void;
  /** The optimizer step, for a loss that depends on it (CC-Tuning's Gumbel noise). */
  readonly step: number;
  /** Layers a sample's choice ranges over (`RowLossInput.choose`). @default 0: no choices */
  readonly choiceLayers?: number;
}

export interface StepGradients {
  /** Summed gradients on the device, one per variable; undefined when no micro-batch had supervised tokens. */
  readonly grads: tf.Tensor[] | undefined;
  readonly nllSum: number;
  readonly supervised: number;
  readonly tokens: number;
  readonly langNll: Float64Array;
  readonly langTokens: Float64Array;
  /** Choices per language and layer [L x C], language-major (empty without choices). */
  readonly choices: Float64Array;
}

/** Gradients of the summed NLL of this rank's share of a step, accumulated across micro-batches. */
export async function computeStepGradients(c: StepGradientsInput): Promise<StepGradients> {
  const L = c.languageIndex.size;
  let acc: tf.Tensor[] | undefined;
  let nllSum = 0;
  let supervised = 0;
  let tokens = 0;
  const langNll = new Float64Array(L);
  const langTokens = new Float64Array(L);
  const C = c.choiceLayers ?? 0;
  const choices = new Float64Array(L * C);
  const vars = c.vars as tf.Variable[];
  try {
    for (const mb of microBatches(c.mine, c.microBatchSize)) {
      c.aborted();
      const mbSamples = mb.map((i) => c.samples.get(c.sampleRecords[i]!, c.epoch));
      const batch = padBatch(mbSamples, c.padId);
      supervised += batch.supervised;
      tokens += batch.tokens;
      if (batch.supervised === 0) continue;
      let rows: tf.Tensor1D | undefined;
      const { value, grads } = tf.tidy(() => {
        const ids = tf.tensor2d(batch.inputIds, [batch.batchSize, batch.seqLen], 'int32');
        const labels = tf.tensor2d(batch.labels, [batch.batchSize, batch.seqLen], 'int32');
        const choose = (row: number, layer: number): void => {
          if (!(Number.isInteger(layer) && layer >= 0 && layer < C))
            throw new Error(`a choice of layer ${layer} outside 0..${C - 1}`);
          // A sample without supervised tokens (its prompt fills maxSeqLen) trains nothing, and is not
          // even run when its micro-batch has no other sample: it is not counted either way.
          const sample = mbSamples[row]!;
          if (sample.supervised === 0) return;
          const li = c.languageIndex.get(sample.language ?? UNKNOWN_LANGUAGE)!;
          choices[li * C + layer] = choices[li * C + layer]! + 1;
        };
        const input: RowLossInput = {
          inputIds: ids,
          labels,
          samples: mbSamples,
          sampleIndices: mb,
          step: c.step,
          ...(C > 0 ? { choose } : {}),
        };
        const prepared = c.loss.prepare?.(input);
        const r = tf.variableGrads(() => {
          rows = tf.keep(c.loss(prepared ? { ...input, prepared } : input));
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
        const sample = c.samples.get(c.sampleRecords[i]!, c.epoch);
        const li = c.languageIndex.get(sample.language ?? UNKNOWN_LANGUAGE)!;
        langNll[li] = langNll[li]! + rowNll[b]!;
        langTokens[li] = langTokens[li]! + sample.supervised;
      });
    }
  } catch (e) {
    acc?.forEach((t) => t.dispose());
    throw e;
  }
  return { grads: acc, nllSum, supervised, tokens, langNll, langTokens, choices };
}

/**
 * This rank's head of the reduced vector: [nll sum, supervised, tokens, nll per language,
 * supervised per language] (reduced-head.ts checks the sum).
 */
export function stepHead(g: StepGradients): Float32Array {
  const L = g.langNll.length;
  const head = new Float32Array(headLength(L, L > 0 ? g.choices.length / L : 0));
  head[0] = g.nllSum;
  head[1] = g.supervised;
  head[2] = g.tokens;
  head.set(g.langNll, 3);
  head.set(g.langTokens, 3 + L);
  head.set(g.choices, 3 + 2 * L);
  return head;
}

export interface AppliedStep {
  /** Mean token NLL over the global batch (NaN without supervised tokens). */
  readonly loss: number;
  readonly gradNorm: number;
  /** A non-finite loss or gradient: nothing was applied. */
  readonly skipped: boolean;
  readonly globalSupervised: number;
  readonly globalTokens: number;
  /** Mean token NLL per language of the global batch (languages with supervised tokens in it). */
  readonly lossByLanguage: Record<string, number>;
  /** The global batch's choices per language, a count per layer (languages with a choice; empty without). */
  readonly choicesByLanguage: Record<string, number[]>;
}

/**
 * DESIGN.md's loss and update from the reduced [head, gradients]: the gradients divided (in place)
 * by the global number of supervised tokens, clipped, and applied by the optimizer to `master`,
 * which is then copied into `vars`. A global batch without supervised tokens changes nothing.
 */
export function applyReducedGradients(c: {
  readonly reduced: Float32Array;
  readonly languages: readonly string[];
  readonly sizes: readonly number[];
  readonly gradClip: number;
  readonly optimizer: Optimizer;
  readonly master: readonly Float32Array[];
  readonly vars: readonly tf.Variable[];
  readonly lr: number;
  /** Layers a sample's choice ranges over (as in the head). @default 0 */
  readonly choiceLayers?: number;
}): AppliedStep {
  const { reduced } = c;
  const L = c.languages.length;
  const C = c.choiceLayers ?? 0;
  const globalSupervised = reduced[1]!;
  const globalTokens = reduced[2]!;
  let gradNorm = 0;
  let loss = NaN;
  let skipped = false;
  if (globalSupervised > 0) {
    loss = reduced[0]! / globalSupervised;
    const grads: Float32Array[] = [];
    let off = headLength(L, C);
    for (const n of c.sizes) {
      const g = reduced.subarray(off, off + n);
      for (let j = 0; j < n; j++) g[j] = g[j]! / globalSupervised;
      grads.push(g);
      off += n;
    }
    gradNorm = clipGradNorm(grads, c.gradClip);
    skipped = !Number.isFinite(loss) || !Number.isFinite(gradNorm);
    if (!skipped) {
      c.optimizer.step(c.master, grads, c.lr);
      c.vars.forEach((v, i) => tf.tidy(() => v.assign(tf.tensor(c.master[i]!, v.shape))));
    }
  }
  const lossByLanguage: Record<string, number> = {};
  c.languages.forEach((lang, li) => {
    const n = reduced[3 + L + li]!;
    if (n > 0) lossByLanguage[lang] = reduced[3 + li]! / n;
  });
  const choicesByLanguage: Record<string, number[]> = {};
  c.languages.forEach((lang, li) => {
    const counts = Array.from(reduced.subarray(3 + 2 * L + li * C, 3 + 2 * L + (li + 1) * C));
    if (counts.some((n) => n > 0)) choicesByLanguage[lang] = counts;
  });
  return { loss, gradNorm, skipped, globalSupervised, globalTokens, lossByLanguage, choicesByLanguage };
}
