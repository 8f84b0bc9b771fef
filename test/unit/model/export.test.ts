/**
 * Export round trips: a sharded bf16 model goes through a training step and `writeFinalOutputs`
 * and comes back sharded like the input, bf16, with a right index, loadable, and every frozen
 * tensor bit-identical to the input's bytes; a single-file model above the shard size is split.
 */
import { cp, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { exportModel } from '../../../worker/model/export.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { listModelTensors, readModelTensors, type TensorInfo } from '../../../worker/model/safetensors.js';
import { writeFinalOutputs } from '../../../worker/train/outputs.js';

const SRC = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa-bf16-sharded');

async function rawBytes(info: TensorInfo): Promise<Buffer> {
  const fh = await open(info.file, 'r');
  try {
    const b = Buffer.alloc(info.end - info.begin);
    await fh.read(b, 0, b.length, info.begin);
    return b;
  } finally {
    await fh.close();
  }
}

let tmp: string;
beforeAll(async () => {
  await initBackend('wasm');
  tmp = await mkdtemp(join(tmpdir(), 'polytune-export-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('export', () => {
  it('a sharded bf16 model comes back sharded, bf16, loadable, frozen tensors bit-identical', async () => {
    const modelDir = join(tmp, 'in');
    await cp(SRC, modelDir, { recursive: true });
    const trainable = new Set(['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight']);
    const input = await listModelTensors(modelDir);
    const model = await LlamaModel.load(modelDir, { trainable });
    const golden = JSON.parse(await readFile(join(SRC, 'golden.json'), 'utf8')) as {
      input_ids: number[][];
      labels: number[][];
    };
    tf.tidy(() => {
      const ids = tf.tensor2d(golden.input_ids, undefined, 'int32');
      const labels = tf.tensor2d(golden.labels, undefined, 'int32');
      const vars = model.trainableNames.map((n) => model.variable(n));
      const { grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
      for (const v of vars) v.assign(tf.sub(v, tf.mul(grads[v.name]!, 0.1)));
    });
    const trained = model.trainableNames.map((name) => ({
      name,
      shape: [...model.variable(name).shape],
      data: model.variable(name).dataSync() as Float32Array,
    }));
    const out = await writeFinalOutputs({
      job: 'export-test',
      modelDir,
      outputDir: join(tmp, 'run'),
      model,
      trainable: trained,
      inputDtypes: new Map([...input].map(([n, t]) => [n, t.dtype])),
    });
    model.dispose();

    const files = (await readdir(out)).sort();
    expect(files).toEqual([
      '.polytune', // the marker that lets a later run replace this final/ (outputs.ts)
      'config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
      'trainable.safetensors',
    ]);
    const inIndex = JSON.parse(await readFile(join(modelDir, 'model.safetensors.index.json'), 'utf8')) as {
      weight_map: Record<string, string>;
    };
    const outIndex = JSON.parse(await readFile(join(out, 'model.safetensors.index.json'), 'utf8')) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    expect(outIndex.weight_map).toEqual(inIndex.weight_map);
    const output = await listModelTensors(out);
    expect(outIndex.metadata.total_size).toBe([...output.values()].reduce((n, t) => n + t.end - t.begin, 0));
    expect(outIndex.metadata.total_size).toBe([...input.values()].reduce((n, t) => n + t.end - t.begin, 0));
    expect(await readFile(join(out, 'config.json'), 'utf8')).toBe(
      await readFile(join(modelDir, 'config.json'), 'utf8'),
    );

    for (const [name, info] of input) {
      const o = output.get(name)!;
      expect(o.dtype, name).toBe('BF16');
      expect(o.shape, name).toEqual(info.shape);
      const same = Buffer.compare(await rawBytes(o), await rawBytes(info)) === 0;
      expect(same, name).toBe(!trainable.has(name));
    }
    // Loadable, and the trained tensors are the trained values narrowed to bf16.
    const back = await LlamaModel.load(out);
    for (const t of trained) {
      const got = back.tensor(t.name);
      const want = tf.tensor(t.data, t.shape);
      const err = tf.tidy(() => tf.max(tf.abs(tf.sub(got, want))).dataSync()[0]!);
      expect(err).toBeLessThan(0.01);
      tf.dispose([got, want]);
    }
    back.dispose();
  });

  it('a single-file model larger than the shard size is split in HF order, with an index', async () => {
    const model = await LlamaModel.load(join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa'));
    const dir = await mkdtemp(join(tmp, 'split-'));
    const r = await exportModel(dir, model, { dtype: 'F32', maxShardBytes: 40_000 });
    expect(r.sharded).toBe(true);
    expect(r.files.length).toBeGreaterThan(2);
    expect(r.files[0]).toBe(`model-00001-of-${String(r.files.length).padStart(5, '0')}.safetensors`);
    const back = new Map<string, Float32Array>();
    for await (const t of readModelTensors(dir)) back.set(t.name, t.data);
    for (const t of model.exportTensors()) expect(back.get(t.name), t.name).toEqual(t.data);
    const small = await mkdtemp(join(tmp, 'single-'));
    expect(await exportModel(small, model, {})).toMatchObject({ files: ['model.safetensors'], sharded: false });
    model.dispose();
  });
});
