/**
 * Greedy decoding with a KV cache, for a batch of prompts. Prompts are left-padded to a common
 * length, so every row's next token sits in the last column; padding is excluded by an attention
 * mask and positions count only real tokens (HF: position_ids = cumsum(attention_mask) - 1), so a
 * padded row decodes exactly as it would alone. The prefill runs the whole prompt once; each
 * further step feeds one token per row through the cached keys and values (the same layer code as
 * training: `LlamaModel.forwardHidden`).
 *
 * A `prefix` (vectors before each prompt: LinguaLIFT's mapped encoder states) enters at the
 * prefill through the embeddings hook; it is context in the cache like the prompt, so the
 * positions of every later step count its real vectors too (its left padding is masked as the
 * prompt's is).
 */
import * as tf from '@tensorflow/tfjs-core';
import { eosIds as configEosIds } from '../../common/model-config.js';
import type { KvCache, LlamaModel } from './llama.js';
import type { ForwardHooks, PromptHooks } from './hooks.js';
import { MASKED } from './ops.js';
import type { ModelTokenizer } from './tokenizer.js';

export const FinishReason = { eos: 'eos', stop: 'stop', length: 'length' } as const;
export type FinishReason = keyof typeof FinishReason;

/** @default 128 */
export const DEFAULT_MAX_NEW_TOKENS = 128;

export interface GenerateIdsOptions {
  /** @default DEFAULT_MAX_NEW_TOKENS */
  maxNewTokens?: number;
  /** Token ids that end a row (not included in its output). @default the config's eos_token_id */
  eosIds?: readonly number[];
  /** The left-padding token (any id: padding is masked). @default the first EOS id, else 0 */
  padId?: number;
  /** Called after each new token; returning true ends the row with reason `stop`. */
  shouldStop?: (row: number, ids: readonly number[]) => boolean;
  signal?: AbortSignal;
  /**
   * A method's forward hooks (hooks.ts), at the prefill and at every decoding step (T = 1 then);
   * not prepending, which a KV cache does not allow. @default none
   */
  hooks?: ForwardHooks;
  /**
   * Hooks made for these prompts (token ids, as given), when they depend on them (CC-Tuning's
   * transform: a first pass over each prompt); not with `hooks`. @default none
   */
  hooksFor?: PromptHooks;
  /** Vectors before each row's prompt, at the prefill (the caller disposes them). @default none */
  prefix?: GenerationPrefix;
  /** Each step's next-token logits [B, vocab] (row-major), step 0 the prefill's. @default none */
  onLogits?: (step: number, logits: Float32Array) => void;
}

/** Vectors put before each prompt (a method's soft prefix), left-padded across the batch. */
export interface GenerationPrefix {
  /** [B, P, hiddenSize]. */
  readonly vectors: tf.Tensor3D;
  /** Per row, how many of the P vectors are padding, at the front. @default none */
  readonly pad?: Int32Array;
}

/**
 * What a trained method adds to generation besides hooks: vectors before each prompt, made from
 * the question itself (LinguaLIFT: the mapped encoder states of the question).
 */
export interface PromptPrefixer {
  /** The prefix of these questions (raw text, before any template); the caller disposes the vectors. */
  prefix(questions: readonly string[]): GenerationPrefix;
  /**
   * The LLM's own prompt when the prefix stands for the question (LinguaLIFT's `replace`: a start
   * token); absent, the LLM gets the templated question as usual. @default absent
   */
  readonly promptIds?: readonly number[];
}

/**
 * A method's hooks for these prompts: `hooks`, or those `hooksFor` makes (`lastColumn`: see
 * PromptHooks). Both given is a caller's error (one would be dropped silently).
 */
export function methodHooks(
  options: { readonly hooks?: ForwardHooks | undefined; readonly hooksFor?: PromptHooks | undefined },
  prompts: readonly (readonly number[])[],
  lastColumn?: Int32Array,
): ForwardHooks | undefined {
  if (options.hooks && options.hooksFor)
    throw new Error('both hooks and hooksFor given: a method has one or the other');
  return options.hooks ?? options.hooksFor?.(prompts, lastColumn);
}

/**
 * `hooks` with `vectors` [B, P, H] prepended through the embeddings hook, beside the method's own
 * embeddings edit (which must not prepend too); `pad`: the hook's `prependPad`.
 */
export function prependingHooks(hooks: ForwardHooks | undefined, vectors: tf.Tensor3D, pad?: Int32Array): ForwardHooks {
  return {
    ...hooks,
    embeddings: (x, shape) => {
      const edit = hooks?.embeddings?.(x, shape) ?? {};
      if (edit.prepend) throw new Error('a prefix and hooks that prepend vectors too');
      return { ...edit, prepend: vectors, ...(pad ? { prependPad: pad } : {}) };
    },
  };
}

