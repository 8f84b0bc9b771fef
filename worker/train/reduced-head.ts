/**
 * The sanity check of a step's all-reduced head, before anything uses it. The head is [nll sum,
 * supervised tokens, tokens, nll per language (L), supervised tokens per language (L), and, for a
 * method whose samples choose a layer (CC-Tuning's Decision Maker), the choices per language and
 * layer (L x C, language-major)], summed over the ranks; a chunk's MAC keeps strangers out of it,
 * and this check keeps one broken or hostile rank from turning it into a crash or a silent
 * corruption: a negative count would throw in the metrics ("It is not possible to decrease a
 * counter") and fail the job for good, a fractional or huge one would scale every gradient
 * wrongly. Instead the step fails with a retryable ReducedHeadError (the generation is re-formed).
 *
 * What every honest head satisfies: counts are integers (float32 holds them exactly up to 2^24,
 * and a float32 above that is an integer anyway), not negative, at most what the global batch can
 * hold (samples × maxSeqLen), supervised tokens at most the tokens; NLL sums are not negative
 * (−log p ≥ 0). A non-finite NLL sum is left to the trainer's non-finite-step rule (a diverging
 * model produces one honestly); a non-finite count is not.
 */
import { ReducedHeadError } from '../../common/errors.js';

export interface HeadBounds {
  readonly step: number;
  /** Languages L in the head. */
  readonly languages: number;
  /** Tokens the global batch can hold: its samples × `data.maxSeqLen`. */
  readonly maxTokens: number;
  /** Layers C a sample's choice ranges over (0: no choices in the head). @default 0 */
  readonly choiceLayers?: number;
  /** Samples in the global batch (the most choices of one language and layer). */
  readonly maxSamples?: number;
}

/** Entries of the head for `languages` languages and choices among `choiceLayers` layers. */
export function headLength(languages: number, choiceLayers = 0): number {
  return 3 + 2 * languages + languages * choiceLayers;
}

/**
 * Checks the head at the start of `reduced`.
 * @throws ReducedHeadError naming the entry
 */
export function checkReducedHead(reduced: Float32Array, b: HeadBounds): void {
  const L = b.languages;
  const C = b.choiceLayers ?? 0;
  if (reduced.length < headLength(L, C)) {
    throw new ReducedHeadError('head', `${reduced.length} elements, fewer than the head's ${headLength(L, C)}`, {
      step: b.step,
    });
  }
  const count = (i: number, what: string, max = b.maxTokens, unit = 'tokens'): number => {
    const v = reduced[i]!;
    if (!Number.isInteger(v) || v < 0 || v > max) {
      throw new ReducedHeadError(`head[${i}] (${what})`, `${v} is not a count of 0..${max} ${unit}`, {
        step: b.step,
      });
    }
    return v;
  };
  const nll = (i: number, what: string): void => {
    const v = reduced[i]!;
    if (v < 0) throw new ReducedHeadError(`head[${i}] (${what})`, `${v} is negative`, { step: b.step });
  };
  nll(0, 'nll sum');
  const supervised = count(1, 'supervised tokens');
  const tokens = count(2, 'tokens');
  if (supervised > tokens) {
    throw new ReducedHeadError('head[1] (supervised tokens)', `${supervised} is more than the ${tokens} tokens`, {
      step: b.step,
    });
  }
  for (let l = 0; l < L; l++) {
    nll(3 + l, `nll sum of language ${l}`);
    count(3 + L + l, `supervised tokens of language ${l}`);
  }
  for (let i = 0; i < L * C; i++) {
    const at = 3 + 2 * L + i;
    count(at, `choices of layer ${i % C}, language ${Math.floor(i / C)}`, b.maxSamples ?? 0, 'samples');
  }
}
