/**
 * A fused CC-Tuning step (worker/methods/cctuning.ts: English pass without gradient, Decision
 * Maker with fixed Gumbel noise, injection after `injectAfterLayer`, causal LM loss) against the
 * float64 PyTorch reference of scripts/make-golden-cctuning.py, on two golden models: the chosen
 * layers, the row NLLs, and the gradient of every model tensor and of the Decision Maker within
 * 1e-4 (norm-relative).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { ccTuningRowSums, lastTokenOutputs } from '../../../worker/methods/cctuning.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { listModelTensors, readSafetensors } from '../../../worker/model/safetensors.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const TOL = 1e-4;

interface CcGolden {
  tau: number;
  injectAfterLayer: number;
  input_ids: number[][];
  labels: number[][];
  prompt_length: number[];
  english: number[][];
  decision_maker: number[];
  noise: number[];
  choices: number[];
  row_nll: number[];
}

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

beforeAll(async () => {
  await initBackend('cpu', { enabled: false });
});

describe.each(['llama-gqa', 'llama3-rope-tied'])('cctuning golden %s', (name) => {
  it('matches the PyTorch reference: choices, row NLLs, every gradient', async () => {
    const g = JSON.parse(await readFile(join(GOLDEN, 'cctuning', `${name}.json`), 'utf8')) as CcGolden;
    const expected = new Map(
      (await readSafetensors(join(GOLDEN, 'cctuning', `${name}.safetensors`))).tensors.map((t) => [t.name, t.data]),
    );
    const dir = join(GOLDEN, name);
    const names = [...(await listModelTensors(dir)).keys()];
    const model = await LlamaModel.load(dir, { trainable: new Set(names) });
    const L = model.config.numHiddenLayers;
    const H = model.config.hiddenSize;
    const dm = tf.variable(tf.tensor2d(g.decision_maker, [L, H]), true, `cc-golden-dm-${name}`);
    try {
      const english = lastTokenOutputs(model, g.english);
      english.embedding.dispose();
      const ids = tf.tensor2d(g.input_ids, undefined, 'int32');
      const labels = tf.tensor2d(g.labels, undefined, 'int32');
      const T = g.input_ids[0]!.length;
      let choices: Int32Array | undefined;
      let rows: Float32Array | undefined;
      const vars = [...names.map((n) => model.variable(n)), dm];
      const { grads } = tf.variableGrads(() => {
        const r = ccTuningRowSums(
          model,
          dm,
          {
            inputIds: ids,
            labels,
            rows: Int32Array.from(g.prompt_length, (p, b) => b * T + p - 1),
            english: english.ffn,
            noise: Float32Array.from(g.noise),
          },
          g.tau,
          g.injectAfterLayer,
        );
        choices = r.choices;
        rows = r.rows.dataSync() as Float32Array;
        return tf.sum(r.rows);
      }, vars);
      expect([...choices!]).toEqual(g.choices);
      expect(relErr(rows!, g.row_nll)).toBeLessThan(TOL);
      for (const n of [...names, 'decision_maker.weight']) {
        const v = n === 'decision_maker.weight' ? dm : model.variable(n);
        const got = grads[v.name]!.dataSync();
        const err = relErr(got, expected.get(`grad.${n}`)!);
        expect(err, n).toBeLessThan(TOL);
      }
      // The Decision Maker really receives a gradient (the straight-through path is connected).
      expect(relErr(grads[dm.name]!.dataSync(), new Float32Array(L * H))).toBeGreaterThan(0.5);
      tf.dispose([english.ffn, ids, labels, ...Object.values(grads)]);
    } finally {
      dm.dispose();
      model.dispose();
    }
  });
});
