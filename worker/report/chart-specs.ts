/**
 * Vega-Lite specs for the charts reports need, rendered by `charts.ts`: a heatmap (one or more
 * panels side by side, each with its own colour scale and legend, the value printed in each cell),
 * a grouped bar chart and a line chart with several series. Every axis and legend has a title;
 * titles carry their unit, e.g. `accuracy (%)`, `loss (nats/token)`. Data is inline and checked:
 * a non-finite value is refused naming the builder and the point.
 */
import type { TopLevelSpec } from 'vega-lite';

/** d3-format of the values printed in heatmap cells and on value axes. @default '.2f' in cells */
export type NumberFormat = string;

export interface HeatmapCell {
  readonly row: string;
  readonly column: string;
  readonly value: number;
}

export interface HeatmapPanel {
  readonly title: string;
  /** The x axis title. */
  readonly columnTitle: string;
  /** The colour legend's title, with the unit. */
  readonly valueTitle: string;
  readonly cells: readonly HeatmapCell[];
  /** Columns left to right. @default the order of first appearance in `cells` */
  readonly columns?: readonly string[];
  /** The colour scale's domain. @default [min, max] of the cells */
  readonly domain?: readonly [number, number];
  /** @default '.2f' */
  readonly format?: NumberFormat;
}

export interface HeatmapOptions {
  readonly title: string;
  /** The y axis title (shared by the panels). */
  readonly rowTitle: string;
  /** Rows top to bottom. */
  readonly rows: readonly string[];
  readonly panels: readonly HeatmapPanel[];
  /** A line under the title. */
  readonly subtitle?: string;
  /** Cell size in SVG units. @default { width: 44, height: 22 } */
  readonly cell?: { readonly width: number; readonly height: number };
}

function checkFinite(builder: string, values: readonly number[], where: (i: number) => string): void {
  const i = values.findIndex((v) => !Number.isFinite(v));
  if (i >= 0) throw new RangeError(`${builder}: ${where(i)} is ${values[i]}, not a finite number`);
}

function firstAppearance(xs: readonly string[]): string[] {
  return [...new Set(xs)];
}

