/** Greedy generation with the KV cache and left padding equals step-by-step argmax of the full forward. */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { generateIds } from '../../../worker/model/generate.js';
import { LlamaModel } from '../../../worker/model/llama.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');

/** Greedy decoding without a cache: the full forward over the growing sequence, argmax of the last row. */
function greedyFull(model: LlamaModel, prompt: readonly number[], n: number): number[] {
  const seq = [...prompt];
  for (let i = 0; i < n; i++) {
    const next = tf.tidy(() => {
      const logits = model.logits(tf.tensor2d([seq], undefined, 'int32'));
      return tf.argMax(tf.squeeze(tf.slice(logits, [0, seq.length - 1, 0], [1, 1, -1]), [0, 1])).dataSync()[0]!;
    });
    seq.push(next);
  }
  return seq.slice(prompt.length);
}

describe.each(['llama-gqa', 'qwen2-bias', 'llama3-rope-tied'])('generation %s', (name) => {
  let model: LlamaModel;
  const prompts = [
    [1, 17, 99, 4, 250, 31, 77],
    [1, 5],
    [1, 200, 13, 13, 140],
  ];

  beforeAll(async () => {
    await initBackend('wasm');
    model = await LlamaModel.load(join(GOLDEN, name));
  });
  afterAll(() => model.dispose());

  it('a left-padded batch with the KV cache decodes each row as the full forward does alone', async () => {
    const n = 10;
    const before = tf.memory().numTensors;
    const got = await generateIds(model, prompts, { maxNewTokens: n, eosIds: [] });
    expect(tf.memory().numTensors).toBe(before);
    prompts.forEach((p, b) => {
      expect(got.ids[b]).toEqual(greedyFull(model, p, n));
      expect(got.finishReason[b]).toBe('length');
    });
  });

  it('stops a row at EOS and by shouldStop, not including the EOS', async () => {
    const free = await generateIds(model, prompts, { maxNewTokens: 6, eosIds: [] });
    const eos = free.ids[0]![3]!;
    const firstEos = free.ids[0]!.indexOf(eos);
    const r = await generateIds(model, prompts, {
      maxNewTokens: 6,
      eosIds: [eos],
      shouldStop: (row, ids) => row === 2 && ids.length === 2,
    });
    expect(r.ids[0]).toEqual(free.ids[0]!.slice(0, firstEos));
    expect(r.finishReason[0]).toBe('eos');
    expect(r.ids[2]).toEqual(free.ids[2]!.slice(0, 2));
    expect(r.finishReason[2]).toBe('stop');
  });

  it('refuses hooks together with hooksFor (neither is dropped silently)', async () => {
    await expect(generateIds(model, prompts, { maxNewTokens: 1, hooks: {}, hooksFor: () => ({}) })).rejects.toThrow(
      /both hooks and hooksFor/,
    );
  });
});
