/**
 * The HF `config.json` of a LLaMA-family model, read into a typed, validated `LlamaConfig`, and the
 * tensor names and shapes such a model has in the HF layout.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jsonSyntaxProblem, ModelLoadError, UserError } from './errors.js';

export const ModelType = { llama: 'llama', mistral: 'mistral', qwen2: 'qwen2' } as const;
export type ModelType = keyof typeof ModelType;

/** RoPE frequency scaling, as in transformers' `modeling_rope_utils.py`. */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | { type: 'dynamic'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

export interface LlamaConfig {
  modelType: ModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** Bias on q/k/v projections (Qwen2, or `attention_bias: true`). */
  attentionBias: boolean;
  /** Bias on o_proj: only with LLaMA's `attention_bias: true`; Qwen2 has none. */
  outputBias: boolean;
  /** Bias on the MLP projections (`mlp_bias`). */
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  /**
   * Sliding-window attention span (Mistral's `sliding_window`; Qwen2's when `use_sliding_window`),
   * or null. It changes nothing for sequences no longer than the window, which is all this
   * implementation accepts: a longer sequence is refused (see `checkSequenceLength`), never
   * silently computed with full attention.
   */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
  torchDtype: string | null;
  /** The raw JSON, to copy unchanged on export. */
  raw: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/**
 * A config value for an error message: numbers, booleans and short identifier-like strings as
 * they are (`"gpt2"`), anything else by its type and size only, so that a JSON file that is not a
 * model's config (a model path pointed at someone's credentials) is never quoted back.
 */
function shown(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (typeof v === 'string') {
    return /^[A-Za-z0-9_.-]{1,32}$/.test(v) ? JSON.stringify(v) : `a string of ${v.length} characters`;
  }
  return Array.isArray(v) ? 'an array' : 'an object';
}

class Reader {
  constructor(
    private readonly file: string,
    private readonly obj: Json,
  ) {}
  fail(msg: string): never {
    throw new ModelLoadError(this.file, msg);
  }
  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }
  int(key: string, dflt?: number): number {
    const v = this.obj[key] ?? dflt;
    if (v === undefined) this.fail(`missing ${key}`);
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
      this.fail(`${key} must be a positive integer, got ${shown(v)}`);
    return v;
  }
  num(key: string, dflt?: number): number {
    const v = this.obj[key] ?? dflt;
    if (v === undefined) this.fail(`missing ${key}`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      this.fail(`${key} must be a positive number, got ${shown(v)}`);
    return v;
  }
  bool(key: string, dflt: boolean): boolean {
    const v = this.obj[key] ?? dflt;
    if (typeof v !== 'boolean') this.fail(`${key} must be a boolean, got ${shown(v)}`);
    return v;
  }
  optTokenId(key: string): number | null {
    const v = this.obj[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(`${key} must be a token id, got ${shown(v)}`);
    return v;
  }
}

function parseRopeScaling(r: Reader, raw: unknown, file: string): RopeScaling | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) r.fail('rope_scaling must be an object or null');
  const s = new Reader(file, raw as Json);
  const rs = raw as Json;
  const type = rs['rope_type'] ?? rs['type'];
  switch (type) {
    case 'default':
      return null;
    case 'linear':
    case 'dynamic':
      return { type, factor: s.num('factor') };
    case 'llama3':
      return {
        type,
        factor: s.num('factor'),
        lowFreqFactor: s.num('low_freq_factor'),
        highFreqFactor: s.num('high_freq_factor'),
        originalMaxPositionEmbeddings: s.int('original_max_position_embeddings'),
      };
    default:
      return r.fail(`rope_scaling type ${shown(type)} is not supported (supported: llama3, linear, dynamic)`);
  }
}

/** Validates a parsed `config.json` object. `file` names it in errors. */
export function parseLlamaConfig(raw: unknown, file = 'config.json'): LlamaConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new ModelLoadError(file, 'not a JSON object');
  const obj = raw as Json;
  const r = new Reader(file, obj);
  const modelType = obj['model_type'];
  if (typeof modelType !== 'string' || !(modelType in ModelType)) {
    r.fail(`model_type ${shown(modelType)} is not supported (supported: llama, mistral, qwen2)`);
  }
  const mt = modelType as ModelType;
  const act = obj['hidden_act'] ?? 'silu';
  if (act !== 'silu') r.fail(`hidden_act ${shown(act)} is not supported (only silu)`);

  const hiddenSize = r.int('hidden_size');
  const numAttentionHeads = r.int('num_attention_heads');
  const numKeyValueHeads = r.int('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    r.fail(
      `num_attention_heads (${numAttentionHeads}) must be a multiple of num_key_value_heads (${numKeyValueHeads})`,
    );
  }
  let headDim: number;
  if (r.has('head_dim')) headDim = r.int('head_dim');
  else {
    if (hiddenSize % numAttentionHeads !== 0)
      r.fail(`hidden_size (${hiddenSize}) is not divisible by num_attention_heads (${numAttentionHeads})`);
    headDim = hiddenSize / numAttentionHeads;
  }
  if (headDim % 2 !== 0) r.fail(`head_dim (${headDim}) must be even for rotary embeddings`);

  const eosRaw = obj['eos_token_id'];
  let eosTokenId: number | number[] | null;
  if (Array.isArray(eosRaw)) {
    if (!eosRaw.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0))
      r.fail('eos_token_id must be token ids');
    eosTokenId = eosRaw as number[];
  } else eosTokenId = r.optTokenId('eos_token_id');

  if (obj['quantization_config'] !== undefined && obj['quantization_config'] !== null) {
    const qm = (obj['quantization_config'] as Json | null)?.['quant_method'];
    r.fail(
      `quantization_config${typeof qm === 'string' ? ` (${qm})` : ''} is not supported: ` +
        'quantized checkpoints cannot be loaded, use the float weights',
    );
  }
  const dropout = obj['attention_dropout'] ?? 0;
  if (dropout !== 0) r.fail(`attention_dropout ${shown(dropout)} is not supported (only 0)`);
  let slidingWindow: number | null = null;
  const sw = obj['sliding_window'];
  const swInEffect = mt === 'mistral' || (mt === 'qwen2' && obj['use_sliding_window'] === true);
  if (swInEffect && sw !== undefined && sw !== null) slidingWindow = r.int('sliding_window');
  const llamaBias = r.bool('attention_bias', false);
  const mlpBias = r.bool('mlp_bias', false);
  const dtype = obj['torch_dtype'] ?? obj['dtype'];
  return {
    modelType: mt,
    vocabSize: r.int('vocab_size'),
    hiddenSize,
    intermediateSize: r.int('intermediate_size'),
    numHiddenLayers: r.int('num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    maxPositionEmbeddings: r.int('max_position_embeddings', 2048),
    rmsNormEps: r.num('rms_norm_eps', 1e-6),
    ropeTheta: r.num('rope_theta', 10000),
    ropeScaling: parseRopeScaling(r, obj['rope_scaling'], file),
    attentionBias: mt === 'qwen2' || llamaBias,
    outputBias: mt !== 'qwen2' && llamaBias,
    mlpBias: mt !== 'qwen2' && mlpBias,
    tieWordEmbeddings: r.bool('tie_word_embeddings', false),
    slidingWindow,
    bosTokenId: r.optTokenId('bos_token_id'),
    eosTokenId,
    padTokenId: r.optTokenId('pad_token_id'),
    torchDtype: typeof dtype === 'string' ? dtype : null,
    raw: obj,
  };
}

