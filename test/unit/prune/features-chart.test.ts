/**
 * The plot of a PruneJob's features (prune-features.svg/.png) stays readable: with `contrast` the
 * two panels are one under another, no wider than MAX_COLUMNS cells, every legend and axis title
 * whole (vega cuts a title too long for its limit with "…"), large norms printed without decimals.
 */
import { describe, expect, it } from 'vitest';
import { MAX_COLUMNS, pruneFeaturesSpec } from '../../../worker/prune/features-chart.js';
import type { PruneLayerReport, PruneReport } from '../../../worker/prune/prune-report.js';
import { PNG_SCALE, renderChart } from '../../../worker/report/charts.js';

/** A report of `layers` layers whose top-K dimensions spread over more than MAX_COLUMNS. */
function report(layers: number, topK: number, scale: number, contrast: boolean): PruneReport {
  const rows: PruneLayerReport[] = Array.from({ length: layers }, (_, l) => {
    const top = Array.from({ length: topK }, (_, k) => (k < 3 ? k * 7 : (l * 5 + k * 11) % 4096));
    const norms = top.map((_, k) => scale * (1 + l / 4) * (topK - k));
    return {
      layer: l,
      pruned: true,
      modules: [],
      features: contrast
        ? { top, norms, contrastNorms: norms.map((n) => n / 1.3), ratio: norms.map(() => 1.3) }
        : { top, norms },
      seconds: 0,
    };
  });
  return {
    rule: { kind: 'fraction', sparsity: 0.3 },
    calibrationSamples: 8,
    calibrationTokens: 800,
    contrastSamples: contrast ? 8 : 0,
    topK,
    worldSize: 1,
    layers: rows,
    overallSparsity: 0.3,
    seconds: 1,
  };
}

/** The text of every <text> element of an SVG. */
const texts = (svg: string): string[] => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);

describe('pruneFeaturesSpec', () => {
  it('with contrast: the panels stacked, whole titles, at most MAX_COLUMNS columns', async () => {
    const r = report(8, 10, 0.1, true);
    const spec = pruneFeaturesSpec(r) as { vconcat?: unknown[]; hconcat?: unknown[] };
    expect(spec.vconcat).toHaveLength(2);
    expect(spec.hconcat).toBeUndefined();
    const { svg, png } = await renderChart(pruneFeaturesSpec(r));
    const t = texts(svg);
    expect(t.filter((x) => x.includes('…'))).toEqual([]);
    for (const title of ['norm', 'ratio', 'hidden dimension', 'layer']) expect(t).toContain(title);
    expect(t.filter((x) => x === 'hidden dimension')).toHaveLength(2);
    const shown = new Set(r.layers.flatMap((l) => l.features.top)).size;
    expect(shown).toBeGreaterThan(MAX_COLUMNS);
    expect(t.some((x) => x.includes(`${MAX_COLUMNS} dimensions shown of ${shown}`))).toBe(true);
    // 32 columns of 30 units, the legend and padding: well under the 2750 px of two panels side by side.
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    expect(width).toBeLessThanOrEqual(1200 * PNG_SCALE);
    expect(height).toBeGreaterThan(width / 3);
  });

  it('without contrast one panel; norms in the hundreds print without decimals', async () => {
    const r = report(32, 20, 100, false);
    expect((pruneFeaturesSpec(r) as { vconcat?: unknown[] }).vconcat).toHaveLength(1);
    const t = texts((await renderChart(pruneFeaturesSpec(r))).svg);
    expect(t).toContain(String(Math.round(r.layers[31]!.features.norms[0]!)));
    expect(t.filter((x) => /^\d+\.\d$/.test(x))).toEqual([]);
    expect(t).not.toContain('ratio');
  });
});
