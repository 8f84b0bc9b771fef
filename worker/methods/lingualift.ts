/**
 * LinguaLIFT on the worker (common/methods/lingualift.ts): the frozen mT5 encoder
 * (worker/model/t5-encoder.ts) reads each sample's question in its own tokenizer; the alignment
 * layer (this method's modules, an MLP) maps its states to the LLM's width; they enter the LLM at
 * the embeddings hook:
 *
 *   prepend   [pad…, mapped states, separator] + the LLM's embeddings of the templated prompt and answer
 *   replace   [pad…, mapped states]            + the LLM's embeddings of [BOS] answer
 *
 * The prefixes of a micro-batch differ in length: they are left-padded, the padding masked out as
 * keys and each row's positions counted from its first real vector (llama.ts `prependPad`), so a
 * row's loss does not depend on the rows it is batched with. The loss is the LLM's on its own
 * positions' labels: the prefix takes none.
 *
 * Stage align: no LLM tensor trains, the modules do (from the seed, or `alignment.from`). Stage
 * task: the modules are frozen, read from the previous stage's `final/lingualift.safetensors` (the
 * stage's model directory) or `alignment.from`; the LLM's selected tensors train. Either way the
 * trainer writes the modules to `final/lingualift.safetensors`, which generation and evaluation
 * read back (lingualift-inference.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { t5EncoderMacs } from '../../common/encoder-config.js';
import { UserError } from '../../common/errors.js';
import { alignmentSource, type MethodSpecOf } from '../../common/methods/index.js';
import type { LlamaConfig } from '../../common/model-config.js';
import { IGNORE_INDEX } from '../../common/records.js';
import { encodeRecord, type EncodedSample } from '../data/encode.js';
import type { EmbeddingEdit } from '../model/hooks.js';
import { geluNew, T5Encoder } from '../model/t5-encoder.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { specTrainableTensors } from './layer-methods.js';
import type { MethodResources, MethodRun, ModuleTensor, TrainingMethod } from './training-method.js';

type Spec = MethodSpecOf<'lingualift'>;

/** HF's initializer_range: the alignment layer's weights start normal(0, 0.02), biases zero. */
const INIT_STD = 0.02;

/** The encoder and its tokenizer for a run, and the encoder's cost since the last step. */
export class LingualiftResources implements MethodResources {
  private ms = 0;
  private macs = 0;
  private calls = 0;
  constructor(
    readonly encoder: T5Encoder,
    readonly tokenizer: ModelTokenizer,
  ) {}

  static async load(method: Spec): Promise<LingualiftResources> {
    const encoder = await T5Encoder.load(method.encoder.path);
    try {
      const tokenizer = await ModelTokenizer.load(method.encoder.path, { eosTokenId: encoder.config.eosTokenId });
      return new LingualiftResources(encoder, tokenizer);
    } catch (e) {
      encoder.dispose();
      throw e;
    }
  }

  /** The encoder's states [B, P, d] of left-padded ids, and the padding of each row. */
  encode(rows: readonly Int32Array[]): { states: tf.Tensor3D; pad: Int32Array } {
    const B = rows.length;
    const P = Math.max(1, ...rows.map((r) => r.length));
    const ids = new Int32Array(B * P).fill(this.encoder.config.padTokenId);
    const keep = new Uint8Array(B * P);
    const pad = new Int32Array(B);
    rows.forEach((r, b) => {
      pad[b] = P - r.length;
      ids.set(r, b * P + pad[b]!);
      keep.fill(1, b * P + pad[b]!, (b + 1) * P);
    });
    const t0 = performance.now();
    const states = tf.tidy(() => this.encoder.forward(tf.tensor2d(ids, [B, P], 'int32'), keep));
    this.ms += performance.now() - t0;
    this.macs += t5EncoderMacs(this.encoder.config, B * P, P);
    this.calls++;
    return { states, pad };
  }

  takeStepStats(): Record<string, number> {
    const out = { encoderForwardMs: this.ms, encoderForwardGmac: this.macs / 1e9, encoderCalls: this.calls };
    this.ms = this.macs = this.calls = 0;
    return out;
  }

  dispose(): void {
    this.encoder.dispose();
  }
}

/** The alignment layer's tensors: `alignment.<i>.{weight,bias}` for each Linear, and the separator. */
export function alignmentModules(method: Spec, llmHidden: number, encoderHidden: number): ModuleTensor[] {
  const depth = method.alignment.depth;
  const inner = method.alignment.hidden ?? llmHidden;
  const trainable = method.stage === 'align';
  const out: ModuleTensor[] = [];
  for (let i = 0; i < depth; i++) {
    const fanIn = i === 0 ? encoderHidden : inner;
    const fanOut = i === depth - 1 ? llmHidden : inner;
    out.push({
      name: `alignment.${i}.weight`,
      shape: [fanOut, fanIn],
      init: { kind: 'normal', std: INIT_STD },
      trainable,
    });
    out.push({ name: `alignment.${i}.bias`, shape: [fanOut], init: { kind: 'zeros' }, trainable });
  }
  if (method.fusion === 'prepend')
    out.push({ name: 'alignment.separator', shape: [llmHidden], init: { kind: 'normal', std: INIT_STD }, trainable });
  return out;
}

