/** What the model keeps in memory on the wasm backend: shared clones, a chunked loss head. */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { LlamaModel } from '../../../worker/model/llama.js';

const dir = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');
const ROWS = 3;

describe('memory (wasm)', () => {
  let model: LlamaModel;
  let vocab: number;
  beforeAll(async () => {
    await initBackend('wasm');
    const probe = await LlamaModel.load(dir);
    vocab = probe.config.vocabSize;
    probe.dispose();
    const trainable = new Set(['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.down_proj.weight']);
    model = await LlamaModel.load(dir, { trainable, lossHead: { chunkElems: ROWS * vocab } });
  });
  afterAll(() => model.dispose());

  it('a clone shares its memory with the original (the tape clones every tensor it saves)', () => {
    const a = tf.tensor1d([1, 2, 3]);
    const buffers = tf.memory().numDataBuffers;
    const b = tf.clone(a);
    expect(tf.memory().numDataBuffers).toBe(buffers);
    a.dispose();
    expect(Array.from(b.dataSync())).toEqual([1, 2, 3]);
    b.dispose();
  });

  it('the loss head never holds more than a chunk of logits, with or without gradients', async () => {
    const ids = tf.tensor2d(
      [
        [1, 40, 41, 42, 43, 44, 45, 46],
        [1, 90, 91, 92, 93, 2, 2, 2],
      ],
      undefined,
      'int32',
    );
    const labels = tf.tensor2d(
      [
        [1, 40, 41, 42, 43, 44, 45, 46],
        [-100, -100, 91, 92, 93, 2, -100, -100],
      ],
      undefined,
      'int32',
    );
    const vars = model.trainableNames.map((n) => model.variable(n));
    const widest = (info: Awaited<ReturnType<typeof tf.profile>>): number =>
      Math.max(
        ...info.kernels.flatMap((k) =>
          k.outputShapes
            .filter((s) => s.at(-1) === vocab || s[0] === vocab)
            .map((s) => s.reduce((a, b) => a * b, 1) / vocab),
        ),
      );
    const forward = await tf.profile(() => tf.tidy(() => void model.nllSum(ids, labels).dataSync()));
    const train = await tf.profile(() =>
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
        value.dataSync();
        for (const g of Object.values(grads)) g.dataSync();
      }),
    );
    // 11 supervised tokens: a whole [tokens, vocab] would be 11 rows.
    expect(widest(forward)).toBe(ROWS);
    expect(widest(train)).toBe(ROWS);
    tf.dispose([ids, labels]);
  });
});
