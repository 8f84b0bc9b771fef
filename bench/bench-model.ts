/**
 * The benchmarks' synthetic checkpoint: a LLaMA config written as HF files, BF16, two shards with
 * an index (the embedding and the lower half of the layers, then the rest), seeded values.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expectedTensorShapes, parseLlamaConfig } from '../common/model-config.js';
import { shardName } from '../worker/model/export.js';
import { SeededRandom } from '../worker/model/presets.js';
import { tensorBytes, writeSafetensorsStreaming, type TensorToWrite } from '../worker/model/safetensors.js';

/** The benchmarks' model: LLaMA-shaped (GQA, untied head), 50.5M parameters, BF16 on disk. */
export const BENCH_MODEL_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 32000,
  hidden_size: 512,
  intermediate_size: 1408,
  num_hidden_layers: 6,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  hidden_act: 'silu',
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  bos_token_id: 1,
  eos_token_id: 2,
};

/** Writes config.json and the two BF16 shards of `rawConfig` into `dir`; returns the parameter count. */
export async function writeBenchModel(dir: string, rawConfig: Record<string, unknown>): Promise<number> {
  const config = parseLlamaConfig(rawConfig);
  await writeFile(join(dir, 'config.json'), JSON.stringify(rawConfig, null, 2));
  const entries: TensorToWrite[] = [...expectedTensorShapes(config)].map(([name, shape]) => ({
    name,
    shape,
    dtype: 'BF16',
  }));
  const half = config.numHiddenLayers / 2;
  const first = (n: string): boolean =>
    n === 'model.embed_tokens.weight' ||
    (/^model\.layers\.(\d+)\./.exec(n)?.[1] !== undefined && Number(/^model\.layers\.(\d+)\./.exec(n)![1]) < half);
  const rng = new SeededRandom(1);
  const data = (name: string): Float32Array => {
    const n = expectedTensorShapes(config)
      .get(name)!
      .reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    if (name.endsWith('norm.weight')) out.fill(1);
    else for (let i = 0; i < n; i++) out[i] = 0.02 * rng.normal();
    return out;
  };
  const weightMap: Record<string, string> = {};
  for (const [k, pick] of [
    [1, first],
    [2, (n: string) => !first(n)],
  ] as const) {
    const part = entries.filter((e) => pick(e.name));
    await writeSafetensorsStreaming(join(dir, shardName(k, 2)), part, data, { format: 'pt' });
    for (const e of part) weightMap[e.name] = shardName(k, 2);
  }
  const total = entries.reduce((n, e) => n + tensorBytes(e), 0);
  await writeFile(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }),
  );
  return entries.reduce((n, e) => n + e.shape.reduce((a, b) => a * b, 1), 0);
}
