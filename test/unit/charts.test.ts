/** Charts: Vega-Lite specs rendered to SVG and PNG, deterministic, inline data only; the spec builders. */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { groupedBarSpec, heatmapSpec, lineChartSpec } from '../../worker/report/chart-specs.js';
import {
  CHART_FONT_FAMILY,
  PNG_SCALE,
  renderChart,
  writeChart,
  type TopLevelSpec,
} from '../../worker/report/charts.js';

/** Width and height from the IHDR chunk, after checking the signature. */
function pngSize(png: Buffer): { width: number; height: number } {
  expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  expect(png.toString('ascii', 12, 16)).toBe('IHDR');
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}

function svgSize(svg: string): { width: number; height: number } {
  const m = /^<svg[^>]* width="(\d+)" height="(\d+)"/.exec(svg);
  expect(m).not.toBeNull();
  return { width: Number(m![1]), height: Number(m![2]) };
}

const heatmap = heatmapSpec({
  title: 'Heat',
  rowTitle: 'layer',
  rows: ['1', '0'],
  panels: [
    {
      title: 'share',
      columnTitle: 'language',
      valueTitle: 'active share (fraction)',
      cells: [
        { row: '0', column: 'en', value: 0.25 },
        { row: '0', column: 'de', value: 0.5 },
        { row: '1', column: 'en', value: 0.75 },
        { row: '1', column: 'de', value: 0.125 },
      ],
    },
  ],
});

describe('renderChart', () => {
  it('an SVG with the titles, legend title, cell values and font family, and a PNG of twice its size', async () => {
    const { svg, png } = await renderChart(heatmap);
    expect(svg.startsWith('<svg')).toBe(true);
    for (const text of ['Heat', 'layer', 'language', 'active share (fraction)', '0.25', '0.13', '0.75'])
      expect(svg).toContain(`>${text}</text>`);
    expect(svg).toContain(`font-family="${CHART_FONT_FAMILY}, sans-serif"`);
    const s = svgSize(svg);
    const p = pngSize(png);
    expect(p.width).toBeGreaterThan(0);
    expect(p.height).toBeGreaterThan(0);
    expect(p).toEqual({ width: s.width * PNG_SCALE, height: s.height * PNG_SCALE });
  });

  it('the same spec gives the same bytes; different data gives different ones', async () => {
    const a = await renderChart(heatmap);
    const b = await renderChart(structuredClone(heatmap));
    expect(b.svg).toBe(a.svg);
    expect(b.png.equals(a.png)).toBe(true);
    const other = heatmapSpec({
      title: 'Heat',
      rowTitle: 'layer',
      rows: ['0'],
      panels: [
        { title: 'share', columnTitle: 'language', valueTitle: 'v', cells: [{ row: '0', column: 'en', value: 1 }] },
      ],
    });
    expect((await renderChart(other)).png.equals(a.png)).toBe(false);
  });

  it('refuses a spec that would load anything, naming the field', async () => {
    const byUrl = { data: { url: 'https://example.com/x.csv' }, mark: 'bar' } as TopLevelSpec;
    await expect(renderChart(byUrl)).rejects.toThrow(/spec\.data\.url is set; charts take inline data only/);
    const nested = {
      layer: [
        { data: { values: [] }, mark: 'bar' },
        { data: { url: 'file:///etc/passwd' }, mark: 'line' },
      ],
    } as TopLevelSpec;
    await expect(renderChart(nested)).rejects.toThrow(/spec\.layer\[1\]\.data\.url/);
  });
});

describe('writeChart', () => {
  const dirs: string[] = [];
  afterAll(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it('writes <path>.svg and <path>.png and nothing else', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'charts-'));
    dirs.push(dir);
    await writeChart(heatmap, join(dir, 'heat'));
    expect((await readdir(dir)).sort()).toEqual(['heat.png', 'heat.svg']);
    const { svg, png } = await renderChart(heatmap);
    expect(await readFile(join(dir, 'heat.svg'), 'utf8')).toBe(svg);
    expect((await readFile(join(dir, 'heat.png'))).equals(png)).toBe(true);
  });
});

describe('spec builders', () => {
  it('a grouped bar chart: axis titles, legend title, categories and groups', async () => {
    const spec = groupedBarSpec({
      title: 'Accuracy',
      categoryTitle: 'language',
      groupTitle: 'arm',
      valueTitle: 'accuracy (%)',
      valueDomain: [0, 100],
      data: [
        { category: 'en', group: 'base', value: 40 },
        { category: 'en', group: 'slam', value: 45 },
        { category: 'sw', group: 'base', value: 5 },
        { category: 'sw', group: 'slam', value: 30 },
      ],
    });
    const { svg, png } = await renderChart(spec);
    for (const text of ['Accuracy', 'language', 'arm', 'accuracy (%)', 'en', 'sw', 'base', 'slam', '100', '30'])
      expect(svg).toContain(`>${text}</text>`);
    expect(pngSize(png).width).toBeGreaterThan(0);
  });

  it('a line chart with several series: axis titles with units and the series legend', async () => {
    const spec = lineChartSpec({
      title: 'Loss',
      xTitle: 'step',
      yTitle: 'loss (nats/token)',
      seriesTitle: 'arm',
      data: [0, 1, 2].flatMap((x) => [
        { x, y: 3 - x, series: 'full' },
        { x, y: 3 - x / 2, series: 'slam' },
      ]),
    });
    const { svg } = await renderChart(spec);
    for (const text of ['Loss', 'step', 'loss (nats/token)', 'arm', 'full', 'slam'])
      expect(svg).toContain(`>${text}</text>`);
  });

  it('refuse values that are not finite numbers, naming the point', () => {
    expect(() =>
      lineChartSpec({ title: 't', xTitle: 'x', yTitle: 'y', seriesTitle: 's', data: [{ x: 0, y: NaN, series: 'a' }] }),
    ).toThrow(/lineChartSpec: data\[0\]\.y is NaN/);
    expect(() =>
      groupedBarSpec({
        title: 't',
        categoryTitle: 'c',
        groupTitle: 'g',
        valueTitle: 'v',
        data: [{ category: 'a', group: 'b', value: Infinity }],
      }),
    ).toThrow(/groupedBarSpec: data\[0\]\.value is Infinity/);
  });
});
