/**
 * Greedy decoding with a KV cache, for a batch of prompts. Prompts are left-padded to a common
 * length, so every row's next token sits in the last column; padding is excluded by an attention
 * mask and positions count only real tokens (HF: position_ids = cumsum(attention_mask) - 1), so a
 * padded row decodes exactly as it would alone. The prefill runs the whole prompt once; each
 * further step feeds one token per row through the cached keys and values (the same layer code as
 * training: `LlamaModel.forwardHidden`).
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
   * transform: a first pass over each prompt); used when `hooks` is absent. @default none
   */
  hooksFor?: PromptHooks;
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
function runStep(fn: () => { token: tf.Tensor; cache: KvCache }): { next: Int32Array; cache: KvCache } {
  let length = 0;
  const [token, ...kv] = tf.tidy(() => {
    const r = fn();
    length = r.cache.length;
    return [r.token, ...r.cache.k, ...r.cache.v];
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

  const L = Math.max(...prompts.map((p) => p.length));
  // Which cache columns are real tokens: left padding is not; every generated column is.
  const valid: Uint8Array[] = prompts.map((p) => {
    const v = new Uint8Array(L);
    v.fill(1, L - p.length);
    return v;
  });
  const ids = new Int32Array(B * L).fill(padId);
  const positions = new Int32Array(B * L).fill(1); // pads: any position, they are masked (HF uses 1)
  prompts.forEach((p, b) => {
    for (let j = 0; j < p.length; j++) {
      ids[b * L + L - p.length + j] = p[j]!;
      positions[b * L + L - p.length + j] = j;
    }
  });
  // Prefill mask [B, 1, 1, L, L]: query i sees real keys j <= i. A padded query sees no key;
  // its uniform softmax is harmless (its output is never used).
  const prefillMask = new Float32Array(B * L * L).fill(MASKED);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < L; i++) for (let j = 0; j <= i; j++) if (valid[b]![j]) prefillMask[(b * L + i) * L + j] = 0;
  }

  const nextPos = prompts.map((p) => p.length);
  const hooks = options.hooks ?? options.hooksFor?.(prompts);
  let cache: KvCache | undefined;
  try {
    const prefill = runStep(() => {
      const f = model.forwardHidden(tf.tensor2d(ids, [B, L], 'int32'), {
        positions,
        mask: tf.tensor(prefillMask, [B, 1, 1, L, L]),
        returnCache: true,
        ...(hooks ? { hooks } : {}),
      });
      const last = tf.gather(
        f.hidden,
        tf.tensor1d(
          prompts.map((_, b) => b * L + L - 1),
          'int32',
        ),
      );
      return { token: tf.argMax(model.head(last), 1), cache: f.cache! };
    });
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
      for (let b = 0; b < B; b++) for (let j = 0; j < L; j++) if (!valid[b]![j]) stepMask[b * (past + 1) + j] = MASKED;
      const r = runStep(() => {
        const f = model.forwardHidden(tf.tensor2d(stepIds, [B, 1], 'int32'), {
          positions: stepPos,
          mask: tf.tensor(stepMask, [B, 1, 1, 1, past + 1]),
          cache: prev,
          ...(hooks ? { hooks } : {}),
        });
        return { token: tf.argMax(model.head(f.hidden), 1), cache: f.cache! };
      });
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
}

export interface Generation {
  /** The generated text, special tokens skipped, cut before a stop string. */
  text: string;
  /** The generated token ids (ending with the stop string's tokens when stopped by one). */
  ids: number[];
  finishReason: FinishReason;
}

/** Greedy generation for text prompts. */
export async function generate(
  model: LlamaModel,
  tokenizer: ModelTokenizer,
  prompts: readonly string[],
  options: GenerateOptions = {},
): Promise<Generation[]> {
  const encoded = prompts.map((p) =>
    tokenizer.encode(p, options.addBos === undefined ? {} : { addBos: options.addBos }),
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