export interface GeneratedIds {
  /** New tokens per row, without the prompt and without the EOS that ended it. */
  ids: number[][];
  finishReason: FinishReason[];
}

/**
 * Runs one decoding step in a tidy scope, keeping only the argmax tokens (read out) and the new
 * cache (returned; the caller disposes it).
 */
function runStep(
  fn: () => { logits: tf.Tensor; cache: KvCache },
  onLogits?: (logits: Float32Array) => void,
): { next: Int32Array; cache: KvCache } {
  let length = 0;
  const [token, ...kv] = tf.tidy(() => {
    const r = fn();
    length = r.cache.length;
    if (onLogits) onLogits(r.logits.dataSync() as Float32Array);
    return [tf.argMax(r.logits, 1), ...r.cache.k, ...r.cache.v];
  });
  const next = Int32Array.from(token!.dataSync());
  token!.dispose();
  const n = kv.length / 2;
  return { next, cache: { k: kv.slice(0, n) as tf.Tensor4D[], v: kv.slice(n) as tf.Tensor4D[], length } };
}

/** Greedy continuation of each prompt (token ids, BOS included if wanted). */
export async function generateIds(
  model: LlamaModel,
  prompts: readonly (readonly number[])[],
  options: GenerateIdsOptions = {},
): Promise<GeneratedIds> {
  const B = prompts.length;
  const maxNew = options.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  const eos = new Set(options.eosIds ?? configEosIds(model.config));
  const padId = options.padId ?? [...eos][0] ?? 0;
  const out: number[][] = prompts.map(() => []);
  const finish: (FinishReason | undefined)[] = prompts.map(() => undefined);
  if (B === 0) return { ids: [], finishReason: [] };
  if (prompts.some((p) => p.length === 0)) throw new Error('generateIds: empty prompt (add BOS)');
  if (maxNew <= 0) return { ids: out, finishReason: prompts.map(() => 'length') };

  const prefix = options.prefix;
  const P = prefix?.vectors.shape[1] ?? 0;
  if (prefix && (prefix.vectors.shape[0] !== B || (prefix.pad && prefix.pad.length !== B))) {
    throw new Error(`generateIds: the prefix is for ${prefix.vectors.shape[0]} rows, the prompts are ${B}`);
  }
  const padOf = (b: number): number => prefix?.pad?.[b] ?? 0;
  const L = Math.max(...prompts.map((p) => p.length));
  // The prefill's columns: the prefix's P, then the prompt's L (both left-padded).
  const C = P + L;
  // Which cache columns are real: padding is not; every generated column is.
  const valid: Uint8Array[] = prompts.map((p, b) => {
    const v = new Uint8Array(C);
    v.fill(1, padOf(b), P);
    v.fill(1, C - p.length);
    return v;
  });
  const ids = new Int32Array(B * L).fill(padId);
  prompts.forEach((p, b) => ids.set(p, b * L + L - p.length));
  // Positions count the real columns before (HF: cumsum(attention_mask) - 1); padding takes any
  // position, it is masked (HF uses 1).
  const positions = new Int32Array(B * C).fill(1);
  const nextPos = prompts.map(() => 0);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < C; j++) if (valid[b]![j]) positions[b * C + j] = nextPos[b]!++;
  }
  // Prefill mask [B, 1, 1, C, C]: query i sees real keys j <= i. A padded query sees no key;
  // its uniform softmax is harmless (its output is never used).
  const prefillMask = new Float32Array(B * C * C).fill(MASKED);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < C; i++) for (let j = 0; j <= i; j++) if (valid[b]![j]) prefillMask[(b * C + i) * C + j] = 0;
  }

  const hooks = methodHooks(options, prompts);
  // The prefix goes in through the embeddings hook at the prefill only (its padding: the mask above).
  const prefillHooks = prefix ? prependingHooks(hooks, prefix.vectors) : hooks;
  let step = 0;
  const logitsOf = options.onLogits ? (l: Float32Array) => options.onLogits!(step, l) : undefined;
  let cache: KvCache | undefined;
  try {
    const prefill = runStep(() => {
      const f = model.forwardHidden(tf.tensor2d(ids, [B, L], 'int32'), {
        positions,
        mask: tf.tensor(prefillMask, [B, 1, 1, C, C]),
        returnCache: true,
        ...(prefillHooks ? { hooks: prefillHooks } : {}),
      });
      const last = tf.gather(
        f.hidden,
        tf.tensor1d(
          prompts.map((_, b) => b * L + L - 1),
          'int32',
        ),
      );
      return { logits: model.head(last), cache: f.cache! };
    }, logitsOf);
    cache = prefill.cache;
    let next = prefill.next;
    for (;;) {
      for (let b = 0; b < B; b++) {
        if (finish[b]) continue;
        const t = next[b]!;
        if (eos.has(t)) finish[b] = 'eos';
        else {
          out[b]!.push(t);
          if (options.shouldStop?.(b, out[b]!)) finish[b] = 'stop';
          else if (out[b]!.length >= maxNew) finish[b] = 'length';
        }
      }
      if (finish.every((f) => f !== undefined)) break;
      if (options.signal?.aborted) throw options.signal.reason ?? new Error('generation aborted');
      // Let other work (heartbeats, signals) run between steps.
      await new Promise((resolve) => setImmediate(resolve));

      const prev: KvCache = cache;
      const past = prev.length;
      const stepIds = Int32Array.from(prompts.map((_, b) => (finish[b] ? padId : next[b]!)));
      const stepPos = Int32Array.from(nextPos);
      // [B, 1, 1, 1, past + 1]: every column but the left padding.
      const stepMask = new Float32Array(B * (past + 1));
      for (let b = 0; b < B; b++) for (let j = 0; j < C; j++) if (!valid[b]![j]) stepMask[b * (past + 1) + j] = MASKED;
      step++;
      const r = runStep(() => {
        const f = model.forwardHidden(tf.tensor2d(stepIds, [B, 1], 'int32'), {
          positions: stepPos,
          mask: tf.tensor(stepMask, [B, 1, 1, 1, past + 1]),
          cache: prev,
          ...(hooks ? { hooks } : {}),
        });
        return { logits: model.head(f.hidden), cache: f.cache! };
      }, logitsOf);
      cache = r.cache;
      tf.dispose([...prev.k, ...prev.v]);
      next = r.next;
      for (let b = 0; b < B; b++) nextPos[b]!++;
    }
  } finally {
    if (cache) tf.dispose([...cache.k, ...cache.v]);
  }
  return { ids: out, finishReason: finish as FinishReason[] };
}

