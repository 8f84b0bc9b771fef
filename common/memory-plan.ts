/**
 * The memory plan of a TrainJob: per worker process, the GPU memory and the host memory it needs,
 * from the model's config.json and the spec alone (a pure function: `coordinator plan`, `submit
 * --dry-run`, the check at submit, and the paper configs' comments all call `planMemory`).
 *
 * ## Activations: constants measured from the real tape
 * A decoder layer keeps, for the backward pass, floats per token of the micro-batch (B x T tokens):
 *
 *   saved   18 h + 7 kv + 2 heads·T + 5 I        (h = hidden width, kv = numKeyValueHeads·headDim)
 *   peak    42 h + 16 kv + 4 heads·T + 11 I      (what is held when the backward pass ends)
 *
 * `saved` is what the tape holds when the forward pass ends: 10 hidden-sized tensors (the layer's
 * input, the two RMSNorms' square, normalised and scaled values, the o_proj and down_proj outputs),
 * 8 query-sized (q, its RoPE halves and products, the rotated q, the grouped q, the heads, their
 * merge), 7 kv-sized (k and its RoPE terms, the transposed k; v and the transposed v), the scores
 * and the softmax probabilities (heads x T^2), and 5 FFN-sized (gate, sigmoid, silu, up, product).
 * The `peak` is larger because tfjs-core's backward pass (`backpropagateGradients` in tape.ts)
 * disposes no intermediate gradient until the whole pass is done: the gradient of every saved
 * tensor is held as well. Measured on the cpu and wasm backends by `npm run bench:memory` (the
 * trainer's call: `tf.variableGrads` of the summed row NLL), per layer as the difference between a
 * 4-layer and a 2-layer model: the cpu backend matches these constants to 0.1%, wasm keeps up to
 * 7% more at the peak (its transposes are materialised in the backward pass). tfjs-node takes the
 * cpu backend's choices (no materialised transposes), and TensorFlow's reshape and identity share
 * their input's buffer as the cpu backend's do.
 *
 * With gradient checkpointing (`training.gradientCheckpointing`) a layer keeps only its input and,
 * once the backward pass reaches it, that input's gradient (2 h a token), and one layer at a time
 * is computed again under its own tape: its whole `peak`, released before the next layer's.
 *
 * ## Other terms
 * - weights: every parameter in float32 (bf16/fp16 checkpoints are widened on load).
 * - trainable weights are `tf.Variable`s in the HF layout, transposed inside the step: the tape
 *   keeps the transposed copy of every trainable matrix (all of them, or one layer's with
 *   checkpointing).
 * - gradients: the micro-batch's weight gradients beside the accumulated ones during the backward
 *   pass (2x), and 3x for the moment the trainer sums them (old sum, new, new sum), when a rank
 *   runs more than one micro-batch a step.
 * - the loss head: the final norm and the supervised rows (16 h a token, as measured) and three
 *   chunks of logits (llama.ts computes 4M floats of logits at a time).
 * - runtime: the CUDA context, TensorFlow and cuDNN's workspaces, an estimate that
 *   `scripts/gpu-check.sh` measures on the node.
 * - host: the optimizer runs on the host (worker/train/optimizers.ts): float32 master copies,
 *   AdamW's two moments, the all-reduce's input and result vectors and its in-flight window. The
 *   load (worker/model/weight-loader.ts) reads one tensor at a time into a host array and uploads
 *   it to the GPU as soon as it is made, so it holds the largest tensor, twice while the garbage
 *   collector frees the one before, and the reader's chunk scratch; not the whole model
 *   (`npm run bench:load-memory` measures it).
 *
 * A plan fits a device when its peak is at most `1 - DEFAULT_MARGIN` of it: TensorFlow's BFC
 * allocator fragments, and kernels take workspaces the plan does not list.
 */
import type { SpecIssue } from './errors.js';
import type { JobSpec } from './jobspec.js';
import type { LlamaConfig } from './model-config.js';
import { expectedTensorShapes } from './model-config.js';
import { methodForCounting, parameterCounts, trainableTensorNames } from './methods/index.js';

