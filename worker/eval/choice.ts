/**
 * Scoring a `choice` problem (common/choice-records.ts) as the pruning paper scores XNLI and MARC:
 * each candidate label is appended to the prompt and scored by its mean per-token log-prob,
 * log p(label tokens | prompt) / (label tokens); the prediction is the candidate with the highest
 * (ties: the first). The prompt is taken as it is (no template), with the model's default BOS;
 * each candidate is tokenized on its own (no BOS or EOS) and appended to the prompt's tokens, so
 * every candidate is scored after the same context. Rows are right-padded and batched: padding
 * after a row's tokens takes no loss and, attention being causal, changes nothing before it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { IGNORE_INDEX } from '../../common/records.js';
import type { ForwardHooks } from '../model/hooks.js';
import type { LlamaModel } from '../model/llama.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { Problem } from './problems.js';

export interface ChoiceScore {
  /** Index of the chosen candidate. */
  readonly prediction: number;
  /** Per candidate, the mean log-prob of its tokens. */
  readonly meanLogProbs: readonly number[];
}

/** Scores `problems` (each with `choices`), `batchSize` rows (prompt + one candidate) a forward pass. */
export function scoreChoices(
  model: LlamaModel,
  tokenizer: ModelTokenizer,
  problems: readonly Problem[],
  batchSize: number,
  hooks?: ForwardHooks,
): ChoiceScore[] {
  const rows: { problem: number; ids: number[]; from: number }[] = [];
  problems.forEach((p, i) => {
    if (!p.choices) throw new Error(`problem ${p.index} of ${p.benchmark}/${p.language} has no choices`);
    const context = tokenizer.encode(p.question, { addEos: false });
    for (const c of p.choices) {
      const cont = tokenizer.encode(c, { addBos: false, addEos: false });
      if (cont.length === 0) throw new Error(`the choice ${JSON.stringify(c)} has no tokens`);
      rows.push({ problem: i, ids: [...context, ...cont], from: context.length });
    }
  });
  const mean = new Float64Array(rows.length);
  const pad = tokenizer.padId ?? 0;
  for (let b = 0; b < rows.length; b += batchSize) {
    const batch = rows.slice(b, b + batchSize);
    const B = batch.length;
    const T = Math.max(...batch.map((r) => r.ids.length));
    const ids = new Int32Array(B * T).fill(pad);
    const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
    batch.forEach((r, k) => {
      ids.set(r.ids, k * T);
      for (let t = r.from; t < r.ids.length; t++) labels[k * T + t] = r.ids[t]!;
    });
    const { nll, tokens } = tf.tidy(() =>
      model.nllPerRow(tf.tensor2d(ids, [B, T], 'int32'), tf.tensor2d(labels, [B, T], 'int32'), hooks ? { hooks } : {}),
    );
    batch.forEach((_, k) => {
      mean[b + k] = -nll[k]! / tokens[k]!;
    });
  }
  const out: ChoiceScore[] = problems.map(() => ({ prediction: 0, meanLogProbs: [] }));
  let r = 0;
  problems.forEach((p, i) => {
    const scores = p.choices!.map(() => mean[r++]!);
    let best = 0;
    for (let k = 1; k < scores.length; k++) if (scores[k]! > scores[best]!) best = k;
    out[i] = { prediction: best, meanLogProbs: scores };
  });
  return out;
}
