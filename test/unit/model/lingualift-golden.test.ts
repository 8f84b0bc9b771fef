/**
 * LinguaLIFT's loss (worker/methods/lingualift.ts: the frozen T5 encoder, the alignment MLP, the
 * prefix before the LLM's embeddings, the LLM's own token NLL) against the float64 PyTorch reference
 * of scripts/make-golden-lingualift.py, on two golden LLMs (`prepend` with a 2-layer MLP, `replace`
 * with one Linear) and the golden T5 encoder: the row NLLs and the gradient of every alignment
 * tensor through the frozen LLM within 1e-4 (relative to the reference's norm). The reference runs each row alone; the
 * batch here is left-padded (encoder and prefix), so the padding's masks and positions are checked too.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { lingualiftSchema } from '../../../common/methods/index.js';
import { initBackend } from '../../../worker/backend.js';
import type { EncodedSample } from '../../../worker/data/encode.js';
import { lingualift, LingualiftResources } from '../../../worker/methods/lingualift.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { readSafetensors } from '../../../worker/model/safetensors.js';
import { T5Encoder } from '../../../worker/model/t5-encoder.js';
import type { ModelTokenizer } from '../../../worker/model/tokenizer.js';
import { relativeError } from '../../helpers/tensors.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const TOL = 1e-4;

interface LingualiftGolden {
  model: string;
  encoder: string;
  fusion: 'prepend' | 'replace';
  depth: number;
  hidden: number;
  encoder_ids: number[][];
  input_ids: number[][];
  labels: number[][];
  row_nll: number[];
}

beforeAll(async () => {
  await initBackend('cpu', { enabled: false });
});

describe.each(['llama-gqa-prepend', 'llama3-rope-tied-replace'])('lingualift golden %s', (name) => {
  it('row NLLs and the alignment layer gradients match the PyTorch reference', async () => {
    const g = JSON.parse(await readFile(join(GOLDEN, 'lingualift', `${name}.json`), 'utf8')) as LingualiftGolden;
    const stored = (await readSafetensors(join(GOLDEN, 'lingualift', `${name}.safetensors`))).tensors;
    const method = lingualiftSchema.parse({
      name: 'lingualift',
      stage: 'align',
      encoder: { path: join(GOLDEN, g.encoder) },
      alignment: { depth: g.depth, hidden: g.hidden },
      fusion: g.fusion,
    });
    const model = await LlamaModel.load(join(GOLDEN, g.model)); // frozen: no trainable tensor
    // The loss reads only the encoder (the samples carry their encoder ids): no tokenizer is needed.
    const resources = new LingualiftResources(await T5Encoder.load(method.encoder.path), {} as ModelTokenizer);
    const modules = new Map(
      stored
        .filter((t) => !t.name.startsWith('grad.'))
        .map((t) => [t.name, tf.variable(tf.tensor(t.data, t.shape), true, `ll-golden-${name}-${t.name}`)]),
    );
    try {
      expect(modules.size).toBe(g.fusion === 'prepend' ? 2 * g.depth + 1 : 2 * g.depth);
      const ids = tf.tensor2d(g.input_ids, undefined, 'int32');
      const labels = tf.tensor2d(g.labels, undefined, 'int32');
      const samples = g.encoder_ids.map((e) => ({ encoderIds: Int32Array.from(e) }) as EncodedSample);
      let rows: Float32Array | undefined;
      const run = { method, model, modules, seed: 0, resources };
      const batch = { inputIds: ids, labels, samples, sampleIndices: [0, 1], step: 0 };
      // As the trainer does: the encoder in `prepare`, before the tape; the loss on its states.
      const prepared = lingualift.prepare!(run, batch);
      const { grads } = tf.variableGrads(() => {
        const r = lingualift.loss!(run, { ...batch, prepared });
        rows = Float32Array.from(r.dataSync());
        return tf.sum(r);
      }, [...modules.values()]);
      expect(relativeError(Float32Array.from(g.row_nll), rows!)).toBeLessThan(TOL);
      const expected = new Map(stored.map((t) => [t.name, t.data]));
      for (const [n, v] of modules) {
        const got = grads[v.name]!.dataSync() as Float32Array;
        expect(relativeError(expected.get(`grad.${n}`)!, got), n).toBeLessThan(TOL);
        // Every tensor of the layer really receives a gradient through the LLM (||got|| > 0).
        expect(relativeError(got, new Float32Array(got.length)), n).toBe(1);
      }
      tf.dispose([ids, labels, ...prepared, ...Object.values(grads)]);
    } finally {
      tf.dispose([...modules.values()]);
      resources.dispose();
      model.dispose();
    }
  });
});
