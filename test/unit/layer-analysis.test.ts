/** The layer-analysis statistic on a case computed by hand, and its heatmap. */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { layerStatistics, writeLayerAnalysis, type LayerAnalysis } from '../../worker/methods/layer-analysis.js';

describe('layer statistic', () => {
  // 2 layers x 3 neurons; en over 4 prompt tokens, de over 2; threshold 0.5.
  //   layer 0: en fired [4,2,0] -> p [1, .5, 0] -> A_en = {0,1}; de fired [0,1,2] -> p [0,.5,1] -> A_de = {1,2}
  //     share [2/3, 2/3] -> msd 0; overlap [1, |{1}|/2 = .5] -> mean .75 -> msd (.25² + .25²)/2 = .0625
  //   layer 1: en fired [4,4,4] -> A_en = {0,1,2}; de fired [2,2,0] -> A_de = {0,1}
  //     share [1, 2/3] -> mean 5/6 -> msd (1/6)² = 1/36; overlap [1, 2/3] -> msd 1/36; score 2/36
  const counts = {
    languages: ['en', 'de'],
    numLayers: 2,
    intermediate: 3,
    tokens: [4, 2],
    fired: [Float32Array.from([4, 2, 0, 4, 4, 4]), Float32Array.from([0, 1, 2, 2, 2, 0])],
  };

  it('counts, overlap with English and the mean squared deviations, as computed by hand', () => {
    const s = layerStatistics(counts, 0.5, 1);
    const [l0, l1] = s.layers;
    expect(l0!.active).toEqual([2, 2]);
    expect(l0!.overlap).toEqual([1, 0.5]);
    expect(l0!.msdShare).toBeCloseTo(0, 12);
    expect(l0!.msdOverlap).toBeCloseTo(0.0625, 12);
    expect(l0!.score).toBeCloseTo(0.0625, 12);
    expect(l1!.active).toEqual([3, 2]);
    expect(l1!.share[1]).toBeCloseTo(2 / 3, 12);
    expect(l1!.overlap[1]).toBeCloseTo(2 / 3, 12);
    expect(l1!.msdShare).toBeCloseTo(1 / 36, 12);
    expect(l1!.msdOverlap).toBeCloseTo(1 / 36, 12);
    expect(s.chosenLayers).toEqual([0]);
    expect(layerStatistics(counts, 0.5, 2).chosenLayers).toEqual([0, 1]);
    expect(s.tokensPerLanguage).toEqual({ en: 4, de: 2 });
  });

  it('the threshold decides what is active: at 1.0 only always-firing neurons count', () => {
    const s = layerStatistics(counts, 1, 6);
    expect(s.layers[0]!.active).toEqual([1, 1]); // en {0}, de {2}
    expect(s.layers[0]!.overlap).toEqual([1, 0]);
    expect(s.chosenLayers).toEqual([0, 1]); // k capped at the depth
  });

  it('refuses a probe without English', () => {
    expect(() => layerStatistics({ ...counts, languages: ['fr', 'de'] }, 0.5, 1)).toThrow(/English/);
  });

  it('writes analysis.json and the heatmap (SVG, PNG): titles, legends, values, the chosen layer', async () => {
    const a: LayerAnalysis = { ...layerStatistics(counts, 0.5, 1), promptsPerLanguage: { en: 1, de: 1 } };
    const dir = await mkdtemp(join(tmpdir(), 'layer-analysis-'));
    try {
      const out = await writeLayerAnalysis(dir, a);
      expect((await readdir(dir)).sort()).toEqual(['analysis.json', 'analysis.png', 'analysis.svg']);
      expect(out).toEqual({
        json: join(dir, 'analysis.json'),
        svg: join(dir, 'analysis.svg'),
        png: join(dir, 'analysis.png'),
      });
      expect(JSON.parse(await readFile(out.json, 'utf8'))).toEqual(a);
      const svg = await readFile(out.svg, 'utf8');
      // Panels, axis and legend titles; layer 0 is chosen; share 2/3, overlap 0.5, score 0.0625 in cells.
      for (const text of [
        'active share',
        'overlap with en',
        'score',
        'layer',
        'language',
        'active / FFN neurons',
        '0 *',
        '1',
        '0.67',
        '0.50',
        '0.063',
      ])
        expect(svg).toContain(`>${text}</text>`);
      const png = await readFile(out.png);
      expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      expect(png.readUInt32BE(16)).toBeGreaterThan(300);
      expect(png.readUInt32BE(20)).toBeGreaterThan(100);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
