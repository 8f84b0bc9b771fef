/** The report of an evaluation (the JSON `eval/<name>.json` holds) and its Markdown form. */
import { evalMarkdownTables } from '../../common/eval-table.js';

export interface LanguageScore {
  readonly language: string;
  readonly correct: number;
  readonly total: number;
  /** correct / total, in [0, 1]. */
  readonly accuracy: number;
}

export interface BenchmarkScore {
  readonly benchmark: string;
  readonly languages: readonly LanguageScore[];
  /** The unweighted mean of the languages' accuracies (as the papers report it). */
  readonly average: number;
}

/** The table of one evaluation: what `eval/<name>.json` holds. */
export interface EvalReport {
  /** `final` or `step-NNNNNNNN`. */
  readonly name: string;
  /** The optimizer step evaluated (0 for an EvalJob). */
  readonly step: number;
  readonly benchmarks: readonly BenchmarkScore[];
  readonly maxNewTokens: number;
  readonly template: string;
  readonly worldSize: number;
  readonly seconds: number;
}

/** The report as Markdown: a table per problem set, language by row (common/eval-table.ts, as the CLI prints it). */
export function evalMarkdown(report: EvalReport): string {
  const lines = [`# Evaluation ${report.name}${report.step > 0 ? ` (step ${report.step})` : ''}`, ''];
  lines.push(
    `Accuracy (%), greedy decoding up to ${report.maxNewTokens} new ` +
      `tokens, template \`${report.template}\`, last number in the output.`,
    '',
  );
  lines.push(...evalMarkdownTables(report));
  return lines.join('\n');
}