export interface GenerateOptions {
  /** @default DEFAULT_MAX_NEW_TOKENS */
  maxNewTokens?: number;
  /** Stop once the generated text contains one of these; the text is cut before it. */
  stop?: readonly string[];
  /** Prepend BOS to each prompt. @default the tokenizer's add_bos_token */
  addBos?: boolean;
  signal?: AbortSignal;
  /** A method's forward hooks (see GenerateIdsOptions). @default none */
  hooks?: ForwardHooks;
  /** Hooks made for the encoded prompts (see GenerateIdsOptions). @default none */
  hooksFor?: PromptHooks;
  /** Vectors before each prompt (see GenerateIdsOptions). @default none */
  prefix?: GenerationPrefix;
}

export interface Generation {
  /** The generated text, special tokens skipped, cut before a stop string. */
  text: string;
  /** The generated token ids (ending with the stop string's tokens when stopped by one). */
  ids: number[];
  finishReason: FinishReason;
}

/** Greedy generation for prompts given as text (encoded here) or as token ids (used as they are). */
export async function generate(
  model: LlamaModel,
  tokenizer: ModelTokenizer,
  prompts: readonly (string | readonly number[])[],
  options: GenerateOptions = {},
): Promise<Generation[]> {
  const encoded = prompts.map((p) =>
    typeof p === 'string' ? tokenizer.encode(p, options.addBos === undefined ? {} : { addBos: options.addBos }) : p,
  );
  const eos = new Set(configEosIds(model.config));
  if (tokenizer.eosId !== undefined) eos.add(tokenizer.eosId);
  const stops = (options.stop ?? []).filter((s) => s.length > 0);
  const r = await generateIds(model, encoded, {
    maxNewTokens: options.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
    eosIds: [...eos],
    padId: tokenizer.padId ?? [...eos][0] ?? 0,
    ...(stops.length > 0
      ? { shouldStop: (_row: number, ids: readonly number[]) => stops.some((s) => tokenizer.decode(ids).includes(s)) }
      : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.hooks ? { hooks: options.hooks } : {}),
    ...(options.hooksFor ? { hooksFor: options.hooksFor } : {}),
    ...(options.prefix ? { prefix: options.prefix } : {}),
  });
  return r.ids.map((ids, b) => {
    let text = tokenizer.decode(ids);
    if (r.finishReason[b] === 'stop') {
      const cut = Math.min(...stops.map((s) => text.indexOf(s)).filter((i) => i >= 0));
      text = text.slice(0, cut);
    }
    return { text, ids, finishReason: r.finishReason[b]! };
  });
}