/** The MLP on encoder states [N, d_enc] -> [N, H]: Linear, then GELU (tanh) and Linear for each further layer. */
export function applyAlignment(modules: ReadonlyMap<string, tf.Tensor>, depth: number, x: tf.Tensor2D): tf.Tensor2D {
  let h: tf.Tensor2D = x;
  for (let i = 0; i < depth; i++) {
    if (i > 0) h = geluNew(h) as tf.Tensor2D;
    const w = modules.get(`alignment.${i}.weight`)!;
    h = tf.add(tf.matMul(h, w, false, true), modules.get(`alignment.${i}.bias`)!);
  }
  return h;
}

/**
 * The embeddings edit of a batch: the mapped states of each row's encoder ids (and the separator
 * with `prepend`), left-padded. Differentiable with respect to the modules.
 */
export function alignmentPrefix(
  method: Spec,
  resources: LingualiftResources,
  modules: ReadonlyMap<string, tf.Tensor>,
  encoderIds: readonly Int32Array[],
): EmbeddingEdit {
  const { states, pad } = resources.encode(encoderIds);
  const [B, P, d] = states.shape;
  const mapped = applyAlignment(modules, method.alignment.depth, tf.reshape(states, [B * P, d]));
  const H = mapped.shape[1];
  let prefix = tf.reshape(mapped, [B, P, H]) as tf.Tensor3D;
  if (method.fusion === 'prepend') {
    // A broadcast product, not tf.tile: Tile has no gradient on the wasm backend.
    const sep = tf.mul(tf.ones([B, 1, 1]), tf.reshape(modules.get('alignment.separator')!, [1, 1, H])) as tf.Tensor3D;
    prefix = tf.concat([prefix, sep], 1);
  }
  return { prepend: prefix, prependPad: pad };
}

function resourcesOf(r: MethodResources | undefined): LingualiftResources {
  if (!(r instanceof LingualiftResources)) throw new Error('lingualift: the encoder is not loaded (load)');
  return r;
}

/** A record's encoder ids: its question in the encoder's tokenizer, ending with EOS, cut to `maxSeqLen`. */
export function encoderIdsOf(resources: LingualiftResources, question: string, maxSeqLen: number): Int32Array {
  const ids = resources.tokenizer.encode(question, { addBos: false, addEos: true });
  const V = resources.encoder.config.vocabSize;
  const bad = ids.find((t) => t >= V);
  if (bad !== undefined) {
    throw new UserError(
      `${resources.encoder.dir}: the tokenizer gives id ${bad}, outside the encoder's vocabulary [0, ${V})`,
    );
  }
  return Int32Array.from(ids.slice(0, maxSeqLen));
}

function encode(
  method: Spec,
  record: Parameters<NonNullable<TrainingMethod<Spec>['encode']>>[1],
  tokenizer: Parameters<NonNullable<TrainingMethod<Spec>['encode']>>[2],
  template: string,
  maxSeqLen: number,
  resources?: MethodResources,
): EncodedSample {
  if (record.kind !== 'text') {
    throw new UserError('method lingualift needs text records (the encoder reads the question): not format tokenized');
  }
  const encoderIds = encoderIdsOf(resourcesOf(resources), record.question, maxSeqLen);
  if (method.fusion === 'prepend') return { ...encodeRecord(record, tokenizer, template, maxSeqLen), encoderIds };
  // replace: the LLM sees no prompt tokens, only a start token before the answer.
  const start = tokenizer.encode('', { addBos: true })[0] ?? tokenizer.eosId;
  const answer = [...tokenizer.encode(record.output, { addBos: false }), tokenizer.eosId];
  const ids = [start, ...answer].slice(0, maxSeqLen);
  const labels = [IGNORE_INDEX, ...answer].slice(0, maxSeqLen);
  return {
    inputIds: Int32Array.from(ids),
    labels: Int32Array.from(labels),
    language: record.language,
    supervised: labels.length - 1,
    truncated: answer.length + 1 > maxSeqLen,
    promptLength: 1,
    encoderIds,
  };
}

export const lingualift: TrainingMethod<Spec> = {
  name: 'lingualift',
  trainableTensors: specTrainableTensors,
  load: (method) => LingualiftResources.load(method),
  modules: (method, config: LlamaConfig, resources) =>
    alignmentModules(method, config.hiddenSize, resourcesOf(resources).encoder.config.hiddenSize),
  moduleSource: (method, modelDir) => ({
    file: alignmentSource(method, modelDir),
    required: method.stage === 'task' || method.alignment.from !== undefined,
  }),
  encode,
  loss: (run: MethodRun<Spec>, batch) => {
    const resources = resourcesOf(run.resources);
    const edit = alignmentPrefix(
      run.method,
      resources,
      run.modules,
      batch.samples.map((s) => s.encoderIds ?? new Int32Array(0)),
    );
    return run.model.nllRowSums(batch.inputIds, batch.labels, { hooks: { embeddings: () => edit } });
  },
};
