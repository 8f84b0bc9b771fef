/**
 * A PruneJob's rank: Wanda, layer by layer, calibrated on translation demonstrations (Kim et al.
 * 2024; `prune_wanda_with_mt`), spread over the ranks with a result that does not depend on how
 * many there are.
 *
 * For decoder layer l: each rank runs layer l on each of its calibration samples alone (sample s
 * is rank s mod worldSize's; its hidden state entering layer l is kept on the rank from layer
 * l-1), and the `linearInput` hooks give, per sample, the sum over its tokens of x_j^2 for the
 * four distinct inputs of the layer's projections (q/k/v share one, gate/up share one; o_proj's,
 * down_proj's), plus the same of the layer's input (the residual stream) for the feature
 * analysis. These per-sample float32 vectors are exchanged, not summed: each rank writes its
 * samples' rows of one [samples x width] vector and zeros elsewhere, and the collective's sum
 * (float32, in rank order) is then exact, since x + 0 = x. Every rank adds the rows in sample
 * order in float64 (wanda.ts `columnMean`), so every rank, whatever the world size, holds the same
 * statistic to the last bit, decides the same masks (wanda.ts `wandaMask`), zeroes the same
 * weights, and runs layer l again with its pruned weights to get the inputs of layer l+1. A
 * sample's vector is the same whichever rank computes it, since a sample is always run alone.
 *
 * Measured on this machine (bench/prune-layer.ts prints the figures): the exchanged vector is
 * samples x (3H + heads*headDim + I) float32 a layer, 11 MB for 100 samples of a 7B model.
 *
 * A lost rank fails the generation; the re-formed world starts over (PruneJob's row: not
 * resumable, deterministic), and ends with the same model because nothing depends on the world.
 * Rank 0 writes `output.dir/final/` (the whole model in the input's dtypes and shards, zeros in
 * place: a weight that survives is the input's, bit for bit), `output.dir/prune-report.json` and
 * the plot of the features per layer, `output.dir/prune-features.{svg,png}` (features-chart.ts).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { PruneJobSpec } from '../../common/job-kinds.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import type { LlamaConfig } from '../../common/model-config.js';
import { pruneModuleColumns, pruneRule, PRUNE_MODULES, type PruneModule } from '../../common/prune-spec.js';
import { evaluate, type ReduceFn } from '../eval/evaluate.js';
import { readProblems } from '../eval/problems.js';
import type { EvalReport } from '../eval/report.js';
import type { LinearName } from '../model/hooks.js';
import { LlamaModel } from '../model/llama.js';
import { listModelTensors } from '../model/safetensors.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { writeFileAtomically } from '../train/atomic-dir.js';
import { writeFinalOutputsRetrying } from '../train/outputs.js';
import { calibrationSamples } from './calibration.js';
import { pruneFeaturesSpec } from './features-chart.js';
import type { LayerFeatures, ModuleSparsity, PruneLayerReport, PruneReport } from './prune-report.js';

export type { LayerFeatures, ModuleSparsity, PruneLayerReport, PruneReport } from './prune-report.js';
import { applyMask, columnMean, contrastScaler, topK, wandaMask } from './wanda.js';

/** The distinct inputs of a layer's projections, and the layer's own input. */
const GROUPS = ['attn', 'o', 'mlp', 'down', 'hidden'] as const;
type Group = (typeof GROUPS)[number];

const GROUP_OF: Readonly<Record<PruneModule, Group>> = {
  q_proj: 'attn',
  k_proj: 'attn',
  v_proj: 'attn',
  o_proj: 'o',
  gate_proj: 'mlp',
  up_proj: 'mlp',
  down_proj: 'down',
};
/** The hook name whose input is each group's (k/v and up read the same input as q and gate). */
const HOOK_OF: Partial<Record<LinearName, Group>> = {
  'self_attn.q_proj': 'attn',
  'self_attn.o_proj': 'o',
  'mlp.gate_proj': 'mlp',
  'mlp.down_proj': 'down',
};
const MODULE_PATH: Readonly<Record<PruneModule, string>> = {
  q_proj: 'self_attn.q_proj',
  k_proj: 'self_attn.k_proj',
  v_proj: 'self_attn.v_proj',
  o_proj: 'self_attn.o_proj',
  gate_proj: 'mlp.gate_proj',
  up_proj: 'mlp.up_proj',
  down_proj: 'mlp.down_proj',
};

function groupWidths(c: LlamaConfig): Record<Group, number> {
  return {
    attn: c.hiddenSize,
    o: pruneModuleColumns(c, 'o_proj'),
    mlp: c.hiddenSize,
    down: c.intermediateSize,
    hidden: c.hiddenSize,
  };
}

