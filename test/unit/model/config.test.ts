/** config.json parsing and refusal; tensor shapes; model loading errors; the tokenizer. */
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelLoadError, UserError } from '../../../common/errors.js';
import { initBackend } from '../../../worker/backend.js';
import { bundledTokenizerDir } from '../../../worker/commands/init-model.js';
import { expectedTensorShapes, parseLlamaConfig, readLlamaConfig } from '../../../common/model-config.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { ropeInvFreq } from '../../../worker/model/rope.js';
import { readSafetensors, writeSafetensors } from '../../../worker/model/safetensors.js';
import { ModelTokenizer } from '../../../worker/model/tokenizer.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const base = {
  model_type: 'llama',
  vocab_size: 100,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  hidden_act: 'silu',
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-cfg-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('config.json', () => {
  it('reads a LLaMA config with defaults', () => {
    const c = parseLlamaConfig(base);
    expect(c).toMatchObject({
      headDim: 8,
      ropeTheta: 10000,
      ropeScaling: null,
      attentionBias: false,
      tieWordEmbeddings: false,
      eosTokenId: null,
    });
  });

  it('refuses other architectures by name', async () => {
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...base, model_type: 'gpt2' }));
    const err = await readLlamaConfig(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(/config\.json: model_type "gpt2" is not supported/);
  });

  it.each([
    [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/],
    [{ rope_scaling: { rope_type: 'yarn', factor: 4 } }, /rope_scaling type "yarn" is not supported/],
    [{ rope_scaling: { type: 'llama3', factor: 8 } }, /missing low_freq_factor/],
    [{ num_key_value_heads: 3 }, /multiple of num_key_value_heads/],
    [{ hidden_size: -4 }, /hidden_size must be a positive integer/],
    [{ vocab_size: undefined }, /missing vocab_size/],
  ])('refuses %j', (patch, message) => {
    expect(() => parseLlamaConfig({ ...base, ...patch }, 'x/config.json')).toThrow(message);
  });

  it('Qwen2 implies q/k/v bias; tied models have no lm_head; head_dim may be explicit', () => {
    const q = parseLlamaConfig({
      ...base,
      model_type: 'qwen2',
      tie_word_embeddings: true,
      head_dim: 16,
      eos_token_id: [2, 3],
    });
    expect(q).toMatchObject({ attentionBias: true, outputBias: false, headDim: 16, eosTokenId: [2, 3] });
    const shapes = expectedTensorShapes(q);
    expect(shapes.get('model.layers.1.self_attn.q_proj.weight')).toEqual([64, 32]);
    expect(shapes.get('model.layers.1.self_attn.k_proj.bias')).toEqual([32]);
    expect(shapes.get('model.layers.0.self_attn.o_proj.weight')).toEqual([32, 64]);
    expect(shapes.has('model.layers.0.self_attn.o_proj.bias')).toBe(false);
    expect(shapes.has('lm_head.weight')).toBe(false);
    expect(shapes.size).toBe(1 + 2 * 12 + 1);
  });

  it('llama3 rope scaling keeps high frequencies, divides low ones, interpolates between', () => {
    const c = parseLlamaConfig({
      ...base,
      hidden_size: 128,
      num_attention_heads: 1,
      num_key_value_heads: 1,
      rope_theta: 500000,
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    });
    const plain = ropeInvFreq({ ...c, ropeScaling: null }, 1);
    const scaled = ropeInvFreq(c, 1);
    expect(scaled[0]).toBe(plain[0]);
    expect(scaled[63]! / plain[63]!).toBeCloseTo(1 / 8, 12);
    const mid = [...scaled].findIndex((f, i) => f / plain[i]! < 1 && f / plain[i]! > 1 / 8);
    expect(mid).toBeGreaterThan(0);
  });
});

describe('LlamaModel.load errors', () => {
  const src = join(GOLDEN, 'llama-gqa');

  it('names a trainable tensor the model does not have', async () => {
    await expect(LlamaModel.load(src, { trainable: new Set(['model.layers.9.mlp.up_proj.weight']) })).rejects.toThrow(
      UserError,
    );
  });

  it('names a missing tensor and a tensor with the wrong shape', async () => {
    await initBackend('wasm');
    const { tensors } = await readSafetensors(join(src, 'model.safetensors'));
    const m1 = join(dir, 'missing');
    await cp(src, m1, { recursive: true });
    await writeSafetensors(
      join(m1, 'model.safetensors'),
      tensors.filter((t) => t.name !== 'model.norm.weight'),
    );
    await expect(LlamaModel.load(m1)).rejects.toThrow(/\(tensor model\.norm\.weight\): tensor missing/);
    const m2 = join(dir, 'shape');
    await cp(src, m2, { recursive: true });
    await writeSafetensors(
      join(m2, 'model.safetensors'),
      tensors.map((t) => (t.name === 'model.norm.weight' ? { ...t, shape: [2, 16] } : t)),
    );
    await expect(LlamaModel.load(m2)).rejects.toThrow(
      /model\.safetensors \(tensor model\.norm\.weight\): shape \[2, 16\] does not match config\.json's \[32\]/,
    );
  });

  it('exports every tensor back in the HF layout, trainable or not', async () => {
    await initBackend('wasm');
    const { tensors } = await readSafetensors(join(src, 'model.safetensors'));
    const model = await LlamaModel.load(src, { trainable: new Set(['model.layers.0.mlp.up_proj.weight']) });
    const out = model.exportTensors();
    expect(out.map((t) => t.name).sort()).toEqual(tensors.map((t) => t.name).sort());
    for (const t of out) {
      const orig = tensors.find((x) => x.name === t.name)!;
      expect(t.shape).toEqual(orig.shape);
      expect(t.data).toEqual(orig.data);
    }
    const w = model.tensor('model.layers.1.mlp.down_proj.weight');
    expect(w.shape).toEqual([32, 64]);
    w.dispose();
    model.dispose();
  });
});

describe('tokenizer', () => {
  it('encodes "Hello world" with BOS as LLaMA does, and decodes', async () => {
    const tok = await ModelTokenizer.load(bundledTokenizerDir());
    expect(tok.encode('Hello world')).toEqual([1, 22557, 1526]);
    expect(tok.encode('Hello world', { addBos: false })).toEqual([22557, 1526]);
    expect(tok.encode('Hello world', { addEos: true })).toEqual([1, 22557, 1526, 2]);
    expect({ bos: tok.bosId, eos: tok.eosId, vocab: tok.vocabSize }).toEqual({ bos: 1, eos: 2, vocab: 32000 });
    expect(tok.decode([1, 22557, 1526, 2])).toBe('Hello world');
    expect(tok.decode([1, 22557, 1526, 2], { skipSpecial: false })).toBe('<s> Hello world</s>');
    const text = 'Human: 12 + 7 = ?\nAssistant: 19 ünïcödé 日本';
    expect(tok.decode(tok.encode(text))).toBe(text);
  });

  it('names a missing tokenizer.json', async () => {
    await expect(ModelTokenizer.load(dir)).rejects.toThrow(/tokenizer\.json: no such file/);
  });
});
