/**
 * Rotary position embeddings as HF transformers computes them (`modeling_rope_utils.py`,
 * `LlamaRotaryEmbedding`): inv_freq[i] = 1 / theta^(2i/d) for i < d/2, optionally rescaled
 * (linear, dynamic NTK, llama3), angles = position * inv_freq, and the "rotate_half" layout in
 * which dimension j < d/2 pairs with j + d/2 (not interleaved pairs). Tables are computed on the
 * host in float64 and rounded to float32; HF computes them in float32, which differs by far less
 * than the golden tests' tolerance.
 *
 * Also the rotation itself (`applyRope`, with the half swap as one op whose gradient is itself)
 * and the tables of a forward pass as tensors (`ropeTensors`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LlamaConfig } from '../../common/model-config.js';
import { customOp } from './ops.js';

/** inv_freq for one head (length headDim/2). `seqLen` matters only for `dynamic` scaling. */
export function ropeInvFreq(c: LlamaConfig, seqLen: number): Float64Array {
  const d = c.headDim;
  const half = d / 2;
  let base = c.ropeTheta;
  const s = c.ropeScaling;
  if (s?.type === 'dynamic' && seqLen > c.maxPositionEmbeddings) {
    // Dynamic NTK: grow the base once the sequence outruns the trained context.
    base = base * ((s.factor * seqLen) / c.maxPositionEmbeddings - (s.factor - 1)) ** (d / (d - 2));
  }
  // HF: 1 / base^(arange(0, d, 2) / d), the exponent computed in float32.
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / base ** Math.fround((2 * i) / d);
  if (s?.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = inv[i]! / s.factor;
  } else if (s?.type === 'llama3') {
    // Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
    // smoothly interpolated (`_compute_llama3_parameters`).
    const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) inv[i] = f / s.factor;
      else if (wavelen >= highFreqWavelen) {
        const smooth =
          (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = ((1 - smooth) * f) / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

/**
 * cos and sin tables of shape [rows, T, 1, headDim] (flattened) for `positions` given as
 * [rows, T] (flattened), each half of the last axis repeating the d/2 frequencies as HF's
 * `emb = cat(freqs, freqs)` does. The sin table is pre-signed for the rotate_half trick:
 * q·cos + rotate_half(q)·sin with rotate_half(q) = [-q2, q1] equals q·cos + swap(q)·sinSigned with
 * swap(q) = [q2, q1] and sinSigned = [-sin, sin]; swap is an exact reverse over a [2, d/2] view.
 */
export function ropeTables(c: LlamaConfig, positions: ArrayLike<number>): { cos: Float32Array; sin: Float32Array } {
  const d = c.headDim;
  const half = d / 2;
  let maxPos = 0;
  for (let i = 0; i < positions.length; i++) maxPos = Math.max(maxPos, positions[i]!);
  const inv = ropeInvFreq(c, maxPos + 1);
  const cos = new Float32Array(positions.length * d);
  const sin = new Float32Array(positions.length * d);
  for (let p = 0; p < positions.length; p++) {
    const pos = positions[p]!;
    const o = p * d;
    for (let i = 0; i < half; i++) {
      // HF multiplies position and inv_freq in float32 before cos/sin.
      const angle = Math.fround(pos * Math.fround(inv[i]!));
      const ci = Math.cos(angle);
      const si = Math.sin(angle);
      cos[o + i] = ci;
      cos[o + half + i] = ci;
      sin[o + i] = -si;
      sin[o + half + i] = si;
    }
  }
  return { cos, sin };
}

/** [x1, x2] -> [x2, x1] over the halves of the last axis: two slices and a concat (copies). */
function swapHalvesRaw(x: tf.Tensor): tf.Tensor {
  const rows = x.size / x.shape[x.rank - 1]!;
  const h = x.shape[x.rank - 1]! / 2;
  const x2 = tf.reshape(x, [rows, 2 * h]);
  return tf.reshape(tf.concat([tf.slice(x2, [0, h], [rows, h]), tf.slice(x2, [0, 0], [rows, h])], 1), x.shape);
}

/**
 * The half swap of rotate_half, as one op whose gradient is the same swap (a permutation that is
 * its own inverse). wasm's Reverse kernel, used before, was ~10x slower than these copies.
 */
function swapHalves(x: tf.Tensor4D): tf.Tensor4D {
  return customOp([x], ([t]) => ({ value: swapHalvesRaw(t!), gradFunc: (dy) => [swapHalvesRaw(dy)] })) as tf.Tensor4D;
}

/** x [B, T, n, D] rotated: x*cos + rotate_half(x)*sin, with `sin` pre-signed (see ropeTables). */
export function applyRope(x: tf.Tensor4D, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor4D {
  return tf.add(tf.mul(x, cos), tf.mul(swapHalves(x), sin));
}

/**
 * The RoPE tables of one forward pass as tensors [rows, T, 1, D]: for explicit `positions` [B*T]
 * one row per batch row, else one row (past..past+T-1) broadcast over the batch. The 1/sqrt(D)
 * attention scale is folded into q's tables: (s q) k^T = s (q k^T), saving an elementwise pass
 * over the scores.
 */
export function ropeTensors(
  c: LlamaConfig,
  positions: Int32Array | undefined,
  B: number,
  T: number,
  past: number,
): { cos: tf.Tensor; sin: tf.Tensor; cosQ: tf.Tensor; sinQ: tf.Tensor } {
  const D = c.headDim;
  let rows = B;
  if (!positions) {
    positions = new Int32Array(T);
    for (let t = 0; t < T; t++) positions[t] = past + t;
    rows = 1;
  }
  const tables = ropeTables(c, positions);
  const scale = 1 / Math.sqrt(D);
  const cos = tf.tensor(tables.cos, [rows, T, 1, D]);
  const sin = tf.tensor(tables.sin, [rows, T, 1, D]);
  return { cos, sin, cosQ: tf.mul(cos, scale), sinQ: tf.mul(sin, scale) };
}
