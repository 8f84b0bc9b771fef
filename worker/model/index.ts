/** The model role: config, safetensors io, tokenizer, the LLaMA forward and loss, generation. */
export { ModelType, eosIds, expectedTensorShapes, layerTensorName, parseLlamaConfig, readLlamaConfig } from './config.js';
export type { LlamaConfig, RopeScaling } from './config.js';
export {
  FloatDtype, INDEX_FILE, SINGLE_FILE, bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, listModelTensors, readModelTensors,
  readSafetensors, readSafetensorsHeader, writeSafetensors,
} from './safetensors.js';
export type { NamedTensor, SafetensorsHeader, TensorInfo, WriteSafetensorsOptions } from './safetensors.js';
export { ModelTokenizer } from './tokenizer.js';
export type { DecodeOptions, EncodeOptions } from './tokenizer.js';
export { IGNORE_INDEX, LlamaModel, MASKED, causalMask, gatherRows, rmsNorm } from './llama.js';
export type { ForwardOptions, ForwardResult, KvCache, LoadOptions } from './llama.js';
export { DEFAULT_MAX_NEW_TOKENS, FinishReason, generate, generateIds } from './generate.js';
export type { GenerateIdsOptions, GenerateOptions, GeneratedIds, Generation } from './generate.js';
export { PRESET_CONFIGS, PresetName, SeededRandom, presetTensors } from './presets.js';
export { matMul, transposeLast } from './matmul.js';
export { registerGradients } from './gradients.js';
