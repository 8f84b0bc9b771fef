/**
 * The mini-SLAM results table, from the EvalJobs' own JSON outputs (`<eval dir>/eval/final.json`,
 * worker/eval/report.ts) and the arms' measured costs. Pure: test/unit/mini-slam.test.ts checks
 * that the doc's table is exactly what this gives for the committed JSON.
 */
import { z } from 'zod';

/** The part of an EvalJob's `final.json` the table reads (validated: it comes from another process). */
export const evalJsonSchema = z.object({
  name: z.string(),
  benchmarks: z
    .array(
      z.object({
        benchmark: z.string(),
        average: z.number(),
        languages: z.array(
          z.object({
            language: z.string(),
            correct: z.number().int().nonnegative(),
            total: z.number().int().positive(),
            accuracy: z.number(),
          }),
        ),
      }),
    )
    .length(1, 'must hold exactly one benchmark (the held-out word problems)'),
});
export type EvalJson = z.infer<typeof evalJsonSchema>;

export interface ArmRow {
  readonly arm: string;
  readonly title: string;
  readonly eval: EvalJson;
  /** Parameters that trained (0 for no tuning) and the model's total. */
  readonly trainable: number;
  readonly total: number;
  /** The tuning job's wall time (submit to exit, the local cluster's start included); 0 for no tuning. */
  readonly wallSeconds: number;
  /** Training tokens/s as the job reported it; 0 for no tuning. */
  readonly tokensPerSecond: number;
}

/** Accuracy in % with one decimal, from the counts (what the EvalJob's `accuracy` is). */
export const pct = (correct: number, total: number): string => ((100 * correct) / total).toFixed(1);

/** The languages of an eval, in its order. */
export function languagesOf(e: EvalJson): string[] {
  return e.benchmarks[0]!.languages.map((l) => l.language);
}

/** Mean of the languages' accuracies in %, over `langs` (the papers' unweighted average). */
export function meanAccuracy(e: EvalJson, langs: readonly string[]): number {
  const ls = e.benchmarks[0]!.languages.filter((l) => langs.includes(l.language));
  return (100 * ls.reduce((a, l) => a + l.correct / l.total, 0)) / ls.length;
}

/**
 * The accuracy table: a row per arm, a column per language, the averages and the trainable share.
 * Deterministic: the same seed gives the same table.
 */
export function accuracyTable(rows: readonly ArmRow[]): string {
  if (rows.length === 0) throw new Error('accuracyTable: no arms');
  const langs = languagesOf(rows[0]!.eval);
  for (const r of rows) {
    if (languagesOf(r.eval).join(',') !== langs.join(','))
      throw new Error(
        `arm ${r.arm}: its evaluation has languages ${languagesOf(r.eval).join(',')}, not ${langs.join(',')}`,
      );
  }
  const others = langs.filter((l) => l !== 'en');
  const head = ['arm', ...langs, 'avg', 'avg non-en', 'trainable'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const r of rows) {
    const cells = [
      r.title,
      ...r.eval.benchmarks[0]!.languages.map((l) => pct(l.correct, l.total)),
      meanAccuracy(r.eval, langs).toFixed(1),
      meanAccuracy(r.eval, others).toFixed(1),
      r.trainable === 0 ? '0' : `${((100 * r.trainable) / r.total).toFixed(1)}%`,
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n') + '\n';
}

/** The cost table (measured, so it moves from run to run): trainable parameters, wall time, tokens/s. */
export function costTable(rows: readonly ArmRow[]): string {
  const lines = ['| arm | trainable parameters | wall time | training tokens/s |', '|---|---:|---:|---:|'];
  for (const r of rows.filter((x) => x.trainable > 0)) {
    lines.push(
      `| ${r.title} | ${r.trainable.toLocaleString('en-US')} of ${r.total.toLocaleString('en-US')} | ` +
        `${Math.round(r.wallSeconds)} s | ${Math.round(r.tokensPerSecond)} |`,
    );
  }
  return lines.join('\n') + '\n';
}

/** Parses the accuracy cells of a table `resultsTable` wrote: arm title -> language -> %. */
export function parseResultsTable(markdown: string): Map<string, Map<string, number>> {
  const rows = markdown
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, -1)
        .split('|')
        .map((c) => c.trim()),
    );
  const head = rows[0];
  if (!head || head[0] !== 'arm') throw new Error('not a results table: the first row is not the header');
  const out = new Map<string, Map<string, number>>();
  for (const row of rows.slice(2)) {
    const m = new Map<string, number>();
    head.forEach((h, i) => {
      if (i > 0 && h !== 'trainable') m.set(h, Number(row[i]));
    });
    out.set(row[0]!, m);
  }
  return out;
}
