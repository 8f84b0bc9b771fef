/**
 * The layer analysis on the tiny model and MGSM's parallel questions from ../shared/data/mgsm (the
 * first few problems of all 11 languages, for speed; `configs/layer-analysis-tiny.yaml` runs all
 * 250): it writes analysis.json and the heatmap, picks k layers, and 2 ranks that share the
 * prompts reach exactly what 1 rank does.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MGSM_LANGUAGES, type AnalysisSpec } from '../../common/eval-spec.js';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { runLayerAnalysis, type LayerAnalysis } from '../../worker/methods/layer-analysis.js';

const MGSM = join(import.meta.dirname, '..', '..', '..', 'shared', 'data', 'mgsm');
let dir: string;

beforeAll(async () => {
  await initBackend('wasm');
  dir = await mkdtemp(join(tmpdir(), 'polytune-analysis-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const spec: AnalysisSpec = { probe: [{ mgsm: MGSM, limit: 4 }], k: 6, threshold: 0.5, maxSeqLen: 256, batchSize: 4 };

/** An in-memory all-reduce for ranks in one process: resolves when every rank gave its vector. */
function localReducer(worldSize: number): (rank: number) => (data: Float32Array) => Promise<Float32Array> {
  let pending: { data: Float32Array[]; resolve: ((v: Float32Array) => void)[] } = { data: [], resolve: [] };
  return (rank) => (data) =>
    new Promise((resolve) => {
      pending.data[rank] = data;
      pending.resolve[rank] = resolve;
      if (pending.resolve.filter(Boolean).length === worldSize) {
        const sum = new Float32Array(data.length);
        for (const d of pending.data) for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + d[i]!;
        const done = pending;
        pending = { data: [], resolve: [] };
        done.resolve.forEach((r) => r(sum));
      }
    });
}

describe('layer analysis on the tiny model and MGSM', () => {
  it('writes analysis.json, analysis.svg and analysis.png, picks k layers; 2 ranks agree with 1', async () => {
    const before = tf.memory().numTensors;
    const out1 = join(dir, 'one');
    const one = await runLayerAnalysis({
      modelPath: join(dir, 'model'),
      spec,
      outputDir: out1,
      rank: 0,
      worldSize: 1,
      reduce: (d) => Promise.resolve(d),
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(one.languages).toEqual([...MGSM_LANGUAGES]);
    expect(one.promptsPerLanguage).toEqual(Object.fromEntries(MGSM_LANGUAGES.map((l) => [l, 4])));
    expect(one.layers).toHaveLength(8);
    expect(one.chosenLayers).toHaveLength(6);
    expect(new Set(one.chosenLayers).size).toBe(6);
    expect([...one.chosenLayers].sort((a, b) => a - b)).toEqual(one.chosenLayers);
    // The chosen layers are the top-6 scores.
    const byScore = [...one.layers]
      .sort((a, b) => b.score - a.score)
      .slice(0, 6)
      .map((l) => l.layer)
      .sort((a, b) => a - b);
    expect(one.chosenLayers).toEqual(byScore);
    for (const l of one.layers) {
      expect(l.overlap[one.languages.indexOf('en')]).toBe(1);
      expect(l.active.every((n) => n >= 0 && n <= 256)).toBe(true);
    }
    expect(Object.values(one.tokensPerLanguage).every((t) => t > 4 * 10)).toBe(true);

    const json = JSON.parse(await readFile(join(out1, 'analysis.json'), 'utf8')) as LayerAnalysis;
    expect(json.chosenLayers).toEqual(one.chosenLayers);
    const png = await readFile(join(out1, 'analysis.png'));
    expect(png.subarray(1, 4).toString('ascii')).toBe('PNG');
    expect(await readFile(join(out1, 'analysis.svg'), 'utf8')).toContain('>overlap with en</text>');

    const reduce = localReducer(2);
    const out2 = join(dir, 'two');
    const [r0, r1] = await Promise.all(
      [0, 1].map((rank) =>
        runLayerAnalysis({
          modelPath: join(dir, 'model'),
          spec,
          outputDir: out2,
          rank,
          worldSize: 2,
          reduce: reduce(rank),
        }),
      ),
    );
    expect(r0!.chosenLayers).toEqual(one.chosenLayers);
    expect(r1!.chosenLayers).toEqual(one.chosenLayers);
    expect(r0!.layers).toEqual(one.layers);
    expect(r0!.tokensPerLanguage).toEqual(one.tokensPerLanguage);
  }, 60_000);
});
