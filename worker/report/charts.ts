/**
 * Charts: a Vega-Lite spec rendered to SVG (vega, headless, `renderer: 'none'`) and to PNG
 * (resvg-js), instead of hand-drawn pixels. Spec builders are in `chart-specs.ts`.
 *
 * The output does not depend on the machine: text is set in DejaVu Sans from the npm package
 * `dejavu-fonts-ttf` (resvg loads no system fonts), vega measures text with its built-in estimate
 * (no `canvas` package), and nothing is loaded over the network or from disk: a spec carries its
 * data inline, one with a `url` anywhere is refused, and the loader refuses every load as well.
 * So the same spec gives the same SVG and PNG bytes (test/unit/charts.test.ts).
 *
 * The SVG names its font family ("DejaVu Sans", then sans-serif), so it displays elsewhere; the
 * PNG is drawn at 2x the SVG's size so its text stays readable.
 */
import { createRequire } from 'node:module';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { UserError } from '../../common/errors.js';
import { writeFileAtomically } from '../train/atomic-dir.js';
import { FontMetrics } from './font-metrics.js';

export type { TopLevelSpec };

export const CHART_FONT_FAMILY = 'DejaVu Sans';
/** PNG pixels per SVG unit. */
export const PNG_SCALE = 2;

const require = createRequire(import.meta.url);
const [REGULAR, BOLD] = ['DejaVuSans.ttf', 'DejaVuSans-Bold.ttf'].map((f) =>
  require.resolve(`dejavu-fonts-ttf/ttf/${f}`),
) as [string, string];
const FONT_FILES = [REGULAR, BOLD];

/**
 * Vega lays text out with `textMetrics.width` (exported at run time, not in its typings): set to
 * the DejaVu widths (font-metrics.ts) once, for every view in this process.
 */
interface TextItem {
  readonly fontSize?: number;
  readonly fontWeight?: string | number;
  readonly limit?: number;
}
const metrics = { regular: new FontMetrics(REGULAR), bold: new FontMetrics(BOLD) };
(vega as unknown as { textMetrics: { width: (item: TextItem, text: unknown) => number } }).textMetrics.width = (
  item,
  text,
) => {
  const line = text == null ? '' : String(text).trim();
  const size = item.fontSize ?? 11;
  const bold = item.fontWeight === 'bold' || Number(item.fontWeight) >= 600;
  return (bold ? metrics.bold : metrics.regular).width(line, size);
};

/** Applied under each spec's own `config` (the spec's settings win). */
const BASE_CONFIG = {
  font: `${CHART_FONT_FAMILY}, sans-serif`,
  background: 'white',
  padding: 8,
  title: { fontSize: 14, anchor: 'start' },
  axis: { labelFontSize: 11, titleFontSize: 12 },
  legend: { labelFontSize: 11, titleFontSize: 12 },
} as const;

function refuse(what: string): never {
  throw new UserError(`chart spec: ${what}; charts take inline data only (data.values), nothing is loaded`);
}

/** Vega's loader, replaced by one that loads nothing (backs up the `url` check). */
const NO_LOADER: vega.Loader = {
  load: (uri) => refuse(`would load ${JSON.stringify(uri)}`),
  sanitize: (uri) => refuse(`would load ${JSON.stringify(uri)}`),
  http: (uri) => refuse(`would fetch ${JSON.stringify(uri)}`),
  file: (name) => refuse(`would read the file ${JSON.stringify(name)}`),
};

/** Throws naming the first `url` field anywhere in `spec` (data sources, image marks). */
function refuseUrls(value: unknown, path: string): void {
  if (Array.isArray(value)) value.forEach((v, i) => refuseUrls(v, `${path}[${i}]`));
  else if (value !== null && typeof value === 'object')
    for (const [k, v] of Object.entries(value)) {
      if (k === 'url') refuse(`${path}.url is set`);
      refuseUrls(v, `${path}.${k}`);
    }
}

/**
 * Vega numbers gradients and clip paths with process-wide counters: each render resets them and
 * renders run one at a time, so a spec's SVG does not depend on what was rendered before.
 */
let rendering: Promise<unknown> = Promise.resolve();

/** The chart as an SVG document and as a PNG (2x the SVG's size, white background). */
export async function renderChart(spec: TopLevelSpec): Promise<{ svg: string; png: Buffer }> {
  refuseUrls(spec, 'spec');
  const { spec: vgSpec } = compile(spec, { config: BASE_CONFIG });
  const run = rendering.then(async () => {
    const view = new vega.View(vega.parse(vgSpec), { renderer: 'none', loader: NO_LOADER });
    try {
      vega.resetSVGDefIds();
      return await view.toSVG();
    } finally {
      view.finalize();
    }
  });
  rendering = run.catch(() => {});
  const svg = await run;
  const png = new Resvg(svg, {
    font: { loadSystemFonts: false, fontFiles: FONT_FILES, defaultFontFamily: CHART_FONT_FAMILY },
    fitTo: { mode: 'zoom', value: PNG_SCALE },
    background: 'white',
  })
    .render()
    .asPng();
  return { svg, png };
}

/** Renders `spec` and writes `<path>.svg` and `<path>.png`, each atomically. */
export async function writeChart(spec: TopLevelSpec, path: string): Promise<void> {
  const { svg, png } = await renderChart(spec);
  await writeFileAtomically(`${path}.svg`, svg);
  await writeFileAtomically(`${path}.png`, png);
}
