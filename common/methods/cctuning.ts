/**
 * CC-Tuning (Ye et al., ACL 2025, arXiv 2506.00875): cross-lingual connection at the latent level.
 * Per sample, an English pass (no gradient) gives each decoder layer's FFN output at the last
 * prompt token; a Decision Maker (`decision_maker.weight` [L, hidden], bias-free) picks one layer
 * by a hard Gumbel-softmax at temperature `gumbelTau`; the chosen vector is added to the hidden
 * state at the non-English prompt's last token after decoder layer `injectAfterLayer` (the
 * authors': 0). Every model tensor trains, or, as with freeze, the `modules` of the `layers` given.
 * The worker side is worker/methods/cctuning.ts; docs/methods.md `## CC-Tuning`.
 */
import { z } from 'zod';
import type { SpecIssue } from '../errors.js';
import { nonNegativeInt, nonNegativeIntAtMost, positiveAtMost, SPEC_LIMITS } from '../spec-primitives.js';
import type { MethodContract } from './contract.js';
import { LAYER_MODULES, layerDepthIssues, layerTensorNames } from './layer-selection.js';

/** The file in a CC-Tuning job's `final/` with the Decision Maker and the Transform Matrix. */
export const CCTUNING_FILE = 'cctuning.safetensors';

/**
 * Why CC-Tuning's transform is refused on a model with a LinguaLIFT alignment layer (`file`): the
 * transform's first pass over the prompt would not see the prefix, and no method trains both.
 */
export function transformWithPrefixMessage(file: string): string {
  return `${file}: a LinguaLIFT model's prefix and CC-Tuning's transform (ccTransform) together are not supported`;
}

/** The largest Gumbel-softmax temperature accepted (the paper: 1). */
export const MAX_GUMBEL_TAU = 100;

export const cctuningSchema = z.strictObject({
  name: z.literal('cctuning'),
  /** Temperature of the hard Gumbel-softmax of the Decision Maker; > 0. */
  gumbelTau: positiveAtMost(MAX_GUMBEL_TAU).default(1),
  /** The chosen English FFN output is added after this decoder layer (0-based; the paper: 0). */
  injectAfterLayer: nonNegativeInt.default(0),
  /** Parallel prompt pairs (from the training records) the Transform Matrix is solved on; 0: none. */
  transformSamples: nonNegativeIntAtMost(SPEC_LIMITS.transformSamples).default(1000),
  /** Ridge added to A^T A in the Transform Matrix's least squares (0: plain least squares). */
  transformRidge: z.number().min(0, 'must be >= 0').max(1e6, 'must be <= 1e6').default(0),
  /** As freeze: only these layers' `modules` train (the Decision Maker always does). @default every tensor */
  layers: z.array(nonNegativeInt).min(1, 'must name at least one layer').optional(),
  modules: z
    .array(z.enum(LAYER_MODULES, { message: `must be one of ${LAYER_MODULES.join(', ')}` }))
    .min(1, 'must name at least one module')
    .optional(),
  /** Not taken (no layer analysis picks CC-Tuning's layers); typed so code reading it needs no case. */
  analysis: z
    .custom<undefined>((v) => v === undefined, { message: 'method cctuning takes no layer analysis' })
    .optional(),
});
export type CcTuningSpec = z.infer<typeof cctuningSchema>;

function issues(m: CcTuningSpec, path: string): SpecIssue[] {
  if (m.layers !== undefined && new Set(m.layers).size !== m.layers.length)
    return [{ path: `${path}.layers`, message: 'must not repeat a layer' }];
  return [];
}

/** `injectAfterLayer` and every listed layer below the model's depth (when it is known, > 0). */
function modelIssues(m: CcTuningSpec, numLayers: number, path: string): SpecIssue[] {
  if (numLayers <= 0) return [];
  const out = layerDepthIssues(m, numLayers, path);
  if (m.injectAfterLayer >= numLayers) {
    out.push({
      path: `${path}.injectAfterLayer`,
      message: `layer ${m.injectAfterLayer} is past the model's depth (${numLayers} layers: 0-${numLayers - 1})`,
    });
  }
  return out;
}

export const cctuningContract: MethodContract<CcTuningSpec> = {
  name: 'cctuning',
  schema: cctuningSchema,
  issues,
  modelIssues,
  trainableTensorNames: (m, numLayers, allNames) =>
    m.layers === undefined && m.modules === undefined
      ? [...allNames]
      : layerTensorNames(
          'cctuning',
          m.layers ?? Array.from({ length: numLayers }, (_, i) => i),
          m.modules ?? LAYER_MODULES,
          allNames,
        ),
};
