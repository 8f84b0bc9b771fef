/**
 * The LLaMA-family decoder (LLaMA, Mistral, Qwen2) in TensorFlow.js, float32, following HF
 * transformers' `modeling_llama.py` op for op:
 *
 *   x = embed_tokens[ids]
 *   per layer:  h = RMSNorm(x);  x = x + o_proj(Attention(RoPE(q_proj h), RoPE(k_proj h), v_proj h))
 *               h = RMSNorm(x);  x = x + down_proj(silu(gate_proj h) * up_proj h)
 *   logits = lm_head(RMSNorm(x))          (lm_head = embed_tokens when tied)
 *
 * Layouts. On wasm a product with a transpose flag is 10-40x slower than a plain one (see
 * matmul.ts), so frozen projection weights are stored transposed, [in, out], once at load, and
 * applied as plain `matMul(x, Wt)`; trainable ones are `tf.Variable`s in the HF layout [out, in]
 * (what the trainer all-reduces, checkpoints and exports) and are transposed inside the step.
 * Activations are kept as 2-D [B*T, hidden] between layers so that every projection is one
 * matMul; keys are produced directly in the [B, kvHeads, D, T] layout the score product needs. Every op between a trainable parameter and the loss has a gradient that runs on the wasm
 * backend: row gathers go through `gatherRows` (gradient = ScatterNd), and the loss head is a
 * custom-gradient op that never materialises a one-hot tensor.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ModelLoadError, UserError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { checkSequenceLength, expectedTensorShapes, layerTensorName, readLlamaConfig, type LlamaConfig } from '../../common/model-config.js';
import './gradients.js';
import { matMul, matMulTransposeB, transposeLast } from './matmul.js';
import { ropeTables } from './rope.js';
import { FloatDtype, listModelTensors, readModelTensorChunks, type NamedTensor } from './safetensors.js';

/** The label value that takes no loss, as in HF / PyTorch's CrossEntropyLoss. */
export const IGNORE_INDEX = -100;

/** Additive attention-mask value for a masked key: exp(-1e9 - max) is exactly 0 in float32. */
export const MASKED = -1e9;

/**
 * Logits of the loss head computed at once (rows x vocab floats): 16 MiB of them, 131 rows of a
 * 32000-token vocabulary. Smaller chunks cost no speed (the product's rows are independent); the
 * whole [tokens, vocab] would be 65 MB for 512 tokens of 32000, 266 MB of Llama-3's 128256.
 */
const HEAD_CHUNK_ELEMS = 4 * 1024 * 1024;

/** Per layer, keys and values after RoPE, [B, numKeyValueHeads, length, headDim]. */
export interface KvCache {
  readonly k: readonly tf.Tensor4D[];
  readonly v: readonly tf.Tensor4D[];
  /** Positions (columns) already in the cache, padding included. */
  readonly length: number;
}

export interface ForwardOptions {
  /** Position ids [B*T], row-major; @default 0..T-1 for every row (after the cache length) */
  positions?: Int32Array;
  /**
   * Additive mask broadcastable to [B, numKeyValueHeads, groups, T, cacheLength + T]: 0 where a
   * query may attend, `MASKED` elsewhere. @default causal
   */
  mask?: tf.Tensor;
  /** Keys and values of earlier positions; the result then carries the extended cache. */
  cache?: KvCache;
  /** Return the extended cache (also when `cache` is absent: a prefill). @default !!cache */
  returnCache?: boolean;
  /**
   * Sees each layer's FFN gate pre-activation [B*T, intermediate] (SiLU(gate) > 0 exactly when
   * gate > 0), inside the caller's tidy scope: for the layer analysis (worker/methods/layer-analysis.ts).
   */
  onGate?: (layer: number, gate: tf.Tensor2D) => void;
}

export interface ForwardResult {
  /** The final-norm hidden states, [B*T, hiddenSize]. */
  hidden: tf.Tensor2D;
  cache?: KvCache;
}

export interface LoadOptions {
  /** HF names of the parameters that train: they become trainable `tf.Variable`s. @default none */
  trainable?: ReadonlySet<string>;
  logger?: Logger;
  /** Logits of the loss head computed at once, in floats. @default HEAD_CHUNK_ELEMS (4M) */
  lossHead?: { chunkElems?: number };
  /**
   * Under a gradient tape, each decoder layer keeps only its input and is computed again in the
   * backward pass (`training.gradientCheckpointing`): the activations held for the backward pass
   * shrink from all of every layer's to one layer's, for one more forward pass. @default false
   */
  gradientCheckpointing?: boolean;
  /**
   * The longest sequence that will be run (a job's maxSeqLen): refused at load when the model
   * cannot compute it exactly (longer than a sliding window). @default not checked at load
   */
  maxSeqLen?: number;
  /** Elements read from the files at a time while loading. @default DEFAULT_CHUNK_ELEMS (1M) */
  chunkElems?: number;
}

