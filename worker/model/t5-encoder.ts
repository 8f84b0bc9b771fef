/**
 * The mT5 / T5 v1.1 encoder (HF `T5EncoderModel`) in TensorFlow.js, float32, always frozen: the
 * multilingual encoder LinguaLIFT feeds into the LLM (worker/methods/lingualift.ts). Op for op as
 * transformers' `modeling_t5.py`:
 *
 *   x = shared[ids]                                         (no scaling of the embedding)
 *   bias = relative_attention_bias[bucket(j - i)]           (block 0's table, shared by every block)
 *   per block:  h = T5LayerNorm(x);  x = x + o(softmax(q k^T + bias + mask) v)     (no 1/sqrt(d))
 *               h = T5LayerNorm(x);  x = x + wo(gelu_new(wi_0 h) * wi_1 h)
 *   out = T5LayerNorm(x)                                     (final_layer_norm)
 *
 * T5LayerNorm is an RMS norm without mean subtraction or bias (ops.ts `rmsNorm`). The padding
 * mask is additive on the keys; a padded position's own output is computed but means nothing.
 * The encoder is bidirectional and its bias depends only on j - i, so a row's valid outputs do not
 * depend on how much padding the batch gives it, left or right.
 *
 * Weights are streamed from the checkpoint by the LLM's loader (weight-loader.ts: single file or
 * shards with an index, F32/F16/BF16), every projection stored transposed [in, out] once at load
 * (see llama.ts's header on layouts). No variable is made: nothing here trains.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ModelLoadError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import {
  readT5Config,
  t5BlockTensorName,
  T5_EMBEDDING_NAMES,
  t5EncoderTensorShapes,
  type T5Config,
} from '../../common/encoder-config.js';
import { MASKED, rmsNorm, transposeHost } from './ops.js';
import { matMul } from './matmul.js';
import { listModelTensors } from './safetensors.js';
import { checkedModelListing, loadWeights, tensorSink } from './weight-loader.js';

/**
 * HF `T5Attention._relative_position_bucket`, bidirectional, in float32 arithmetic as torch does
 * it (the log ratio is truncated to an integer bucket, so the rounding decides the edges).
 */
export function relativePositionBucket(relative: number, numBuckets: number, maxDistance: number): number {
  const half = Math.floor(numBuckets / 2);
  let bucket = relative > 0 ? half : 0;
  const n = Math.abs(relative);
  const maxExact = Math.floor(half / 2);
  if (n < maxExact) return bucket + n;
  const f = Math.fround;
  const logRatio = f(Math.log(f(n / maxExact)));
  const scaled = f(f(logRatio / f(Math.log(maxDistance / maxExact))) * (half - maxExact));
  bucket += Math.min(maxExact + Math.trunc(scaled), half - 1);
  return bucket;
}

/** Bucket ids [T*T] for query i and key j at i*T+j (`compute_bias`'s memory - context). */
export function relativeBuckets(T: number, numBuckets: number, maxDistance: number): Int32Array {
  const out = new Int32Array(T * T);
  for (let i = 0; i < T; i++)
    for (let j = 0; j < T; j++) out[i * T + j] = relativePositionBucket(j - i, numBuckets, maxDistance);
  return out;
}

/** HF `NewGELUActivation` (`gelu_new`): the tanh approximation. */
export function geluNew(x: tf.Tensor): tf.Tensor {
  const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.mul(x, tf.mul(x, x)))));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

export interface EncoderLoadOptions {
  logger?: Logger;
  /** Elements read from the files at a time. @default the loader's */
  chunkElems?: number;
}

export class T5Encoder {
  readonly config: T5Config;
  readonly dir: string;
  private readonly params = new Map<string, tf.Tensor>();
  private embeddingName: string = T5_EMBEDDING_NAMES[0];
  private disposed = false;

  private constructor(config: T5Config, dir: string) {
    this.config = config;
    this.dir = dir;
  }

  /** Loads `dir` (config.json and safetensors, single or sharded, F32/F16/BF16), tensor by tensor. */
  static async load(dir: string, options: EncoderLoadOptions = {}): Promise<T5Encoder> {
    const log = options.logger ?? silentLogger;
    const config = await readT5Config(dir);
    const present = await listModelTensors(dir);
    const embedding = T5_EMBEDDING_NAMES.find((n) => present.has(n));
    if (!embedding) {
      throw new ModelLoadError(
        dir,
        `no token embedding in the model files (expected ${T5_EMBEDDING_NAMES.join(' or ')})`,
      );
    }
    const expected = t5EncoderTensorShapes(config, embedding);
    const listing = await checkedModelListing(dir, expected);
    const enc = new T5Encoder(config, dir);
    enc.embeddingName = embedding;
    const started = Date.now();
    try {
      await loadWeights(dir, expected.keys(), listing, options.chunkElems, (name, shape) =>
        tensorSink(shape, T5Encoder.isProjection(name), (t) => void enc.params.set(name, t)),
      );
    } catch (e) {
      enc.dispose();
      throw e;
    }
    log.info('encoder loaded', { dir, tensors: expected.size, ms: Date.now() - started });
    return enc;
  }

