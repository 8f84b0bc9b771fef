/** The model role: config, safetensors io, tokenizer, the LLaMA forward and loss, generation. */
export {
  ModelType,
  checkSequenceLength,
  eosIds,
  expectedTensorShapes,
  layerTensorName,
  parseLlamaConfig,
  readLlamaConfig,
} from '../../common/model-config.js';
export type { LlamaConfig, RopeScaling } from '../../common/model-config.js';
export {
  DEFAULT_CHUNK_ELEMS,
  FloatDtype,
  INDEX_FILE,
  SINGLE_FILE,
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  listModelTensors,
  readModelTensorChunks,
  readModelTensors,
  readSafetensors,
  readSafetensorsHeader,
  tensorBytes,
  writeSafetensors,
  writeSafetensorsStreaming,
} from './safetensors.js';
export type {
  NamedTensor,
  SafetensorsHeader,
  TensorChunk,
  TensorInfo,
  TensorToWrite,
  WriteSafetensorsOptions,
} from './safetensors.js';
export { DEFAULT_MAX_SHARD_BYTES, exportModel, shardName } from './export.js';
export type { ExportModelOptions, ExportedModel } from './export.js';
export { ModelTokenizer } from './tokenizer.js';
export type { DecodeOptions, EncodeOptions } from './tokenizer.js';
export { LlamaModel } from './llama.js';
export { T5Encoder, geluNew, relativePositionBucket } from './t5-encoder.js';
export type { EncoderLoadOptions } from './t5-encoder.js';
export { IGNORE_INDEX } from '../../common/records.js';
export { MASKED, causalMask, gatherRows, rmsNorm, scatterRows } from './ops.js';
export { applyRope, ropeInvFreq, ropeTables, ropeTensors } from './rope.js';
export type { ForwardOptions, ForwardResult, KvCache, LoadOptions, LossOptions } from './llama.js';
export { LINEAR_NAMES } from './hooks.js';
export type { AddRows, EmbeddingEdit, ForwardHooks, HookShape, LinearName } from './hooks.js';
export { DEFAULT_MAX_NEW_TOKENS, FinishReason, generate, generateIds } from './generate.js';
export type { GenerateIdsOptions, GenerateOptions, GeneratedIds, Generation } from './generate.js';
export { PRESET_CONFIGS, PresetName, SeededRandom, presetTensors } from './presets.js';
export { matMul, transposeLast } from './matmul.js';
export { registerGradients } from './gradients.js';
