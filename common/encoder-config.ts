/**
 * The HF `config.json` of a multilingual encoder (LinguaLIFT's, common/methods/lingualift.ts): the
 * mT5 / T5 v1.1 encoder (`T5EncoderModel`, `MT5EncoderModel`, or the encoder half of a
 * `*ForConditionalGeneration` checkpoint), read into a typed `T5Config`, and the tensor names and
 * shapes of its encoder in the HF layout. Other architectures are refused by name, naming the file:
 * the coordinator checks an encoder with this before it accepts a job, the worker loads it.
 *
 * Only what HF's `modeling_t5.py` computes for T5 v1.1 / mT5 is accepted: `feed_forward_proj:
 * gated-gelu` (`wi_0`, `wi_1`, `wo`, `gelu_new`), one relative attention bias shared by every
 * block (UMT5's per-block bias is another architecture), no dropout at inference.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jsonSyntaxProblem, ModelLoadError } from './errors.js';

/** `model_type`s whose encoder this is. */
export const ENCODER_MODEL_TYPES = ['t5', 'mt5'] as const;
/** `architectures` entries accepted (the encoder is taken from a full model too). */
export const ENCODER_ARCHITECTURES = [
  'T5EncoderModel',
  'MT5EncoderModel',
  'T5ForConditionalGeneration',
  'MT5ForConditionalGeneration',
  'T5Model',
  'MT5Model',
] as const;

export interface T5Config {
  modelType: (typeof ENCODER_MODEL_TYPES)[number];
  vocabSize: number;
  /** d_model */
  hiddenSize: number;
  /** d_kv: the width of one head (not d_model / heads in mT5). */
  headDim: number;
  /** d_ff */
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  relativeAttentionNumBuckets: number;
  relativeAttentionMaxDistance: number;
  layerNormEps: number;
  padTokenId: number;
  eosTokenId: number;
  /** The raw JSON. */
  raw: Record<string, unknown>;
}

type Json = Record<string, unknown>;

function shown(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (typeof v === 'string') return /^[A-Za-z0-9_.-]{1,40}$/.test(v) ? JSON.stringify(v) : 'a string';
  return Array.isArray(v) ? 'an array' : 'an object';
}

