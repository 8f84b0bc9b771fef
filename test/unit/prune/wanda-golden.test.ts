/**
 * Wanda masks against an independent PyTorch reference (scripts/make-golden-prune.py): the tiny
 * golden model test/golden/llama-gqa pruned with tokenized calibration at sparsity 0.3, 0.5 and
 * 2:4 zeroes exactly the reference's positions, keeps every other weight bit for bit, zeroes
 * exactly floor(columns * sparsity) of every row, and leaves a valid 2:4 pattern in every group; a
 * pass that fails midway (an exchange) frees its tensors.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { pruneSchema } from '../../../common/prune-spec.js';
import { initBackend } from '../../../worker/backend.js';
import { LlamaModel } from '../../../worker/model/llama.js';
import { calibrationSamples } from '../../../worker/prune/calibration.js';
import { pruneModel } from '../../../worker/prune/run-prune.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const MODEL = join(GOLDEN, 'llama-gqa');
const CALIBRATION = join(GOLDEN, 'prune', 'calibration.jsonl');
/** The golden model's vocab_size. */
const VOCAB = 256;

type Expected = Record<string, Record<string, { shape: [number, number]; mask: string }>>;

function unpack(hex: string, n: number): Uint8Array {
  const bytes = Buffer.from(hex, 'hex');
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (bytes[i >> 3]! >> (7 - (i & 7))) & 1;
  return out;
}

const CASES = [
  { key: 'sparsity-0.3', block: { sparsity: 0.3 } },
  { key: 'sparsity-0.5', block: { sparsity: 0.5 } },
  { key: '2:4', block: { pattern: '2:4' } },
] as const;

describe('Wanda masks (PruneJob) against the PyTorch reference', () => {
  let expected: Expected;
  beforeAll(async () => {
    await initBackend('wasm');
    expected = JSON.parse(await readFile(join(GOLDEN, 'prune', 'expected.json'), 'utf8')) as Expected;
  });

  it.each(CASES)('$key: the same pruned positions, survivors bit-identical, the exact count per row', async (c) => {
    const spec = pruneSchema.parse({
      ...c.block,
      calibration: { sources: [{ path: CALIBRATION, format: 'tokenized' }], samples: 5 },
    });
    const samples = await calibrationSamples(spec.calibration, VOCAB, () =>
      Promise.reject(new Error('no tokenizer needed')),
    );
    expect(samples.map((s) => s.length)).toEqual([9, 7, 15, 11, 12]);
    const original = await LlamaModel.load(MODEL);
    const model = await LlamaModel.load(MODEL);
    try {
      const report = await pruneModel({
        model,
        spec,
        samples,
        contrastSamples: 0,
        rank: 0,
        worldSize: 1,
        reduce: (v) => Promise.resolve(v),
      });
      const want = expected[c.key]!;
      expect(Object.keys(want)).toHaveLength(14);
      for (const [name, { shape, mask: hex }] of Object.entries(want)) {
        const [rows, cols] = shape;
        const mask = unpack(hex, rows * cols);
        const before = original.exportTensor(name).data;
        const after = model.exportTensor(name).data;
        const got = Uint8Array.from(after, (x, i) => (x === 0 && before[i] !== 0 ? 1 : 0));
        expect(got, name).toEqual(mask);
        const survivorsSame = after.every((x, i) => mask[i] === 1 || Object.is(x, before[i]));
        expect(survivorsSame, `${name}: survivors bit-identical`).toBe(true);
        for (let r = 0; r < rows; r++) {
          const row = mask.subarray(r * cols, (r + 1) * cols);
          if (c.key === '2:4') {
            for (let g = 0; g < cols; g += 4) expect(row[g]! + row[g + 1]! + row[g + 2]! + row[g + 3]!).toBe(2);
          } else {
            expect(row.reduce((a, b) => a + b, 0)).toBe(Math.trunc(cols * c.block.sparsity));
          }
        }
      }
      const wantSparsity = c.key === '2:4' ? 0.5 : Math.trunc(32 * c.block.sparsity) / 32;
      expect(report.layers[0]!.modules.find((m) => m.module === 'q_proj')!.sparsity).toBe(wantSparsity);
      expect(report.layers.map((l) => l.features.top.length)).toEqual([20, 20]);
    } finally {
      original.dispose();
      model.dispose();
    }
  });

  it("refuses a calibration record's id outside the model's vocabulary, naming the file and record", async () => {
    const spec = pruneSchema.parse({
      sparsity: 0.5,
      calibration: { sources: [{ path: CALIBRATION, format: 'tokenized' }], samples: 5 },
    });
    // Record 2 holds id 255: fine for 256 tokens, not for 255.
    await expect(calibrationSamples(spec.calibration, 255, () => Promise.reject(new Error('unused')))).rejects.toThrow(
      /calibration\.jsonl: record 2: token id 255 is outside the model's vocabulary \[0, 255\)/,
    );
  });

  it('frees every tensor of the pass when the exchange of a layer fails', async () => {
    const spec = pruneSchema.parse({
      sparsity: 0.5,
      calibration: { sources: [{ path: CALIBRATION, format: 'tokenized' }], samples: 5 },
    });
    const samples = await calibrationSamples(spec.calibration, VOCAB, () =>
      Promise.reject(new Error('no tokenizer needed')),
    );
    const model = await LlamaModel.load(MODEL);
    try {
      const before = tf.memory().numTensors;
      let calls = 0;
      await expect(
        pruneModel({
          model,
          spec,
          samples,
          contrastSamples: 0,
          rank: 0,
          worldSize: 1,
          // The second layer's exchange fails, its outputs computed.
          reduce: (v) => (++calls === 2 ? Promise.reject(new Error('peer gone')) : Promise.resolve(v)),
        }),
      ).rejects.toThrow('peer gone');
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      model.dispose();
    }
  });
});