export const GiB = 1024 ** 3;
const F32 = 4;

/** Floats per token of a decoder layer, by width (see the module header). */
export interface LayerConstants {
  readonly hidden: number;
  readonly kv: number;
  /** Multiplies heads x T (the scores and probabilities, heads x T^2 per sequence). */
  readonly scores: number;
  readonly ffn: number;
}

/** What the tape holds when the forward pass ends, per layer. */
export const TAPE_SAVED: LayerConstants = { hidden: 18, kv: 7, scores: 2, ffn: 5 };
/** What is held when the backward pass ends (saved tensors and their gradients), per layer. */
export const TAPE_PEAK: LayerConstants = { hidden: 42, kv: 16, scores: 4, ffn: 11 };
/** A checkpointed layer: its input and, in the backward pass, the input's gradient. */
export const CHECKPOINT_FLOATS_PER_TOKEN_HIDDEN = 2;
/** The loss head: final norm and supervised rows, floats per token of hidden width. */
export const HEAD_FLOATS_PER_TOKEN_HIDDEN = 16;
/** llama.ts `HEAD_CHUNK_ELEMS`: logits computed at once; three such chunks live at a time. */
export const HEAD_CHUNK_BYTES = 4 * 1024 * 1024 * F32;
/** CUDA context, TensorFlow, cuDNN workspaces. @default 1.5 GiB */
export const DEFAULT_GPU_RUNTIME_BYTES = 1.5 * GiB;
/** Node.js, tfjs and the worker's own heap. @default 0.5 GiB */
export const DEFAULT_HOST_RUNTIME_BYTES = 0.5 * GiB;
/** The all-reduce's in-flight window (gradient-allreduce.ts `inflightBytes`, 32 MiB) with its reuse pool. */
export const ALLREDUCE_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** The loader's scratch: safetensors.ts `DEFAULT_CHUNK_ELEMS` (1M) float32 and uint16 buffers. */
export const LOAD_SCRATCH_BYTES = 1024 * 1024 * (4 + 2);
/** Share of a device a plan may use. @default 0.1 */
export const DEFAULT_MARGIN = 0.1;

/** A micro-batch's shape. */
export interface BatchShape {
  /** Sequences. */
  readonly batch: number;
  /** Tokens a sequence. */
  readonly seqLen: number;
}

/** Bytes of one decoder layer for a micro-batch, with the given constants. */
export function layerBytes(c: LlamaConfig, shape: BatchShape, k: LayerConstants): number {
  const q = c.numAttentionHeads * c.headDim;
  // The constants were counted with q = hidden: 10 hidden-sized tensors and 8 query-sized of 18.
  const h = (10 * c.hiddenSize + 8 * q) / 18;
  const kv = c.numKeyValueHeads * c.headDim;
  const perToken =
    k.hidden * h + k.kv * kv + k.scores * c.numAttentionHeads * shape.seqLen + k.ffn * c.intermediateSize;
  return F32 * shape.batch * shape.seqLen * perToken;
}

export interface Activations {
  /** Held by the tape when the forward pass ends. */
  readonly saved: number;
  /** Held at the backward pass's peak. */
  readonly peak: number;
}

/** Activation memory of a micro-batch through the whole model, with or without checkpointing. */
export function activationBytes(c: LlamaConfig, shape: BatchShape, checkpointing: boolean): Activations {
  const L = c.numHiddenLayers;
  const tokens = shape.batch * shape.seqLen;
  const head =
    F32 * tokens * HEAD_FLOATS_PER_TOKEN_HIDDEN * c.hiddenSize +
    3 * Math.min(HEAD_CHUNK_BYTES, F32 * tokens * c.vocabSize);
  if (!checkpointing) {
    return { saved: L * layerBytes(c, shape, TAPE_SAVED), peak: L * layerBytes(c, shape, TAPE_PEAK) + head };
  }
  const inputs = F32 * tokens * c.hiddenSize;
  return {
    saved: L * inputs,
    peak: L * CHECKPOINT_FLOATS_PER_TOKEN_HIDDEN * inputs + layerBytes(c, shape, TAPE_PEAK) + head,
  };
}

