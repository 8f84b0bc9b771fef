/**
 * Methods as the spec parser and the coordinator see them: each method's spec block, rules and
 * pure functions (which tensors train, parameter counts). The worker's side is worker/methods/.
 */
export {
  METHOD_NAMES,
  SUPPORTED_METHODS,
  describeTrainable,
  methodContract,
  methodForCounting,
  methodIssues,
  methodFileIssues,
  methodFrozenParameters,
  methodModelIssues,
  methodSchema,
  methodStageIssues,
  parameterCounts,
  resolveMethodPaths,
  trainableTensorNames,
} from './method-table.js';
export type { MethodName, MethodSpec, MethodSpecOf } from './method-table.js';
export type { MethodContract } from './contract.js';
export { ATTENTION_MODULES, FFN_MODULES, LAYER_MODULES } from './layer-selection.js';
export type { LayerModule, LayerSelection } from './layer-selection.js';
export { SLAM_DEFAULT_LAYERS, SLAM_DEFAULT_MODULES } from './slam.js';
export {
  DEFAULT_ALIGNMENT_DEPTH,
  LINGUALIFT_FUSIONS,
  LINGUALIFT_MODULES_FILE,
  LINGUALIFT_STAGES,
  alignmentShapes,
  alignmentSource,
  LINGUALIFT_METADATA,
  trainedModelIssues,
  lingualiftSchema,
} from './lingualift.js';
export type { LingualiftSpec } from './lingualift.js';
