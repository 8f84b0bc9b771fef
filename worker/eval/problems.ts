/**
 * The problems of an evaluation or a probe: read from the expanded sets (common/eval-spec.ts) with
 * the shared readers (common/records.ts), the first `limit` of each file, in spec order.
 */
import { expandProblemSets, type ProblemSet } from '../../common/eval-spec.js';
import { readDataSource } from '../../common/records.js';

export interface Problem {
  readonly benchmark: string;
  readonly language: string;
  /** 0-based line (record) of the problem in its file. */
  readonly index: number;
  readonly question: string;
  /** The gold answer as written (`114,200`, `8.0`). */
  readonly answer: string;
}

/** Every problem of the sets, file after file. */
export async function readProblems(sets: readonly ProblemSet[]): Promise<Problem[]> {
  const out: Problem[] = [];
  for (const src of expandProblemSets(sets)) {
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