export interface MemoryPlan {
  readonly shape: BatchShape;
  readonly layers: number;
  readonly checkpointing: boolean;
  readonly parameters: { readonly total: number; readonly trainable: number };
  /** Micro-batches a rank runs each step, with `spec.workers.count` workers. */
  readonly microBatchesPerStep: number;
  readonly gpu: {
    /** The model's weights and the method's own frozen ones (`methodWeights`). */
    readonly weights: number;
    /** Of `weights`: the method's frozen parameters besides the model (LinguaLIFT's encoder). */
    readonly methodWeights: number;
    /** The transposed trainable matrices the tape keeps. */
    readonly trainableTransposes: number;
    /** Accumulated and new weight gradients during the backward pass. */
    readonly gradients: number;
    /** The moment the old sum, the new gradients and the new sum coexist (0 with one micro-batch). */
    readonly gradientSum: number;
    readonly activations: number;
    /** The other setting's activations, for comparison. */
    readonly activationsOtherSetting: number;
    readonly runtime: number;
    readonly peak: number;
  };
  readonly host: {
    /** Held on the host while loading: two of the largest tensor in float32, and the scratch. */
    readonly loadBuffers: number;
    readonly masterCopies: number;
    readonly optimizer: number;
    readonly allReduce: number;
    readonly runtime: number;
    readonly peak: number;
  };
}

export interface PlanOptions {
  /** Override the spec's micro-batch size (to search for one that fits). */
  readonly microBatchSize?: number;
  /** Override the spec's gradient checkpointing. */
  readonly gradientCheckpointing?: boolean;
  /**
   * Frozen parameters a method holds besides the model (LinguaLIFT's encoder: `methodFrozenParameters`),
   * counted with the weights on the device and on the host at load. @default 0
   */
  readonly methodParameters?: number;
}

/** The memory plan of a TrainJob on `config`'s model, per worker process. */
export function planMemory(config: LlamaConfig, spec: JobSpec, options: PlanOptions = {}): MemoryPlan {
  const s = spec.spec;
  const shape: BatchShape = { batch: options.microBatchSize ?? s.training.microBatchSize, seqLen: s.data.maxSeqLen };
  const checkpointing = options.gradientCheckpointing ?? s.training.gradientCheckpointing;
  const counts = parameterCounts(s.method, config);
  const G = F32 * counts.trainable;

  // Trainable product operands (2-D weights), in total and for the largest layer.
  const shapes = expectedTensorShapes(config);
  const method = methodForCounting(s.method, config.numHiddenLayers);
  const names = trainableTensorNames(method, config.numHiddenLayers, [...shapes.keys()]);
  const perLayer = new Map<string, number>();
  let matrices = 0;
  for (const n of names) {
    const dims = shapes.get(n)!;
    if (dims.length !== 2) continue;
    const bytes = F32 * dims[0]! * dims[1]!;
    matrices += bytes;
    const layer = /^model\.layers\.(\d+)\./.exec(n)?.[1] ?? n;
    perLayer.set(layer, (perLayer.get(layer) ?? 0) + bytes);
  }
  const trainableTransposes = checkpointing ? Math.max(0, ...perLayer.values()) : matrices;

  const perRank = Math.ceil(s.training.globalBatchSize / s.workers.count);
  const microBatchesPerStep = Math.ceil(perRank / shape.batch);
  const act = activationBytes(config, shape, checkpointing);
  const other = activationBytes(config, shape, !checkpointing);
  const methodWeights = F32 * (options.methodParameters ?? 0);
  const weights = F32 * counts.total + methodWeights;
  const gradients = (microBatchesPerStep > 1 ? 2 : 1) * G;
  const gradientSum = microBatchesPerStep > 1 ? 3 * G : 0;
  const runtime = DEFAULT_GPU_RUNTIME_BYTES;
  const backward = act.peak + trainableTransposes + gradients;
  const gpuPeak = weights + runtime + Math.max(backward, gradientSum);

  const optimizer = s.training.optimizer.name === 'adamw' ? 2 * G : 0;
  const allReduce = 2 * G + ALLREDUCE_INFLIGHT_BYTES;
  const hostRuntime = DEFAULT_HOST_RUNTIME_BYTES;
  const largestTensor = Math.max(...[...shapes.values()].map((d) => F32 * d.reduce((a, b) => a * b, 1)));
  const loadBuffers = 2 * largestTensor + LOAD_SCRATCH_BYTES;
  return {
    shape,
    layers: config.numHiddenLayers,
    checkpointing,
    parameters: counts,
    microBatchesPerStep,
    gpu: {
      weights,
      methodWeights,
      trainableTransposes,
      gradients,
      gradientSum,
      activations: act.peak,
      activationsOtherSetting: other.peak,
      runtime,
      peak: gpuPeak,
    },
    host: {
      loadBuffers,
      masterCopies: G,
      optimizer,
      allReduce,
      runtime: hostRuntime,
      peak: loadBuffers + G + optimizer + allReduce + hostRuntime,
    },
  };
}

