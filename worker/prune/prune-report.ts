/** What `output.dir/prune-report.json` holds (worker/prune/run-prune.ts writes it). */
import type { PruneModule, PruneRule } from '../../common/prune-spec.js';

export interface ModuleSparsity {
  readonly module: PruneModule;
  readonly rows: number;
  readonly columns: number;
  readonly zeros: number;
  /** zeros / (rows * columns). */
  readonly sparsity: number;
}

export interface LayerFeatures {
  /** The hidden dimensions with the largest norm during translation, largest first. */
  readonly top: readonly number[];
  /** Their norms: mean over the calibration samples of the dimension's L2 norm over the sample's tokens. */
  readonly norms: readonly number[];
  /** With `contrast`: the same norm over the contrast samples. */
  readonly contrastNorms?: readonly number[];
  /** With `contrast`: norms / contrastNorms. */
  readonly ratio?: readonly number[];
}

export interface PruneLayerReport {
  readonly layer: number;
  /** Whether the layer was pruned (`prune.layers`). */
  readonly pruned: boolean;
  readonly modules: readonly ModuleSparsity[];
  /** The layer's input (the residual stream entering it). */
  readonly features: LayerFeatures;
  readonly seconds: number;
}

/** `output.dir/prune-report.json`. */
export interface PruneReport {
  readonly rule: PruneRule;
  readonly calibrationSamples: number;
  readonly calibrationTokens: number;
  readonly contrastSamples: number;
  readonly topK: number;
  readonly worldSize: number;
  readonly layers: readonly PruneLayerReport[];
  /** zeros / weights over every pruned module. */
  readonly overallSparsity: number;
  readonly seconds: number;
}
