/**
 * Code-switched text for LinguaLIFT's first stage (`format: codeswitch`): from English text and a
 * bilingual dictionary (TSV: source word, target word, language), a seeded `ratio` of the
 * dictionary's words in the text is replaced by a translation; the target is the original text.
 *
 * Choices (the paper does not publish its generator):
 * - Words are maximal runs of letters, digits, `'` and `-` inside a word (`\p{L}[\p{L}\p{N}'-]*`);
 *   a word matches an entry case-insensitively; a replacement keeps a capitalised first letter.
 * - Each occurrence of a dictionary word is replaced with probability `ratio`, independently
 *   (so the share over a data set is `ratio` in expectation, without the rounding bias a fixed
 *   count per short text would have); a word with translations in several languages takes one of
 *   them uniformly.
 * - The draw depends on the job's seed, the epoch and the record's index only: the same on every
 *   rank and every run, different each epoch. Words absent from the dictionary are never touched,
 *   nor is anything between words.
 */
import { readFile } from 'node:fs/promises';
import { mulberry32 } from './data-plan.js';
import { DataFormatError } from './errors.js';

export interface DictionaryEntry {
  readonly target: string;
  readonly language: string;
}

/** Lower-cased source word -> its translations, in file order. */
export type CodeSwitchDictionary = ReadonlyMap<string, readonly DictionaryEntry[]>;

const LANGUAGE = /^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$/;
const WORD = /\p{L}[\p{L}\p{N}'-]*/gu;

/** Parses a dictionary's text; errors name `file:line`. Blank lines and `#` comments are skipped. */
export function parseDictionary(text: string, file: string): CodeSwitchDictionary {
  const out = new Map<string, DictionaryEntry[]>();
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '' || line.startsWith('#')) return;
    const cols = line.split('\t');
    if (cols.length !== 3) {
      throw new DataFormatError(
        file,
        `expected 3 tab-separated columns (source word, target word, language), got ${cols.length}`,
        i + 1,
      );
    }
    const [source, target, language] = cols.map((c) => c.trim()) as [string, string, string];
    if (source === '' || target === '') throw new DataFormatError(file, 'an empty source or target word', i + 1);
    if (/\s/.test(source)) throw new DataFormatError(file, `source "${source}" must be one word`, i + 1);
    if (!LANGUAGE.test(language)) throw new DataFormatError(file, `"${language}" is not a language code`, i + 1);
    const key = source.toLowerCase();
    const list = out.get(key) ?? [];
    list.push({ target, language });
    out.set(key, list);
  });
  if (out.size === 0) throw new DataFormatError(file, 'holds no entries');
  return out;
}

export async function readDictionary(file: string): Promise<CodeSwitchDictionary> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DataFormatError(file, code === 'ENOENT' ? 'no such file' : `cannot read (${(e as Error).message})`);
  }
  return parseDictionary(text, file);
}

/** A 32-bit seed mixed from the job seed, the epoch and the record index. */
export function codeSwitchSeed(seed: number, epoch: number, index: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (epoch + 1), 0xc2b2ae35) >>> 0;
  h = Math.imul(h ^ (index + 1), 0x27d4eb2f) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}

export interface CodeSwitched {
  readonly text: string;
  /** Occurrences of dictionary words in the text. */
  readonly eligible: number;
  readonly replaced: number;
}

/** `text` with each dictionary word replaced with probability `ratio` (seeded by `seed`). */
export function codeSwitch(text: string, dictionary: CodeSwitchDictionary, ratio: number, seed: number): CodeSwitched {
  const rand = mulberry32(seed);
  let eligible = 0;
  let replaced = 0;
  const out = text.replace(WORD, (word) => {
    const entries = dictionary.get(word.toLowerCase());
    if (!entries) return word;
    eligible++;
    // Both draws are taken for every eligible word, so one word's outcome never shifts another's.
    const take = rand() < ratio;
    const pick = entries[Math.floor(rand() * entries.length)]!;
    if (!take) return word;
    replaced++;
    const first = word[0]!;
    const capital = first !== first.toLowerCase();
    return capital ? pick.target[0]!.toUpperCase() + pick.target.slice(1) : pick.target;
  });
  return { text: out, eligible, replaced };
}
