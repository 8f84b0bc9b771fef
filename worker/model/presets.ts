/**
 * Model presets for trying things out: a HF `config.json` and a deterministic random
 * initialisation (HF's `_init_weights`: normal(0, initializer_range) for linear and embedding
 * weights, ones for RMSNorm weights, zeros for biases).
 */
import type { NamedTensor } from './safetensors.js';
import { expectedTensorShapes, parseLlamaConfig } from '../../common/model-config.js';

export const PresetName = { tiny: 'tiny' } as const;
export type PresetName = keyof typeof PresetName;

/** The `config.json` of each preset, as HF `LlamaConfig.to_dict()` would write it. */
export const PRESET_CONFIGS: Readonly<Record<PresetName, Readonly<Record<string, unknown>>>> = {
  tiny: {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: 32000,
    hidden_size: 64,
    intermediate_size: 256,
    num_hidden_layers: 8,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    max_position_embeddings: 2048,
    hidden_act: 'silu',
    initializer_range: 0.02,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0.0,
    mlp_bias: false,
    pretraining_tp: 1,
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    use_cache: true,
    bos_token_id: 1,
    eos_token_id: 2,
    transformers_version: '4.44.0',
  },
};

/**
 * xoshiro128** seeded through splitmix32: a small, fast, well-distributed PRNG whose stream
 * depends only on the seed (never Math.random), so every rank and every run agree.
 */
export class SeededRandom {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | undefined;

  constructor(seed: number) {
    let x = seed >>> 0;
    const splitmix = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = splitmix();
    this.s1 = splitmix();
    this.s2 = splitmix();
    this.s3 = splitmix();
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    this.s0 >>>= 0;
    this.s1 >>>= 0;
    this.s2 >>>= 0;
    return result;
  }

  /** Uniform in (0, 1): never exactly 0, so log() is safe. */
  uniform(): number {
    return (this.nextUint32() + 0.5) / 4294967296;
  }

  /** Standard normal, Box-Muller (pairs: the second value is kept for the next call). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const theta = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** The parameters of a preset, HF names and shapes, initialised from `seed`. */
export function presetTensors(preset: PresetName, seed: number): NamedTensor[] {
  return randomTensors(PRESET_CONFIGS[preset], seed, `preset ${preset}`);
}

/**
 * The parameters of any LLaMA `config.json` (its raw object), HF names and shapes, initialised from
 * `seed` as HF's `_init_weights` does; `where` names the config in errors.
 */
export function randomTensors(raw: Readonly<Record<string, unknown>>, seed: number, where: string): NamedTensor[] {
  const config = parseLlamaConfig(raw, where);
  const std = typeof raw['initializer_range'] === 'number' ? raw['initializer_range'] : 0.02;
  const rng = new SeededRandom(seed);
  const out: NamedTensor[] = [];
  for (const [name, shape] of expectedTensorShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (name.endsWith('norm.weight')) data.fill(1);
    else if (!name.endsWith('.bias')) for (let i = 0; i < n; i++) data[i] = std * rng.normal();
    out.push({ name, shape, data });
  }
  return out;
}
