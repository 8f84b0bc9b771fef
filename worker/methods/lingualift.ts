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
 * positions' labels: the prefix takes none. The frozen encoder runs in `prepare`, before the
 * gradient tape (its activations are not kept for the backward pass); `loss` maps its states.
 *
 * Stage align: no LLM tensor trains, the modules do (from the seed, or `alignment.from`). Stage
 * task: the modules are frozen, read from the previous stage's `final/lingualift.safetensors` (the
 * stage's model directory) or `alignment.from`; the LLM's selected tensors train. Either way the
 * trainer writes the modules to `final/lingualift.safetensors` (its metadata naming the encoder),
 * which generation and evaluation read back (`loadLingualift`): the same prefix then goes before
 * each prompt at the prefill (worker/model/generate.ts).
 */
import { isAbsolute, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { t5EncoderMacs } from '../../common/encoder-config.js';
import { UserError } from '../../common/errors.js';
import { isFile } from '../../common/fs-checks.js';
import {
  alignmentShapes,
  alignmentSource,
  LINGUALIFT_METADATA,
  LINGUALIFT_MODULES_FILE,
  lingualiftSchema,
  type MethodSpecOf,
} from '../../common/methods/index.js';
import type { LlamaConfig } from '../../common/model-config.js';
import { isUnder, realish } from '../../common/storage-roots.js';
import { IGNORE_INDEX } from '../../common/records.js';
import { encodeRecord, type EncodedSample, type PromptTokenizer } from '../data/encode.js';
import type { PromptPrefixer } from '../model/generate.js';
import type { EmbeddingEdit } from '../model/hooks.js';
import { readSafetensorsHeader } from '../../common/safetensors-header.js';
import { geluNew, T5Encoder } from '../model/t5-encoder.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { specTrainableTensors } from './layer-methods.js';
import { startingModules } from './modules.js';
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

  /** The encoder's states [B, P, d] of left-padded ids, and the padding of each row (`encoderPad`). */
  encode(rows: readonly Int32Array[]): { states: tf.Tensor3D; pad: Int32Array } {
    const B = rows.length;
    const pad = encoderPad(rows);
    const P = pad.length > 0 ? pad[0]! + rows[0]!.length : 1;
    const ids = new Int32Array(B * P).fill(this.encoder.config.padTokenId);
    const keep = new Uint8Array(B * P);
    rows.forEach((r, b) => {
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
  const trainable = method.stage === 'align';
  return [...alignmentShapes(method, llmHidden, encoderHidden)].map(([name, shape]) => ({
    name,
    shape,
    // Weights and the separator normal(0, 0.02), biases zero.
    init: name.endsWith('.bias') ? { kind: 'zeros' } : { kind: 'normal', std: INIT_STD },
    trainable,
  }));
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

/** Per row of encoder ids, how many left-padding columns the batch's encoder input gives it (P = max(1, lengths)). */
export function encoderPad(rows: readonly Int32Array[]): Int32Array {
  const P = Math.max(1, ...rows.map((r) => r.length));
  return Int32Array.from(rows, (r) => P - r.length);
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
  return alignmentEdit(method, modules, states, pad);
}

/** The embeddings edit of encoder states [B, P, d] (left-padded by `pad`) through the alignment layer. */
function alignmentEdit(
  method: Spec,
  modules: ReadonlyMap<string, tf.Tensor>,
  states: tf.Tensor3D,
  pad: Int32Array,
): EmbeddingEdit {
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

function encoderIdsOfBatch(samples: readonly EncodedSample[]): Int32Array[] {
  return samples.map((s) => s.encoderIds ?? new Int32Array(0));
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

/** The token `replace` gives the LLM in place of its prompt: BOS, else EOS. */
function startId(tokenizer: PromptTokenizer): number {
  return tokenizer.encode('', { addBos: true })[0] ?? tokenizer.eosId;
}

/** Generation's prefix of each question: the encoder's states through the alignment layer, as in training. */
export function lingualiftPrefixer(
  method: Spec,
  resources: LingualiftResources,
  modules: ReadonlyMap<string, tf.Tensor>,
  tokenizer: PromptTokenizer,
  maxSeqLen: number,
): PromptPrefixer {
  return {
    prefix: (questions) => {
      let pad: Int32Array = new Int32Array(0);
      const vectors = tf.tidy(() => {
        const ids = questions.map((q) => encoderIdsOf(resources, q, maxSeqLen));
        const edit = alignmentPrefix(method, resources, modules, ids);
        pad = edit.prependPad!;
        return edit.prepend!;
      });
      return { vectors, pad };
    },
    ...(method.fusion === 'replace' ? { promptIds: [startId(tokenizer)] } : {}),
  };
}

/** A path a file names (not the spec): refused unless under one of `roots` (none: any path). */
async function checkUnderRoots(path: string, roots: readonly string[], file: string): Promise<void> {
  if (roots.length === 0) return;
  const real = isAbsolute(path) ? await realish(path) : undefined;
  if (real === undefined || !roots.some((r) => isUnder(real, r))) {
    throw new UserError(
      `${file}: metadata ${LINGUALIFT_METADATA.encoder} ${path} is outside the storage roots ` +
        `(${roots.join(', ')}); name the encoder in the spec (spec.model.encoder)`,
    );
  }
}

/** A trained model's alignment layer and encoder, for generation; `dispose` frees them. */
export interface LoadedLingualift {
  readonly method: Spec;
  readonly prefixer: PromptPrefixer;
  dispose(): void;
}

/**
 * The alignment layer beside a model (`<modelDir>/lingualift.safetensors`, a LinguaLIFT job's
 * final/) with its encoder (the file's metadata, or `encoder`); undefined when the directory has
 * none. Depth, width and fusion come from the file's tensors; sizes that do not fit the encoder
 * or the LLM are refused naming the file and tensor.
 */
export async function loadLingualift(
  modelDir: string,
  config: LlamaConfig,
  tokenizer: ModelTokenizer,
  options: {
    readonly encoder?: string;
    /** Roots the file's encoder must lie under (the spec's paths are checked before). @default none */
    readonly storageRoots?: readonly string[];
  } = {},
): Promise<LoadedLingualift | undefined> {
  const file = join(modelDir, LINGUALIFT_MODULES_FILE);
  if (!(await isFile(file))) {
    if (options.encoder !== undefined)
      throw new UserError(`${file}: no such file (an encoder is for a LinguaLIFT model's final/)`);
    return undefined;
  }
  const eosId = tokenizer.eosId;
  if (eosId === undefined) throw new UserError(`${modelDir}: the tokenizer has no EOS token`);
  // Names, shapes and metadata only: the values are read once, by startingModules below.
  const { tensors, metadata } = await readSafetensorsHeader(file);
  const encoder = options.encoder ?? metadata[LINGUALIFT_METADATA.encoder];
  if (encoder === undefined)
    throw new UserError(`${file}: its metadata names no encoder; give the encoder's directory (--encoder DIR)`);
  if (options.encoder === undefined) await checkUnderRoots(encoder, options.storageRoots ?? [], file);
  const names = new Set(tensors.map((t) => t.name));
  let depth = 0;
  while (names.has(`alignment.${depth}.weight`)) depth++;
  const first = tensors.find((t) => t.name === 'alignment.0.weight');
  if (!first) throw new UserError(`${file}: no tensor alignment.0.weight (not a LinguaLIFT alignment layer)`);
  const cut = metadata[LINGUALIFT_METADATA.maxTokens];
  const maxTokens = cut === undefined ? Number.MAX_SAFE_INTEGER : Number(cut);
  if (!Number.isInteger(maxTokens) || maxTokens <= 0)
    throw new UserError(`${file}: metadata ${LINGUALIFT_METADATA.maxTokens} must be a positive integer, not ${cut}`);
  const parsed = lingualiftSchema.safeParse({
    name: 'lingualift',
    stage: 'task',
    encoder: { path: encoder },
    alignment: depth > 1 ? { depth, hidden: first.shape[0] } : { depth },
    fusion: names.has('alignment.separator') ? 'prepend' : 'replace',
  });
  if (!parsed.success) throw new UserError(`${file}: not a LinguaLIFT alignment layer (${parsed.error.message})`);
  const method = parsed.data;
  const resources = await LingualiftResources.load(method);
  const modules = new Map<string, tf.Tensor>();
  try {
    const expected = alignmentModules(method, config.hiddenSize, resources.encoder.config.hiddenSize);
    const { tensors: values } = await startingModules('lingualift', expected, 0, new Set(), { file, required: true });
    for (const t of values) modules.set(t.name, tf.tensor(t.data, t.shape, 'float32'));
  } catch (e) {
    resources.dispose();
    tf.dispose([...modules.values()]);
    throw e;
  }
  return {
    method,
    prefixer: lingualiftPrefixer(
      method,
      resources,
      modules,
      { encode: (t, o) => tokenizer.encode(t, o), eosId },
      maxTokens,
    ),
    dispose: () => {
      resources.dispose();
      tf.dispose([...modules.values()]);
    },
  };
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
  const start = startId(tokenizer);
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
  prefixer: (run, ctx) =>
    lingualiftPrefixer(run.method, resourcesOf(run.resources), run.modules, ctx.tokenizer, ctx.maxSeqLen),
  moduleMetadata: (method, ctx) => ({
    [LINGUALIFT_METADATA.encoder]: method.encoder.path,
    [LINGUALIFT_METADATA.maxTokens]: String(ctx.maxSeqLen),
  }),
  // The frozen encoder runs before the gradient tape: no gradient flows into it, and its
  // activations are not kept for the backward pass; only the alignment layer is on the tape.
  prepare: (run, batch) => [resourcesOf(run.resources).encode(encoderIdsOfBatch(batch.samples)).states],
  loss: (run: MethodRun<Spec>, batch) => {
    const states = batch.prepared?.[0] as tf.Tensor3D | undefined;
    if (!states) throw new Error('lingualift: the loss needs the encoder states of prepare');
    const edit = alignmentEdit(run.method, run.modules, states, encoderPad(encoderIdsOfBatch(batch.samples)));
    return run.model.nllRowSums(batch.inputIds, batch.labels, { hooks: { embeddings: () => edit } });
  },
};
