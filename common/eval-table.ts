/**
 * An evaluation's table, language by row, one table per problem set: for the CLI's summary (text)
 * and the job's Markdown report (worker/eval/report.ts). In common/ because both roles print it.
 *
 * Why rows: MGSM has 11 languages; as columns (or one line) they ran past a terminal's width and
 * were hard to compare (issue 19). A row per language reads down, and the average is the last row.
 */

interface LanguageRow {
  readonly language: string;
  readonly correct: number;
  readonly total: number;
  readonly accuracy: number;
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
