/** The report of an evaluation (the JSON `eval/<name>.json` holds) and its Markdown form. */
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

const pct = (x: number): string => (100 * x).toFixed(1);

export function evalMarkdown(report: EvalReport): string {
  const lines = [`# Evaluation ${report.name}${report.step > 0 ? ` (step ${report.step})` : ''}`, ''];
  lines.push(`Accuracy (%), greedy decoding up to ${report.maxNewTokens} new tokens, template \`${report.template}\`, last number in the output.`, '');
  for (const b of report.benchmarks) {
    const langs = b.languages.map((l) => l.language);
    lines.push(`| ${b.benchmark} | ${langs.join(' | ')} | Avg |`);
    lines.push(`|---|${langs.map(() => '---:').join('|')}|---:|`);
    lines.push(`| accuracy | ${b.languages.map((l) => pct(l.accuracy)).join(' | ')} | ${pct(b.average)} |`);
    lines.push(`| correct / total | ${b.languages.map((l) => `${l.correct}/${l.total}`).join(' | ')} | |`);
    lines.push('');
  }
  return lines.join('\n');
}