/** Reads and validates `dir/config.json`. */
export async function readLlamaConfig(dir: string): Promise<LlamaConfig> {
  const file = join(dir, 'config.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new ModelLoadError(file, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(e), {
      cause: e,
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ModelLoadError(file, jsonSyntaxProblem(e));
  }
  return parseLlamaConfig(raw, file);
}

/**
 * Refuses sequences this implementation would compute differently from HF: longer than a sliding
 * attention window (Mistral v0.1's 4096), where HF masks keys further back than the window and
 * this implementation attends to all of them. `what` names the source of the length in the error.
 */
export function checkSequenceLength(c: LlamaConfig, length: number, what = 'sequence length'): void {
  if (c.slidingWindow !== null && length > c.slidingWindow) {
    throw new UserError(
      `${what} ${length} exceeds the model's sliding_window ` +
        `${c.slidingWindow}: sliding-window attention is not supported; ` +
        `keep sequences at most ${c.slidingWindow} tokens long`,
    );
  }
}

/** The HF name of a decoder layer's tensor, e.g. `layerTensorName(3, 'mlp.up_proj.weight')`. */
export function layerTensorName(layer: number, suffix: string): string {
  return `model.layers.${layer}.${suffix}`;
}

/** Every tensor of the model in the HF layout, name -> shape (linear weights are [out, in]). */
export function expectedTensorShapes(c: LlamaConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  m.set('model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]);
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const l = (s: string, shape: number[]): void => void m.set(layerTensorName(i, s), shape);
    l('input_layernorm.weight', [c.hiddenSize]);
    l('self_attn.q_proj.weight', [q, c.hiddenSize]);
    l('self_attn.k_proj.weight', [kv, c.hiddenSize]);
    l('self_attn.v_proj.weight', [kv, c.hiddenSize]);
    if (c.attentionBias) {
      l('self_attn.q_proj.bias', [q]);
      l('self_attn.k_proj.bias', [kv]);
      l('self_attn.v_proj.bias', [kv]);
    }
    l('self_attn.o_proj.weight', [c.hiddenSize, q]);
    if (c.outputBias) l('self_attn.o_proj.bias', [c.hiddenSize]);
    l('post_attention_layernorm.weight', [c.hiddenSize]);
    l('mlp.gate_proj.weight', [c.intermediateSize, c.hiddenSize]);
    l('mlp.up_proj.weight', [c.intermediateSize, c.hiddenSize]);
    l('mlp.down_proj.weight', [c.hiddenSize, c.intermediateSize]);
    if (c.mlpBias) {
      l('mlp.gate_proj.bias', [c.intermediateSize]);
      l('mlp.up_proj.bias', [c.intermediateSize]);
      l('mlp.down_proj.bias', [c.hiddenSize]);
    }
  }
  m.set('model.norm.weight', [c.hiddenSize]);
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, c.hiddenSize]);
  return m;
}

/** The EOS ids as a list (config may give one id or several). */
export function eosIds(c: LlamaConfig): number[] {
  if (c.eosTokenId === null) return [];
  return Array.isArray(c.eosTokenId) ? c.eosTokenId : [c.eosTokenId];
}
