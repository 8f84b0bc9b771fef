/**
 * The plot of a PruneJob's feature analysis (`output.dir/prune-features.{svg,png}`): per layer
 * (rows, the top layer first) the hidden dimensions with the largest norm during translation
 * (columns: every dimension that is in some layer's top K, the ones in the most layers first, at
 * most MAX_COLUMNS), the cell the dimension's norm where it is in that layer's top K. With
 * `contrast`, a second panel under the first: the ratio of that norm to the contrast set's.
 */
import type { TopLevelSpec } from 'vega-lite';
import { heatmapSpec, type HeatmapCell } from '../report/chart-specs.js';
import type { PruneReport } from './prune-report.js';

/** Columns drawn at most (a dimension a column). */
export const MAX_COLUMNS = 32;

export function pruneFeaturesSpec(r: PruneReport): TopLevelSpec {
  const layersOf = new Map<number, number>();
  for (const l of r.layers) for (const d of l.features.top) layersOf.set(d, (layersOf.get(d) ?? 0) + 1);
  const dims = [...layersOf]
    .sort((a, b) => b[1] - a[1] || a[0] - b[0])
    .slice(0, MAX_COLUMNS)
    .map(([d]) => d)
    .sort((a, b) => a - b);
  const shown = new Set(dims);
  const rows = [...r.layers].reverse().map((l) => String(l.layer));
  const cells = (values: (l: PruneReport['layers'][number]) => readonly number[] | undefined): HeatmapCell[] =>
    r.layers.flatMap((l) => {
      const v = values(l);
      return l.features.top.flatMap((d, k) =>
        shown.has(d) && v !== undefined && Number.isFinite(v[k])
          ? [{ row: String(l.layer), column: String(d), value: v[k]! }]
          : [],
      );
    });
  const columns = dims.map(String);
  const norms = cells((l) => l.features.norms);
  // Whole numbers once norms reach the hundreds (a 7B model's massive activations), so cells stay narrow.
  const normFormat = Math.max(0, ...norms.map((c) => c.value)) >= 100 ? '.0f' : '.1f';
  const panels = [
    {
      title: 'Norm during translation: mean over samples of the L2 norm over tokens',
      columnTitle: 'hidden dimension',
      valueTitle: 'norm',
      cells: norms,
      columns,
      format: normFormat,
    },
  ];
  if (r.contrastSamples > 0)
    panels.push({
      title: `Ratio of that norm to the contrast set's (${r.contrastSamples} samples): above 1, larger in translation`,
      columnTitle: 'hidden dimension',
      valueTitle: 'ratio',
      cells: cells((l) => l.features.ratio),
      columns,
      format: '.2f',
    });
  return heatmapSpec({
    title: 'Large-magnitude features per layer (the input of each decoder layer)',
    subtitle:
      `the top ${r.topK} hidden dimensions of each layer by norm over ${r.calibrationSamples} translation samples; ` +
      `${dims.length} dimensions shown` +
      (dims.length < layersOf.size ? ` of ${layersOf.size} (those in the most layers' top ${r.topK})` : ''),
    rowTitle: 'layer',
    rows,
    panels,
    cell: { width: 30, height: 20 },
    // Panels one under another: each as wide as its columns, the whole at most ~1100 SVG units.
    stack: 'vertical',
  });
}
