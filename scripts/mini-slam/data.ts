/**
 * The mini-SLAM experiment's data (docs/experiments/mini-slam.md), all from the templated word
 * problems of worker/data/word-problems.ts and one seed:
 *
 * - **test**: held-out problems, line-parallel across the ten languages (the i-th problem is the
 *   same arithmetic everywhere, as MGSM), written as `mgsm_<lang>.tsv` for an EvalJob;
 * - **probe**: parallel questions for the layer analysis, likewise;
 * - **pretrain**: English problems with worked answers, and plain questions (no answers) in the
 *   other nine languages, tokenized with full supervision (a language model's loss on every token);
 * - **tune**: SLAM's two tasks in every language: the answer task (question in, worked answer out;
 *   English too) and question translation (a non-English question in, the English question out,
 *   behind the instruction `Translate into English:`, so the two tasks do not share a prompt).
 *
 * No sum or difference of the test set (`op a b`) appears in any other set; products do (the
 * times table is small: a base model knows it).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { IGNORE_INDEX } from '../../common/records.js';
import { encodeRecord, type PromptTokenizer } from '../../worker/data/encode.js';
import {
  makeWordProblems,
  WORD_PROBLEM_LANGUAGES,
  wordProblemsJsonl,
  type OperandRanges,
  type WordProblem,
  type WordProblemLanguage,
} from '../../worker/data/word-problems.js';

export const TRANSLATE_INSTRUCTION = 'Translate into English:';
export const NON_ENGLISH = WORD_PROBLEM_LANGUAGES.filter((l) => l !== 'en');

export interface DataSizes {
  /** English problems with worked answers in pretraining. */
  readonly pretrainEnglish: number;
  /** Plain questions per other language in pretraining. */
  readonly pretrainPlain: number;
  /** Problems per language in tuning (each gives an answer record, and a translation record but in English). */
  readonly tune: number;
  /** Held-out problems per language. */
  readonly test: number;
  /** Probe questions per language for the layer analysis. */
  readonly probe: number;
  readonly ranges: OperandRanges;
}

export interface ProblemSets {
  readonly test: WordProblem[];
  readonly probe: WordProblem[];
  readonly pretrainEnglish: WordProblem[];
  readonly pretrainPlain: WordProblem[];
  readonly tune: WordProblem[];
}

/** Every set from `seed` (each draws from its own derived seed). */
export function makeProblemSets(sizes: DataSizes, seed: number): ProblemSets {
  const ranges = sizes.ranges;
  const test = makeWordProblems(sizes.test, seed * 10 + 1, { ranges, parallel: true });
  // The test's sums and differences never appear elsewhere; the times table (a few dozen facts)
  // is known from pretraining, as any base model knows it, so products are not held out.
  const exclude = new Set(test.filter((p) => !p.key.startsWith('mul ')).map((p) => p.key));
  const rest = { ranges, exclude };
  return {
    test,
    probe: makeWordProblems(sizes.probe, seed * 10 + 2, { ...rest, parallel: true }),
    pretrainEnglish: makeWordProblems(sizes.pretrainEnglish, seed * 10 + 3, { ...rest, languages: ['en'] }),
    pretrainPlain: makeWordProblems(sizes.pretrainPlain, seed * 10 + 4, { ...rest, languages: NON_ENGLISH }),
    tune: makeWordProblems(sizes.tune, seed * 10 + 5, rest),
  };
}

/** Every text the model will see, for cutting the vocabulary (vocab.ts). */
export function corpusTexts(sets: ProblemSets, template: (q: string) => string): string[] {
  const texts: string[] = ['0123456789', '9876543210'];
  const all = [...sets.test, ...sets.probe, ...sets.pretrainEnglish, ...sets.pretrainPlain, ...sets.tune];
  for (const p of all) {
    texts.push(template(p.instruction), p.instruction, p.output, p.english);
    texts.push(template(`${TRANSLATE_INSTRUCTION} ${p.instruction}`));
  }
  return texts;
}

/** The answer task as alpaca records. */
export function answerRecords(problems: readonly WordProblem[]): string {
  return wordProblemsJsonl(problems);
}

/** Question translation as alpaca records: every non-English problem, into its English question. */
export function translationRecords(problems: readonly WordProblem[]): string {
  return (
    problems
      .filter((p) => p.language !== 'en')
      .map((p) =>
        JSON.stringify({
          instruction: `${TRANSLATE_INSTRUCTION} ${p.instruction}`,
          output: p.english,
          language: p.language,
        }),
      )
      .join('\n') + '\n'
  );
}

/**
 * Pretraining records (format `tokenized`): an English problem is templated and encoded as the
 * trainer encodes an alpaca record (encodeRecord), then every token but BOS is supervised; a plain
 * question is `BOS question EOS`, every token supervised.
 */
export function pretrainRecords(
  english: readonly WordProblem[],
  plain: readonly WordProblem[],
  tokenizer: PromptTokenizer,
  template: string,
  maxSeqLen: number,
): string {
  const lines: string[] = [];
  const push = (ids: readonly number[], language: string): void => {
    if (ids.length > maxSeqLen)
      throw new Error(`a pretraining record has ${ids.length} tokens > maxSeqLen ${maxSeqLen}`);
    const labels = ids.map((id, t) => (t === 0 ? IGNORE_INDEX : id));
    lines.push(JSON.stringify({ input_ids: ids, labels, language }));
  };
  // Interleaved, so that a reader without shuffling still sees a mix.
  const n = Math.max(english.length, plain.length);
  for (let i = 0; i < n; i++) {
    const e = english[i];
    if (e) {
      const s = encodeRecord(
        { kind: 'text', question: e.instruction, output: e.output, language: 'en' },
        tokenizer,
        template,
        maxSeqLen + 1,
      );
      push([...s.inputIds], 'en');
    }
    const p = plain[i];
    if (p) push([...tokenizer.encode(p.instruction, { addBos: true }), tokenizer.eosId], p.language);
  }
  return lines.join('\n') + '\n';
}

/** `dir/mgsm_<lang>.tsv` per language: `question<TAB>answer`, line-parallel. */
export async function writeProblemTsv(dir: string, problems: readonly WordProblem[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  const by = new Map<WordProblemLanguage, string[]>();
  for (const p of problems) {
    if (p.instruction.includes('\t') || p.instruction.includes('\n'))
      throw new Error('a question has a tab or newline');
    by.set(p.language, [...(by.get(p.language) ?? []), `${p.instruction}\t${p.answer}`]);
  }
  for (const [lang, lines] of by) await writeFile(join(dir, `mgsm_${lang}.tsv`), lines.join('\n') + '\n');
}
