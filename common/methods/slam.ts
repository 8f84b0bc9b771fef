/**
 * SLAM (Fan et al., COLING 2025): only the FFN `up_proj` and `down_proj` of a few low,
 * language-specific layers train (layers 0-5 of LLaMA-2 7B/13B: 8.0% and 6.5% of the parameters),
 * in one stage. `layers: auto` lets the layer analysis pick them.
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';
import {
  countedLayers,
  layerDepthIssues,
  layerSelectionFields,
  layerSelectionIssues,
  layerTensorNames,
} from './layer-selection.js';

export const SLAM_DEFAULT_LAYERS = [0, 1, 2, 3, 4, 5] as const;
export const SLAM_DEFAULT_MODULES = ['up_proj', 'down_proj'] as const;

export const slamSchema = z.strictObject({ name: z.literal('slam'), ...layerSelectionFields });
export type SlamSpec = z.infer<typeof slamSchema>;

export const slamContract: MethodContract<SlamSpec> = {
  name: 'slam',
  schema: slamSchema,
  issues: (m, path) => layerSelectionIssues(m, path),
  modelIssues: (m, numLayers, path) => layerDepthIssues(m, numLayers, path),
  trainableTensorNames: (m, numLayers, allNames) =>
    layerTensorNames(
      'slam',
      Array.isArray(m.layers) ? m.layers : SLAM_DEFAULT_LAYERS.filter((l) => l < numLayers),
      m.modules ?? SLAM_DEFAULT_MODULES,
      allNames,
    ),
  forCounting: countedLayers,
};
