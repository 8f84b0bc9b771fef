/**
 * An evaluation's table, language by row, one table per problem set: for the CLI's summary (text)
 * and the job's Markdown report (worker/eval/report.ts). In common/ because both roles print it.
 *
 * Why rows: MGSM has 11 languages; as columns (or one line) they ran past a terminal's width and
 * were hard to compare (issue 19). A row per language reads down, and the average is the last row.
 */
import { z } from 'zod';

interface LanguageRow {
  readonly language: string;
  readonly correct: number;
  readonly total: number;
  readonly accuracy: number;
}

const languageRow = z.object({
  language: z.string().max(64),
  correct: z.number().int().nonnegative(),
  total: z.number().int().nonnegative(),
  accuracy: z.number().min(0).max(1),
});
const evalTableSchema = z.object({
  name: z.string().max(256),
  benchmarks: z
    .array(
      z.object({
        benchmark: z.string().max(256),
        average: z.number().min(0).max(1),
        languages: z.array(languageRow).max(1000),
      }),
    )
    .max(100),
});

/**
 * An evaluation table from JSON that came from elsewhere (the coordinator's record, a worker's
 * report): the table, or undefined when it is not one (so a view prints that, not a stack trace).
 */
export function parseEvalTable(json: string): EvalTableInput | undefined {
  try {
    const r = evalTableSchema.safeParse(JSON.parse(json));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** The part of an evaluation report (worker/eval/report.ts `EvalReport`) a table shows. */
export interface EvalTableInput {
  readonly name: string;
  readonly benchmarks: readonly {
    readonly benchmark: string;
    readonly average: number;
    readonly languages: readonly LanguageRow[];
  }[];
}

const pct = (x: number): string => (Number.isFinite(x) ? (100 * x).toFixed(1) : '-');

/** Rows of one set's table: header, a row per language, then the average. */
function rows(b: EvalTableInput['benchmarks'][number]): string[][] {
  const body = b.languages.map((l) => [l.language, pct(l.accuracy), `${l.correct}/${l.total}`]);
  const correct = b.languages.reduce((s, l) => s + l.correct, 0);
  const total = b.languages.reduce((s, l) => s + l.total, 0);
  return [['language', 'accuracy %', 'correct'], ...body, ['average', pct(b.average), `${correct}/${total}`]];
}

/** Aligned text: the language left, numbers right. */
export function evalTextTables(report: EvalTableInput, indent = '  '): string[] {
  const lines: string[] = [];
  for (const b of report.benchmarks) {
    const r = rows(b);
    const widths = r[0]!.map((_, c) => Math.max(...r.map((row) => row[c]!.length)));
    lines.push(`${indent}${b.benchmark} (${report.name})`);
    for (const row of r) {
      const cells = row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)));
      lines.push(indent + cells.join('  '));
    }
  }
  return lines;
}

/** A Markdown table per set, each after a `### set` heading. */
export function evalMarkdownTables(report: EvalTableInput): string[] {
  const lines: string[] = [];
  for (const b of report.benchmarks) {
    const [head, ...body] = rows(b);
    lines.push(`### ${b.benchmark}`, '', `| ${head!.join(' | ')} |`, '|---|---:|---:|');
    for (const row of body) lines.push(`| ${row.join(' | ')} |`);
    lines.push('');
  }
  return lines;
}
