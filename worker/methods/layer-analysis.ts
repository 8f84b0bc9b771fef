/**
 * SLAM's layer analysis: which layers are language-specific (METHODS.md, SLAM).
 *
 * The model runs on parallel prompts in each language (MGSM: the i-th line of every mgsm_<lang>.tsv
 * is the same problem): the raw question, BOS first, no template, cut at `maxSeqLen`. For each layer
 * l, language g and FFN neuron i we count the prompt tokens (BOS excluded) on which the neuron fires,
 * SiLU(gate_proj h) > 0, i.e. gate_proj h > 0, and divide by the language's prompt tokens: the
 * activation probability p[l,g,i] (as in the language-specific-neuron literature, e.g. LAPE).
 *
 * Definitions (our choice where SLAM's code is not public):
 * - A[l,g] = { i : p[l,g,i] >= threshold }: the neurons active for language g (default threshold
 *   0.5: the neuron fires on at least half of the language's prompt tokens). "Fires on any token"
 *   saturates: over hundreds of prompts nearly every neuron fires somewhere.
 * - share[l,g] = |A[l,g]| / intermediate: the count of active neurons, as a share.
 * - overlap[l,g] = |A[l,g] ∩ A[l,en]| / |A[l,en]| (1 for English; 0 when A[l,en] is empty).
 * - msdShare[l] = mean over g of (share[l,g] - mean_g share[l,g])^2, msdOverlap[l] likewise, over
 *   every probed language including English (overlap 1: a layer where the others overlap little
 *   with English stands out).
 * - score[l] = msdShare[l] + msdOverlap[l]; the k layers with the highest score are chosen (ties:
 *   the lower layer), listed in ascending order.
 *
 * Spread across ranks: language by language, every `worldSize`-th prompt is this rank's; the
 * counts are summed with the collective (exact: integers far below 2^24), so every rank computes
 * the same statistic and the same layers.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { AnalysisSpec } from '../../common/eval-spec.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { readProblems, type Problem } from '../eval/problems.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { heatmapSpec } from '../report/chart-specs.js';
import type { TopLevelSpec } from '../report/charts.js';
import { writeFileAtomically } from '../train/atomic-dir.js';

export type ReduceFn = (data: Float32Array) => Promise<Float32Array>;

/** Per language: prompt tokens, and per layer and neuron the tokens on which it fired. */
export interface ActivationCounts {
  readonly languages: readonly string[];
  readonly numLayers: number;
  readonly intermediate: number;
  /** [language] -> tokens counted. */
  readonly tokens: readonly number[];
  /** [language] -> [layer * intermediate + neuron] -> tokens on which it fired. */
  readonly fired: readonly Float32Array[];
}

export interface LayerStatistic {
  readonly layer: number;
  /** Per language (in `languages` order): active neurons. */
  readonly active: readonly number[];
  /** Per language: active / intermediate. */
  readonly share: readonly number[];
  /** Per language: |A ∩ A_en| / |A_en|. */
  readonly overlap: readonly number[];
  readonly msdShare: number;
  readonly msdOverlap: number;
  readonly score: number;
}

export interface LayerAnalysis {
  readonly languages: readonly string[];
  readonly threshold: number;
  readonly k: number;
  readonly intermediate: number;
  readonly promptsPerLanguage: Readonly<Record<string, number>>;
  readonly tokensPerLanguage: Readonly<Record<string, number>>;
  readonly layers: readonly LayerStatistic[];
  /** The k most language-specific layers, ascending. */
  readonly chosenLayers: readonly number[];
}

function msd(xs: readonly number[]): number {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return xs.reduce((a, x) => a + (x - mean) ** 2, 0) / xs.length;
}

