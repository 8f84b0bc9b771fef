/**
 * Rotary position embeddings as HF transformers computes them (`modeling_rope_utils.py`,
 * `LlamaRotaryEmbedding`): inv_freq[i] = 1 / theta^(2i/d) for i < d/2, optionally rescaled
 * (linear, dynamic NTK, llama3), angles = position * inv_freq, and the "rotate_half" layout in
 * which dimension j < d/2 pairs with j + d/2 (not interleaved pairs). Tables are computed on the
 * host in float64 and rounded to float32; HF computes them in float32, which differs by far less
 * than the golden tests' tolerance.
 */
import type { LlamaConfig } from '../../common/model-config.js';

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
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
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
