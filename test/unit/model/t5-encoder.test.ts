/**
 * The mT5 / T5 v1.1 encoder (worker/model/t5-encoder.ts) against an independent PyTorch reference
 * of HF's modeling_t5.py (scripts/make-golden-t5.py): relative position buckets, gated-GELU
 * (gelu_new), T5 layer norm without mean subtraction, the padding mask (right and left), on two
 * golden encoders (F32 single file; BF16 in two shards with an index), on every model backend.
 * Also: other architectures refused by name, naming the file; `init-encoder` makes a loadable one.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseT5Config, t5EncoderParameters } from '../../../common/encoder-config.js';
import { ENCODER_PRESET_CONFIGS, runInitEncoder } from '../../../worker/commands/init-encoder.js';
import { readSafetensors } from '../../../worker/model/safetensors.js';
import { relativePositionBucket, T5Encoder } from '../../../worker/model/t5-encoder.js';
import { MODEL_BACKENDS, useBackend } from '../../helpers/backends.js';

const GOLDEN = join(import.meta.dirname, '..', '..', 'golden');
const ENCODERS = ['t5-encoder', 'mt5-encoder-bf16-sharded'];

interface Golden {
  input_ids: number[][];
  keep: number[][];
  relative: number[];
  buckets: Record<string, number[]>;
}

function maxAbsErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe.each(MODEL_BACKENDS.flatMap((b) => ENCODERS.map((e) => [b, e] as const)))(
  'T5 encoder %s %s',
  (backend, name) => {
    const dir = join(GOLDEN, name);
    let golden: Golden;
    let expected: Float32Array;
    let enc: T5Encoder;
    beforeAll(async () => {
      await useBackend(backend);
      golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8')) as Golden;
      expected = (await readSafetensors(join(dir, 'expected.safetensors'))).tensors.find(
        (t) => t.name === 'last_hidden_state',
      )!.data;
      enc = await T5Encoder.load(dir);
    });
    afterAll(() => enc?.dispose());

    it('buckets relative positions as HF does', () => {
      for (const [key, want] of Object.entries(golden.buckets)) {
        const [nb, md] = key.split('/').map(Number) as [number, number];
        expect(golden.relative.map((r) => relativePositionBucket(r, nb, md))).toEqual(want);
      }
    });

    it('last hidden states within 1e-4 of the reference, padding masked', () => {
      const B = golden.input_ids.length;
      const T = golden.input_ids[0]!.length;
      const before = tf.memory().numTensors;
      const ids = tf.tensor2d(golden.input_ids.flat(), [B, T], 'int32');
      const out = enc.forward(ids, golden.keep.flat());
      expect(out.shape).toEqual([B, T, enc.config.hiddenSize]);
      expect(maxAbsErr(out.dataSync(), expected)).toBeLessThan(1e-4);
      tf.dispose([ids, out]);
      expect(tf.memory().numTensors).toBe(before);
    });

    it("a row's valid outputs do not depend on its padding", () => {
      // Row 2 is left-padded in the golden batch: alone and unpadded it gives the same states.
      const T = golden.input_ids[0]!.length;
      const keep = golden.keep[2]!;
      const first = keep.indexOf(1);
      const ids = tf.tensor2d(golden.input_ids[2]!.slice(first), [1, T - first], 'int32');
      const out = enc.forward(ids);
      const d = enc.config.hiddenSize;
      expect(maxAbsErr(out.dataSync(), expected.slice((2 * T + first) * d, 3 * T * d))).toBeLessThan(1e-4);
      tf.dispose([ids, out]);
    });
  },
);

describe('encoder config', () => {
  const base = JSON.parse(JSON.stringify(ENCODER_PRESET_CONFIGS.tiny)) as Record<string, unknown>;
  it('refuses another architecture by name, naming the file', () => {
    expect(() => parseT5Config({ ...base, architectures: ['LlamaForCausalLM'] }, '/m/enc/config.json')).toThrow(
      /\/m\/enc\/config\.json: architecture "LlamaForCausalLM" is not a supported encoder/,
    );
    expect(() => parseT5Config({ ...base, architectures: undefined, model_type: 'bert' }, 'x/config.json')).toThrow(
      /x\/config\.json: model_type "bert" is not a supported encoder \(supported: t5, mt5\)/,
    );
    expect(() => parseT5Config({ ...base, feed_forward_proj: 'relu' }, 'c.json')).toThrow(
      /c\.json: feed_forward_proj "relu" is not supported/,
    );
  });

  it('init-encoder writes a tiny encoder that loads and encodes', async () => {
    await useBackend('wasm');
    const out = await mkdtemp(join(tmpdir(), 'polytune-init-encoder-'));
    try {
      const { parameters } = await runInitEncoder({ preset: 'tiny', out, seed: 3 });
      expect(parameters).toBe(t5EncoderParameters(parseT5Config(base)));
      const enc = await T5Encoder.load(out);
      const ids = tf.tensor2d([[5, 6, 7, 2]], [1, 4], 'int32');
      const y = enc.forward(ids);
      expect(y.shape).toEqual([1, 4, 32]);
      expect([...y.dataSync()].every(Number.isFinite)).toBe(true);
      tf.dispose([ids, y]);
      enc.dispose();
      // A model of another architecture in place of the encoder: refused with the file.
      await writeFile(
        join(out, 'config.json'),
        JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama' }),
      );
      await expect(T5Encoder.load(out)).rejects.toThrow(`${join(out, 'config.json')}: architecture "LlamaForCausalLM"`);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
