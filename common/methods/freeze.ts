/**
 * Freeze tuning (a baseline): the chosen `modules` (default: all of a layer) of the chosen
 * `layers` train; a module is a projection (`up_proj`, `q_proj`, ...), a norm, or a whole block
 * (`mlp`, `self_attn`).
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';
import {
  countedLayers,
  LAYER_MODULES,
  layerDepthIssues,
  layerSelectionFields,
  layerSelectionIssues,
  layerTensorNames,
} from './layer-selection.js';

export const freezeSchema = z.strictObject({ name: z.literal('freeze'), ...layerSelectionFields });
export type FreezeSpec = z.infer<typeof freezeSchema>;

export const freezeContract: MethodContract<FreezeSpec> = {
  name: 'freeze',
  schema: freezeSchema,
  issues: (m, path) => [
    ...layerSelectionIssues(m, path),
    ...(m.layers === undefined ? [{ path: `${path}.layers`, message: 'is required for method freeze' }] : []),
  ],
  modelIssues: (m, numLayers, path) => layerDepthIssues(m, numLayers, path),
  trainableTensorNames: (m, _numLayers, allNames) =>
    layerTensorNames('freeze', Array.isArray(m.layers) ? m.layers : [], m.modules ?? LAYER_MODULES, allNames),
  forCounting: countedLayers,
};
