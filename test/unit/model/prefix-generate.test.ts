/**
 * Generation with a prefix of vectors (LinguaLIFT's mapped encoder states, worker/model/generate.ts
 * `prefix`): the prefix enters at the prefill, and every KV-cached step after it must place its
 * token at the position that counts the prefix's real vectors. The cached, left-padded batch must
 * equal a no-cache recomputation of each row alone (the prefix prepended through the embeddings
 * hook, as in training): greedy tokens identical, each step's logits within 1e-4. A cached step
 * that forgot the prefix's length in its position (or attended to its padding) would differ.
 *
 * Then the same through LinguaLIFT's own path: `worker generate` on a directory holding an
 * alignment layer (`lingualift.safetensors` naming its encoder) equals the no-cache recomputation
 * with that layer's prefix of the prompt, for both fusions.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LINGUALIFT_METADATA, lingualiftSchema } from '../../../common/methods/index.js';
import { initBackend } from '../../../worker/backend.js';
import { runGenerate } from '../../../worker/commands/generate.js';
import { runInitEncoder } from '../../../worker/commands/init-encoder.js';
import { runInitModel } from '../../../worker/commands/init-model.js';
import { alignmentModules, loadLingualift } from '../../../worker/methods/lingualift.js';
import { initModules } from '../../../worker/methods/modules.js';
import { generateIds } from '../../../worker/model/generate.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { writeSafetensors } from '../../../worker/model/safetensors.js';
import { ModelTokenizer } from '../../../worker/model/tokenizer.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');

function seeded(n: number, seed: number, scale: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}

/** Greedy decoding of one row without a cache: `prefix` [1, P, H] prepended to the growing ids at every pass. */
function referenceRow(
  model: LlamaModel,
  prefix: tf.Tensor3D,
  prompt: readonly number[],
  n: number,
): { ids: number[]; logits: Float32Array[] } {
  const seq = [...prompt];
  const logits: Float32Array[] = [];
  const H = model.config.hiddenSize;
  for (let i = 0; i < n; i++) {
    const row = tf.tidy(() => {
      const T = seq.length;
      const { hidden } = model.forwardHidden(tf.tensor2d([seq], [1, T], 'int32'), {
        hooks: { embeddings: () => ({ prepend: prefix }) },
      });
      return model.head(tf.slice(hidden, [T - 1, 0], [1, H])).dataSync() as Float32Array;
    });
    logits.push(Float32Array.from(row));
    seq.push(row.indexOf(Math.max(...row)));
  }
  return { ids: seq.slice(prompt.length), logits };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('generation with a prefix', () => {
  beforeAll(async () => {
    await initBackend('cpu', { enabled: false });
  });

  it('a left-padded batch with prefixes decodes each row as the no-cache forward does alone', async () => {
    const model = await LlamaModel.load(GOLDEN);
    try {
      const H = model.config.hiddenSize;
      const V = model.config.vocabSize;
      const prompts = [
        [1, 17, 99, 4, 250, 31, 77],
        [1, 5],
        [1, 200, 13, 13, 140],
      ];
      // Prefixes of 4, 2 and 3 real vectors, left-padded to P = 4.
      const pad = Int32Array.from([0, 2, 1]);
      const P = 4;
      const vectors = tf.tensor3d(seeded(prompts.length * P * H, 11, 4), [prompts.length, P, H]);
      const n = 8;
      const steps: Float32Array[] = [];
      const before = tf.memory().numTensors;
      const got = await generateIds(model, prompts, {
        maxNewTokens: n,
        eosIds: [],
        prefix: { vectors, pad },
        onLogits: (step, l) => (steps[step] = Float32Array.from(l)),
      });
      expect(tf.memory().numTensors).toBe(before);
      expect(steps).toHaveLength(n);
      prompts.forEach((p, b) => {
        const own = tf.slice(vectors, [b, pad[b]!, 0], [1, P - pad[b]!, H]);
        const ref = referenceRow(model, own, p, n);
        own.dispose();
        expect(got.ids[b], `row ${b}`).toEqual(ref.ids);
        ref.logits.forEach((l, i) => {
          expect(maxAbsDiff(steps[i]!.subarray(b * V, (b + 1) * V), l), `row ${b} step ${i}`).toBeLessThan(1e-4);
        });
      });
      // The prefix matters: without it the rows decode otherwise.
      const plain = await generateIds(model, prompts, { maxNewTokens: n, eosIds: [] });
      expect(plain.ids).not.toEqual(got.ids);
      vectors.dispose();
    } finally {
      model.dispose();
    }
  }, 60_000);
});

describe('worker generate on a LinguaLIFT final/', () => {
  let dir: string;
  beforeAll(async () => {
    await initBackend('cpu', { enabled: false });
    dir = await mkdtemp(join(tmpdir(), 'polytune-lingualift-gen-'));
    await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
    await runInitEncoder({ preset: 'tiny', out: join(dir, 'encoder'), seed: 1 });
  }, 60_000);
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each(['prepend', 'replace'] as const)(
    'fusion %s: the prompt through encoder and layer, at the prefill',
    async (fusion) => {
      const modelDir = join(dir, 'model');
      const method = lingualiftSchema.parse({
        name: 'lingualift',
        stage: 'task',
        encoder: { path: join(dir, 'encoder') },
        alignment: { depth: 2, hidden: 24 },
        fusion,
      });
      const model = await LlamaModel.load(modelDir);
      try {
        // A layer of larger weights than its init, so the prefix steers the tiny model.
        const modules = initModules('lingualift', alignmentModules(method, model.config.hiddenSize, 32), 7, new Set());
        for (const m of modules) m.data.forEach((x, i) => (m.data[i] = x * 50));
        await writeSafetensors(join(modelDir, 'lingualift.safetensors'), modules, {
          dtype: 'F32',
          metadata: { format: 'pt', [LINGUALIFT_METADATA.encoder]: join(dir, 'encoder') },
        });
        const prompt = 'Natalia sold clips to 48 of her friends in April.';
        const n = 6;
        const lines: string[] = [];
        const got = await runGenerate({ model: modelDir, prompt, maxNewTokens: n, write: (l) => lines.push(l) });
        // CC-Tuning's transform with a LinguaLIFT prefix is refused, naming the file.
        await expect(runGenerate({ model: modelDir, prompt, ccTransform: true, write: () => {} })).rejects.toThrow(
          /lingualift\.safetensors: a LinguaLIFT model's prefix and CC-Tuning's transform/,
        );

        const tokenizer = await ModelTokenizer.load(modelDir, model.config);
        const loaded = (await loadLingualift(modelDir, model.config, tokenizer))!;
        try {
          expect(loaded.method.fusion).toBe(fusion);
          const prefix = loaded.prefixer.prefix([prompt]);
          const ids = loaded.prefixer.promptIds ?? tokenizer.encode(prompt);
          if (fusion === 'replace') expect(ids).toHaveLength(1);
          const ref = referenceRow(model, prefix.vectors, ids, n);
          prefix.vectors.dispose();
          const eos = ref.ids.indexOf(tokenizer.eosId!);
          expect(got.ids).toEqual(eos >= 0 ? ref.ids.slice(0, eos) : ref.ids);
          expect(lines).toEqual([got.text]);
        } finally {
          loaded.dispose();
        }
      } finally {
        model.dispose();
      }
    },
    60_000,
  );

  it('refuses an encoder whose width does not fit the layer, or outside the storage roots', async () => {
    const modelDir = join(dir, 'model');
    const model = await LlamaModel.load(modelDir);
    try {
      const tokenizer = await ModelTokenizer.load(modelDir, model.config);
      await runInitEncoder({ preset: 'tiny', out: join(dir, 'encoder-2'), seed: 2 });
      // The same encoder width: fits. A layer made for another width does not.
      const method = lingualiftSchema.parse({ name: 'lingualift', encoder: { path: 'x' }, alignment: { depth: 1 } });
      const modules = initModules('lingualift', alignmentModules(method, model.config.hiddenSize, 40), 7, new Set());
      await writeSafetensors(join(modelDir, 'lingualift.safetensors'), modules, { dtype: 'F32', metadata: {} });
      await expect(loadLingualift(modelDir, model.config, tokenizer)).rejects.toThrow(/metadata names no encoder/);
      // An encoder only the file names (not the spec) must lie under the worker's storage roots.
      const file = join(modelDir, 'lingualift.safetensors');
      await writeSafetensors(file, modules, {
        dtype: 'F32',
        metadata: { [LINGUALIFT_METADATA.encoder]: join(dir, 'encoder-2') },
      });
      await expect(loadLingualift(modelDir, model.config, tokenizer, { storageRoots: [modelDir] })).rejects.toThrow(
        `${file}: metadata encoder ${join(dir, 'encoder-2')} is outside the storage roots (${modelDir})`,
      );
      await expect(loadLingualift(modelDir, model.config, tokenizer, { storageRoots: [dir] })).rejects.toThrow(
        `${file} (tensor alignment.0.weight): shape [64, 40] does not fit`,
      );
      await expect(
        loadLingualift(modelDir, model.config, tokenizer, { encoder: join(dir, 'encoder-2') }),
      ).rejects.toThrow(
        `${join(modelDir, 'lingualift.safetensors')} (tensor alignment.0.weight): shape [64, 40] does not fit`,
      );
    } finally {
      model.dispose();
    }
  }, 60_000);
});