  private static isProjection(name: string): boolean {
    return /\.(SelfAttention\.[qkvo]|DenseReluDense\.(wi_0|wi_1|wo))\.weight$/.test(name);
  }

  private p(block: number, suffix: string): tf.Tensor {
    return this.params.get(t5BlockTensorName(block, suffix))!;
  }

  /** A frozen projection: x [N, in] times the stored [in, out]. */
  private linear(x: tf.Tensor2D, block: number, suffix: string): tf.Tensor2D {
    return tf.matMul(x, this.p(block, `${suffix}.weight`) as tf.Tensor2D);
  }

  /**
   * The encoder's last hidden states [B, T, d_model] for int32 ids [B, T]; `keep` [B*T] (1 a
   * token, 0 padding) masks the padded keys. @default every position a token
   */
  forward(ids: tf.Tensor2D, keep?: ArrayLike<number>): tf.Tensor3D {
    if (this.disposed) throw new Error('T5Encoder used after dispose()');
    const c = this.config;
    const [B, T] = ids.shape;
    return tf.tidy(() => {
      const nH = c.numHeads;
      const D = c.headDim;
      let x = tf.gather(this.params.get(this.embeddingName)!, tf.reshape(ids, [B * T])) as tf.Tensor2D;
      const buckets = tf.tensor1d(
        relativeBuckets(T, c.relativeAttentionNumBuckets, c.relativeAttentionMaxDistance),
        'int32',
      );
      const table = this.p(0, 'layer.0.SelfAttention.relative_attention_bias.weight');
      // [T*T, heads] -> [1, heads, T, T]
      let bias: tf.Tensor = tf.reshape(tf.transpose(tf.reshape(tf.gather(table, buckets), [T, T, nH]), [2, 0, 1]), [
        1,
        nH,
        T,
        T,
      ]);
      if (keep) {
        const m = new Float32Array(B * T);
        for (let i = 0; i < B * T; i++) m[i] = keep[i] ? 0 : MASKED;
        bias = tf.add(bias, tf.tensor(m, [B, 1, 1, T]));
      }
      for (let l = 0; l < c.numLayers; l++) {
        const input = x;
        x = tf.tidy(() => {
          const h = rmsNorm(input, this.p(l, 'layer.0.layer_norm.weight'), c.layerNormEps);
          const heads = (t: tf.Tensor2D): tf.Tensor4D => tf.transpose(tf.reshape(t, [B, T, nH, D]), [0, 2, 1, 3]);
          const q = heads(this.linear(h, l, 'layer.0.SelfAttention.q'));
          const kT = tf.transpose(
            tf.reshape(this.linear(h, l, 'layer.0.SelfAttention.k'), [B, T, nH, D]),
            [0, 2, 3, 1],
          );
          const v = heads(this.linear(h, l, 'layer.0.SelfAttention.v'));
          const scores = matMul(tf.reshape(q, [B * nH, T, D]), tf.reshape(kT, [B * nH, D, T]));
          const probs = tf.softmax(tf.add(tf.reshape(scores, [B, nH, T, T]), bias));
          const mixed = matMul(tf.reshape(probs, [B * nH, T, T]), tf.reshape(v, [B * nH, T, D]));
          const attn = tf.reshape(tf.transpose(tf.reshape(mixed, [B, nH, T, D]), [0, 2, 1, 3]), [B * T, nH * D]);
          const y = tf.add<tf.Tensor2D>(input, this.linear(attn as tf.Tensor2D, l, 'layer.0.SelfAttention.o'));
          const h2 = rmsNorm(y, this.p(l, 'layer.1.layer_norm.weight'), c.layerNormEps);
          const gated = tf.mul(
            geluNew(this.linear(h2, l, 'layer.1.DenseReluDense.wi_0')),
            this.linear(h2, l, 'layer.1.DenseReluDense.wi_1'),
          ) as tf.Tensor2D;
          return tf.add(y, this.linear(gated, l, 'layer.1.DenseReluDense.wo'));
        });
        input.dispose();
      }
      const out = rmsNorm(x, this.params.get('encoder.final_layer_norm.weight')!, c.layerNormEps);
      return tf.reshape(out, [B, T, c.hiddenSize]);
    });
  }

  /** Every tensor, HF names and layout, copied out of the backend (tests: the encoder is unchanged). */
  exportTensors(): { name: string; shape: number[]; data: Float32Array }[] {
    return [...this.params.entries()].map(([name, t]) => {
      const data = t.dataSync() as Float32Array;
      if (!T5Encoder.isProjection(name)) return { name, shape: [...t.shape], data: Float32Array.from(data) };
      const [inDim, outDim] = t.shape as [number, number];
      return { name, shape: [outDim, inDim], data: transposeHost(data, inDim, outDim) };
    });
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of this.params.values()) t.dispose();
    this.params.clear();
  }
}
