/** The Markdown form of an evaluation: one row per benchmark, accuracy (%) per language and the average. */
import type { EvalReport } from './evaluate.js';

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