/** "25.1 GiB". */
export function gib(bytes: number): string {
  return `${(bytes / GiB).toFixed(1)} GiB`;
}

/** Whether `bytes` fits a device of `deviceGiB` with the margin. */
export function fitsDevice(bytes: number, deviceGiB: number, margin = DEFAULT_MARGIN): boolean {
  return bytes <= (1 - margin) * deviceGiB * GiB;
}

/** The plan as lines for a terminal (`coordinator plan`, `submit --dry-run`). */
export function formatMemoryPlan(
  p: MemoryPlan,
  devices: { gpuMemoryGiB?: number; hostMemoryGiB?: number } = {},
): string[] {
  const row = (label: string, bytes: number, note = ''): string =>
    `    ${label.padEnd(34)}${gib(bytes).padStart(10)}${note ? `  ${note}` : ''}`;
  const g = p.gpu;
  const h = p.host;
  const verdict = (peak: number, device: number | undefined): string => {
    if (device === undefined) return '';
    const ok = fitsDevice(peak, device);
    const usable = gib((1 - DEFAULT_MARGIN) * device * GiB);
    return `${ok ? 'fits' : 'does NOT fit'} ${device} GiB with a ${100 * DEFAULT_MARGIN}% margin (${usable} usable)`;
  };
  const setting = p.checkpointing ? 'on' : 'off';
  return [
    `memory plan per worker: micro-batch ${p.shape.batch} x ${p.shape.seqLen} tokens, ${p.layers} layers, ` +
      `gradient checkpointing ${setting}, ${p.microBatchesPerStep} micro-batches a step`,
    '  GPU (float32):',
    row('weights', g.weights, `${(p.parameters.total / 1e9).toFixed(2)}B parameters x 4 B`),
    ...(g.methodWeights > 0 ? [row("  of which the method's own (encoder)", g.methodWeights)] : []),
    row(
      'trainable transposes on the tape',
      g.trainableTransposes,
      p.checkpointing ? 'one layer at a time' : 'every trainable matrix',
    ),
    row('gradients (accumulated + new)', g.gradients),
    row(
      'activations',
      g.activations,
      `with checkpointing ${setting}; ${p.checkpointing ? 'off' : 'on'}: ${gib(g.activationsOtherSetting)}`,
    ),
    row('runtime (CUDA, TensorFlow, cuDNN)', g.runtime),
    row('summing gradients (3 copies)', g.gradientSum, 'a moment of its own, after the backward pass'),
    row('peak', g.peak, verdict(g.peak, devices.gpuMemoryGiB)),
    '  host:',
    row('load buffers', h.loadBuffers, 'the largest tensor twice, read scratch'),
    row('master copies', h.masterCopies),
    row('optimizer state', h.optimizer),
    row('all-reduce buffers', h.allReduce, 'input and result vectors, in-flight window'),
    row('runtime (Node.js, tfjs)', h.runtime),
    row('peak', h.peak, verdict(h.peak, devices.hostMemoryGiB)),
  ];
}

