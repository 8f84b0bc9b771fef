/**
 * `npm run bench:memory -- [--backend wasm,cpu] [--config config.json --batch B --seq T]`: what the
 * gradient tape really holds, against the memory plan (common/memory-plan.ts).
 *
 * A training step is the trainer's call: `tf.variableGrads` of the summed row NLL
 * (`model.nllRowSums`), with layer 0's up/down projections trainable (SLAM's lowest layer). The
 * bytes held are counted by data buffer (a tensor and its clones, reshapes and shared identities
 * count once), as the engine registers and frees them, so the peak inside the backward pass is seen
 * too. Per layer = the difference between a 4-layer and a 2-layer model of the same shapes, so the
 * embedding, the loss head and the trainable layer cancel out.
 *
 * Without `--config`: three small shapes (one with GQA), each with and without gradient
 * checkpointing, on every backend listed (default wasm and cpu). It prints one JSON object:
 *
 *   runs[]: { backend, shape, checkpointing,
 *             perLayerSaved { measured, planned, ratio }   held when the forward pass ends
 *             perLayerPeak  { measured, planned, ratio }   held when the backward pass ends
 *             stepPeak      { measured, planned, ratio }   the 4-layer step's peak above the weights
 *                                                         (activations, trainable transposes, gradients) }
 *   maxDeviation: the largest |ratio - 1| (the plan's target: <= 0.15)
 *
 * With `--config` (scripts/gpu-check.sh, on a GPU with `--backend tensorflow`): that model's shapes
 * cut to 2 and 4 layers, one micro-batch of B x T, and in addition the step's seconds scaled to the
 * model's depth, and the plan of the whole model.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import {
  activationBytes,
  CHECKPOINT_FLOATS_PER_TOKEN_HIDDEN,
  DEFAULT_GPU_RUNTIME_BYTES,
  layerBytes,
  TAPE_PEAK,
  TAPE_SAVED,
} from '../common/memory-plan.js';
import { expectedTensorShapes, parseLlamaConfig, type LlamaConfig } from '../common/model-config.js';
import { BackendName, initBackend } from '../worker/backend.js';
import { LlamaModel } from '../worker/model/llama.js';
import { BufferMeter } from './buffer-meter.js';

interface Shape {
  name: string;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  batch: number;
  seq: number;
}

const SHAPES: Shape[] = [
  { name: 'h128-mha-t128-b2', hidden: 128, intermediate: 344, heads: 4, kvHeads: 4, vocab: 512, batch: 2, seq: 128 },
  { name: 'h128-gqa8/2-t96-b2', hidden: 128, intermediate: 352, heads: 8, kvHeads: 2, vocab: 512, batch: 2, seq: 96 },
  { name: 'h256-mha-t64-b1', hidden: 256, intermediate: 688, heads: 4, kvHeads: 4, vocab: 512, batch: 1, seq: 64 },
];

const c4of = (s: Shape): LlamaConfig => shapeConfig(s, 4);

function shapeConfig(s: Shape, layers: number): LlamaConfig {
  return parseLlamaConfig({
    model_type: 'llama',
    vocab_size: s.vocab,
    hidden_size: s.hidden,
    intermediate_size: s.intermediate,
    num_hidden_layers: layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    max_position_embeddings: Math.max(2048, s.seq),
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
  });
}

/** Deterministic small weights, cheap to make for a large model (norms are ones). */
function makeModel(config: LlamaConfig, checkpointing: boolean): LlamaModel {
  const tensors = [...expectedTensorShapes(config)].map(([name, shape]) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('norm.weight')) data.fill(1);
    else for (let i = 0; i < data.length; i++) data[i] = 0.02 * Math.sin(i * 12.9898 + name.length);
    return { name, shape, data };
  });
  const trainable = new Set(['model.layers.0.mlp.up_proj.weight', 'model.layers.0.mlp.down_proj.weight']);
  return LlamaModel.fromTensors(config, tensors, { trainable, gradientCheckpointing: checkpointing });
}

interface StepMeasure {
  /** Held when the forward pass ends, above what was held before the step. */
  saved: number;
  /** The step's peak above what was held before it. */
  peak: number;
  seconds: number;
}

/** One training step of a micro-batch, measured (after one unmeasured step when `warm`). */
function measureStep(meter: BufferMeter, model: LlamaModel, batch: number, seq: number, warm: boolean): StepMeasure {
  const vars = model.trainableNames.map((n) => model.variable(n));
  const V = model.config.vocabSize;
  const ids = new Int32Array(batch * seq).map((_, i) => (i * 7919 + 13) % V);
  const step = (): StepMeasure => {
    const base = meter.live;
    meter.peak = base;
    let saved = 0;
    const t0 = performance.now();
    tf.tidy(() => {
      const x = tf.tensor2d(ids, [batch, seq], 'int32');
      const r = tf.variableGrads(() => {
        const loss = tf.sum(model.nllRowSums(x, x)) as tf.Scalar;
        saved = meter.live - base;
        return loss;
      }, vars);
      for (const g of Object.values(r.grads)) g.dataSync();
    });
    return { saved, peak: meter.peak - base, seconds: (performance.now() - t0) / 1000 };
  };
  if (warm) step();
  return step();
}

