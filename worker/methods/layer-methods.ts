/** What slam, freeze and full share on the worker: the tensors their spec block names train, nothing else changes. */
import { trainableTensorNames, type MethodSpec } from '../../common/methods/index.js';
import type { LlamaConfig } from '../../common/model-config.js';

/** The common/methods/ answer for the model's tensors. */
export function specTrainableTensors(method: MethodSpec, config: LlamaConfig, allNames: readonly string[]): string[] {
  return trainableTensorNames(method, config.numHiddenLayers, allNames);
}
