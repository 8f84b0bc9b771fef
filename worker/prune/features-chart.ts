/**
 * The plot of a PruneJob's feature analysis (`output.dir/prune-features.{svg,png}`): per layer
 * (rows, the top layer first) the hidden dimensions with the largest norm during translation
 * (columns: every dimension that is in some layer's top K, the ones in the most layers first, at
 * most MAX_COLUMNS), the cell the dimension's norm where it is in that layer's top K. With
 * `contrast`, a second panel: the ratio of that norm to the contrast set's.
 */
import type { TopLevelSpec } from 'vega-lite';
import { heatmapSpec, type HeatmapCell } from '../report/chart-specs.js';
import type { PruneReport } from './prune-report.js';

/** Columns drawn at most (a dimension a column). */
export const MAX_COLUMNS = 40;

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
  const panels = [
    {
      title: 'norm during translation',
      columnTitle: 'hidden dimension',
      valueTitle: 'mean L2 norm over tokens',
      cells: cells((l) => l.features.norms),
      columns,
      format: '.1f',
    },
  ];
  if (r.contrastSamples > 0)
    panels.push({
      title: 'ratio to the contrast set',
      columnTitle: 'hidden dimension',
      valueTitle: 'norm / contrast norm',
      cells: cells((l) => l.features.ratio),
      columns,
      format: '.2f',
    });
  return heatmapSpec({
    title: 'Large-magnitude features per layer (the input of each decoder layer)',
    subtitle:
      `top ${r.topK} dimensions of each layer by norm over ${r.calibrationSamples} translation samples; ` +
      `${dims.length} dimensions shown`,
    rowTitle: 'layer',
    rows,
    panels,
    cell: { width: 34, height: 20 },
  });
}
