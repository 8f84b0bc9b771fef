/**
 * The sanity check of a step's all-reduced head, before anything uses it. The head is
 * [nll sum, supervised tokens, tokens, nll per language (L), supervised tokens per language (L)],
 * summed over the ranks; a chunk's MAC keeps strangers out of it, and this check keeps one broken
 * or hostile rank from turning it into a crash or a silent corruption: a negative count would
 * throw in the metrics ("It is not possible to decrease a counter") and fail the job for good, a
 * fractional or huge one would scale every gradient wrongly. Instead the step fails with a
 * retryable ReducedHeadError (the generation is re-formed).
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
}

/** Entries of the head for `languages` languages. */
export function headLength(languages: number): number {
  return 3 + 2 * languages;
}

/**
 * Checks the head at the start of `reduced`.
 * @throws ReducedHeadError naming the entry
 */
export function checkReducedHead(reduced: Float32Array, b: HeadBounds): void {
  const L = b.languages;
  if (reduced.length < headLength(L)) {
    throw new ReducedHeadError('head', `${reduced.length} elements, fewer than the head's ${headLength(L)}`, {
      step: b.step,
    });
  }
  const count = (i: number, what: string): number => {
    const v = reduced[i]!;
    if (!Number.isInteger(v) || v < 0 || v > b.maxTokens) {
      throw new ReducedHeadError(`head[${i}] (${what})`, `${v} is not a count of 0..${b.maxTokens} tokens`, {
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
}