/** Validates a parsed encoder `config.json`; `file` names it in every error. */
export function parseT5Config(raw: unknown, file = 'config.json'): T5Config {
  const fail = (msg: string): never => {
    throw new ModelLoadError(file, msg);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('not a JSON object');
  const obj = raw as Json;
  const archs = obj['architectures'];
  if (Array.isArray(archs) && archs.length > 0) {
    const known = archs.find((a) => (ENCODER_ARCHITECTURES as readonly unknown[]).includes(a));
    if (known === undefined) {
      fail(
        `architecture ${archs.map(shown).join(', ')} is not a supported encoder ` +
          `(supported: ${ENCODER_ARCHITECTURES.join(', ')})`,
      );
    }
  }
  const mt = obj['model_type'];
  if (!(ENCODER_MODEL_TYPES as readonly unknown[]).includes(mt)) {
    fail(`model_type ${shown(mt)} is not a supported encoder (supported: ${ENCODER_MODEL_TYPES.join(', ')})`);
  }
  const ff = obj['feed_forward_proj'] ?? 'relu';
  if (ff !== 'gated-gelu') {
    fail(`feed_forward_proj ${shown(ff)} is not supported (only gated-gelu: T5 v1.1 and mT5)`);
  }
  const int = (key: string, dflt?: number, min = 1): number => {
    const v = obj[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min)
      fail(`${key} must be an integer >= ${min}, got ${shown(v)}`);
    return v as number;
  };
  const eps = obj['layer_norm_epsilon'] ?? 1e-6;
  if (typeof eps !== 'number' || !(eps > 0)) fail(`layer_norm_epsilon must be a positive number, got ${shown(eps)}`);
  const numLayers = int('num_layers');
  const buckets = int('relative_attention_num_buckets', 32, 2);
  const maxDistance = int('relative_attention_max_distance', 128, 2);
  if (buckets / 2 / 2 >= maxDistance) {
    fail(`relative_attention_max_distance (${maxDistance}) must exceed relative_attention_num_buckets / 4`);
  }
  return {
    modelType: mt as T5Config['modelType'],
    vocabSize: int('vocab_size'),
    hiddenSize: int('d_model'),
    headDim: int('d_kv'),
    intermediateSize: int('d_ff'),
    numLayers,
    numHeads: int('num_heads'),
    relativeAttentionNumBuckets: buckets,
    relativeAttentionMaxDistance: maxDistance,
    layerNormEps: eps as number,
    padTokenId: int('pad_token_id', 0, 0),
    eosTokenId: int('eos_token_id', 1, 0),
    raw: obj,
  };
}

/** Reads and validates `dir/config.json` as an encoder's. */
export async function readT5Config(dir: string): Promise<T5Config> {
  const file = join(dir, 'config.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ModelLoadError(file, code === 'ENOENT' ? 'no such file' : String(e), { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ModelLoadError(file, jsonSyntaxProblem(e));
  }
  return parseT5Config(raw, file);
}

/** The token embedding: `shared.weight` in a T5 checkpoint, `encoder.embed_tokens.weight` when only that is stored. */
export const T5_EMBEDDING_NAMES = ['shared.weight', 'encoder.embed_tokens.weight'] as const;

/** The name of a block's tensor, e.g. `t5BlockTensorName(2, 'layer.1.DenseReluDense.wo.weight')`. */
export function t5BlockTensorName(block: number, suffix: string): string {
  return `encoder.block.${block}.${suffix}`;
}

/**
 * The encoder's tensors in the HF layout (linear weights [out, in]), name -> shape, with
 * `embedding` the name the checkpoint stores the token embedding under.
 */
export function t5EncoderTensorShapes(c: T5Config, embedding: string = T5_EMBEDDING_NAMES[0]): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const inner = c.numHeads * c.headDim;
  m.set(embedding, [c.vocabSize, c.hiddenSize]);
  for (let i = 0; i < c.numLayers; i++) {
    const l = (s: string, shape: number[]): void => void m.set(t5BlockTensorName(i, s), shape);
    l('layer.0.layer_norm.weight', [c.hiddenSize]);
    l('layer.0.SelfAttention.q.weight', [inner, c.hiddenSize]);
    l('layer.0.SelfAttention.k.weight', [inner, c.hiddenSize]);
    l('layer.0.SelfAttention.v.weight', [inner, c.hiddenSize]);
    l('layer.0.SelfAttention.o.weight', [c.hiddenSize, inner]);
    if (i === 0) l('layer.0.SelfAttention.relative_attention_bias.weight', [c.relativeAttentionNumBuckets, c.numHeads]);
    l('layer.1.layer_norm.weight', [c.hiddenSize]);
    l('layer.1.DenseReluDense.wi_0.weight', [c.intermediateSize, c.hiddenSize]);
    l('layer.1.DenseReluDense.wi_1.weight', [c.intermediateSize, c.hiddenSize]);
    l('layer.1.DenseReluDense.wo.weight', [c.hiddenSize, c.intermediateSize]);
  }
  m.set('encoder.final_layer_norm.weight', [c.hiddenSize]);
  return m;
}

/** Parameters of the encoder (what the memory plan counts: it is held frozen, in float32). */
export function t5EncoderParameters(c: T5Config): number {
  let n = 0;
  for (const shape of t5EncoderTensorShapes(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * Multiply-adds of one encoder forward pass over `tokens` positions in rows of length `T` (the
 * cost per step the trainer reports): the projections, and the attention scores and mix.
 */
export function t5EncoderMacs(c: T5Config, tokens: number, T: number): number {
  const inner = c.numHeads * c.headDim;
  const perToken = c.numLayers * (4 * c.hiddenSize * inner + 3 * c.hiddenSize * c.intermediateSize + 2 * inner * T);
  return perToken * tokens;
}