/** The statistic of the module doc from activation counts (pure; unit-tested by hand). */
export function layerStatistics(
  counts: ActivationCounts,
  threshold: number,
  k: number,
): Omit<LayerAnalysis, 'promptsPerLanguage'> {
  const { languages, numLayers, intermediate: I } = counts;
  const en = languages.indexOf('en');
  if (en < 0) throw new Error('layer analysis: the probe has no English (en)');
  const layers: LayerStatistic[] = [];
  for (let l = 0; l < numLayers; l++) {
    const activeSets = languages.map((_, g) => {
      const set = new Uint8Array(I);
      const tok = counts.tokens[g]!;
      const f = counts.fired[g]!;
      for (let i = 0; i < I; i++) set[i] = tok > 0 && f[l * I + i]! / tok >= threshold ? 1 : 0;
      return set;
    });
    const active = activeSets.map((s) => s.reduce((a, b) => a + b, 0));
    const enSet = activeSets[en]!;
    const enCount = active[en]!;
    const overlap = activeSets.map((s) => {
      if (enCount === 0) return 0;
      let both = 0;
      for (let i = 0; i < I; i++) both += s[i]! & enSet[i]!;
      return both / enCount;
    });
    const share = active.map((a) => a / I);
    const msdShare = msd(share);
    const msdOverlap = msd(overlap);
    layers.push({ layer: l, active, share, overlap, msdShare, msdOverlap, score: msdShare + msdOverlap });
  }
  const chosenLayers = [...layers]
    .sort((a, b) => b.score - a.score || a.layer - b.layer)
    .slice(0, Math.min(k, numLayers))
    .map((x) => x.layer)
    .sort((a, b) => a - b);
  return {
    languages,
    threshold,
    k,
    intermediate: I,
    tokensPerLanguage: Object.fromEntries(languages.map((g, i) => [g, counts.tokens[i]!])),
    layers,
    chosenLayers,
  };
}

export interface AnalyzeOptions {
  readonly model: LlamaModel;
  readonly tokenizer: ModelTokenizer;
  readonly spec: AnalysisSpec;
  readonly rank: number;
  readonly worldSize: number;
  readonly reduce: ReduceFn;
  /** Prompts this rank has run, of its share. */
  readonly onProgress?: (done: number, share: number) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
  /** Problems already read (problems.ts); @default read from spec.probe */
  readonly problems?: readonly Problem[];
}

/** Runs this rank's share of the probe, sums the counts over the ranks, and computes the statistic. */
export async function analyzeLayers(options: AnalyzeOptions): Promise<LayerAnalysis> {
  const { model, tokenizer, spec, rank, worldSize } = options;
  const log = options.logger ?? silentLogger;
  const problems = options.problems ?? (await readProblems(spec.probe));
  const languages = [...new Set(problems.map((p) => p.language))];
  const L = model.config.numHiddenLayers;
  const I = model.config.intermediateSize;
  const stride = 1 + L * I;
  // [language]: [tokens, fired(layer 0, neurons...), fired(layer 1, ...), ...]
  const vec = new Float32Array(languages.length * stride);
  const addBos = tokenizer.addBosDefault;
  const byLanguage = languages.map((g) =>
    problems.filter((p) => p.language === g).filter((_, i) => i % worldSize === rank),
  );
  const share = byLanguage.reduce((n, ps) => n + ps.length, 0);
  let done = 0;
  for (const [g, mine] of byLanguage.entries()) {
    for (let b = 0; b < mine.length; b += spec.batchSize) {
      if (options.signal?.aborted)
        throw options.signal.reason instanceof Error ? options.signal.reason : new Error('analysis aborted');
      const batch = mine
        .slice(b, b + spec.batchSize)
        .map((p) => tokenizer.encode(p.question, { addBos }).slice(0, spec.maxSeqLen));
      const B = batch.length;
      const T = Math.max(...batch.map((x) => x.length));
      // Right padding: a real token never attends to a later pad under the causal mask.
      const ids = new Int32Array(B * T);
      const mask = new Float32Array(B * T);
      batch.forEach((x, r) => {
        ids.set(x, r * T);
        for (let t = addBos ? 1 : 0; t < x.length; t++) mask[r * T + t] = 1;
      });
      const perLayer: tf.Tensor[] = [];
      tf.tidy(() => {
        const m = tf.tensor2d(mask, [1, B * T]);
        model.forwardHidden(tf.tensor2d(ids, [B, T], 'int32'), {
          hooks: {
            gate: (_l, gate) => {
              perLayer.push(tf.keep(tf.matMul(m, tf.cast(tf.greater(gate, 0), 'float32'))));
            },
          },
        });
      });
      const base = g * stride;
      vec[base] = vec[base]! + mask.reduce((a, x) => a + x, 0);
      for (const [l, t] of perLayer.entries()) {
        const fired = (await t.data()) as Float32Array;
        const off = base + 1 + l * I;
        for (let i = 0; i < I; i++) vec[off + i] = vec[off + i]! + fired[i]!;
      }
      tf.dispose(perLayer);
      done += B;
      options.onProgress?.(done, share);
      await new Promise((r) => setImmediate(r));
    }
  }
  const summed = await options.reduce(vec);
  const counts: ActivationCounts = {
    languages,
    numLayers: L,
    intermediate: I,
    tokens: languages.map((_, g) => summed[g * stride]!),
    fired: languages.map((_, g) => summed.subarray(g * stride + 1, (g + 1) * stride)),
  };
  const stats = layerStatistics(counts, spec.threshold, spec.k);
  log.info('layer analysis done', { languages, chosenLayers: stats.chosenLayers });
  return {
    ...stats,
    promptsPerLanguage: Object.fromEntries(languages.map((g) => [g, problems.filter((p) => p.language === g).length])),
  };
}

