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
 * matMul; keys are produced directly in the [B, kvHeads, D, T] layout the score product needs. Every op between a
 * trainable parameter and the loss has a gradient that runs on the wasm
 * backend: row gathers go through `gatherRows` (gradient = ScatterNd), and the loss head is a
 * custom-gradient op that never materialises a one-hot tensor.
 *
 * Beside this file: the weight loader (weight-loader.ts), the ops (ops.ts), the loss head
 * (loss-head.ts), RoPE (rope.ts) and the hook points methods use (hooks.ts). No method's code is here.
 */
import * as tf from '@tensorflow/tfjs-core';
import { UserError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import {
  checkSequenceLength,
  expectedTensorShapes,
  layerTensorName,
  readLlamaConfig,
  type LlamaConfig,
} from '../../common/model-config.js';
import './gradients.js';
import { withoutReadHooks, type ForwardHooks, type HookShape, type LinearName } from './hooks.js';
import { HEAD_CHUNK_ELEMS, supervisedPositions, tokenNll } from './loss-head.js';
import { matMul, transposeLast } from './matmul.js';
import {
  causalMask,
  customOp,
  gatherRows,
  MASKED,
  nestedGradients,
  rmsNorm,
  scatterRows,
  transposeHost,
} from './ops.js';
import { applyRope, ropeTensors } from './rope.js';
import type { NamedTensor } from './safetensors.js';
import { checkedModelListing, loadWeights, tensorSink, type TensorSink } from './weight-loader.js';

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
  /** Reads and edits at the hook points (hooks.ts); none by default. */
  hooks?: ForwardHooks;
}

/** Options of the loss functions (`nllSum`, `nllRowSums`, `nllPerRow`). */
export interface LossOptions {
  /** Reads and edits at the hook points during the forward pass (hooks.ts). */
  hooks?: ForwardHooks;
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
  readonly hooks?: ForwardHooks;
  readonly shape: HookShape;
}

let modelSeq = 0;

/**
 * Positions and mask of rows of T positions whose first `pad[b]` (of the P prepended) are padding:
 * row b's positions count from its first real position, and padding is never a key (a padded
 * query still sees itself, so no softmax row is empty).
 */