/** Where one tensor's data goes while it is loaded, chunk by chunk. */
interface TensorSink {
  /** Elements of the tensor. */
  readonly size: number;
  /** Copies `data`, whole rows of the HF layout starting at element `start`. */
  write(start: number, data: Float32Array): void;
  /** Hands the finished tensor to the model. */
  finish(): void;
  /** Frees what was allocated (after an error). */
  abort(): void;
}

/** What the loader uses of the wasm backend: allocate a tensor, and view its heap memory. */
interface HeapBackend {
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

function heapBackend(): HeapBackend | undefined {
  if (tf.getBackend() !== 'wasm') return undefined;
  const b = tf.backend() as unknown as Partial<HeapBackend>;
  return typeof b.makeOutput === 'function' && typeof b.typedArrayFromHeap === 'function' ? (b as HeapBackend) : undefined;
}

/**
 * Copies rows [r0, r0 + k) of a row-major [rows, cols] matrix (`src`, k*cols values) into `dst`,
 * the [cols, rows] transpose, in cache-friendly blocks.
 */
function transposeRowsInto(src: Float32Array, r0: number, rows: number, cols: number, dst: Float32Array): void {
  const k = src.length / cols;
  const BS = 64;
  for (let c0 = 0; c0 < cols; c0 += BS) {
    const c1 = Math.min(cols, c0 + BS);
    for (let i0 = 0; i0 < k; i0 += BS) {
      const i1 = Math.min(k, i0 + BS);
      for (let c = c0; c < c1; c++) {
        const o = c * rows + r0;
        for (let i = i0; i < i1; i++) dst[o + i] = src[i * cols + c]!;
      }
    }
  }
}

/**
 * `table[indices]` along axis 0, with a gradient for `table` that runs on every backend:
 * ScatterNd (which sums duplicate indices) instead of UnsortedSegmentSum, which wasm lacks.
 */
export function gatherRows(table: tf.Tensor2D, indices: tf.Tensor1D): tf.Tensor2D {
  const shape = table.shape;
  return customOp([table, indices], ([t, idx], save) => {
    save([idx!]);
    return {
      value: tf.gather(t!, idx!),
      gradFunc: (dy, [i]) => [tf.scatterND(tf.expandDims(i!, 1), dy, shape), tf.zerosLike(i!)],
    };
  }) as tf.Tensor2D;
}

type CustomOpForward = (
  inputs: tf.Tensor[],
  save: tf.GradSaveFunc,
) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[] };

/**
 * `tf.customGrad` with typed inputs: `forward` runs untaped and returns the value and a gradient
 * function giving one gradient per input. Tensors the gradient needs must go through `save`
 * (anything else created in the forward pass may be disposed before the backward pass runs).
 */
function customOp(inputs: tf.Tensor[], forward: CustomOpForward): tf.Tensor {
  const f = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const r = forward(args.slice(0, -1) as tf.Tensor[], save);
    return { value: r.value, gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => r.gradFunc(dy as tf.Tensor, saved) };
  });
  return f(...inputs);
}

/** What every decoder layer of one forward pass reads besides its input. */
interface LayerContext {
  readonly B: number;
  readonly T: number;
  /** Positions already in the cache. */
  readonly past: number;
  /** RoPE tables [rows, T, 1, D]; the Q ones carry the 1/sqrt(D) attention scale. */
  readonly cos: tf.Tensor;
  readonly sin: tf.Tensor;
  readonly cosQ: tf.Tensor;
  readonly sinQ: tf.Tensor;
  /** Additive attention mask, broadcast to [B, nKV, groups, T, past + T]. */
  readonly mask: tf.Tensor;
  readonly cache?: KvCache;
  readonly onGate?: (layer: number, gate: tf.Tensor2D) => void;
}

/**
 * The gradients of `f` at `xs` for the upstream gradient `dy`, computed inside another gradient
 * computation's backward pass. tfjs keeps one tape: a gradient computation started at depth 0
 * (which a backward pass is) replaces it and clears it when done, so the outer tape is put back.
 */
function nestedGradients(f: () => tf.Tensor, xs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  const engine = tf.engine();
  const outer = engine.state.activeTape;
  try {
    const { value, grads } = engine.gradients(f, xs, dy, true);
    value.dispose();
    return grads.map((g, i) => g ?? tf.zerosLike(xs[i]!));
  } finally {
    engine.state.activeTape = outer;
  }
}

/** The tensors concatenated along the first axis; one tensor as it is. */
function concatOrOnly<T extends tf.Tensor>(ts: T[]): T {
  return ts.length === 1 ? ts[0]! : tf.concat(ts, 0);
}

/** HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * weight, over the last axis. */
export function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, eps: number): tf.Tensor2D {
  const variance = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, eps))), weight);
}

/** [x1, x2] -> [x2, x1] over the halves of the last axis: two slices and a concat (copies). */
function swapHalvesRaw(x: tf.Tensor): tf.Tensor {
  const rows = x.size / x.shape[x.rank - 1]!;
  const h = x.shape[x.rank - 1]! / 2;
  const x2 = tf.reshape(x, [rows, 2 * h]);
  return tf.reshape(tf.concat([tf.slice(x2, [0, h], [rows, h]), tf.slice(x2, [0, 0], [rows, h])], 1), x.shape);
}