const compare = (measured: number, planned: number): { measured: number; planned: number; ratio: number } => ({
  measured,
  planned: Math.round(planned),
  ratio: Number((measured / planned).toFixed(4)),
});

/** 2- and 4-layer models of `shape`: per-layer figures and the 4-layer step against the plan. */
function run(meter: BufferMeter, backend: string, shape: Shape, checkpointing: boolean, warm: boolean) {
  const [m2, m4] = [2, 4].map((layers) => {
    const model = makeModel(shapeConfig(shape, layers), checkpointing);
    try {
      return measureStep(meter, model, shape.batch, shape.seq, warm);
    } finally {
      model.dispose();
    }
  }) as [StepMeasure, StepMeasure];
  const c4 = shapeConfig(shape, 4);
  const bs = { batch: shape.batch, seqLen: shape.seq };
  const input = 4 * shape.batch * shape.seq * shape.hidden;
  const plannedSaved = checkpointing ? input : layerBytes(c4, bs, TAPE_SAVED);
  const plannedPeak = checkpointing ? CHECKPOINT_FLOATS_PER_TOKEN_HIDDEN * input : layerBytes(c4, bs, TAPE_PEAK);
  // The step above the weights: activations, the transposed trainable matrices, their gradients.
  const trainable = 4 * 2 * shape.hidden * shape.intermediate;
  const plannedStep = activationBytes(c4, bs, checkpointing).peak + 2 * trainable;
  return {
    backend,
    shape: shape.name,
    checkpointing,
    perLayerSaved: compare((m4.saved - m2.saved) / 2, plannedSaved),
    perLayerPeak: compare((m4.peak - m2.peak) / 2, plannedPeak),
    stepPeak: compare(m4.peak, plannedStep),
    seconds: { layers2: Number(m2.seconds.toFixed(3)), layers4: Number(m4.seconds.toFixed(3)) },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      backend: { type: 'string', default: 'wasm,cpu' },
      config: { type: 'string' },
      batch: { type: 'string', default: '1' },
      seq: { type: 'string', default: '1024' },
      checkpointing: { type: 'boolean' },
    },
  });
  const backends = values.backend.split(',').map((b) => {
    if (!(b in BackendName)) throw new Error(`--backend ${b}: expected wasm, cpu or tensorflow`);
    return b as BackendName;
  });
  const meter = new BufferMeter();
  if (values.config) {
    const full = parseLlamaConfig(JSON.parse(readFileSync(values.config, 'utf8')), values.config);
    const shape: Shape = {
      name: values.config,
      hidden: full.hiddenSize,
      intermediate: full.intermediateSize,
      heads: full.numAttentionHeads,
      kvHeads: full.numKeyValueHeads,
      vocab: full.vocabSize,
      batch: Number(values.batch),
      seq: Number(values.seq),
    };
    const checkpointing = values.checkpointing === true;
    await initBackend(backends[0]);
    const r = run(meter, backends[0]!, shape, checkpointing, true);
    const L = full.numHiddenLayers;
    const perLayerSeconds = (r.seconds.layers4 - r.seconds.layers2) / 2;
    const bs = { batch: shape.batch, seqLen: shape.seq };
    process.stdout.write(
      JSON.stringify(
        {
          ...r,
          layers: L,
          stepSecondsScaled: Number((r.seconds.layers4 + (L - 4) * perLayerSeconds).toFixed(3)),
          activationsPlanned: Math.round(activationBytes(full, bs, checkpointing).peak),
          activationsScaled: Math.round(r.stepPeak.measured + (L - 4) * r.perLayerPeak.measured),
          // What the GPU should hold for the 4-layer step (gpu-check.sh compares nvidia-smi's peak with it).
          gpuPlanned4Layers: Math.round(
            4 * [...expectedTensorShapes(c4of(shape))].reduce((n, [, d]) => n + d.reduce((a, b) => a * b, 1), 0) +
              r.stepPeak.planned +
              DEFAULT_GPU_RUNTIME_BYTES,
          ),
        },
        null,
        2,
      ) + '\n',
    );
    return;
  }
  const runs = [];
  for (const backend of backends) {
    await initBackend(backend);
    for (const shape of SHAPES)
      for (const checkpointing of [false, true]) runs.push(run(meter, backend, shape, checkpointing, false));
  }
  const ratios = runs.flatMap((r) => [r.perLayerSaved.ratio, r.perLayerPeak.ratio, r.stepPeak.ratio]);
  const maxDeviation = Math.max(...ratios.map((x) => Math.abs(x - 1)));
  process.stdout.write(
    JSON.stringify({ runs, maxDeviation: Number(maxDeviation.toFixed(4)), target: 0.15 }, null, 2) + '\n',
  );
}

await main();