/**
 * The heatmap: per layer (rows, the lowest at the bottom) and language (columns) the active share
 * and the overlap with English, and the score; each panel its own colour scale, values in the cells.
 */
export function layerHeatmapSpec(a: LayerAnalysis): TopLevelSpec {
  const rowOf = (l: number): string => (a.chosenLayers.includes(l) ? `${l} *` : String(l));
  const rows = [...a.layers].reverse().map((s) => rowOf(s.layer));
  const byLanguage = (values: (s: LayerStatistic) => readonly number[]) =>
    a.layers.flatMap((s) => values(s).map((value, j) => ({ row: rowOf(s.layer), column: a.languages[j]!, value })));
  const maxScore = Math.max(...a.layers.map((s) => s.score));
  return heatmapSpec({
    title: 'Layer analysis: language-specific FFN layers',
    subtitle:
      `* chosen (k = ${a.k}, the highest scores): layers ${a.chosenLayers.join(', ')}; ` +
      `a neuron is active for a language when it fires on >= ${a.threshold} of its prompt tokens`,
    rowTitle: 'layer',
    rows,
    panels: [
      {
        title: 'active share',
        columnTitle: 'language',
        valueTitle: 'active / FFN neurons',
        cells: byLanguage((s) => s.share),
        columns: a.languages,
      },
      {
        title: 'overlap with en',
        columnTitle: 'language',
        valueTitle: "share of en's active",
        cells: byLanguage((s) => s.overlap),
        columns: a.languages,
      },
      {
        title: 'score',
        columnTitle: '',
        valueTitle: 'MSD share + overlap',
        cells: a.layers.map((s) => ({ row: rowOf(s.layer), column: 'score', value: s.score })),
        format: maxScore >= 0.01 ? '.3f' : '.1e',
      },
    ],
  });
}

/** Writes `analysis.json` and the heatmap `analysis.svg` and `analysis.png` into `dir`. */
export async function writeLayerAnalysis(
  dir: string,
  a: LayerAnalysis,
): Promise<{ json: string; svg: string; png: string }> {
  await mkdir(dir, { recursive: true });
  const json = join(dir, 'analysis.json');
  await writeFileAtomically(json, JSON.stringify(a, null, 2) + '\n');
  // Loaded here, not at start-up: vega, vega-lite and resvg take ~200 ms to import, which every
  // worker process would pay while only rank 0 of an analysis draws.
  const { writeChart } = await import('../report/charts.js');
  await writeChart(layerHeatmapSpec(a), join(dir, 'analysis'));
  return { json, svg: join(dir, 'analysis.svg'), png: join(dir, 'analysis.png') };
}

export interface RunLayerAnalysisOptions extends Omit<AnalyzeOptions, 'model' | 'tokenizer'> {
  readonly modelPath: string;
  /** Where rank 0 writes analysis.json, analysis.svg and analysis.png. */
  readonly outputDir: string;
}

/** Loads the model, runs the analysis on every rank, and rank 0 writes its files. */
export async function runLayerAnalysis(options: RunLayerAnalysisOptions): Promise<LayerAnalysis> {
  const model = await LlamaModel.load(options.modelPath);
  try {
    const tokenizer = await ModelTokenizer.load(options.modelPath, model.config);
    const analysis = await analyzeLayers({ ...options, model, tokenizer });
    if (options.rank === 0) await writeLayerAnalysis(options.outputDir, analysis);
    return analysis;
  } finally {
    model.dispose();
  }
}
