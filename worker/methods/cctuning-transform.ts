/**
 * CC-Tuning's Transform Matrix (the authors' TransformMatrix/get_matrix.py: numpy lstsq of the
 * stacked non-English FFN outputs onto the English ones): X minimises ||A X - B||_F, with A, B
 * [n, H] the per-layer FFN outputs at the last prompt token, non-English and English, stacked
 * over layers and samples.
 *
 * Solved in float64 by the normal equations (A^T A + ridge I) X = A^T B with a Cholesky
 * factorisation: memory H^2 (A is never factorised itself). The conditioning is checked first:
 * with G = A^T A + ridge I = L L^T, (max L_ii / min L_ii)^2 is a lower bound of cond(G) =
 * cond(A)^2 (ridge 0); above MAX_GRAM_CONDITION the float64 solve could lose the 1e-5 agreement
 * with a QR/SVD solve, so it is refused with the numbers (more samples, or a ridge, fix it).
 */
import { UserError } from '../../common/errors.js';

/** The largest accepted lower bound of cond(A^T A + ridge I): float64 keeps ~6 digits of X at 1e10. */
export const MAX_GRAM_CONDITION = 1e10;

export interface TransformSolution {
  /** X [H, H] row-major, float64. */
  readonly x: Float64Array;
  /** The lower bound of cond(A^T A + ridge I) from the Cholesky diagonal. */
  readonly conditionEstimate: number;
  /** ||A X - B||_F^2 / ||B||_F^2. */
  readonly relativeResidual: number;
}

/**
 * X [H, H] with A X ~= B for A, B row-major [n, H] (float32 or float64). `ridge` >= 0 adds ridge * I
 * to A^T A. Refused (UserError) with fewer rows than H and no ridge, a rank-deficient A, or a
 * condition estimate above MAX_GRAM_CONDITION.
 */
export function solveTransform(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  n: number,
  h: number,
  ridge = 0,
  what = 'transform matrix',
): TransformSolution {
  if (a.length !== n * h || b.length !== n * h) throw new Error(`${what}: A and B must be [${n}, ${h}]`);
  if (ridge === 0 && n < h) {
    throw new UserError(
      `${what}: ${n} rows of FFN outputs (samples x layers) for hidden size ${h}: ` +
        `least squares needs at least ${h} rows to be well posed (more samples, or a ridge > 0)`,
    );
  }
  // G = A^T A + ridge I (upper triangle filled, then mirrored), C = A^T B.
  const g = new Float64Array(h * h);
  const c = new Float64Array(h * h);
  const ar = new Float64Array(h);
  const br = new Float64Array(h);
  let bNorm = 0;
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < h; j++) {
      ar[j] = a[r * h + j]!;
      br[j] = b[r * h + j]!;
      bNorm += br[j]! * br[j]!;
    }
    for (let i = 0; i < h; i++) {
      const ai = ar[i]!;
      if (ai === 0) continue;
      const gi = i * h;
      for (let j = i; j < h; j++) g[gi + j] = g[gi + j]! + ai * ar[j]!;
      for (let j = 0; j < h; j++) c[gi + j] = c[gi + j]! + ai * br[j]!;
    }
  }
  for (let i = 0; i < h; i++) {
    g[i * h + i] = g[i * h + i]! + ridge;
    for (let j = 0; j < i; j++) g[i * h + j] = g[j * h + i]!;
  }
  // Cholesky G = L L^T in place (lower triangle).
  let dMax = 0;
  let dMin = Infinity;
  for (let j = 0; j < h; j++) {
    let d = g[j * h + j]!;
    for (let k = 0; k < j; k++) d -= g[j * h + k]! * g[j * h + k]!;
    if (!(d > 0)) {
      throw new UserError(
        `${what}: A^T A${ridge > 0 ? ' + ridge I' : ''} is singular at column ${j} of ${h} ` +
          `(the ${n} rows do not span the hidden space; more or more varied samples, or a ridge > 0)`,
      );
    }
    const ljj = Math.sqrt(d);
    g[j * h + j] = ljj;
    dMax = Math.max(dMax, ljj);
    dMin = Math.min(dMin, ljj);
    for (let i = j + 1; i < h; i++) {
      let s = g[i * h + j]!;
      for (let k = 0; k < j; k++) s -= g[i * h + k]! * g[j * h + k]!;
      g[i * h + j] = s / ljj;
    }
  }
  const conditionEstimate = (dMax / dMin) ** 2;
  if (conditionEstimate > MAX_GRAM_CONDITION) {
    throw new UserError(
      `${what}: A^T A is ill-conditioned (condition >= ${conditionEstimate.toExponential(2)}, ` +
        `limit ${MAX_GRAM_CONDITION.toExponential(0)}) with ${n} rows for hidden size ${h}: ` +
        `more or more varied samples, or a ridge > 0`,
    );
  }
  // Solve L Y = C, then L^T X = Y, column by column of C (in place in c).
  for (let col = 0; col < h; col++) {
    for (let i = 0; i < h; i++) {
      let s = c[i * h + col]!;
      for (let k = 0; k < i; k++) s -= g[i * h + k]! * c[k * h + col]!;
      c[i * h + col] = s / g[i * h + i]!;
    }
    for (let i = h - 1; i >= 0; i--) {
      let s = c[i * h + col]!;
      for (let k = i + 1; k < h; k++) s -= g[k * h + i]! * c[k * h + col]!;
      c[i * h + col] = s / g[i * h + i]!;
    }
  }
  let res = 0;
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < h; j++) {
      let s = -b[r * h + j]!;
      for (let k = 0; k < h; k++) s += a[r * h + k]! * c[k * h + j]!;
      res += s * s;
    }
  }
  return { x: c, conditionEstimate, relativeResidual: bNorm > 0 ? res / bNorm : 0 };
}
