/**
 * The TensorFlow.js LLaMA forward, loss and gradients against an independent PyTorch reference of
 * HF's modeling_llama.py (scripts/make-golden.py), on the wasm backend with its products in OpenBLAS
 * (worker/native) and in XNNPACK, on the cpu backend, and on the path tfjs-node takes (a stand-in:
 * test/helpers/backends.ts).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { addonPath, loadAddon } from '../../../worker/native/addon.js';
import { nativeKernelsActive } from '../../../worker/native/index.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { readSafetensors } from '../../../worker/model/safetensors.js';
import { NATIVE_PATH_STANDIN, useBackend } from '../../helpers/backends.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const MODELS = [
  'llama-gqa',
  'llama3-rope-tied',
  'qwen2-bias',
  'mistral-linear',
  'llama-gqa-bf16-sharded',
  'llama-dynamic',
];
const TOL = 1e-4;

/** ||a - b|| / ||b||, the norm-based relative error. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

interface Golden {
  input_ids: number[][];
  labels: number[][];
  grads: string[];
}

/** Each backend, and on wasm each set of product kernels. */
const KERNEL_SETS = [
  { label: 'wasm+openblas', backend: 'wasm', native: true },
  { label: 'wasm+xnnpack', backend: 'wasm', native: false },
  { label: 'cpu', backend: 'cpu', native: false },
  { label: NATIVE_PATH_STANDIN, backend: NATIVE_PATH_STANDIN, native: false },
] as const;
const nativeLoad = loadAddon(addonPath());
if (!nativeLoad.ok) process.stderr.write(`golden: skipping wasm+openblas: ${nativeLoad.reason}\n`);
const CASES = KERNEL_SETS.filter((k) => !k.native || nativeLoad.ok).flatMap((k) =>
  MODELS.map((name) => [k.label, name, k] as const),
);

describe.each(CASES)('golden %s %s', (_label, name, { backend, native }) => {
  const dir = join(GOLDEN, name);
  let golden: Golden;
  let expected: Map<string, Float32Array>;
  let model: LlamaModel;
  let ids: tf.Tensor2D;
  let labels: tf.Tensor2D;

  beforeAll(async () => {
    if (backend === NATIVE_PATH_STANDIN) await useBackend(backend);
    else await initBackend(backend, { enabled: native });
    expect(nativeKernelsActive()).toBe(native);
    golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8')) as Golden;
    expected = new Map((await readSafetensors(join(dir, 'expected.safetensors'))).tensors.map((t) => [t.name, t.data]));
    model = await LlamaModel.load(dir, { trainable: new Set(golden.grads) });
    ids = tf.tensor2d(golden.input_ids, undefined, 'int32');
    labels = tf.tensor2d(golden.labels, undefined, 'int32');
    return () => {
      model.dispose();
      ids.dispose();
      labels.dispose();
    };
  });

  it('logits match', () => {
    const logits = model.logits(ids);
    expect(logits.shape).toEqual([ids.shape[0], ids.shape[1], model.config.vocabSize]);
    expect(relErr(logits.dataSync(), expected.get('logits')!)).toBeLessThan(TOL);
    logits.dispose();
  });

  it('per-token NLL and its sum match', () => {
    const [B, T] = ids.shape;
    const want = expected.get('token_nll')!;
    const { nll, tokens } = model.nllPerRow(ids, labels);
    for (let b = 0; b < B; b++) {
      let sum = 0;
      let count = 0;
      for (let t = 1; t < T; t++) {
        if (golden.labels[b]![t] === -100) continue;
        sum += want[b * (T - 1) + t - 1]!;
        count++;
      }
      expect(tokens[b]).toBe(count);
      expect(Math.abs(nll[b]! - sum) / sum).toBeLessThan(TOL);
    }
    const total = model.nllSum(ids, labels);
    const wantSum = expected.get('nll_sum')![0]!;
    expect(Math.abs(total.dataSync()[0]! - wantSum) / wantSum).toBeLessThan(TOL);
    total.dispose();
  });

  it('gradients of the summed NLL match', () => {
    const vars = model.trainableNames.map((n) => model.variable(n));
    const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
    for (const n of golden.grads) {
      const g = grads[model.variable(n).name]!;
      expect(relErr(g.dataSync(), expected.get(`grad.${n}`)!), n).toBeLessThan(TOL);
    }
    value.dispose();
    tf.dispose(grads);
  });

  it('gradient checkpointing gives the same gradients, bit for bit', async () => {
    const vars = model.trainableNames.map((n) => model.variable(n));
    const plain = tf.variableGrads(() => model.nllSum(ids, labels), vars);
    const ckpt = await LlamaModel.load(dir, { trainable: new Set(golden.grads), gradientCheckpointing: true });
    const cvars = ckpt.trainableNames.map((n) => ckpt.variable(n));
    const tensorsBefore = tf.memory().numTensors;
    const again = tf.variableGrads(() => ckpt.nllSum(ids, labels), cvars);
    expect(tf.memory().numTensors - tensorsBefore).toBe(1 + cvars.length); // the loss and the gradients
    expect(again.value.dataSync()).toEqual(plain.value.dataSync());
    for (const n of golden.grads) {
      const g = again.grads[ckpt.variable(n).name]!.dataSync();
      expect(g, n).toEqual(plain.grads[model.variable(n).name]!.dataSync());
      expect(relErr(g, expected.get(`grad.${n}`)!), n).toBeLessThan(TOL);
    }
    tf.dispose([plain.value, again.value, ...Object.values(plain.grads), ...Object.values(again.grads)]);
    ckpt.dispose();
  });

  it('gradients match with the loss head chunked and recomputed', async () => {
    // 5 rows of logits at a time, none kept: the backward pass recomputes them.
    const small = await LlamaModel.load(dir, { trainable: new Set(golden.grads), lossHead: { chunkElems: 5 * 256 } });
    const vars = small.trainableNames.map((n) => small.variable(n));
    const { value, grads } = tf.variableGrads(() => small.nllSum(ids, labels), vars);
    expect(Math.abs(value.dataSync()[0]! - expected.get('nll_sum')![0]!) / expected.get('nll_sum')![0]!).toBeLessThan(
      TOL,
    );
    for (const n of golden.grads) {
      expect(relErr(grads[small.variable(n).name]!.dataSync(), expected.get(`grad.${n}`)!), n).toBeLessThan(TOL);
    }
    value.dispose();
    tf.dispose(grads);
    small.dispose();
  });

  it('does not leak tensors across training steps', () => {
    const vars = model.trainableNames.map((n) => model.variable(n));
    const step = (): void =>
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
        value.dataSync();
        void grads;
      });
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) step();
    expect(tf.memory().numTensors).toBe(before);
  });
});
