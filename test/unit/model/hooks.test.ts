/** The forward pass's hook points (worker/model/hooks.ts) on the wasm backend. */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../../../worker/backend.js';
import { generateIds } from '../../../worker/model/generate.js';
import { LINEAR_NAMES, type ForwardHooks, type LinearName } from '../../../worker/model/hooks.js';
import { LlamaModel } from '../../../worker/model/llama.js';

const dir = join(import.meta.dirname, '..', '..', 'golden', 'llama-gqa');
const IDS = [
  [1, 40, 41, 42, 43, 44, 45, 46],
  [1, 90, 91, 92, 93, 2, 2, 2],
];
const LABELS = [
  [-100, -100, -100, 42, 43, 44, 45, 46],
  [-100, -100, 91, 92, 93, 2, -100, -100],
];

describe('hook points', () => {
  let model: LlamaModel;
  beforeAll(async () => {
    await initBackend('wasm');
    model = await LlamaModel.load(dir, { trainable: new Set(['model.layers.1.mlp.up_proj.weight']) });
  });
  afterAll(() => model.dispose());

  const hidden = (hooks?: ForwardHooks, ids = IDS): Float32Array =>
    tf.tidy(
      () =>
        model
          .forwardHidden(tf.tensor2d(ids, undefined, 'int32'), hooks ? { hooks } : {})
          .hidden.dataSync() as Float32Array,
    );

  it('adding zeros (to the embeddings, after a layer, at given rows) changes nothing, bit for bit', () => {
    const plain = hidden();
    const before = tf.memory().numTensors;
    const zeros = hidden({
      embeddings: (x) => ({ add: tf.zerosLike(x) }),
      afterLayer: (_l, h) => ({ add: tf.zeros([3, h.shape[1]]), rows: Int32Array.from([0, 5, 9]) }),
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(Buffer.from(zeros.buffer)).toEqual(Buffer.from(plain.buffer));
    expect(Buffer.from(hidden({}).buffer)).toEqual(Buffer.from(plain.buffer));
  });

  it('adds at the given rows only, with a gradient for what was added', () => {
    const H = model.config.hiddenSize;
    const v = tf.variable(tf.randomNormal<tf.Rank.R2>([2, H], 0, 0.1, 'float32', 7));
    const rows = Int32Array.from([3, 8 + 4]);
    const ids = tf.tensor2d(IDS, undefined, 'int32');
    const labels = tf.tensor2d(LABELS, undefined, 'int32');
    const byRows: ForwardHooks = { afterLayer: (l) => (l === 0 ? { add: v, rows } : undefined) };
    // The same delta written out whole: zeros but rows 3 and 12.
    const whole: ForwardHooks = {
      afterLayer: (l, h) =>
        l === 0
          ? {
              add: tf.concat([
                tf.zeros([3, H]),
                tf.slice(v, [0, 0], [1, H]),
                tf.zeros([8, H]),
                tf.slice(v, [1, 0], [1, H]),
                tf.zeros([h.shape[0] - 13, H]),
              ]) as tf.Tensor2D,
            }
          : undefined,
    };
    const a = tf.tidy(() => tf.variableGrads(() => model.nllSum(ids, labels, { hooks: byRows }), [v]));
    const b = tf.tidy(() => tf.variableGrads(() => model.nllSum(ids, labels, { hooks: whole }), [v]));
    expect(a.value.dataSync()[0]).toBe(b.value.dataSync()[0]);
    expect(a.value.dataSync()[0]).not.toBe(tf.tidy(() => model.nllSum(ids, labels).dataSync()[0]));
    const ga = a.grads[v.name]!.dataSync();
    expect(Math.max(...ga.map(Math.abs))).toBeGreaterThan(0);
    expect(Array.from(ga)).toEqual(Array.from(b.grads[v.name]!.dataSync()));
    tf.dispose([a.value, b.value, a.grads, b.grads, v, ids, labels]);
  });

  it('refuses an addition of the wrong shape or outside the rows, naming what was expected', () => {
    const H = model.config.hiddenSize;
    expect(() => hidden({ afterLayer: () => ({ add: tf.zeros([3, H]) }) })).toThrow(`expected [16, ${H}]`);
    expect(() => hidden({ embeddings: () => ({ add: tf.zeros([1, H]), rows: Int32Array.from([16]) }) })).toThrow(
      'outside [0, 16)',
    );
    expect(() => hidden({ embeddings: () => ({ prepend: tf.zeros([1, 2, H]) }) })).toThrow(`expected [2, P, ${H}]`);
  });

  it('prepending the embeddings of tokens equals running with those tokens first', () => {
    const prefix = [5, 6, 7];
    const E = model.tensor('model.embed_tokens.weight');
    const prepended = hidden({
      embeddings: () => ({ prepend: tf.stack([0, 1].map(() => tf.gather(E, prefix))) as tf.Tensor3D }),
    });
    const longer = hidden(
      undefined,
      IDS.map((row) => [...prefix, ...row]),
    );
    const H = model.config.hiddenSize;
    const T = IDS[0]!.length;
    const P = prefix.length;
    const expected = new Float32Array(2 * T * H);
    for (let b = 0; b < 2; b++) expected.set(longer.subarray((b * (P + T) + P) * H, (b + 1) * (P + T) * H), b * T * H);
    expect(prepended.length).toBe(expected.length);
    for (let i = 0; i < expected.length; i++) expect(prepended[i]).toBeCloseTo(expected[i]!, 5);
    // The loss sees the input positions only: the same NLL as the longer ids with the prefix unsupervised.
    const nll = tf.tidy(() => [
      model
        .nllSum(tf.tensor2d(IDS, undefined, 'int32'), tf.tensor2d(LABELS, undefined, 'int32'), {
          hooks: { embeddings: () => ({ prepend: tf.stack([0, 1].map(() => tf.gather(E, prefix))) as tf.Tensor3D }) },
        })
        .dataSync()[0]!,
      model
        .nllSum(
          tf.tensor2d(
            IDS.map((row) => [...prefix, ...row]),
            undefined,
            'int32',
          ),
          tf.tensor2d(
            LABELS.map((row) => [-100, -100, -100, ...row]),
            undefined,
            'int32',
          ),
        )
        .dataSync()[0]!,
    ]);
    expect(nll[0]).toBeCloseTo(nll[1]!, 4);
    E.dispose();
  });

  it('the FFN output read before the residual add is down(silu(gate h) * up h) of the FFN input', () => {
    const c = model.config;
    const ffn = new Map<number, Float32Array>();
    const h2 = new Map<number, Float32Array>();
    const M = 2 * IDS[0]!.length;
    hidden({
      ffnOutput: (l, out) => void ffn.set(l, out.dataSync() as Float32Array),
      linearInput: (l, name, x) => void (name === 'mlp.gate_proj' && h2.set(l, x.dataSync() as Float32Array)),
    });
    expect([...ffn.keys()]).toEqual(Array.from({ length: c.numHiddenLayers }, (_, l) => l));
    for (let l = 0; l < c.numHiddenLayers; l++) {
      const computed = tf.tidy(() => {
        const x = tf.tensor2d(h2.get(l)!, [M, c.hiddenSize]);
        const w = (p: string): tf.Tensor2D =>
          tf.transpose(model.tensor(`model.layers.${l}.mlp.${p}.weight`)) as tf.Tensor2D;
        const gate = tf.matMul(x, w('gate_proj'));
        return tf
          .matMul(tf.mul(tf.mul(gate, tf.sigmoid(gate)), tf.matMul(x, w('up_proj'))), w('down_proj'))
          .dataSync() as Float32Array;
      });
      const got = ffn.get(l)!;
      expect(got.length).toBe(M * c.hiddenSize);
      for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(computed[i]!, 5);
    }
  });

  it('the linear-input hook sees every projection of every layer with its input shape', () => {
    const c = model.config;
    const M = 2 * IDS[0]!.length;
    const seen: string[] = [];
    hidden({ linearInput: (l, name: LinearName, x) => void seen.push(`${l} ${name} ${x.shape.join('x')}`) });
    const width: Record<LinearName, number> = {
      'self_attn.q_proj': c.hiddenSize,
      'self_attn.k_proj': c.hiddenSize,
      'self_attn.v_proj': c.hiddenSize,
      'self_attn.o_proj': c.numAttentionHeads * c.headDim,
      'mlp.gate_proj': c.hiddenSize,
      'mlp.up_proj': c.hiddenSize,
      'mlp.down_proj': c.intermediateSize,
    };
    const expected = Array.from({ length: c.numHiddenLayers }, (_, l) =>
      LINEAR_NAMES.map((n) => `${l} ${n} ${M}x${width[n]}`),
    ).flat();
    expect(seen.sort()).toEqual(expected.sort());
  });

  it('read hooks inside a checkpointed layer see the forward pass once; the gradients stay the same', async () => {
    const ck = await LlamaModel.load(dir, {
      trainable: new Set(['model.layers.1.mlp.up_proj.weight']),
      gradientCheckpointing: true,
    });
    try {
      const ids = tf.tensor2d(IDS, undefined, 'int32');
      const labels = tf.tensor2d(LABELS, undefined, 'int32');
      let calls = 0;
      const hooks: ForwardHooks = { ffnOutput: () => void calls++ };
      const grad = (m: LlamaModel, h?: ForwardHooks): number[] =>
        tf.tidy(() => {
          const r = tf.variableGrads(
            () => m.nllSum(ids, labels, h ? { hooks: h } : {}),
            [m.variable('model.layers.1.mlp.up_proj.weight')],
          );
          return Array.from(Object.values(r.grads)[0]!.dataSync());
        });
      const g = grad(ck, hooks);
      expect(calls).toBe(ck.config.numHiddenLayers);
      expect(g).toEqual(grad(model));
      tf.dispose([ids, labels]);
    } finally {
      ck.dispose();
    }
  });

  it('generation runs the hooks at the prefill and at every decoding step', async () => {
    const prompts = [
      [1, 40, 41],
      [1, 90],
    ];
    const plain = await generateIds(model, prompts, { maxNewTokens: 4, eosIds: [] });
    const Ts: number[] = [];
    const hooked = await generateIds(model, prompts, {
      maxNewTokens: 4,
      eosIds: [],
      hooks: {
        afterLayer: (l, h, { T }) => {
          if (l === 0) Ts.push(T);
          return { add: tf.zerosLike(h) };
        },
      },
    });
    expect(hooked.ids).toEqual(plain.ids);
    expect(Ts).toEqual([3, 1, 1, 1]); // the prefill (left-padded to 3), then one position a step
  });
});
