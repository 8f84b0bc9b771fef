/**
 * Wanda's decision for one weight matrix, as `prune_wanda` (locuslab/wanda `lib/prune.py`, and
 * the authors' `prune_wanda_with_mt`) makes it, pure and testable without a model:
 *
 *   scaler[j] = (sum over calibration tokens of x_j^2) / samples     (WrappedGPT.add_batch's running mean)
 *   score[r, j] = |W[r, j]| * sqrt(scaler[j])
 *   fraction:  in each output row r, zero the floor(columns * sparsity) lowest scores
 *              (`torch.sort(W_metric, dim=-1, stable=True)`: among equal scores the lower column goes first)
 *   N:M:       in each group of M consecutive columns of a row, zero the N lowest scores
 *              (`torch.topk(largest=False)`, whose order among equal scores is unspecified: here the
 *              lower column goes first, as in the stable sort)
 *
 * Scores are computed in float64 from the float32 weights and the float64 scaler (Wanda computes
 * them in float32: the same order except where two scores differ by less than float32 rounding).
 * The k lowest of a row are found without a full sort: the k-th smallest score by a native sort
 * of the row's scores, then every score below it and, of those equal to it, the lowest columns.
 */
import type { PruneRule } from '../../common/prune-spec.js';

/** Scores that lose this row: 1 at a pruned position. `W` is [rows, cols] row-major (HF [out, in]). */
export function wandaMask(
  W: Float32Array,
  rows: number,
  cols: number,
  scaler: Float64Array,
  rule: PruneRule,
): Uint8Array {
  if (W.length !== rows * cols) throw new Error(`wandaMask: ${W.length} weights for [${rows}, ${cols}]`);
  if (scaler.length !== cols) throw new Error(`wandaMask: ${scaler.length} column statistics for ${cols} columns`);
  const norm = Float64Array.from(scaler, (s) => Math.sqrt(s));
  const mask = new Uint8Array(rows * cols);
  const score = new Float64Array(cols);
  const sorted = new Float64Array(cols);
  // Python's int(cols * sparsity): the product in float64, truncated.
  const k = rule.kind === 'fraction' ? Math.trunc(cols * rule.sparsity) : 0;
  for (let r = 0; r < rows; r++) {
    const off = r * cols;
    for (let j = 0; j < cols; j++) score[j] = Math.abs(W[off + j]!) * norm[j]!;
    if (rule.kind === 'fraction') {
      lowest(score, 0, cols, k, sorted, mask, off);
    } else {
      if (cols % rule.m !== 0) throw new Error(`wandaMask: ${rule.n}:${rule.m} does not divide ${cols} columns`);
      for (let g = 0; g < cols; g += rule.m) lowest(score, g, g + rule.m, rule.n, sorted, mask, off);
    }
  }
  return mask;
}

/** Marks in `mask` (at `off + j`) the `k` lowest of `score[from..to)`, ties to the lower column. */
function lowest(
  score: Float64Array,
  from: number,
  to: number,
  k: number,
  sorted: Float64Array,
  mask: Uint8Array,
  off: number,
): void {
  if (k <= 0) return;
  const part = sorted.subarray(0, to - from);
  part.set(score.subarray(from, to));
  part.sort();
  const kth = part[k - 1]!;
  let below = 0;
  for (let j = from; j < to; j++) if (score[j]! < kth) below++;
  let equalLeft = k - below;
  for (let j = from; j < to; j++) {
    const s = score[j]!;
    if (s < kth) mask[off + j] = 1;
    else if (s === kth && equalLeft > 0) {
      mask[off + j] = 1;
      equalLeft--;
    }
  }
}

/** Zeros `W` where `mask` is set, in place; returns the count of zeros in the result (check_sparsity). */
export function applyMask(W: Float32Array, mask: Uint8Array): number {
  let zeros = 0;
  for (let i = 0; i < W.length; i++) {
    if (mask[i]) W[i] = 0;
    if (W[i] === 0) zeros++;
  }
  return zeros;
}

/**
 * The per-column statistic from per-sample sums, added in sample order in float64, so the result
 * depends only on the samples and never on which rank computed which: `perSample[s]` is sample s's
 * sum over its tokens of x_j^2 (float32, as the device computed it for that sample alone).
 */
export function columnMean(perSample: readonly Float32Array[], cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (const v of perSample) for (let j = 0; j < cols; j++) out[j] = out[j]! + v[j]!;
  const n = perSample.length;
  for (let j = 0; j < cols; j++) out[j] = out[j]! / n;
  return out;
}

/** The contrast variant (the authors' `calculate_scaler_row`): s_base * (s_base / s_other). */
export function contrastScaler(base: Float64Array, other: Float64Array): Float64Array {
  // A column silent in the other set and not in this one is kept first; silent in both, last.
  return base.map((b, j) => (other[j]! > 0 ? b * (b / other[j]!) : b > 0 ? Infinity : 0));
}

/** Indices of the `k` largest values, largest first (ties: the lower index first). */
export function topK(values: Float64Array, k: number): number[] {
  const idx = Array.from(values.keys());
  idx.sort((a, b) => values[b]! - values[a]! || a - b);
  return idx.slice(0, Math.min(k, values.length));
}