/**
 * The half swap of rotate_half, as one op whose gradient is the same swap (a permutation that is
 * its own inverse). wasm's Reverse kernel, used before, was ~10x slower than these copies.
 */
function swapHalves(x: tf.Tensor4D): tf.Tensor4D {
  return customOp([x], ([t]) => ({ value: swapHalvesRaw(t!), gradFunc: (dy) => [swapHalvesRaw(dy)] })) as tf.Tensor4D;
}

/** x [B, T, n, D] rotated: x*cos + rotate_half(x)*sin, with `sin` pre-signed (see ropeTables). */
function applyRope(x: tf.Tensor4D, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor4D {
  return tf.add(tf.mul(x, cos), tf.mul(swapHalves(x), sin));
}

/** Upper-triangular additive causal mask [1, 1, 1, T, past + T]: query i sees keys j <= past + i. */
export function causalMask(t: number, past = 0): tf.Tensor {
  const tk = past + t;
  const m = new Float32Array(t * tk);
  for (let i = 0; i < t; i++) for (let j = past + i + 1; j < tk; j++) m[i * tk + j] = MASKED;
  return tf.tensor(m, [1, 1, 1, t, tk]);
}

let modelSeq = 0;

/** Transposes a row-major [rows, cols] matrix on the host, in cache-friendly blocks. */
function transposeHost(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  const BS = 64;
  for (let r0 = 0; r0 < rows; r0 += BS) {
    const r1 = Math.min(rows, r0 + BS);
    for (let c0 = 0; c0 < cols; c0 += BS) {
      const c1 = Math.min(cols, c0 + BS);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = data[r * cols + c]!;
    }
  }
  return out;
}

export class LlamaModel {
  readonly config: LlamaConfig;
  readonly trainableNames: readonly string[];
  /** Every parameter by HF name: variables in the HF layout, frozen projections transposed. */
  private readonly params = new Map<string, tf.Tensor>();
  private readonly vars = new Map<string, tf.Variable>();
  /** Names stored transposed ([in, out], or [hidden, vocab] for the head). */
  private readonly transposed = new Set<string>();
  private disposed = false;
  private readonly headChunkElems: number;
  private readonly gradientCheckpointing: boolean;

  private constructor(config: LlamaConfig, trainableNames: readonly string[], options: LoadOptions) {
    this.config = config;
    this.trainableNames = trainableNames;
    this.headChunkElems = options.lossHead?.chunkElems ?? HEAD_CHUNK_ELEMS;
    this.gradientCheckpointing = options.gradientCheckpointing ?? false;
  }

  /**
   * Loads `dir` (config.json and safetensors, single or sharded), streaming tensor by tensor.
   * Every expected tensor must be present with the expected shape; `trainable` names must be
   * parameters of this model.
   */
  static async load(dir: string, options: LoadOptions = {}): Promise<LlamaModel> {
    const log = options.logger ?? silentLogger;
    const config = await readLlamaConfig(dir);
    const expected = expectedTensorShapes(config);
    const listing = await listModelTensors(dir);
    for (const [name, shape] of expected) {
      const info = listing.get(name);
      if (!info) throw new ModelLoadError(dir, 'tensor missing from the model files', { tensor: name });
      if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
        throw new ModelLoadError(info.file, `shape [${info.shape.join(', ')}] does not match config.json's [${shape.join(', ')}]`, { tensor: name });
      }
      if (!(info.dtype in FloatDtype)) {
        throw new ModelLoadError(info.file, `dtype ${info.dtype} is not supported (supported: F32, F16, BF16)`, { tensor: name });
      }
    }
    if (options.maxSeqLen !== undefined) checkSequenceLength(config, options.maxSeqLen, 'maxSeqLen');
    const trainable = LlamaModel.checkTrainable(config, options.trainable);
    const trainableSet = new Set(trainable);
    const model = new LlamaModel(config, trainable, options);
    const started = Date.now();
    let pending: TensorSink | undefined;
    try {
      // Chunk by chunk straight into the tensor's final memory (on wasm, the wasm heap): no
      // whole-tensor copy on the JS heap, so peak memory stays near the float32 model size.
      for await (const ch of readModelTensorChunks(dir, expected.keys(), { listing, chunkElems: options.chunkElems })) {
        if (ch.start === 0) pending = model.beginTensor(ch.info.name, [...ch.info.shape], trainableSet.has(ch.info.name));
        pending!.write(ch.start, ch.data);
        if (ch.start + ch.data.length === pending!.size) {
          pending!.finish();
          pending = undefined;
        }
      }
    } catch (e) {
      pending?.abort();
      model.dispose();
      throw e;
    }
    log.info('model loaded', { dir, tensors: expected.size, trainable: trainable.length, ms: Date.now() - started });
    return model;
  }

  /** Builds a model from tensors already in memory (HF names and shapes). */
  static fromTensors(config: LlamaConfig, tensors: Iterable<NamedTensor>, options: LoadOptions = {}): LlamaModel {
    const expected = expectedTensorShapes(config);
    const trainable = LlamaModel.checkTrainable(config, options.trainable);
    const model = new LlamaModel(config, trainable, options);
    try {
      for (const t of tensors) {
        const shape = expected.get(t.name);
        if (!shape) continue;
        if (t.shape.join(',') !== shape.join(',')) throw new UserError(`tensor ${t.name}: shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
        model.adopt(t, trainable.includes(t.name));
      }
      for (const name of expected.keys()) if (!model.params.has(name)) throw new UserError(`tensor ${name} missing`);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  }

  private static checkTrainable(config: LlamaConfig, names: ReadonlySet<string> | undefined): string[] {
    const expected = expectedTensorShapes(config);
    const out: string[] = [];
    for (const name of names ?? []) {
      if (!expected.has(name)) {
        const hint = name === 'lm_head.weight' && config.tieWordEmbeddings ? ' (lm_head is tied to model.embed_tokens.weight)' : '';
        throw new UserError(`trainable tensor ${JSON.stringify(name)} is not a parameter of this model${hint}`);
      }
      out.push(name);
    }
    // In HF order, so that every rank lists them identically.
    const order = [...expected.keys()];
    return out.sort((a, b) => order.indexOf(a) - order.indexOf(b));
  }

  /** Weights used as the right operand of a product: projections and the output head. */
  private isMatrixOperand(name: string): boolean {
    return name.endsWith('_proj.weight') || name === 'lm_head.weight' || (name === 'model.embed_tokens.weight' && this.config.tieWordEmbeddings);
  }

  private adopt(t: NamedTensor, trainable: boolean): void {
    if (trainable) {
      const init = tf.tensor(t.data, t.shape, 'float32');
      const v = tf.variable(init, true, `polytune/${modelSeq++}/${t.name}`);
      init.dispose();
      this.vars.set(t.name, v);
      this.params.set(t.name, v);
    } else if (this.isMatrixOperand(t.name)) {
      const [rows, cols] = t.shape as [number, number];
      this.params.set(t.name, tf.tensor(transposeHost(t.data, rows, cols), [cols, rows], 'float32'));
      this.transposed.add(t.name);
    } else this.params.set(t.name, tf.tensor(t.data, t.shape, 'float32'));
  }

  /**
   * Starts loading tensor `name` (HF shape): frozen product operands are written transposed, and
   * on wasm the data goes straight into the tensor's heap memory, re-viewed at every write since
   * the heap may grow (and its buffer change) between chunks.
   */
  private beginTensor(name: string, shape: number[], trainable: boolean): TensorSink {
    const size = shape.reduce((a, b) => a * b, 1);
    const transpose = !trainable && this.isMatrixOperand(name);
    const [rows, cols] = shape as [number, number];
    const stored = transpose ? [cols, rows] : shape;
    const heap = heapBackend();
    const info = heap ? heap.makeOutput(stored, 'float32') : undefined;
    const host = info ? undefined : new Float32Array(size);
    let tensor: tf.Tensor | undefined = info ? tf.engine().makeTensorFromTensorInfo(info) : undefined;
    const adopt = (t: tf.Tensor): void => {
      if (trainable) {
        this.vars.set(name, tf.variable(t, true, `polytune/${modelSeq++}/${name}`));
        this.params.set(name, this.vars.get(name)!);
        t.dispose();
      } else {
        this.params.set(name, t);
        if (transpose) this.transposed.add(name);
      }
    };
    return {
      size,
      write: (start, data) => {
        const dst = host ?? heap!.typedArrayFromHeap(info!);
        if (transpose) transposeRowsInto(data, start / cols, rows, cols, dst);
        else dst.set(data, start);
      },
      finish: () => {
        const t = tensor ?? tf.tensor(host!, stored, 'float32');
        tensor = undefined;
        adopt(t);
      },
      abort: () => tensor?.dispose(),
    };
  }

  private live(): void {
    if (this.disposed) throw new Error('LlamaModel used after dispose()');
  }

  /** A trainable parameter: a `tf.Variable` in the HF layout and shape. */
  variable(name: string): tf.Variable {
    this.live();
    const v = this.vars.get(name);
    if (!v) throw new Error(`${name} is not a trainable parameter`);
    return v;
  }

  /**
   * Any parameter by HF name, in the HF layout and shape (`lm_head.weight` is the embedding when
   * tied). The caller owns the returned tensor (dispose it, or call inside `tf.tidy`).
   */
  tensor(name: string): tf.Tensor {
    this.live();
    const key = name === 'lm_head.weight' && this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
    const t = this.params.get(key);
    if (!t) throw new Error(`${name} is not a parameter of this model`);
    return this.transposed.has(key) ? transposeLast(t) : tf.clone(t);
  }

  /** Parameter names in HF order (no `lm_head.weight` when tied). */
  get parameterNames(): string[] {
    return [...expectedTensorShapes(this.config).keys()];
  }

  /** A product operand [in, out]: stored so when frozen, transposed in the step when it trains. */
  private operand(name: string): tf.Tensor2D {
    const t = this.params.get(name) as tf.Tensor2D;
    return this.transposed.has(name) ? t : transposeLast(t);
  }

  private p(layer: number, suffix: string): tf.Tensor {
    return this.params.get(layerTensorName(layer, suffix))!;
  }

  private linear(x: tf.Tensor2D, layer: number, proj: string, bias: boolean): tf.Tensor2D {
    const y: tf.Tensor2D = tf.matMul(x, this.operand(layerTensorName(layer, `${proj}.weight`)));
    return bias ? tf.add<tf.Tensor2D>(y, this.p(layer, `${proj}.bias`)) : y;
  }

  /** Input embeddings [N, H] for flat ids [N]. */
  private embed(ids: tf.Tensor1D): tf.Tensor2D {
    const name = 'model.embed_tokens.weight';
    const t = this.params.get(name) as tf.Tensor2D;
    // Tied and frozen: stored [H, V] for the head, so gather columns (no gradient needed).
    if (this.transposed.has(name)) return tf.transpose(tf.gather(t, ids, 1));
    return gatherRows(t, ids);
  }

  /** The output head name: lm_head, or the embedding when tied. */
  private get headName(): string {
    return this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  }

  /**
   * The decoder up to the final norm. `inputIds` int32 [B, T]. Returns [B*T, hiddenSize], and
   * with a cache (or `returnCache`) the keys/values extended by these T positions.
   */
  forwardHidden(inputIds: tf.Tensor2D, options: ForwardOptions = {}): ForwardResult {
    this.live();
    const c = this.config;
    const [B, T] = inputIds.shape;
    const past = options.cache?.length ?? 0;
    const D = c.headDim;
    const wantCache = options.returnCache ?? options.cache !== undefined;
    checkSequenceLength(c, past + T);

    // RoPE tables [rows, T, 1, D]. The 1/sqrt(D) attention scale is folded into q's tables:
    // (s q) k^T = s (q k^T), saving an elementwise pass over the scores.
    let positions = options.positions;
    let rows = B;
    if (!positions) {
      positions = new Int32Array(T);
      for (let t = 0; t < T; t++) positions[t] = past + t;
      rows = 1;
    }
    const tables = ropeTables(c, positions);
    const scale = 1 / Math.sqrt(D);
    const cos = tf.tensor(tables.cos, [rows, T, 1, D]);
    const sin = tf.tensor(tables.sin, [rows, T, 1, D]);
    const cosQ = tf.mul(cos, scale);
    const sinQ = tf.mul(sin, scale);
    const mask = options.mask ?? causalMask(T, past);

    let x = this.embed(tf.reshape(inputIds, [B * T]));
    const newK: tf.Tensor4D[] = [];
    const newV: tf.Tensor4D[] = [];

    const ctx: LayerContext = { B, T, past, cos, sin, cosQ, sinQ, mask, cache: options.cache, onGate: options.onGate };
    // Under a gradient tape with checkpointing, a layer keeps only its input for the backward pass
    // and computes itself again there (HF's gradient_checkpointing).
    const checkpoint = this.gradientCheckpointing && !wantCache && tf.engine().state.gradientDepth > 0;
    // One tidy a layer: only its output (and its cache) outlives it. Under a gradient tape, the
    // tensors the backward pass needs are kept by the tape itself.
    for (let l = 0; l < c.numHiddenLayers; l++) {
      const input = x;
      if (checkpoint) {
        x = this.checkpointedLayer(l, input, ctx);
      } else {
        const out = tf.tidy(() => this.layer(l, input, ctx));
        x = out.y;
        if (wantCache) {
          newK.push(out.kt);
          newV.push(out.vh);
        } else {
          tf.dispose([out.kt, out.vh]);
        }
      }
      input.dispose();
    }
    const hidden = rmsNorm(x, this.params.get('model.norm.weight')!, c.rmsNormEps);
    return wantCache ? { hidden, cache: { k: newK, v: newV, length: past + T } } : { hidden };
  }

  /** Decoder layer `l` on its input [B*T, H]: its output, and its keys and values (after RoPE). */
  private layer(l: number, x: tf.Tensor2D, ctx: LayerContext): { y: tf.Tensor2D; kt: tf.Tensor4D; vh: tf.Tensor4D } {
    const c = this.config;
    const { B, T, past, cos, sin, cosQ, sinQ, mask } = ctx;
    const nH = c.numAttentionHeads;
    const nKV = c.numKeyValueHeads;
    const D = c.headDim;
    const groups = nH / nKV;
    let y = x;
    // Self-attention.
    const h = rmsNorm(y, this.p(l, 'input_layernorm.weight'), c.rmsNormEps);
    const q = applyRope(tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.q_proj', c.attentionBias), [B, T, nH, D]), cosQ, sinQ);
    const k = applyRope(tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.k_proj', c.attentionBias), [B, T, nKV, D]), cos, sin);
    const v = tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.v_proj', c.attentionBias), [B, T, nKV, D]);
    let kt: tf.Tensor4D = tf.transpose(k, [0, 2, 3, 1]); // [B, nKV, D, T]: keys pre-transposed for q k^T
    let vh: tf.Tensor4D = tf.transpose(v, [0, 2, 1, 3]); // [B, nKV, T, D]
    if (ctx.cache) {
      kt = tf.concat([ctx.cache.k[l]!, kt], 3);
      vh = tf.concat([ctx.cache.v[l]!, vh], 2);
    }

    const tk = past + T;
    // GQA without repeating K/V (HF's repeat_kv): query head h uses kv head h / groups, so the
    // `groups` query heads of one kv head are stacked along the query axis of one batched matMul.
    const qg = tf.reshape(tf.transpose(tf.reshape(q, [B, T, nKV, groups, D]), [0, 2, 3, 1, 4]), [B * nKV, groups * T, D]);
    const scores = matMul(qg, tf.reshape(kt, [B * nKV, D, tk])); // [B*nKV, groups*T, tk]
    const probs = tf.softmax(tf.add(tf.reshape(scores, [B, nKV, groups, T, tk]), mask));
    const heads = matMul(tf.reshape(probs, [B * nKV, groups * T, tk]), tf.reshape(vh, [B * nKV, tk, D]));
    const attn = tf.reshape<tf.Rank.R2>(tf.transpose(tf.reshape(heads, [B, nKV, groups, T, D]), [0, 3, 1, 2, 4]), [B * T, nH * D]);
    y = tf.add(y, this.linear(attn, l, 'self_attn.o_proj', c.outputBias));

    // SwiGLU MLP: down(silu(gate(h)) * up(h)).
    const h2 = rmsNorm(y, this.p(l, 'post_attention_layernorm.weight'), c.rmsNormEps);
    const gate = this.linear(h2, l, 'mlp.gate_proj', c.mlpBias);
    ctx.onGate?.(l, gate);
    const up = this.linear(h2, l, 'mlp.up_proj', c.mlpBias);
    y = tf.add(y, this.linear(tf.mul(tf.mul(gate, tf.sigmoid(gate)), up), l, 'mlp.down_proj', c.mlpBias));
    return { y, kt, vh };
  }

  /**
   * `layer(l, x)` as one custom-gradient op that saves only its input (and the RoPE tables and
   * mask it reads): the backward pass runs the layer again under its own tape and differentiates
   * that, with respect to the input and the layer's trainable variables. The same numbers, at the
   * cost of one more forward pass of the layer.
   */
  private checkpointedLayer(l: number, x: tf.Tensor2D, ctx: LayerContext): tf.Tensor2D {
    const vars = this.trainableNames.filter((n) => n.startsWith(`model.layers.${l}.`)).map((n) => this.vars.get(n)!);
    return customOp([x, ...vars], ([input], save) => {
      save([input!, ctx.cos, ctx.sin, ctx.cosQ, ctx.sinQ, ctx.mask]);
      return {
        value: tf.tidy(() => {
          const out = this.layer(l, input as tf.Tensor2D, ctx);
          tf.dispose([out.kt, out.vh]);
          return out.y;
        }),
        gradFunc: (dy, saved) => {
          const [sx, cos, sin, cosQ, sinQ, mask] = saved as [tf.Tensor2D, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
          const again: LayerContext = { ...ctx, cos, sin, cosQ, sinQ, mask, onGate: undefined };
          return nestedGradients(() => this.layer(l, sx, again).y, [sx, ...vars], dy as tf.Tensor2D);
        },
      };
    }) as tf.Tensor2D;
  }

  /** Logits for hidden states [N, H] -> [N, V]. */
  head(hidden: tf.Tensor2D): tf.Tensor2D {
    return tf.matMul(hidden, this.operand(this.headName));
  }

  /** Logits [B, T, V] for int32 input ids [B, T]. */
  logits(inputIds: tf.Tensor2D): tf.Tensor3D {
    return tf.tidy(() => {
      const [B, T] = inputIds.shape;
      return tf.reshape(this.head(this.forwardHidden(inputIds).hidden), [B, T, this.config.vocabSize]);
    });
  }

  /**
   * The supervised positions under HF's shift: hidden state at (b, t) predicts labels[b, t+1].
   * Returns flat indices b*T+t, their targets and rows.
   */
  private supervised(labels: tf.Tensor2D): { index: Int32Array; target: Int32Array; row: Int32Array } {
    const [B, T] = labels.shape;
    const lab = labels.dataSync();
    const V = this.config.vocabSize;
    const index: number[] = [];
    const target: number[] = [];
    const row: number[] = [];
    for (let b = 0; b < B; b++) {
      for (let t = 0; t + 1 < T; t++) {
        const y = lab[b * T + t + 1]!;
        if (y === IGNORE_INDEX) continue;
        if (!Number.isInteger(y) || y < 0 || y >= V) throw new UserError(`label ${y} at [${b}, ${t + 1}] is outside the vocabulary [0, ${V})`);
        index.push(b * T + t);
        target.push(y);
        row.push(b);
      }
    }
    return { index: Int32Array.from(index), target: Int32Array.from(target), row: Int32Array.from(row) };
  }

  /**
   * Per-token NLL -log softmax(h W^T)[target] for hidden states `hs` [M, H], as one
   * custom-gradient op: logsumexp - logit[target], with d/dh = (softmax - onehot) W applied
   * without building a one-hot tensor. Logits exist one chunk of rows at a time (`headChunkElems`
   * floats), never whole. Under a gradient tape, each chunk's softmax goes through the head weight
   * at once (p W, what dh needs), so that the backward pass needs no logits. A head weight that
   * trains (full tuning, or tied to trainable embeddings) needs its own gradient too,
   * sum_m dy_m (p_m - onehot_m)^T h_m, which depends on dy: for it the backward pass recomputes
   * the chunks' logits.
   */
  private tokenNll(hs: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
    const name = this.headName;
    const stored = this.params.get(name) as tf.Tensor2D;
    const wTrains = !this.transposed.has(name); // a variable in the HF layout [V, H]; else [H, V]
    const [M] = hs.shape;
    const chunk = Math.max(1, Math.floor(this.headChunkElems / this.config.vocabSize));
    const parts: Array<{ start: number; size: number }> = [];
    for (let s = 0; s < M; s += chunk) parts.push({ start: s, size: Math.min(chunk, M - s) });
    // h W^T: logits [rows, V]; p W: [rows, V] -> [rows, H]. Whichever layout W is stored in, the
    // vocabulary-sized operand is never transposed.
    const logitsOf = (h: tf.Tensor2D): tf.Tensor2D => (wTrains ? matMulTransposeB(h, stored) : tf.matMul(h, stored));
    const throughHead = (p: tf.Tensor2D): tf.Tensor2D => (wTrains ? tf.matMul(p, stored) : matMulTransposeB(p, stored));
    const rowsOf = (t: tf.Tensor2D, start: number, size: number): tf.Tensor2D => tf.slice(t, [start, 0], [size, -1]);

    // Inputs: hs, targets, and the head weight only when it trains (a frozen one gets no gradient).
    const inputs: tf.Tensor[] = wTrains ? [hs, targets, stored] : [hs, targets];
    return customOp(inputs, ([h, tg], save) => {
      const fuse = tf.engine().state.gradientDepth > 0 && !wTrains;
      const lses: tf.Tensor[] = [];
      const pws: tf.Tensor[] = [];
      for (const { start, size } of parts) {
        const out = tf.tidy(() => {
          // logsumexp = m + log(sum(exp(logits - m)))
          const logits = logitsOf(rowsOf(h as tf.Tensor2D, start, size));
          const m = tf.max(logits, 1, true);
          const e = tf.exp(tf.sub(logits, m));
          const total = tf.sum(e, 1, true);
          const lse = tf.reshape(tf.add(m, tf.log(total)), [size]);
          return fuse ? [lse, throughHead(tf.div(e, total))] : [lse];
        });
        lses.push(out[0]!);
        if (fuse) pws.push(out[1]!);
      }
      const lse = concatOrOnly(lses) as tf.Tensor1D;
      // The target logit as a row dot product <h_m, W[target_m]>: the number the matMul gives.
      const wRows = wTrains ? tf.gather(stored, tg!) : tf.transpose(tf.gather(stored, tg!, 1));
      const labelLogit = tf.sum(tf.mul(h!, wRows), 1);
      save(fuse ? [h!, tg!, lse, wRows, concatOrOnly(pws)] : [h!, tg!, lse, wRows]);
      return {
        value: tf.sub(lse, labelLogit),
        gradFunc: (dy, saved) => {
          const [sh, stg, slse, sRows, spw] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D, tf.Tensor2D, tf.Tensor2D?];
          const dyCol = tf.expandDims(dy, 1);
          let pw = spw ? tf.mul(spw, dyCol) : undefined; // sum_v dy p_v W_v
          let dW: tf.Tensor | undefined;
          if (!pw) {
            const pwChunks: tf.Tensor[] = [];
            for (const { start, size } of parts) {
              const prev = dW;
              const out = tf.tidy(() => {
                const hc = rowsOf(sh, start, size);
                // dy * softmax(logits), recomputed with the forward pass's lse.
                const logits = tf.sub(logitsOf(hc), tf.expandDims(tf.slice(slse, [start], [size]), 1));
                const p = tf.mul<tf.Tensor2D>(tf.exp(logits), rowsOf(dyCol as tf.Tensor2D, start, size));
                if (!wTrains) return [throughHead(p)];
                const g = tf.matMul(transposeLast(p), hc); // [V, H]: the transpose is chunk-sized
                return [throughHead(p), prev ? tf.add(prev, g) : g];
              });
              pwChunks.push(out[0]!);
              if (wTrains) {
                prev?.dispose();
                dW = out[1];
              }
            }
            pw = concatOrOnly(pwChunks);
          }
          // minus dy * onehot(target), pushed through the product: dh -= dy * W[target].
          const grads: tf.Tensor[] = [tf.sub(pw, tf.mul(sRows, dyCol)), tf.zerosLike(stg)];
          if (wTrains) grads.push(tf.sub(dW!, tf.scatterND(tf.expandDims(stg, 1), tf.mul(sh, dyCol), stored.shape)));
          return grads;
        },
      };
    }) as tf.Tensor1D;
  }

  /** Per-token NLL of the supervised positions, with their rows. */
  private supervisedNll(inputIds: tf.Tensor2D, labels: tf.Tensor2D): { nll: tf.Tensor1D | null; hidden: tf.Tensor2D; row: Int32Array } {
    if (labels.shape[0] !== inputIds.shape[0] || labels.shape[1] !== inputIds.shape[1]) {
      throw new UserError(`labels shape [${labels.shape.join(', ')}] differs from input_ids shape [${inputIds.shape.join(', ')}]`);
    }
    const sup = this.supervised(labels);
    const { hidden } = this.forwardHidden(inputIds);
    if (sup.index.length === 0) return { nll: null, hidden, row: sup.row };
    // Only supervised positions reach the (vocabulary-sized) head: prompt tokens cost nothing there.
    const hs = gatherRows(hidden, tf.tensor1d(sup.index, 'int32'));
    return { nll: this.tokenNll(hs, tf.tensor1d(sup.target, 'int32')), hidden, row: sup.row };
  }

  /**
   * Sum over supervised tokens of -log p(labels[b,t] | inputIds[b, 0..t-1]) (HF shift: the logits
   * at t-1 predict labels[t]; -100 takes no loss; labels[:, 0] is never used). A scalar. Right
   * padding labelled -100 needs no attention mask: attention is causal.
   */
  nllSum(inputIds: tf.Tensor2D, labels: tf.Tensor2D): tf.Scalar {
    return tf.tidy(() => {
      const { nll, hidden } = this.supervisedNll(inputIds, labels);
      // No supervised token: zero, still connected to the parameters so that gradients are zeros.
      if (!nll) return tf.mul(tf.sum(hidden), 0);
      return tf.sum(nll);
    });
  }

  /**
   * Per row, the summed NLL of its supervised tokens: a [B] tensor, differentiable like `nllSum`
   * (the row sums are a matmul with a constant 0/1 matrix, which every backend can differentiate).
   * Its sum is the loss of the batch; the rows give the trainer the loss per language.
   */
  nllRowSums(inputIds: tf.Tensor2D, labels: tf.Tensor2D): tf.Tensor1D {
    return tf.tidy(() => {
      const B = inputIds.shape[0];
      const { nll, hidden, row } = this.supervisedNll(inputIds, labels);
      // No supervised token: zeros, still connected to the parameters (gradients are zeros).
      if (!nll) return tf.slice(tf.mul(tf.sum(hidden, 1), 0), [0], [B]) as tf.Tensor1D;
      const member = new Float32Array(B * row.length);
      row.forEach((b, i) => {
        member[b * row.length + i] = 1;
      });
      return tf.reshape(tf.matMul(tf.tensor2d(member, [B, row.length]), tf.reshape(nll, [row.length, 1])), [B]) as tf.Tensor1D;
    });
  }

  /** Per row: the summed NLL of its supervised tokens and their count. */
  nllPerRow(inputIds: tf.Tensor2D, labels: tf.Tensor2D): { nll: number[]; tokens: number[] } {
    const B = inputIds.shape[0];
    const nll = new Array<number>(B).fill(0);
    const tokens = new Array<number>(B).fill(0);
    tf.tidy(() => {
      const r = this.supervisedNll(inputIds, labels);
      if (!r.nll) return;
      const values = r.nll.dataSync();
      r.row.forEach((b, i) => {
        nll[b]! += values[i]!;
        tokens[b]!++;
      });
    });
    return { nll, tokens };
  }

  /** One parameter in its HF name, layout and shape, copied out of the backend. */
  exportTensor(name: string): NamedTensor {
    this.live();
    const t = this.params.get(name);
    if (!t) throw new Error(`${name} is not a parameter of this model`);
    const data = t.dataSync() as Float32Array;
    if (!this.transposed.has(name)) return { name, shape: [...t.shape], data };
    const [inDim, outDim] = t.shape as [number, number];
    return { name, shape: [outDim, inDim], data: transposeHost(data, inDim, outDim) };
  }

  /** Every parameter in HF names, layout and shapes, copied out of the backend. */
  exportTensors(): NamedTensor[] {
    return this.parameterNames.map((name) => this.exportTensor(name));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of this.params.values()) t.dispose();
    this.params.clear();
    this.vars.clear();
  }
}
