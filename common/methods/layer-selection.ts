/**
 * The fields a method shares when it trains some modules of some layers (slam, freeze, cctuning,
 * lingualift's task stage): `layers` (a list, or `auto` with `analysis`: the
 * layer analysis picks them), `modules`, and their rules and tensor names.
 */
import { z } from 'zod';
import type { SpecIssue } from '../errors.js';
import { analysisIssues, analysisSchema, DEFAULT_ANALYSIS_K, type AnalysisSpec } from '../eval-spec.js';
import { nonNegativeInt } from '../spec-primitives.js';

export const FFN_MODULES = ['gate_proj', 'up_proj', 'down_proj'] as const;
export const ATTENTION_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
/** What `method.modules` may name: a projection, a norm, or a whole block (`mlp`, `self_attn`). */
export const LAYER_MODULES = [
  ...FFN_MODULES,
  ...ATTENTION_MODULES,
  'input_layernorm',
  'post_attention_layernorm',
  'mlp',
  'self_attn',
] as const;
export type LayerModule = (typeof LAYER_MODULES)[number];

/** The zod fields `layers`, `modules`, `analysis`, to spread into a method's strict object. */
export const layerSelectionFields = {
  layers: z.union([z.array(nonNegativeInt).min(1, 'must name at least one layer'), z.literal('auto')]).optional(),
  modules: z
    .array(z.enum(LAYER_MODULES, { message: `must be one of ${LAYER_MODULES.join(', ')}` }))
    .min(1, 'must name at least one module')
    .optional(),
  /** With `layers: auto`: the layer analysis that picks them (common/eval-spec.ts). */
  analysis: analysisSchema.optional(),
};

export interface LayerSelection {
  readonly layers?: number[] | 'auto';
  readonly modules?: LayerModule[];
  readonly analysis?: AnalysisSpec;
}

/** `auto` needs `analysis` and only it allows it; no layer twice; the analysis's own rules. */
export function layerSelectionIssues(m: LayerSelection, path: string): SpecIssue[] {
  const issues: SpecIssue[] = [];
  if (m.layers === 'auto' && m.analysis === undefined) {
    issues.push({
      path: `${path}.analysis`,
      message: 'is required with layers "auto" (the probe prompts of the layer analysis)',
    });
  }
  if (m.analysis !== undefined && m.layers !== 'auto') {
    issues.push({ path: `${path}.analysis`, message: 'is only allowed with layers "auto"' });
  }
  if (m.analysis !== undefined) issues.push(...analysisIssues(m.analysis, `${path}.analysis`));
  if (Array.isArray(m.layers) && new Set(m.layers).size !== m.layers.length) {
    issues.push({ path: `${path}.layers`, message: 'must not repeat a layer' });
  }
  return issues;
}

/** Every listed layer is below the model's depth. */
export function layerDepthIssues(m: LayerSelection, numLayers: number, path: string): SpecIssue[] {
  if (numLayers <= 0 || !Array.isArray(m.layers)) return [];
  return m.layers.flatMap((layer, i) =>
    layer < numLayers
      ? []
      : [
          {
            path: `${path}.layers[${i}]`,
            message: `layer ${layer} is past the model's depth (${numLayers} layers: 0-${numLayers - 1})`,
          },
        ],
  );
}

function tensorPrefix(layer: number, module: string): string {
  if ((FFN_MODULES as readonly string[]).includes(module)) return `model.layers.${layer}.mlp.${module}.`;
  if ((ATTENTION_MODULES as readonly string[]).includes(module)) return `model.layers.${layer}.self_attn.${module}.`;
  return `model.layers.${layer}.${module}.`; // a norm, or a whole block: mlp, self_attn
}

/** The tensors of `modules` of `layers` among `allNames`, in their order; an error when none. */
export function layerTensorNames(
  method: string,
  layers: readonly number[],
  modules: readonly string[],
  allNames: readonly string[],
): string[] {
  const prefixes = layers.flatMap((l) => modules.map((m) => tensorPrefix(l, m)));
  const chosen = allNames.filter((n) => prefixes.some((p) => n.startsWith(p)));
  if (chosen.length === 0) {
    throw new Error(
      `method ${method} selects no tensor of this model (layers ${layers.join(',')}, modules ${modules.join(',')})`,
    );
  }
  return chosen;
}

/**
 * With `layers: auto` the analysis has not chosen yet, but every layer has the same shapes, so
 * k of them (the analysis's `k`) count the same whichever they are: layers 0..k-1.
 */
export function countedLayers<M extends LayerSelection>(m: M, numLayers: number): M {
  if (m.layers !== 'auto') return m;
  const k = Math.min(m.analysis?.k ?? DEFAULT_ANALYSIS_K, numLayers);
  return { ...m, layers: Array.from({ length: k }, (_, i) => i) };
}
