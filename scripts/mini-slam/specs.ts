/**
 * The job specs of the mini-SLAM experiment, as objects (written as YAML beside the run and submitted
 * with `coordinator submit SPEC --local-workers N --watch`). Paths are absolute.
 */
import type { Setting, TrainingSetting } from './setting.js';

type Spec = Record<string, unknown>;

export interface Paths {
  readonly data: string;
  readonly test: string;
  readonly probe: string;
}

/** The arms, in the table's order. */
export const ARMS = ['none', 'slam-auto', 'slam-low', 'high', 'full', 'two-stage'] as const;
export type Arm = (typeof ARMS)[number];

export const ARM_TITLES: Record<Arm, string> = {
  none: '(a) no tuning',
  'slam-auto': '(b) SLAM, layers auto',
  'slam-low': '(c) SLAM, low layers',
  high: '(d) high layers, same budget',
  full: '(e) full fine-tuning',
  'two-stage': '(f) two-stage',
};

function training(t: TrainingSetting, seed: number): Spec {
  return {
    epochs: t.epochs,
    globalBatchSize: t.globalBatchSize,
    microBatchSize: t.microBatchSize,
    optimizer: { name: 'adamw', lr: t.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 },
    schedule: { name: 'cosine', warmupRatio: 0.05 },
    gradClip: 1.0,
    seed,
  };
}

function job(kind: string, name: string, spec: Spec): Spec {
  return { apiVersion: 'polytune/v1', kind, metadata: { name }, spec };
}

/** Pretraining the base model from scratch: every tensor, the tokenized corpus. */
export function pretrainSpec(s: Setting, modelDir: string, pretrainFile: string, outDir: string): Spec {
  return job('TrainJob', 'mini-slam-pretrain', {
    model: { path: modelDir },
    method: { name: 'full' },
    data: {
      train: [{ path: pretrainFile, format: 'tokenized' }],
      template: 'slam',
      maxSeqLen: s.maxSeqLen,
      shuffle: true,
    },
    training: training(s.pretrain, s.seed),
    workers: { count: s.workers },
    checkpoint: { everySteps: 100_000, keep: 1 },
    output: { dir: outDir },
  });
}

function analysis(s: Setting, p: Paths): Spec {
  return {
    probe: [{ mgsm: p.probe, languages: [...LANGS] }],
    k: s.k,
    threshold: 0.5,
    maxSeqLen: s.maxSeqLen,
    batchSize: 16,
  };
}

const LANGS = ['en', 'de', 'fr', 'es', 'ru', 'zh', 'ja', 'th', 'sw', 'bn'] as const;

/** The layer analysis of the base model (its heatmap goes into the doc). */
export function analysisSpec(s: Setting, baseDir: string, p: Paths, outDir: string): Spec {
  return job('LayerAnalysis', 'mini-slam-analysis', {
    model: { path: baseDir },
    analysis: analysis(s, p),
    workers: { count: s.workers },
    output: { dir: outDir },
  });
}

/** The fixed low and high layers of arms (c) and (d): the first and the last k. */
export function lowLayers(s: Setting): number[] {
  return Array.from({ length: s.k }, (_, i) => i);
}
export function highLayers(s: Setting): number[] {
  return Array.from({ length: s.k }, (_, i) => s.model.layers - s.k + i);
}

/** A tuning arm's TrainJob (every arm but `none`): the same data, schedule and seed. */
export function armSpec(arm: Exclude<Arm, 'none'>, s: Setting, baseDir: string, p: Paths, outDir: string): Spec {
  const answers = { path: `${p.data}/tune-answers.jsonl`, format: 'alpaca' };
  const translate = { path: `${p.data}/tune-translate.jsonl`, format: 'alpaca' };
  const data = (train: Spec[]): Spec => ({ train, template: 'slam', maxSeqLen: s.maxSeqLen, shuffle: true });
  const ffn = ['up_proj', 'down_proj'];
  const common = {
    model: { path: baseDir },
    workers: { count: s.workers },
    checkpoint: { everySteps: 100_000, keep: 1 },
  };
  const name = `mini-slam-${arm}`;
  if (arm === 'two-stage') {
    // QAlign-style: question translation first, then the answers; the same records as the other
    // arms, each stage on its task with the arms' schedule.
    return job('TrainJob', name, {
      ...common,
      stages: [
        {
          name: 'question-alignment',
          method: { name: 'full' },
          data: data([translate]),
          training: training(s.tune, s.seed),
        },
        { name: 'answers', method: { name: 'full' }, data: data([answers]), training: training(s.tune, s.seed) },
      ],
      output: { dir: outDir },
    });
  }
  const method =
    arm === 'slam-auto'
      ? { name: 'slam', layers: 'auto', modules: ffn, analysis: analysis(s, p) }
      : arm === 'slam-low'
        ? { name: 'slam', layers: lowLayers(s), modules: ffn }
        : arm === 'high'
          ? { name: 'slam', layers: highLayers(s), modules: ffn }
          : { name: 'full' };
  return job('TrainJob', name, {
    ...common,
    method,
    data: data([answers, translate]),
    training: training(s.tune, s.seed),
    output: { dir: outDir },
  });
}

/** The EvalJob of one arm's model on the held-out problems of every language. */
export function evalSpec(arm: Arm, s: Setting, modelDir: string, p: Paths, outDir: string): Spec {
  return job('EvalJob', `mini-slam-eval-${arm}`, {
    model: { path: modelDir },
    eval: {
      sets: [{ mgsm: p.test, languages: [...LANGS] }],
      template: 'slam',
      maxNewTokens: s.evalMaxNewTokens,
      batchSize: 16,
    },
    workers: { count: s.workers },
    output: { dir: outDir },
  });
}
