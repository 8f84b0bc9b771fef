/**
 * Loading details: chunked streaming gives the same tensors on every backend, sliding windows are
 * refused, and the tensor count stays flat over 100 training steps.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { UserError } from '../../../common/errors.js';
import { initBackend } from '../../../worker/backend.js';
import { expectedTensorShapes, parseLlamaConfig } from '../../../common/model-config.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { SeededRandom } from '../../../worker/model/presets.js';
import { readModelTensors } from '../../../worker/model/safetensors.js';
import { MODEL_BACKENDS, NATIVE_PATH_STANDIN, standIn, useBackend } from '../../helpers/backends.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');

describe.each(MODEL_BACKENDS)('chunked loading (%s)', (backend) => {
  it('loads every tensor bit-identically in chunks of a few rows (sharded bf16, transposed operands)', async () => {
    await useBackend(backend);
    const dir = join(GOLDEN, 'llama-gqa-bf16-sharded');
    const trainable = new Set(['model.layers.0.mlp.up_proj.weight']);
    // 37 elements: chunks of one row for [*, 32] and [*, 64] tensors, several rows for 1-D ones.
    const model = await LlamaModel.load(dir, { trainable, chunkElems: 37 });
    try {
      const before = tf.memory().numTensors;
      for await (const t of readModelTensors(dir)) {
        const got = model.tensor(t.name);
        expect(got.shape, t.name).toEqual(t.shape);
        expect(
          Buffer.compare(Buffer.from((got.dataSync() as Float32Array).buffer), Buffer.from(t.data.buffer)),
          t.name,
        ).toBe(0);
        got.dispose();
      }
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      model.dispose();
    }
  });
});

describe('native path: no host copy of the whole model', () => {
  it('uploads each tensor as it is made: at most one tensor held in JS at a time, none after the load', async () => {
    await useBackend(NATIVE_PATH_STANDIN);
    const dir = join(GOLDEN, 'llama-gqa-bf16-sharded');
    const shapes = expectedTensorShapes(parseLlamaConfig(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))));
    const sizes = [...shapes.values()].map((s) => 4 * s.reduce((a, b) => a * b, 1));
    const total = sizes.reduce((a, b) => a + b, 0);
    const be = standIn();
    be.resetPeak();
    const uploadsBefore = be.uploads;
    const model = await LlamaModel.load(dir, { trainable: new Set(['model.layers.0.mlp.up_proj.weight']) });
    try {
      expect(be.pendingBytes).toBe(0);
      expect(be.uploads - uploadsBefore).toBe(shapes.size);
      expect(be.pendingPeak).toBe(Math.max(...sizes));
      expect(be.pendingPeak).toBeLessThan(total / 4);
    } finally {
      model.dispose();
    }
  });
});

describe('sliding window', () => {
  const mistral = {
    model_type: 'mistral',
    vocab_size: 100,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 1,
    num_attention_heads: 4,
  };
  it('records the window of Mistral, and of Qwen2 only with use_sliding_window', () => {
    expect(parseLlamaConfig({ ...mistral, sliding_window: 4096 }).slidingWindow).toBe(4096);
    expect(parseLlamaConfig({ ...mistral, sliding_window: null }).slidingWindow).toBeNull();
    expect(
      parseLlamaConfig({ ...mistral, model_type: 'qwen2', sliding_window: 4096, use_sliding_window: false })
        .slidingWindow,
    ).toBeNull();
    expect(
      parseLlamaConfig({ ...mistral, model_type: 'qwen2', sliding_window: 4096, use_sliding_window: true })
        .slidingWindow,
    ).toBe(4096);
  });

  it('refuses a sequence longer than the window at load (maxSeqLen) and in the forward pass', async () => {
    await initBackend('wasm');
    const dir = await mkdtemp(join(tmpdir(), 'polytune-sw-'));
    try {
      await cp(join(GOLDEN, 'mistral-linear'), dir, { recursive: true });
      const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, sliding_window: 8 }));
      const err = await LlamaModel.load(dir, { maxSeqLen: 16 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UserError);
      expect((err as Error).message).toMatch(/maxSeqLen 16 exceeds the model's sliding_window 8/);
      const model = await LlamaModel.load(dir, { maxSeqLen: 8 });
      const ok = model.logits(tf.zeros([1, 8], 'int32'));
      ok.dispose();
      expect(() => model.logits(tf.zeros([1, 9], 'int32'))).toThrow(
        /sequence length 9 exceeds the model's sliding_window 8/,
      );
      model.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('tensor count over training steps', () => {
  it('stays flat over 100 SLAM steps', async () => {
    await initBackend('wasm');
    const raw = {
      model_type: 'llama',
      vocab_size: 64,
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-5,
    };
    const config = parseLlamaConfig(raw);
    const rng = new SeededRandom(3);
    const tensors = [...expectedTensorShapes(config)].map(([name, shape]) => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      for (let i = 0; i < data.length; i++) data[i] = name.endsWith('norm.weight') ? 1 : 0.2 * rng.normal();
      return { name, shape, data };
    });
    const trainable = new Set([
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.0.mlp.down_proj.weight',
      'model.layers.1.mlp.up_proj.weight',
    ]);
    const model = LlamaModel.fromTensors(config, tensors, { trainable });
    const vars = model.trainableNames.map((n) => model.variable(n));
    const ids = tf.tensor2d(
      [
        [1, 5, 9, 13, 17, 21],
        [1, 7, 7, 7, 2, 2],
      ],
      undefined,
      'int32',
    );
    const labels = tf.tensor2d(
      [
        [-100, -100, 9, 13, 17, 21],
        [-100, 7, 7, 7, -100, -100],
      ],
      undefined,
      'int32',
    );
    const counts: number[] = [];
    const losses: number[] = [];
    for (let step = 0; step < 100; step++) {
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
        losses.push(value.dataSync()[0]!);
        for (const v of vars) v.assign(tf.sub(v, tf.mul(grads[v.name]!, 0.05)));
      });
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts).size).toBe(1);
    expect(losses[99]!).toBeLessThan(losses[0]!);
    tf.dispose([ids, labels]);
    model.dispose();
  });
});