function paddedPrefix(pad: Int32Array, B: number, T: number, P: number): { positions: Int32Array; mask: tf.Tensor } {
  if (pad.length !== B || pad.some((n) => !(n >= 0 && n <= P))) {
    throw new Error(`the embeddings hook's prependPad must give B=${B} counts in [0, ${P}]`);
  }
  const positions = new Int32Array(B * T);
  const m = new Float32Array(B * T * T);
  for (let b = 0; b < B; b++) {
    const n = pad[b]!;
    for (let i = 0; i < T; i++) {
      positions[b * T + i] = Math.max(0, i - n);
      for (let j = 0; j < T; j++) if (j > i || (j < n && j !== i)) m[(b * T + i) * T + j] = MASKED;
    }
  }
  return { positions, mask: tf.tensor(m, [B, 1, 1, T, T]) };
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
    const listing = await checkedModelListing(dir, expected);
    if (options.maxSeqLen !== undefined) checkSequenceLength(config, options.maxSeqLen, 'maxSeqLen');
    const trainable = LlamaModel.checkTrainable(config, options.trainable);
    const trainableSet = new Set(trainable);
    const model = new LlamaModel(config, trainable, options);
    const started = Date.now();
    try {
      await loadWeights(dir, expected.keys(), listing, options.chunkElems, (name, shape) =>
        model.beginTensor(name, shape, trainableSet.has(name)),
      );
    } catch (e) {
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
        if (t.shape.join(',') !== shape.join(','))
          throw new UserError(`tensor ${t.name}: shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
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
        const hint =
          name === 'lm_head.weight' && config.tieWordEmbeddings
            ? ' (lm_head is tied to model.embed_tokens.weight)'
            : '';
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
    return (
      name.endsWith('_proj.weight') ||
      name === 'lm_head.weight' ||
      (name === 'model.embed_tokens.weight' && this.config.tieWordEmbeddings)
    );
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

  /** Starts loading tensor `name` (HF shape): frozen product operands are stored transposed. */
  private beginTensor(name: string, shape: number[], trainable: boolean): TensorSink {
    const transpose = !trainable && this.isMatrixOperand(name);
    return tensorSink(shape, transpose, (t) => {
      if (trainable) {
        this.vars.set(name, tf.variable(t, true, `polytune/${modelSeq++}/${name}`));
        this.params.set(name, this.vars.get(name)!);
        t.dispose();
      } else {
        this.params.set(name, t);
        if (transpose) this.transposed.add(name);
      }
    });
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

  private linear(x: tf.Tensor2D, layer: number, proj: LinearName, bias: boolean, ctx: LayerContext): tf.Tensor2D {
    ctx.hooks?.linearInput?.(layer, proj, x, ctx.shape);
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
    const [B, T0] = inputIds.shape;
    const past = options.cache?.length ?? 0;
    const wantCache = options.returnCache ?? options.cache !== undefined;
    const hooks = options.hooks;
    checkSequenceLength(c, past + T0);

    let x = this.embed(tf.reshape(inputIds, [B * T0]));
    let positions = options.positions;
    let mask = options.mask;
    // The `embeddings` hook point: vectors added to rows, or prepended to every row (T grows by P).
    let prefix = 0;
    const edit = hooks?.embeddings?.(x, { B, T: T0 });
    if (edit) {
      const embedded = x;
      if (edit.add) x = this.added(x, edit.add, edit.rows);
      if (edit.prepend) {
        // Explicit positions and mask (generation's prefill) cover the prepended vectors too.
        if (options.cache || (edit.prependPad && (options.positions || options.mask))) {
          throw new UserError(
            'the embeddings hook prepends vectors: not with a KV cache, nor prependPad with explicit positions or mask',
          );
        }
        const H = this.config.hiddenSize;
        const [pb, p, ph] = edit.prepend.shape;
        if (edit.prepend.rank !== 3 || pb !== B || ph !== H) {
          throw new Error(
            `the embeddings hook prepended shape [${edit.prepend.shape.join(', ')}], expected [${B}, P, ${H}]`,
          );
        }
        prefix = p;
        if (options.positions && options.positions.length !== B * (p + T0)) {
          throw new Error(
            `positions cover ${options.positions.length} of the ${B * (p + T0)} prepended and input positions`,
          );
        }
        x = tf.reshape(tf.concat([edit.prepend, tf.reshape(x, [B, T0, H])], 1), [B * (prefix + T0), H]);
        if (edit.prependPad) ({ positions, mask } = paddedPrefix(edit.prependPad, B, prefix + T0, prefix));
      }
      if (x !== embedded) embedded.dispose();
    }
    const T = prefix + T0;
    if (prefix > 0) checkSequenceLength(c, past + T);
    const { cos, sin, cosQ, sinQ } = ropeTensors(c, positions, B, T, past);
    mask ??= causalMask(T, past);
    const newK: tf.Tensor4D[] = [];
    const newV: tf.Tensor4D[] = [];

    const shape = { B, T };
    const ctx: LayerContext = { B, T, past, cos, sin, cosQ, sinQ, mask, cache: options.cache, hooks, shape };
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
      // The `afterLayer` hook point: the residual stream after layer l, read or added to.
      if (hooks?.afterLayer) {
        const before = x;
        x = tf.tidy(() => {
          const e = hooks.afterLayer!(l, before, shape);
          return e ? this.added(before, e.add, e.rows) : before;
        });
        if (x !== before) before.dispose();
      }
    }
    if (prefix > 0) {
      // Only the input positions leave: the prepended ones were context.
      const H = this.config.hiddenSize;
      const all = x;
      x = tf.reshape(tf.slice(tf.reshape(all, [B, T, H]), [0, prefix, 0], [B, T0, H]), [B * T0, H]);
      all.dispose();
    }
    const hidden = rmsNorm(x, this.params.get('model.norm.weight')!, c.rmsNormEps);
    return wantCache ? { hidden, cache: { k: newK, v: newV, length: past + T } } : { hidden };
  }

  /** `x` [n, H] plus `add` ([n, H], or [rows.length, H] added at flat rows `rows`). */
  private added(x: tf.Tensor2D, add: tf.Tensor2D, rows: Int32Array | undefined): tf.Tensor2D {
    const [n, H] = x.shape;
    const want = [rows ? rows.length : n, H];
    if (add.rank !== 2 || add.shape[0] !== want[0] || add.shape[1] !== H) {
      throw new Error(`a hook added a tensor of shape [${add.shape.join(', ')}], expected [${want.join(', ')}]`);
    }
    if (rows?.some((r) => !(r >= 0 && r < n))) throw new Error(`a hook added at a row outside [0, ${n})`);
    return tf.add(x, rows ? scatterRows(add, rows, n) : add);
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
    const q = applyRope(
      tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.q_proj', c.attentionBias, ctx), [B, T, nH, D]),
      cosQ,
      sinQ,
    );
    const k = applyRope(
      tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.k_proj', c.attentionBias, ctx), [B, T, nKV, D]),
      cos,
      sin,
    );
    const v = tf.reshape<tf.Rank.R4>(this.linear(h, l, 'self_attn.v_proj', c.attentionBias, ctx), [B, T, nKV, D]);
    let kt: tf.Tensor4D = tf.transpose(k, [0, 2, 3, 1]); // [B, nKV, D, T]: keys pre-transposed for q k^T
    let vh: tf.Tensor4D = tf.transpose(v, [0, 2, 1, 3]); // [B, nKV, T, D]
    if (ctx.cache) {
      kt = tf.concat([ctx.cache.k[l]!, kt], 3);
      vh = tf.concat([ctx.cache.v[l]!, vh], 2);
    }

    const tk = past + T;
    // GQA without repeating K/V (HF's repeat_kv): query head h uses kv head h / groups, so the
    // `groups` query heads of one kv head are stacked along the query axis of one batched matMul.
    const qg = tf.reshape(tf.transpose(tf.reshape(q, [B, T, nKV, groups, D]), [0, 2, 3, 1, 4]), [
      B * nKV,
      groups * T,
      D,
    ]);
    const scores = matMul(qg, tf.reshape(kt, [B * nKV, D, tk])); // [B*nKV, groups*T, tk]
    const probs = tf.softmax(tf.add(tf.reshape(scores, [B, nKV, groups, T, tk]), mask));
    const heads = matMul(tf.reshape(probs, [B * nKV, groups * T, tk]), tf.reshape(vh, [B * nKV, tk, D]));
    const attn = tf.reshape<tf.Rank.R2>(tf.transpose(tf.reshape(heads, [B, nKV, groups, T, D]), [0, 3, 1, 2, 4]), [
      B * T,
      nH * D,
    ]);
    y = tf.add(y, this.linear(attn, l, 'self_attn.o_proj', c.outputBias, ctx));

    // SwiGLU MLP: down(silu(gate(h)) * up(h)).
    const h2 = rmsNorm(y, this.p(l, 'post_attention_layernorm.weight'), c.rmsNormEps);
    const gate = this.linear(h2, l, 'mlp.gate_proj', c.mlpBias, ctx);
    ctx.hooks?.gate?.(l, gate, ctx.shape);
    const up = this.linear(h2, l, 'mlp.up_proj', c.mlpBias, ctx);
    const ffn = this.linear(tf.mul(tf.mul(gate, tf.sigmoid(gate)), up), l, 'mlp.down_proj', c.mlpBias, ctx);
    ctx.hooks?.ffnOutput?.(l, ffn, ctx.shape);
    y = tf.add(y, ffn);
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
          const [sx, cos, sin, cosQ, sinQ, mask] = saved as [
            tf.Tensor2D,
            tf.Tensor,
            tf.Tensor,
            tf.Tensor,
            tf.Tensor,
            tf.Tensor,
          ];
          const again: LayerContext = { ...ctx, cos, sin, cosQ, sinQ, mask, hooks: withoutReadHooks(ctx.hooks) };
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

  /** Per-token NLL of the supervised positions, with their rows. */
  private supervisedNll(
    inputIds: tf.Tensor2D,
    labels: tf.Tensor2D,
    hooks?: ForwardHooks,
  ): { nll: tf.Tensor1D | null; hidden: tf.Tensor2D; row: Int32Array } {
    if (labels.shape[0] !== inputIds.shape[0] || labels.shape[1] !== inputIds.shape[1]) {
      throw new UserError(
        `labels shape [${labels.shape.join(', ')}] differs from input_ids shape [${inputIds.shape.join(', ')}]`,
      );
    }
    const sup = supervisedPositions(labels, this.config.vocabSize);
    const { hidden } = this.forwardHidden(inputIds, hooks ? { hooks } : {});
    if (sup.index.length === 0) return { nll: null, hidden, row: sup.row };
    // Only supervised positions reach the (vocabulary-sized) head: prompt tokens cost nothing there.
    const hs = gatherRows(hidden, tf.tensor1d(sup.index, 'int32'));
    const head = {
      stored: this.params.get(this.headName) as tf.Tensor2D,
      trains: !this.transposed.has(this.headName),
      vocabSize: this.config.vocabSize,
    };
    return { nll: tokenNll(hs, tf.tensor1d(sup.target, 'int32'), head, this.headChunkElems), hidden, row: sup.row };
  }

  /**
   * Sum over supervised tokens of -log p(labels[b,t] | inputIds[b, 0..t-1]) (HF shift: the logits
   * at t-1 predict labels[t]; -100 takes no loss; labels[:, 0] is never used). A scalar. Right
   * padding labelled -100 needs no attention mask: attention is causal.
   */
  nllSum(inputIds: tf.Tensor2D, labels: tf.Tensor2D, options: LossOptions = {}): tf.Scalar {
    return tf.tidy(() => {
      const { nll, hidden } = this.supervisedNll(inputIds, labels, options.hooks);
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
  nllRowSums(inputIds: tf.Tensor2D, labels: tf.Tensor2D, options: LossOptions = {}): tf.Tensor1D {
    return tf.tidy(() => {
      const B = inputIds.shape[0];
      const { nll, hidden, row } = this.supervisedNll(inputIds, labels, options.hooks);
      // No supervised token: zeros, still connected to the parameters (gradients are zeros).
      if (!nll) return tf.slice(tf.mul(tf.sum(hidden, 1), 0), [0], [B]) as tf.Tensor1D;
      const member = new Float32Array(B * row.length);
      row.forEach((b, i) => {
        member[b * row.length + i] = 1;
      });
      return tf.reshape(tf.matMul(tf.tensor2d(member, [B, row.length]), tf.reshape(nll, [row.length, 1])), [
        B,
      ]) as tf.Tensor1D;
    });
  }

  /** Per row: the summed NLL of its supervised tokens and their count. */
  nllPerRow(
    inputIds: tf.Tensor2D,
    labels: tf.Tensor2D,
    options: LossOptions = {},
  ): { nll: number[]; tokens: number[] } {
    const B = inputIds.shape[0];
    const nll = new Array<number>(B).fill(0);
    const tokens = new Array<number>(B).fill(0);
    tf.tidy(() => {
      const r = this.supervisedNll(inputIds, labels, options.hooks);
      if (!r.nll) return;
      const values = r.nll.dataSync();
      r.row.forEach((b, i) => {
        nll[b]! += values[i]!;
        tokens[b]!++;
      });
    });
    return { nll, tokens };
  }

  /**
   * The input embeddings [T, H] of one sequence of ids: what decoder layer 0 takes. With
   * `decoderLayer`, a caller runs the decoder one layer at a time (Wanda's layer-by-layer pass);
   * the two together compute what `forwardHidden` does for a batch of one.
   */
  embedSequence(ids: Int32Array): tf.Tensor2D {
    this.live();
    return tf.tidy(() => this.embed(tf.tensor1d(ids, 'int32')));
  }

  /** Decoder layer `l` on one sequence's hidden state [T, H] (positions 0..T-1, causal), with read hooks. */
  decoderLayer(l: number, x: tf.Tensor2D, hooks?: ForwardHooks): tf.Tensor2D {
    this.live();
    const T = x.shape[0];
    checkSequenceLength(this.config, T);
    return tf.tidy(() => {
      const { cos, sin, cosQ, sinQ } = ropeTensors(this.config, undefined, 1, T, 0);
      const shape = { B: 1, T };
      const ctx: LayerContext = { B: 1, T, past: 0, cos, sin, cosQ, sinQ, mask: causalMask(T, 0), hooks, shape };
      const out = this.layer(l, x, ctx);
      tf.dispose([out.kt, out.vh]);
      return out.y;
    });
  }

  /**
   * Replaces a frozen parameter's values (HF layout [out, in], float32): the pruned weights with
   * their zeros. Its storage (transposed or not) stays as it was.
   */
  replaceFrozen(name: string, data: Float32Array): void {
    this.live();
    const old = this.params.get(name);
    if (!old || this.vars.has(name)) throw new Error(`${name} is not a frozen parameter of this model`);
    if (data.length !== old.size) throw new Error(`${name}: ${data.length} values for a tensor of ${old.size}`);
    let next: tf.Tensor;
    if (this.transposed.has(name)) {
      const [inDim, outDim] = old.shape as [number, number];
      next = tf.tensor2d(transposeHost(data, outDim, inDim), [inDim, outDim]);
    } else {
      next = tf.tensor(data, old.shape);
    }
    old.dispose();
    this.params.set(name, next);
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
