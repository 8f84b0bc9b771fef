/**
 * What a method is to the worker: one `TrainingMethod` object a method, in `worker/methods/<name>.ts`,
 * looked up by name in registry.ts. Only `trainableTensors` is required; everything else is
 * optional and costs nothing when absent (the trainer then does what SLAM, freeze and full do:
 * the summed token NLL of the plain forward pass over the data encoded by the prompt template).
 *
 * The spec side of a method (its block, rules, parameter counts) is its `MethodContract` in
 * common/methods/; this side runs it.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { MethodSpec } from '../../common/methods/index.js';
import type { LlamaConfig } from '../../common/model-config.js';
import type { DataRecord } from '../../common/records.js';
import type { EncodedSample, PromptTokenizer } from '../data/encode.js';
import type { PromptPrefixer } from '../model/generate.js';
import type { ForwardHooks, PromptHooks } from '../model/hooks.js';
import type { LlamaModel } from '../model/llama.js';
import type { NamedTensor } from '../model/safetensors.js';
import type { RowLossInput } from '../train/step.js';

/** How a module tensor starts: zeros, or normal(0, std) drawn from the job's seed. */
export type ModuleInit = { readonly kind: 'zeros' } | { readonly kind: 'normal'; readonly std: number };

/**
 * A tensor of the method's own that is not in the HF checkpoint (a Decision Maker, an alignment
 * layer): it trains with the model's trainable tensors (all-reduced, checkpointed in
 * `trainable.safetensors`) and is written to `final/<method>.safetensors`.
 */
export interface ModuleTensor {
  /** `<module>.<tensor>`, e.g. `decision_maker.weight`; never an HF parameter name. */
  readonly name: string;
  readonly shape: readonly number[];
  readonly init: ModuleInit;
  /**
   * False: the tensor is frozen (not all-reduced, not checkpointed, still written to
   * `final/<method>.safetensors`); it then comes from `moduleSource`. @default true
   */
  readonly trainable?: boolean;
}

/** Where a method's module values start from instead of the seed (a previous stage's final/). */
export interface ModuleSource {
  /** A safetensors file with every module tensor, by name. */
  readonly file: string;
  /** The file must exist (frozen modules have no other start); else a missing file means the seed. */
  readonly required: boolean;
}

/** What a method loads besides the model (an encoder, its tokenizer) for a run; disposed after it. */
export interface MethodResources {
  dispose(): void;
  /** Numbers for the step just done (e.g. the encoder's forward cost), reset by the call. @default none */
  takeStepStats?(): Record<string, number>;
}

/** What a method's hooks and loss see of a run: its block, the model, its module variables by name. */
export interface MethodRun<M extends MethodSpec = MethodSpec> {
  readonly method: M;
  readonly model: LlamaModel;
  readonly modules: ReadonlyMap<string, tf.Variable>;
  /** The job's `training.seed` (for a loss drawing noise as a function of seed, step and sample). */
  readonly seed: number;
  /** What `load` loaded, if the method has it. */
  readonly resources?: MethodResources;
}

/**
 * One micro-batch, as the loss sees it: ids and labels, the encoded samples of its rows (with a
 * paired prompt, if the method's `encode` made one), their indices in the job's sample order,
 * the step, and what `prepare` computed for it.
 */
export interface LossBatch extends RowLossInput {
  /** The method's forward hooks for this run (from `hooks`), if any. */
  readonly hooks?: ForwardHooks;
}

/** The training samples as the method encodes them, by record index. */
export interface TrainingSamples {
  readonly count: number;
  get(index: number): EncodedSample;
}

export interface TrainingMethod<M extends MethodSpec = MethodSpec> {
  readonly name: M['name'];
  /** HF names of the model tensors that train, among `allNames` (the model's), in the model's order. */
  trainableTensors(method: M, config: LlamaConfig, allNames: readonly string[]): string[];
  /** Extra modules: tensors not in the HF checkpoint, initialised from `training.seed`. @default none */
  modules?(method: M, config: LlamaConfig, resources?: MethodResources): ModuleTensor[];
  /** A file the modules start from instead of the seed, given the run's model directory. @default none */
  moduleSource?(method: M, modelDir: string): ModuleSource | undefined;
  /** Loads what the method needs besides the model (before modules, hooks, encoding), once a run. @default nothing */
  load?(method: M, ctx: { readonly config: LlamaConfig; readonly modelDir: string }): Promise<MethodResources>;
  /** Forward hooks (worker/model/hooks.ts) for training and evaluation. @default none */
  hooks?(run: MethodRun<M>): ForwardHooks;
  /**
   * Vectors before each prompt in generation (a TrainJob's `spec.eval`), made from the question
   * with the run's modules; a trained model's are loaded from its final/ (lingualift.ts). @default none
   */
  prefixer?(
    run: MethodRun<M>,
    ctx: { readonly tokenizer: PromptTokenizer; readonly maxSeqLen: number },
  ): PromptPrefixer;
  /** Metadata of `final/<method>.safetensors` besides `format` (what reading it back needs). @default none */
  moduleMetadata?(method: M, ctx: { readonly maxSeqLen: number }): Record<string, string>;
  /**
   * The loss of a micro-batch as per-row sums of token NLL [B], differentiable; the trainer sums
   * the rows and divides by the global batch's supervised tokens (DESIGN.md's loss), and reads the
   * rows for the loss per language. @default `model.nllRowSums(inputIds, labels, { hooks })`
   */
  loss?(run: MethodRun<M>, batch: LossBatch): tf.Tensor1D;
  /**
   * Layers a sample's choice ranges over, for a method whose loss picks a layer per sample
   * (CC-Tuning's Decision Maker: the model's depth); the loss reports each row's pick with
   * `batch.choose(row, layer)` and the trainer sums them over the ranks, per language and layer,
   * into the step report (`choicesByLanguage`). @default none
   */
  choiceLayers?(method: M, config: LlamaConfig): number;
  /**
   * Work of a micro-batch before the gradient tape, so no gradient flows through it and its
   * activations are not kept for the backward pass (CC-Tuning's English pass); its tensors reach
   * `loss` as `batch.prepared` and are disposed with the micro-batch. @default none
   */
  prepare?(run: MethodRun<M>, batch: LossBatch): tf.Tensor[];
  /** One record as token ids and labels. @default worker/data/encode.ts `encodeRecord` (the prompt template) */
  encode?(
    method: M,
    record: DataRecord,
    tokenizer: PromptTokenizer,
    template: string,
    maxSeqLen: number,
    resources?: MethodResources,
  ): EncodedSample;
  /**
   * Hooks for generation with the method's inference-time transform, made from the live model
   * (`eval.ccTransform` on a TrainJob; called on every rank, so it must give the same on each).
   * @default none (the eval refuses ccTransform)
   */
  transformHooks?(run: MethodRun<M>, samples: TrainingSamples): PromptHooks;
  /**
   * More files in `final/` beside the model, `trainable.safetensors` and `<method>.safetensors`
   * (which the trainer writes when the method has modules). `dir` is the temporary directory that
   * is renamed to `final/` once everything is written. @default none
   */
  finalOutputs?(ctx: {
    readonly method: M;
    readonly model: LlamaModel;
    readonly modules: readonly NamedTensor[];
    readonly dir: string;
    /** The training samples (rank 0 encodes what it reads). */
    readonly samples: TrainingSamples;
    /** The job's `training.seed`. */
    readonly seed: number;
  }): Promise<void>;
}
