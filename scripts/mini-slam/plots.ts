/**
 * The mini-SLAM plots, with the project's chart builders (worker/report/chart-specs.ts): accuracy per
 * language and arm (grouped bars), and the training loss per arm (lines). The layer analysis draws
 * its own heatmap (analysis.svg/png).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { groupedBarSpec, lineChartSpec } from '../../worker/report/chart-specs.js';
import { writeChart } from '../../worker/report/charts.js';
import { languagesOf, meanAccuracy, type ArmRow } from './table.js';

/** [step, loss] per series (an arm, or the base model's pretraining). */
export type LossCurves = ReadonlyArray<{
  readonly series: string;
  readonly loss: ReadonlyArray<readonly [number, number]>;
}>;

export function accuracyChart(rows: readonly ArmRow[]): ReturnType<typeof groupedBarSpec> {
  const langs = languagesOf(rows[0]!.eval);
  const data = rows.flatMap((r) => [
    ...r.eval.benchmarks[0]!.languages.map((l) => ({
      category: l.language,
      group: r.title,
      value: (100 * l.correct) / l.total,
    })),
    {
      category: 'avg non-en',
      group: r.title,
      value: meanAccuracy(
        r.eval,
        langs.filter((l) => l !== 'en'),
      ),
    },
  ]);
  return groupedBarSpec({
    title: 'Held-out word problems: accuracy per language and arm',
    categoryTitle: 'language of the question',
    groupTitle: 'arm',
    valueTitle: 'accuracy (%)',
    data,
    categories: [...langs, 'avg non-en'],
    groups: rows.map((r) => r.title),
    valueDomain: [0, 100],
    format: '.0f',
  });
}

export function lossChart(curves: LossCurves, title: string, seriesTitle: string): ReturnType<typeof lineChartSpec> {
  return lineChartSpec({
    title,
    xTitle: 'optimizer step',
    yTitle: 'training loss (nats/token)',
    seriesTitle,
    data: curves.flatMap((c) => c.loss.map(([x, y]) => ({ x, y, series: c.series }))),
    series: curves.map((c) => c.series),
  });
}

/** Writes accuracy.{svg,png}, loss-arms.{svg,png} and loss-pretrain.{svg,png} into `dir`. */
export async function writePlots(
  dir: string,
  rows: readonly ArmRow[],
  arms: LossCurves,
  pretrain: LossCurves,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeChart(accuracyChart(rows), join(dir, 'accuracy'));
  await writeChart(lossChart(arms, 'Tuning loss per arm (answer + translation tasks)', 'arm'), join(dir, 'loss-arms'));
  await writeChart(lossChart(pretrain, 'Pretraining loss of the base model', 'job'), join(dir, 'loss-pretrain'));
}
