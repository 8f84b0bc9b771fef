/**
 * The problems of an evaluation or a probe: read from the expanded sets (common/eval-spec.ts) with
 * the shared readers (common/records.ts, common/choice-records.ts), the first `limit` of each
 * file, in spec order.
 */
import { expandProblemSets, type ProblemSet } from '../../common/eval-spec.js';
import { readChoiceRecords, type ChoiceRecord } from '../../common/choice-records.js';
import { readDataSource } from '../../common/records.js';

const choiceOf = (r: ChoiceRecord): { choices: readonly string[]; label: number } => ({
  choices: r.choices,
  label: r.label,
});

export interface Problem {
  readonly benchmark: string;
  readonly language: string;
  /** 0-based line (record) of the problem in its file. */
  readonly index: number;
  readonly question: string;
  /** The gold answer as written (`114,200`, `8.0`); of a `choice` set, the right choice. */
  readonly answer: string;
  /** A `choice` set's candidates (the question is the prompt, taken as it is): scored, not generated (choice.ts). */
  readonly choices?: readonly string[];
  /** Index of the right choice. */
  readonly label?: number;
}

/** Every problem of the sets, file after file. */
export async function readProblems(sets: readonly ProblemSet[]): Promise<Problem[]> {
  const out: Problem[] = [];
  for (const src of expandProblemSets(sets)) {
    if (src.format === 'choice') {
      const records = await readChoiceRecords(src.path, src.language);
      const n = Math.min(records.length, src.limit ?? records.length);
      for (let i = 0; i < n; i++) {
        const r = records[i]!;
        const language = r.language ?? src.language;
        const answer = r.choices[r.label]!;
        out.push({ benchmark: src.benchmark, language, index: i, question: r.prompt, answer, ...choiceOf(r) });
      }
      continue;
    }
    const records = await readDataSource({ path: src.path, format: src.format, language: src.language });
    const n = Math.min(records.length, src.limit ?? records.length);
    for (let i = 0; i < n; i++) {
      const r = records[i]!;
      if (r.kind !== 'text') continue;
      out.push({ benchmark: src.benchmark, language: src.language, index: i, question: r.question, answer: r.output });
    }
  }
  return out;
}
