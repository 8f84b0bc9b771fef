/**
 * The mini-SLAM experiment's setting: every number that decides its result, in one place
 * (docs/experiments/mini-slam.md explains the choices and what was tried before).
 */
import type { DataSizes } from './data.js';

export interface ModelShape {
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
}

export interface TrainingSetting {
  readonly epochs: number;
  readonly globalBatchSize: number;
  readonly microBatchSize: number;
  readonly lr: number;
}

export interface Setting {
  readonly seed: number;
  readonly sizes: DataSizes;
  readonly model: ModelShape;
  readonly maxSeqLen: number;
  readonly pretrain: TrainingSetting;
  readonly tune: TrainingSetting;
  /** Layers SLAM trains: the analysis picks this many (`auto`), and the fixed arms take as many. */
  readonly k: number;
  readonly evalMaxNewTokens: number;
  readonly workers: number;
}

export const SETTING: Setting = {
  seed: 42,
  sizes: {
    pretrainEnglish: 4000,
    pretrainPlain: 300,
    tune: 150,
    test: 50,
    probe: 30,
    ranges: { addSub: [10, 59], addend: [1, 39], mul: [2, 9] },
  },
  model: { hidden: 128, intermediate: 384, layers: 8, heads: 4, kvHeads: 2 },
  maxSeqLen: 96,
  pretrain: { epochs: 3, globalBatchSize: 32, microBatchSize: 16, lr: 3e-3 },
  tune: { epochs: 3, globalBatchSize: 32, microBatchSize: 16, lr: 3e-3 },
  k: 2,
  evalMaxNewTokens: 32,
  workers: 2,
};

/** A quick look at the pipeline (`--trial`): the same shape, a fraction of the data. */
export function trialSetting(s: Setting): Setting {
  return {
    ...s,
    sizes: { ...s.sizes, pretrainEnglish: 400, pretrainPlain: 40, tune: 16, test: 10, probe: 8 },
    pretrain: { ...s.pretrain, epochs: 1 },
    tune: { ...s.tune, epochs: 1 },
  };
}