/** A heatmap: rows x columns of values, per panel a colour scale with a legend and the value in each cell. */
export function heatmapSpec(o: HeatmapOptions): TopLevelSpec {
  const cell = o.cell ?? { width: 44, height: 22 };
  const panels = o.panels.map((p, pi) => {
    checkFinite(
      'heatmapSpec',
      p.cells.map((c) => c.value),
      (i) => `panels[${pi}] (${p.title}) cells[${i}].value`,
    );
    const values = p.cells.map((c) => c.value);
    const [lo, hi] = p.domain ?? [Math.min(...values), Math.max(...values)];
    const columns = p.columns ?? firstAppearance(p.cells.map((c) => c.column));
    // viridis is light at the top: dark text on the upper half, white on the lower.
    const mid = (lo + hi) / 2;
    const legend = `legend${pi}`;
    return {
      title: p.title,
      width: cell.width * columns.length,
      height: cell.height * o.rows.length,
      data: { values: p.cells.map((c) => ({ ...c })) },
      encoding: {
        x: {
          field: 'column',
          type: 'nominal' as const,
          sort: [...columns],
          title: p.columnTitle,
          axis: { labelAngle: 0, orient: 'top' as const },
        },
        // The row title once, on the first panel.
        y: { field: 'row', type: 'nominal' as const, sort: [...o.rows], title: pi === 0 ? o.rowTitle : null },
      },
      layer: [
        {
          mark: { type: 'rect' as const, stroke: 'white', strokeWidth: 1 },
          encoding: {
            color: {
              field: 'value',
              type: 'quantitative' as const,
              title: p.valueTitle,
              scale: { scheme: 'viridis', domain: lo === hi ? [lo - 1, hi + 1] : [lo, hi] },
              legend: { name: legend, format: p.format ?? '.2f', orient: 'right' as const, gradientLength: 120 },
            },
          },
        },
        {
          mark: { type: 'text' as const, fontSize: 10 },
          encoding: {
            text: { field: 'value', type: 'quantitative' as const, format: p.format ?? '.2f' },
            color: { condition: { test: `datum.value >= ${mid}`, value: 'black' }, value: 'white' },
          },
        },
      ],
    };
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.subtitle === undefined ? o.title : { text: o.title, subtitle: o.subtitle },
    hconcat: panels,
    resolve: { scale: { color: 'independent' } },
    config: { view: { stroke: null } },
  };
}

export interface BarPoint {
  /** The x axis category (e.g. the language). */
  readonly category: string;
  /** The bar within the category, coloured, in the legend (e.g. the arm). */
  readonly group: string;
  readonly value: number;
}

export interface GroupedBarOptions {
  readonly title: string;
  readonly categoryTitle: string;
  readonly groupTitle: string;
  /** The y axis title, with the unit. */
  readonly valueTitle: string;
  readonly data: readonly BarPoint[];
  /** @default the order of first appearance */
  readonly categories?: readonly string[];
  /** @default the order of first appearance */
  readonly groups?: readonly string[];
  /** The y axis domain, e.g. [0, 100] for percentages. @default from zero to the data */
  readonly valueDomain?: readonly [number, number];
  /** Of the value axis and the labels on the bars. @default vega's */
  readonly format?: NumberFormat;
  /** Print each bar's value above it. @default true */
  readonly labels?: boolean;
}

/** Bars grouped by category, one colour a group (with a legend), e.g. accuracy per language and arm. */
export function groupedBarSpec(o: GroupedBarOptions): TopLevelSpec {
  checkFinite(
    'groupedBarSpec',
    o.data.map((d) => d.value),
    (i) => `data[${i}].value`,
  );
  const categories = o.categories ?? firstAppearance(o.data.map((d) => d.category));
  const groups = o.groups ?? firstAppearance(o.data.map((d) => d.group));
  const format = o.format === undefined ? {} : { format: o.format };
  const bars = {
    mark: { type: 'bar' as const },
    encoding: {
      color: { field: 'group', type: 'nominal' as const, sort: [...groups], title: o.groupTitle },
    },
  };
  const labels = {
    mark: { type: 'text' as const, dy: -4, baseline: 'bottom' as const, fontSize: 9 },
    encoding: { text: { field: 'value', type: 'quantitative' as const, ...format } },
  };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    data: { values: o.data.map((d) => ({ ...d })) },
    // With an xOffset the step is one bar's width.
    width: { step: 18 },
    height: 240,
    encoding: {
      x: {
        field: 'category',
        type: 'nominal' as const,
        sort: [...categories],
        title: o.categoryTitle,
        axis: { labelAngle: 0 },
      },
      xOffset: { field: 'group', type: 'nominal' as const, sort: [...groups] },
      y: {
        field: 'value',
        type: 'quantitative' as const,
        title: o.valueTitle,
        axis: { ...format },
        ...(o.valueDomain === undefined ? {} : { scale: { domain: [...o.valueDomain] } }),
      },
    },
    layer: o.labels === false ? [bars] : [bars, labels],
  };
}

export interface LinePoint {
  readonly x: number;
  readonly y: number;
  /** The line (e.g. the arm), coloured, in the legend. */
  readonly series: string;
}

export interface LineChartOptions {
  readonly title: string;
  /** The x axis title, with the unit. */
  readonly xTitle: string;
  /** The y axis title, with the unit. */
  readonly yTitle: string;
  readonly seriesTitle: string;
  readonly data: readonly LinePoint[];
  /** Legend order. @default the order of first appearance */
  readonly series?: readonly string[];
  /** @default 'linear' */
  readonly yScale?: 'linear' | 'log';
  /** Mark each point. @default true when there are at most 60 points a series */
  readonly points?: boolean;
}

/** Several lines on shared axes, one colour a series (with a legend), e.g. loss per step per arm. */
export function lineChartSpec(o: LineChartOptions): TopLevelSpec {
  checkFinite(
    'lineChartSpec',
    o.data.map((d) => d.x),
    (i) => `data[${i}].x`,
  );
  checkFinite(
    'lineChartSpec',
    o.data.map((d) => d.y),
    (i) => `data[${i}].y`,
  );
  const series = o.series ?? firstAppearance(o.data.map((d) => d.series));
  const most = Math.max(0, ...series.map((s) => o.data.filter((d) => d.series === s).length));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    data: { values: o.data.map((d) => ({ ...d })) },
    width: 420,
    height: 240,
    mark: { type: 'line', point: o.points ?? most <= 60, strokeWidth: 1.5 },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: o.xTitle },
      y: {
        field: 'y',
        type: 'quantitative',
        title: o.yTitle,
        scale: o.yScale === 'log' ? { type: 'log' } : { zero: false },
      },
      color: { field: 'series', type: 'nominal', sort: [...series], title: o.seriesTitle },
    },
  };
}