export interface PruneModelOptions {
  readonly model: LlamaModel;
  readonly spec: PruneJobSpec['spec']['prune'];
  /** Calibration samples, then contrast samples, in sample order (the same on every rank). */
  readonly samples: readonly Int32Array[];
  readonly contrastSamples: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly reduce: ReduceFn;
  /** Layers done of all. */
  readonly onLayer?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('pruning aborted');
}

/** Prunes `model` in place on every rank together; returns the report (the same on every rank). */
export async function pruneModel(o: PruneModelOptions): Promise<PruneReport> {
  const t0 = performance.now();
  const { model, spec, samples, rank, worldSize } = o;
  const log = o.logger ?? silentLogger;
  const c = model.config;
  const L = c.numHiddenLayers;
  const rule = pruneRule(spec);
  const selected = new Set(spec.layers ?? Array.from({ length: L }, (_, l) => l));
  const widths = groupWidths(c);
  const offsets = {} as Record<Group, number>;
  let W = 0;
  for (const g of GROUPS) {
    offsets[g] = W;
    W += widths[g];
  }
  const S = samples.length;
  const nBase = S - o.contrastSamples;
  const mine = samples.map((_, s) => s).filter((s) => s % worldSize === rank);
  // This rank's samples' hidden states entering the current layer.
  let hidden = new Map<number, tf.Tensor2D>(mine.map((s) => [s, model.embedSequence(samples[s]!)]));
  const layers: PruneLayerReport[] = [];
  let zerosAll = 0;
  let weightsAll = 0;
  // The current layer's outputs, freed in `finally` too when a reduce or an abort ends the pass.
  let outputs = new Map<number, tf.Tensor2D>();
  try {
    for (let l = 0; l < L; l++) {
      const tl = performance.now();
      const vec = new Float32Array(S * W);
      for (const s of mine) {
        checkAborted(o.signal);
        const x = hidden.get(s)!;
        const sums: { group: Group; t: tf.Tensor1D }[] = [];
        const y = tf.tidy(() => {
          sums.push({ group: 'hidden', t: tf.keep(tf.sum(tf.square(x), 0)) });
          return model.decoderLayer(l, x, {
            linearInput: (_l, name, input) => {
              const g = HOOK_OF[name];
              if (g) sums.push({ group: g, t: tf.keep(tf.sum(tf.square(input), 0)) });
            },
          });
        });
        for (const { group, t } of sums) vec.set(t.dataSync() as Float32Array, s * W + offsets[group]);
        tf.dispose(sums.map((x) => x.t));
        outputs.set(s, y);
        await new Promise((r) => setImmediate(r));
      }
      // Disjoint rows: the float32 sum is an exact exchange of every sample's row.
      const all = await o.reduce(vec);
      const rows = (g: Group, from: number, to: number): Float32Array[] => {
        const out: Float32Array[] = [];
        for (let s = from; s < to; s++) out.push(all.subarray(s * W + offsets[g], s * W + offsets[g] + widths[g]));
        return out;
      };
      const scaler = (g: Group): Float64Array => {
        const base = columnMean(rows(g, 0, nBase), widths[g]);
        return o.contrastSamples > 0 ? contrastScaler(base, columnMean(rows(g, nBase, S), widths[g])) : base;
      };
      const features = layerFeatures(
        rows('hidden', 0, nBase),
        rows('hidden', nBase, S),
        spec.features.topK,
        c.hiddenSize,
      );
      const modules: ModuleSparsity[] = [];
      if (selected.has(l)) {
        const scalers = new Map<Group, Float64Array>();
        for (const m of PRUNE_MODULES.filter((x) => spec.modules.includes(x))) {
          const g = GROUP_OF[m];
          if (!scalers.has(g)) scalers.set(g, scaler(g));
          const name = `model.layers.${l}.${MODULE_PATH[m]}.weight`;
          const t = model.exportTensor(name);
          const [rowsN, cols] = t.shape as [number, number];
          const mask = wandaMask(t.data, rowsN, cols, scalers.get(g)!, rule);
          const zeros = applyMask(t.data, mask);
          model.replaceFrozen(name, t.data);
          modules.push({ module: m, rows: rowsN, columns: cols, zeros, sparsity: zeros / (rowsN * cols) });
          zerosAll += zeros;
          weightsAll += rowsN * cols;
        }
        // Layer l again, with its pruned weights: the inputs of layer l+1.
        tf.dispose([...outputs.values()]);
        outputs.clear();
        for (const s of mine) {
          checkAborted(o.signal);
          outputs.set(s, model.decoderLayer(l, hidden.get(s)!));
          await new Promise((r) => setImmediate(r));
        }
      }
      tf.dispose([...hidden.values()]);
      hidden = outputs;
      outputs = new Map();
      const seconds = (performance.now() - tl) / 1000;
      layers.push({ layer: l, pruned: selected.has(l), modules, features, seconds });
      log.info('pruned layer', { layer: l, pruned: selected.has(l), seconds });
      o.onLayer?.(l + 1, L);
    }
  } finally {
    tf.dispose([...hidden.values(), ...outputs.values()]);
  }
  return {
    rule,
    calibrationSamples: nBase,
    calibrationTokens: samples.slice(0, nBase).reduce((n, x) => n + x.length, 0),
    contrastSamples: o.contrastSamples,
    topK: spec.features.topK,
    worldSize,
    layers,
    overallSparsity: weightsAll > 0 ? zerosAll / weightsAll : 0,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Per dimension, the mean over samples of sqrt(sum of squares) (the authors' hidden_states_analysis). */
function meanNorm(perSample: readonly Float32Array[], H: number): Float64Array {
  const out = new Float64Array(H);
  for (const v of perSample) for (let j = 0; j < H; j++) out[j] = out[j]! + Math.sqrt(v[j]!);
  return out.map((x) => (perSample.length > 0 ? x / perSample.length : 0));
}

function layerFeatures(
  base: readonly Float32Array[],
  other: readonly Float32Array[],
  k: number,
  H: number,
): LayerFeatures {
  const norms = meanNorm(base, H);
  const top = topK(norms, k);
  if (other.length === 0) return { top, norms: top.map((j) => norms[j]!) };
  const on = meanNorm(other, H);
  return {
    top,
    norms: top.map((j) => norms[j]!),
    contrastNorms: top.map((j) => on[j]!),
    ratio: top.map((j) => (on[j]! > 0 ? norms[j]! / on[j]! : Infinity)),
  };
}

export interface RunPruneJobOptions {
  readonly spec: PruneJobSpec;
  readonly rank: number;
  readonly worldSize: number;
  readonly reduce: ReduceFn;
  readonly onLayer?: (done: number, total: number) => void;
  readonly onEvalReport?: (report: EvalReport) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
}

/** Loads the model, evaluates it (with `spec.eval`), prunes it, evaluates it again; rank 0 writes the outputs. */
export async function runPruneJob(o: RunPruneJobOptions): Promise<PruneReport> {
  const s = o.spec.spec;
  const log = o.logger ?? silentLogger;
  const model = await LlamaModel.load(s.model.path);
  try {
    let tokenizer: ModelTokenizer | undefined;
    const tok = async (): Promise<ModelTokenizer> =>
      (tokenizer ??= await ModelTokenizer.load(s.model.path, model.config));
    const base = await calibrationSamples(s.prune.calibration, model.config.vocabSize, tok);
    const contrast = s.prune.contrast ? await calibrationSamples(s.prune.contrast, model.config.vocabSize, tok) : [];
    const problems = s.eval ? await readProblems(s.eval.sets) : [];
    const score = async (name: string): Promise<void> => {
      if (!s.eval) return;
      const report = await evaluate({
        model,
        tokenizer: await tok(),
        spec: s.eval,
        problems,
        rank: o.rank,
        worldSize: o.worldSize,
        reduce: o.reduce,
        outputDir: s.output.dir,
        name,
        step: 0,
        ...(o.signal ? { signal: o.signal } : {}),
        logger: log,
      });
      o.onEvalReport?.(report);
    };
    await score('before');
    const report = await pruneModel({
      model,
      spec: s.prune,
      samples: [...base, ...contrast],
      contrastSamples: contrast.length,
      rank: o.rank,
      worldSize: o.worldSize,
      reduce: o.reduce,
      ...(o.onLayer ? { onLayer: o.onLayer } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      logger: log,
    });
    await score('final');
    if (o.rank === 0) {
      const listing = await listModelTensors(s.model.path);
      await writeFinalOutputsRetrying(
        {
          job: o.spec.metadata.name,
          modelDir: s.model.path,
          outputDir: s.output.dir,
          model,
          trainable: [],
          inputDtypes: new Map([...listing].map(([n, t]) => [n, t.dtype])),
        },
        { logger: log, ...(o.signal ? { signal: o.signal } : {}) },
      );
      await mkdir(s.output.dir, { recursive: true });
      await writeFileAtomically(join(s.output.dir, 'prune-report.json'), JSON.stringify(report, null, 2) + '\n');
      // Loaded here, not at start-up (vega, vega-lite and resvg take ~200 ms to import).
      const { writeChart } = await import('../report/charts.js');
      await writeChart(pruneFeaturesSpec(report), join(s.output.dir, 'prune-features'));
    }
    return report;
  } finally {
    model.dispose();
  }
}
