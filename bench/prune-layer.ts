/**
 * `node dist/bench/prune-layer.js [--backend wasm] [--seq T] [--samples N]`: what one decoder layer
 * of a PruneJob costs (worker/prune/run-prune.ts), measured here on a 7B-shaped layer cut in width,
 * and the plan of a 7B model worked out from it (docs/pruning.md).
 *
 * Measured, per layer and calibration sample of T tokens: the calibration pass (the layer with the
 * four statistic sums, read back) and the pass again with pruned weights, on shapes with LLaMA-2
 * 7B's ratios (H, I = 2.6875 H, head dim 128) at H = 512 and 1024; their FLOPs (2 * MACs) give the
 * rate this backend reaches. Measured directly at 7B size (it runs in JavaScript on the host, not
 * on the device): `wandaMask` on a 4096 x 4096 and a 11008 x 4096 matrix. Computed: the bytes
 * exchanged a layer (samples x (3H + heads*headDim + I) float32) and the host memory of the hidden
 * states (samples x T x H float32, in and out).
 *
 * Prints one JSON object: { backend, seq, samples, shapes[]: { hidden, intermediate, flopsPerSample,
 * secondsPerSample, gflops }, mask7b: { attnSeconds, mlpSeconds, layerSeconds }, plan7b: { ... } }.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { expectedTensorShapes, parseLlamaConfig, type LlamaConfig } from '../common/model-config.js';
import { BackendName, initBackend } from '../worker/backend.js';
import { LlamaModel } from '../worker/model/llama.js';
import { wandaMask } from '../worker/prune/wanda.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'wasm' },
    seq: { type: 'string', default: '256' },
    samples: { type: 'string', default: '100' },
  },
});
const T = Number(values.seq);
const SAMPLES = Number(values.samples);

function config(H: number): LlamaConfig {
  const D = 128;
  return parseLlamaConfig({
    model_type: 'llama',
    vocab_size: 256,
    hidden_size: H,
    intermediate_size: Math.round((H * 11008) / 4096),
    num_hidden_layers: 1,
    num_attention_heads: H / D,
    num_key_value_heads: H / D,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
  });
}

function random(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.04;
  }
  return out;
}

/** FLOPs of one layer on T tokens: the seven projections and the attention products. */
function layerFlops(c: LlamaConfig, t: number): number {
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const kv = c.numKeyValueHeads * c.headDim;
  const proj = t * H * (H + 2 * kv + H) + 3 * t * H * I;
  const attn = 2 * t * t * c.numAttentionHeads * c.headDim;
  return 2 * (proj + attn);
}

function measureShape(H: number): Record<string, number> {
  const c = config(H);
  const tensors = [...expectedTensorShapes(c)].map(([name, shape], i) => ({
    name,
    shape,
    data: name.endsWith('norm.weight')
      ? new Float32Array(shape[0]!).fill(1)
      : random(
          shape.reduce((a, b) => a * b, 1),
          i + 1,
        ),
  }));
  const model = LlamaModel.fromTensors(c, tensors);
  try {
    const x = tf.randomNormal([T, H], 0, 1, 'float32', 7) as tf.Tensor2D;
    const pass = (): void => {
      const sums: tf.Tensor[] = [];
      const y = tf.tidy(() => {
        sums.push(tf.keep(tf.sum(tf.square(x), 0)));
        return model.decoderLayer(0, x, {
          linearInput: (_l, name, input) => {
            if (
              name === 'self_attn.q_proj' ||
              name === 'self_attn.o_proj' ||
              name === 'mlp.gate_proj' ||
              name === 'mlp.down_proj'
            )
              sums.push(tf.keep(tf.sum(tf.square(input), 0)));
          },
        });
      });
      for (const s of sums) s.dataSync();
      tf.dispose([...sums, y]);
      // The pass again with pruned weights (no statistics): the next layer's input.
      const again = model.decoderLayer(0, x);
      again.dataSync();
      again.dispose();
    };
    pass();
    const reps = 3;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) pass();
    const secondsPerSample = (performance.now() - t0) / 1000 / reps;
    x.dispose();
    const flopsPerSample = 2 * layerFlops(c, T);
    return {
      hidden: H,
      intermediate: c.intermediateSize,
      flopsPerSample,
      secondsPerSample,
      gflops: flopsPerSample / secondsPerSample / 1e9,
    };
  } finally {
    model.dispose();
  }
}

function maskSeconds(rows: number, cols: number): number {
  const W = random(rows * cols, 3);
  const scaler = Float64Array.from(random(cols, 5), (v) => v * v);
  const t0 = performance.now();
  wandaMask(W, rows, cols, scaler, { kind: 'fraction', sparsity: 0.3 });
  return (performance.now() - t0) / 1000;
}

async function main(): Promise<void> {
  await initBackend(values.backend as BackendName);
  const shapes = [512, 1024].map(measureShape);
  const attn = maskSeconds(4096, 4096);
  const down = maskSeconds(4096, 11008);
  const up = maskSeconds(11008, 4096);
  // q, k, v, o are 4096 x 4096; gate and up 11008 x 4096; down 4096 x 11008.
  const maskLayer = 4 * attn + 2 * up + down;
  const c7 = config(4096);
  const flops7 = 2 * layerFlops(c7, T);
  const width7 = 3 * 4096 + 4096 + 11008;
  const rate = (shapes.at(-1)?.['gflops'] ?? 0) * 1e9;
  const plan7b = {
    seq: T,
    samples: SAMPLES,
    flopsPerLayer: flops7 * SAMPLES,
    secondsPerLayerHere: (flops7 * SAMPLES) / rate,
    maskSecondsPerLayer: maskLayer,
    exchangedBytesPerLayer: SAMPLES * width7 * 4,
    hiddenStateBytes: 2 * SAMPLES * T * 4096 * 4,
    layerWeightBytesF32: 4 * (4 * 4096 * 4096 + 3 * 4096 * 11008),
  };
  console.log(
    JSON.stringify(
      {
        backend: values.backend,
        seq: T,
        samples: SAMPLES,
        shapes,
        mask7b: { attnSeconds: attn, mlpSeconds: up, downSeconds: down, layerSeconds: maskLayer },
        plan7b,
      },
      null,
      2,
    ),
  );
}

await main();
