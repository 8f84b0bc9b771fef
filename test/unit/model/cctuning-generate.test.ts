/**
 * CC-Tuning's inference (worker/methods/cctuning.ts `ccTransformHooks` in generate.ts): the picked,
 * transformed FFN output is added after `injectAfterLayer` at the prompt's last token in the
 * prefill and nowhere else. The KV-cached generation must equal a no-cache recomputation that
 * adds the same vector at that one (layer, position) for every step: an injection moved to another
 * step (a decoding step) or another layer changes the tokens or the recorded place.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { ccTransformHooks, lastTokenOutputs, type CcTransform } from '../../../worker/methods/cctuning.js';
import { generateIds } from '../../../worker/model/generate.js';
import { LlamaModel } from '../../../worker/model/llama.js';

const DIR = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');

beforeAll(async () => {
  await initBackend('cpu', { enabled: false });
});

function seeded(n: number, seed: number, scale: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}

/** Greedy tokens without a cache, adding `vec` after `layer` at position `pos` of every full pass. */
function referenceTokens(model: LlamaModel, prompt: number[], n: number, layer: number, vec: Float32Array): number[] {
  const ids = [...prompt];
  const H = model.config.hiddenSize;
  for (let i = 0; i < n; i++) {
    const next = tf.tidy(() => {
      const T = ids.length;
      const { hidden } = model.forwardHidden(tf.tensor2d([ids], [1, T], 'int32'), {
        hooks: {
          afterLayer: (l) =>
            l === layer ? { add: tf.tensor2d(vec, [1, H]), rows: Int32Array.from([prompt.length - 1]) } : undefined,
        },
      });
      return tf.argMax(model.head(tf.slice(hidden, [T - 1, 0], [1, H])), 1).dataSync()[0]!;
    });
    ids.push(next);
  }
  return ids.slice(prompt.length);
}

describe('CC-Tuning transform at generation', () => {
  it.each([0, 1])('injects after layer %i at the prefill only', async (k) => {
    const model = await LlamaModel.load(DIR);
    try {
      const L = model.config.numHiddenLayers;
      const H = model.config.hiddenSize;
      const cc: CcTransform = {
        decisionMaker: seeded(L * H, 3 + k, 2),
        transform: seeded(H * H, 5 + k, 8),
        injectAfterLayer: k,
      };
      const prompt = [5, 17, 99, 123, 7];
      let made: ReturnType<typeof ccTransformHooks> | undefined;
      const out = await generateIds(model, [prompt], {
        maxNewTokens: 6,
        eosIds: [],
        hooksFor: (p) => (made = ccTransformHooks(model, cc, p)).hooks,
      });
      expect(made!.injected).toEqual([{ forward: 0, layer: k }]);
      // Making the hooks leaves no tensor behind (the first pass's kept outputs are freed).
      const live = tf.memory().numTensors;
      ccTransformHooks(model, cc, [prompt, prompt.slice(1)]);
      expect(tf.memory().numTensors).toBe(live);

      // The vector: the prompt's FFN outputs through X, the Decision Maker's pick.
      const r = lastTokenOutputs(model, [prompt]);
      const e = r.ffn.dataSync();
      const emb = r.embedding.dataSync();
      tf.dispose([r.ffn, r.embedding]);
      const mapped = new Float32Array(L * H);
      for (let l = 0; l < L; l++)
        for (let j = 0; j < H; j++) {
          let s = 0;
          for (let i = 0; i < H; i++) s += e[l * H + i]! * cc.transform[i * H + j]!;
          mapped[l * H + j] = s;
        }
      const v = Float32Array.from({ length: H }, (_, j) => {
        let s = 0;
        for (let l = 0; l < L; l++) s += mapped[l * H + j]!;
        return s / L + emb[j]!;
      });
      const logits = Array.from({ length: L }, (_, l) =>
        v.reduce((s, x, j) => s + x * cc.decisionMaker[l * H + j]!, 0),
      );
      const pick = logits.indexOf(Math.max(...logits));
      expect(made!.choices[0]).toBe(pick);
      const vec = mapped.subarray(pick * H, (pick + 1) * H);

      expect(out.ids[0]).toEqual(referenceTokens(model, prompt, 6, k, vec));
      // The injection matters: plain generation differs from it.
      const plain = await generateIds(model, [prompt], { maxNewTokens: 6, eosIds: [] });
      const other = referenceTokens(model, prompt, 6, k, new Float32Array(H));
      expect(plain.ids[0]).toEqual(other);
      expect(out.ids[0]).not.toEqual(plain.ids[0]);
    } finally {
      model.dispose();
    }
  });
});
