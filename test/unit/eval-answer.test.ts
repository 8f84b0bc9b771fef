/**
 * Answer extraction and scoring (worker/eval/answer.ts) on real MGSM and MSVAMP answers from
 * ../shared/data: integers with commas, MSVAMP's `8.0`, decimals, negatives, trailing text.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MGSM_LANGUAGES, MSVAMP_FILES } from '../../common/eval-spec.js';
import { extractLastNumber, isCorrect, parseGold } from '../../worker/eval/answer.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const mgsm = (lang: string): { question: string; answer: string }[] =>
  readFileSync(join(DATA, 'mgsm', `mgsm_${lang}.tsv`), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const tab = l.lastIndexOf('\t');
      return { question: l.slice(0, tab), answer: l.slice(tab + 1).trim() };
    });
const msvamp = (lang: string): { m_query: string; response: string }[] =>
  readFileSync(join(DATA, 'msvamp', MSVAMP_FILES[lang]!), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { m_query: string; response: string });

describe('answer extraction (MathOctopus / QAlign: last number, commas removed, numeric equality)', () => {
  it('every MGSM and MSVAMP gold answer parses to a finite number', () => {
    for (const lang of MGSM_LANGUAGES)
      for (const p of mgsm(lang)) expect(Number.isFinite(parseGold(p.answer)), `${lang}: ${p.answer}`).toBe(true);
    for (const lang of Object.keys(MSVAMP_FILES))
      for (const p of msvamp(lang)) expect(Number.isFinite(parseGold(p.response)), `${lang}: ${p.response}`).toBe(true);
  });

  it('MGSM golds with thousands separators: 114,200 and 2,125 (from mgsm_en.tsv)', () => {
    const withCommas = mgsm('en').filter((p) => p.answer.includes(','));
    expect(withCommas.map((p) => p.answer)).toEqual(expect.arrayContaining(['114,200', '2,125', '276,000', '5,600']));
    for (const p of withCommas) {
      const gold = parseGold(p.answer);
      expect(gold).toBe(Number(p.answer.replace(/,/g, '')));
      // A worked answer that writes the number with commas, then stops with trailing text.
      const out =
        `Let's think step by step. ${p.question.slice(0, 40)} ` + `... So the answer is ${p.answer}.\n\nHuman: next`;
      expect(extractLastNumber(out)).toBe(gold);
      expect(isCorrect(extractLastNumber(out), gold)).toBe(true);
      // ... and one that writes it without commas is as right.
      expect(isCorrect(extractLastNumber(`The answer is ${gold}`), gold)).toBe(true);
    }
  });

  it("MSVAMP's `8.0` matches a generated `8`, `8.0` or `8.00`; `8.5` does not", () => {
    const first = msvamp('zh')[0]!;
    expect(first.response).toBe('8.0');
    const gold = parseGold(first.response);
    expect(gold).toBe(8);
    for (const out of ['18 - 10 = 8', '答案是 8.0。', 'The answer is: 8.00 kids', '18-10=8\n'])
      expect(isCorrect(extractLastNumber(out), gold), out).toBe(true);
    expect(isCorrect(extractLastNumber('18 - 10 = 8.5'), gold)).toBe(false);
  });

  it('the last number wins, wherever the text goes on', () => {
    const p = mgsm('de')[0]!; // Janets Enten ... 18
    expect(p.answer).toBe('18');
    const out = 'Janet hat 16 - 3 - 4 = 9 Eier übrig. 9 * 2 = $18. Die Antwort ist 18 Dollar pro Tag, ok?';
    expect(extractLastNumber(out)).toBe(18);
    expect(
      extractLastNumber(
        '16 eggs, 3 for breakfast: 16 - 3 = 13; she bakes 4: 13 - 4 = 9, sells at $2: 9 * 2 = 18 dollars. Next, 7',
      ),
    ).toBe(7);
  });

  it('decimals, dollar amounts with commas and cents, and negatives', () => {
    expect(extractLastNumber('It costs $1,234.50 in total')).toBe(1234.5);
    expect(extractLastNumber('2.5 hours and 0.75 of them')).toBe(0.75);
    expect(extractLastNumber('The temperature dropped to -3 degrees.')).toBe(-3);
    expect(extractLastNumber('10-2=8')).toBe(8);
    expect(extractLastNumber('so 5 - 7 = -2')).toBe(-2);
    // A subtraction, not a sign: MathOctopus reads 2 here too.
    expect(extractLastNumber('answer: 10-2')).toBe(2);
    // A comma that is not between digits is punctuation.
    expect(extractLastNumber('5, 6, and 7,')).toBe(7);
    expect(extractLastNumber('1,000,000 people')).toBe(1_000_000);
  });

  it('no number: no prediction, never correct', () => {
    expect(extractLastNumber('I do not know.')).toBeUndefined();
    expect(isCorrect(undefined, 0)).toBe(false);
    expect(isCorrect(extractLastNumber(''), parseGold('0'))).toBe(false);
  });
});
