/**
 * Scoring a `choice` problem (common/choice-records.ts) as the pruning paper scores XNLI and MARC:
 * each candidate label is appended to the prompt and scored by its mean per-token log-prob,
 * log p(label tokens | prompt) / (label tokens); the prediction is the candidate with the highest
 * (ties: the first). The prompt is taken as it is (no template), with the model's default BOS;
 * each candidate is tokenized on its own (no BOS or EOS) and appended to the prompt's tokens, so
 * every candidate is scored after the same context. Rows are right-padded and batched: padding
 * after a row's tokens takes no loss and, attention being causal, changes nothing before it.
 *
 * A trained method's inference applies as in generation (evaluate.ts): its `hooks`, or the hooks
 * `hooksFor` makes over the prompts' ids (CC-Tuning's transform, injected at each prompt's last
 * token), and a `prefixer`'s vectors before each prompt (LinguaLIFT; with its `promptIds` the LLM's
 * prompt is those ids instead of the question's).
 */
import * as tf from '@tensorflow/tfjs-core';
import { IGNORE_INDEX } from '../../common/records.js';
import { methodHooks, prependingHooks, type PromptPrefixer } from '../model/generate.js';
import type { ForwardHooks, PromptHooks } from '../model/hooks.js';
import type { LlamaModel } from '../model/llama.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { Problem } from './problems.js';

export interface ChoiceScore {
  /** Index of the chosen candidate. */
  readonly prediction: number;
  /** Per candidate, the mean log-prob of its tokens. */
  readonly meanLogProbs: readonly number[];
}

/** A trained method's inference in scoring (see evaluate.ts `EvaluateOptions`). @default none */
export interface ChoiceInference {
  readonly hooks?: ForwardHooks | undefined;
  readonly hooksFor?: PromptHooks | undefined;
  readonly prefixer?: PromptPrefixer | undefined;
}

/** Scores `problems` (each with `choices`), `batchSize` rows (prompt + one candidate) a forward pass. */
export function scoreChoices(
  model: LlamaModel,
  tokenizer: ModelTokenizer,
  problems: readonly Problem[],
  batchSize: number,
  inference: ChoiceInference = {},
): ChoiceScore[] {
  const { prefixer } = inference;
  const rows: { problem: number; ids: number[]; from: number }[] = [];
  problems.forEach((p, i) => {
    if (!p.choices) throw new Error(`problem ${p.index} of ${p.benchmark}/${p.language} has no choices`);
    const context = prefixer?.promptIds ? [...prefixer.promptIds] : tokenizer.encode(p.question, { addEos: false });
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
    const prefix = prefixer
      ? rowPrefix(
          prefixer,
          batch.map((r) => problems[r.problem]!.question),
        )
      : undefined;
    let nll: number[], tokens: number[];
    try {
      const P = prefix?.vectors.shape[1] ?? 0;
      const prompts = batch.map((r) => r.ids.slice(0, r.from));
      const own = methodHooks(
        inference,
        prompts,
        Int32Array.from(batch, (r) => P + r.from - 1),
      );
      const hooks = prefix ? prependingHooks(own, prefix.vectors, prefix.pad) : own;
      ({ nll, tokens } = tf.tidy(() =>
        model.nllPerRow(
          tf.tensor2d(ids, [B, T], 'int32'),
          tf.tensor2d(labels, [B, T], 'int32'),
          hooks ? { hooks } : {},
        ),
      ));
    } finally {
      prefix?.vectors.dispose();
    }
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

/** The prefixer's vectors of each row's question, made once per distinct question of the batch. */
function rowPrefix(prefixer: PromptPrefixer, questions: readonly string[]): { vectors: tf.Tensor3D; pad?: Int32Array } {
  const distinct = [...new Set(questions)];
  const at = questions.map((q) => distinct.indexOf(q));
  const made = prefixer.prefix(distinct);
  try {
    const vectors = tf.gather(made.vectors, at);
    return made.pad ? { vectors, pad: Int32Array.from(at, (i) => made.pad![i]!) } : { vectors };
  } finally {
    made.vectors.dispose();
  }
}
