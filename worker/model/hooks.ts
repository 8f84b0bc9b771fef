/**
 * Hook points of the decoder's forward pass: where a method reads activations or adds to them
 * without its code living in llama.ts. Every hook is optional and called only when given, so an
 * unused one costs a property test per layer (the quickstart model's forward time is unchanged).
 *
 *   x = embed_tokens[ids]                       <- `embeddings`: add vectors, or prepend vectors
 *   per layer l:
 *     h = RMSNorm(x)                            <- `linearInput(l, 'self_attn.q_proj' | k | v, h)`
 *     x = x + o_proj(attn)                      <- `linearInput(l, 'self_attn.o_proj', attn)`
 *     h = RMSNorm(x)                            <- `linearInput(l, 'mlp.gate_proj' | 'mlp.up_proj', h)`
 *     g = gate_proj h                           <- `gate(l, g)` (the layer analysis)
 *     f = down_proj(silu(g) * up_proj h)        <- `linearInput(l, 'mlp.down_proj', ...)`, `ffnOutput(l, f)`
 *     x = x + f                                 <- `afterLayer(l, x)`: read, or add at positions
 *   logits = lm_head(RMSNorm(x))
 *
 * Activations are 2-D, [B*T, width], row b*T+t for batch row b and position t (T includes
 * prepended vectors). Hooks run inside the caller's `tf.tidy` scope and, under a gradient tape,
 * on the tape: a tensor a read hook wants to keep past the forward pass must be `tf.keep`-ed (and
 * disposed by it). What a hook returns to add is differentiated like the rest of the forward,
 * so extra modules (their variables) that produce it get gradients. With gradient checkpointing
 * the read hooks inside a layer (`linearInput`, `gate`, `ffnOutput`) see the forward pass only,
 * not the layer's recomputation in the backward pass.
 */
import type * as tf from '@tensorflow/tfjs-core';

/** The projections of a decoder layer, by their HF name under `model.layers.<l>.`. */
export const LINEAR_NAMES = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
] as const;
export type LinearName = (typeof LINEAR_NAMES)[number];

/** The shape of the forward pass a hook is called in. */
export interface HookShape {
  readonly B: number;
  /** Positions a row has in the decoder (input tokens plus prepended vectors). */
  readonly T: number;
}

/** What a hook adds: `add` [B*T, H], or with `rows` (flat indices b*T+t), [rows.length, H] added at those rows. */
export interface AddRows {
  readonly add: tf.Tensor2D;
  readonly rows?: Int32Array;
}

/** What the `embeddings` hook may do to the input embeddings. */
export interface EmbeddingEdit extends Partial<AddRows> {
  /**
   * [B, P, H]: vectors put before each row's tokens (a soft prompt, an encoder's output). The
   * decoder then runs over P + T positions (causal, positions 0..P+T-1); the forward's result
   * has the T input positions only. Not with a KV cache; explicit positions and mask (a
   * generation prefill) then cover the P + T positions.
   */
  readonly prepend?: tf.Tensor3D;
  /**
   * With `prepend`: per row, how many of the P prepended vectors are padding, at the front (rows
   * whose prefixes differ in length). The padding is masked out as keys and the row's positions
   * start at its first real vector (HF's left padding with an attention mask). @default none
   */
  readonly prependPad?: Int32Array;
}

export interface ForwardHooks {
  /** The input embeddings [B*T, H] of the input ids; may add vectors to rows or prepend vectors. */
  embeddings?(x: tf.Tensor2D, shape: HookShape): EmbeddingEdit | void;
  /** The hidden state after decoder layer `layer` [B*T, H] (the residual stream); may add at rows. */
  afterLayer?(layer: number, hidden: tf.Tensor2D, shape: HookShape): AddRows | void;
  /** The FFN output of `layer` before the residual add, down_proj(...) [B*T, H] (read). */
  ffnOutput?(layer: number, out: tf.Tensor2D, shape: HookShape): void;
  /** The input [B*T, in] of each projection of `layer` (read: calibration statistics such as Wanda's norms). */
  linearInput?(layer: number, linear: LinearName, x: tf.Tensor2D, shape: HookShape): void;
  /**
   * The FFN gate pre-activation of `layer`, gate_proj(h) [B*T, intermediate] (read; SiLU(gate) > 0
   * exactly when gate > 0): the layer analysis (worker/methods/layer-analysis.ts).
   */
  gate?(layer: number, gate: tf.Tensor2D, shape: HookShape): void;
}

/**
 * Hooks made for a batch of prompts (token ids), when they depend on them (CC-Tuning's transform:
 * a first pass over each prompt); generate.ts and choice scoring call it once per batch.
 * `lastColumn`: per row, the column of the prompt's last token in the first forward pass the hooks
 * see (any prepended prefix counted); absent, the last column (generate.ts left-pads its prompts).
 */
export type PromptHooks = (prompts: readonly (readonly number[])[], lastColumn?: Int32Array) => ForwardHooks;

/** The hooks that read inside a layer dropped: what a checkpointed layer's recomputation gets. */
export function withoutReadHooks(hooks: ForwardHooks | undefined): ForwardHooks | undefined {
  if (!hooks) return undefined;
  const { linearInput: _l, gate: _g, ffnOutput: _f, ...rest } = hooks;
  return rest;
}