/**
 * Issues (with field paths) when the plan exceeds `spec.workers.gpuMemoryGiB` or `hostMemoryGiB`,
 * each with the numbers and the fix: checkpointing, a smaller micro-batch, or a larger device.
 */
export function memoryFitIssues(config: LlamaConfig, spec: JobSpec, methodParameters = 0): SpecIssue[] {
  const w = spec.spec.workers;
  const issues: SpecIssue[] = [];
  if (w.gpuMemoryGiB === undefined && w.hostMemoryGiB === undefined) return issues;
  const plan = planMemory(config, spec, { methodParameters });
  if (w.gpuMemoryGiB !== undefined && !fitsDevice(plan.gpu.peak, w.gpuMemoryGiB)) {
    const g = plan.gpu;
    const parts =
      `weights ${gib(g.weights)}, activations ${gib(g.activations)}, ` +
      `gradients ${gib(Math.max(g.gradients, g.gradientSum))}`;
    const usable = gib((1 - DEFAULT_MARGIN) * w.gpuMemoryGiB * GiB);
    issues.push({
      path: 'spec.workers.gpuMemoryGiB',
      message:
        `the plan needs ${gib(g.peak)} of GPU memory a worker (${parts}), over ${usable} ` +
        `(${w.gpuMemoryGiB} GiB less a ${100 * DEFAULT_MARGIN}% margin); ${gpuFix(config, spec, w.gpuMemoryGiB)}`,
    });
  }
  if (w.hostMemoryGiB !== undefined && !fitsDevice(plan.host.peak, w.hostMemoryGiB)) {
    const h = plan.host;
    const rest = gib(h.peak - h.loadBuffers - h.runtime);
    issues.push({
      path: 'spec.workers.hostMemoryGiB',
      message:
        `the plan needs ${gib(h.peak)} of host memory a worker (load buffers ${gib(h.loadBuffers)}, ` +
        `master copies, optimizer and all-reduce ${rest}), over ` +
        `${gib((1 - DEFAULT_MARGIN) * w.hostMemoryGiB * GiB)}; ` +
        'give each worker process more memory (fewer processes a pod) or train fewer tensors',
    });
  }
  return issues;
}

/** The first change that makes the plan fit `deviceGiB`, said as a fix. */
function gpuFix(config: LlamaConfig, spec: JobSpec, deviceGiB: number): string {
  const t = spec.spec.training;
  const fits = (o: PlanOptions): MemoryPlan | undefined => {
    const p = planMemory(config, spec, o);
    return fitsDevice(p.gpu.peak, deviceGiB) ? p : undefined;
  };
  const largest = (checkpointing: boolean): { b: number; p: MemoryPlan } | undefined => {
    for (let b = t.microBatchSize; b >= 1; b--) {
      const p = fits({ microBatchSize: b, gradientCheckpointing: checkpointing });
      if (p) return { b, p };
    }
    return undefined;
  };
  if (!t.gradientCheckpointing) {
    const on = fits({ gradientCheckpointing: true });
    if (on) return `set spec.training.gradientCheckpointing: true (${gib(on.gpu.peak)})`;
  }
  const smaller = largest(t.gradientCheckpointing);
  if (smaller && smaller.b < t.microBatchSize) {
    return `lower spec.training.microBatchSize to ${smaller.b} (${gib(smaller.p.gpu.peak)})`;
  }
  const both = largest(true);
  if (both) {
    return (
      `set spec.training.gradientCheckpointing: true and ` +
      `spec.training.microBatchSize: ${both.b} (${gib(both.p.gpu.peak)})`
    );
  }
  const min = planMemory(config, spec, { microBatchSize: 1, gradientCheckpointing: true });
  return (
    `even with checkpointing and micro-batch 1 it needs ` +
    `${gib(min.gpu.peak)}: use a larger GPU or train fewer tensors`
  );
}
