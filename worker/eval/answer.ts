/**
 * Answer extraction and scoring, as MathOctopus and QAlign score MGSM and MSVAMP: the prediction
 * is the last number in the generated text, with the commas inside numbers removed
 * (`re.sub(r"(\d),(\d)", r"\1\2", text)` then the last match of `\d+(\.\d+)?`); it is correct when
 * it equals the gold answer numerically (|pred - gold| < 1e-4, so `8` matches MSVAMP's `8.0`).
 *
 * One deliberate difference: a minus sign that stands before a number (not between two operands,
 * as in `10-2`) is kept, so `-3` is read as -3 where the original regex reads 3. MGSM and MSVAMP
 * have no negative gold answers, so published scores are unaffected.
 */

/** Digits separated by a comma: `1,234,567` -> `1234567` (also inside `$1,200.50`). */
const DIGIT_COMMA_DIGIT = /(\d),(?=\d)/g;
/** A number: optional sign (not after a word character or a dot), digits, optional decimals. */
const NUMBER = /(?<![\w.])-?\d+(?:\.\d+)?|\d+(?:\.\d+)?/g;

/** The equality tolerance of numeric answers. */
export const ANSWER_TOLERANCE = 1e-4;

/** The last number of `text`, or undefined when it has none. */
export function extractLastNumber(text: string): number | undefined {
  const cleaned = text.replace(DIGIT_COMMA_DIGIT, '$1');
  let last: string | undefined;
  for (const m of cleaned.matchAll(NUMBER)) last = m[0];
  return last === undefined ? undefined : Number(last);
}

/** A gold answer (`18`, `114,200`, `8.0`) as a number; NaN when it is not one. */
export function parseGold(answer: string): number {
  const s = answer.trim().replace(/,/g, '');
  return /^-?\d+(?:\.\d+)?$/.test(s) ? Number(s) : NaN;
}

/** Whether the prediction equals the gold answer numerically. */
export function isCorrect(prediction: number | undefined, gold: number): boolean {
  return prediction !== undefined && Number.isFinite(gold) && Math.abs(prediction - gold) < ANSWER_TOLERANCE;
}
