/**
 * Which tensors a method trains, in HF naming. Everything else stays frozen and is exported
 * bit-identical to the input.
 *
 * - slam: `mlp.up_proj` and `mlp.down_proj` of `layers` (default 0-5), one stage (SLAM, Fan et al.).
 * - freeze: the chosen `modules` (default: all of a layer) of the chosen `layers`; a module is a
 *   projection (`up_proj`, `q_proj`, ...), a norm, or a whole block (`mlp`, `self_attn`).
 * - full: every tensor.
 */
import { ATTENTION_MODULES, FFN_MODULES, LAYER_MODULES, type JobSpec } from './jobspec.js';
import { expectedTensorShapes, type LlamaConfig } from './model-config.js';

export const SLAM_DEFAULT_LAYERS = [0, 1, 2, 3, 4, 5] as const;
export const SLAM_DEFAULT_MODULES = ['up_proj', 'down_proj'] as const;

function tensorPrefix(layer: number, module: string): string {
  if ((FFN_MODULES as readonly string[]).includes(module)) return `model.layers.${layer}.mlp.${module}.`;
  if ((ATTENTION_MODULES as readonly string[]).includes(module)) return `model.layers.${layer}.self_attn.${module}.`;
  return `model.layers.${layer}.${module}.`; // a norm, or a whole block: mlp, self_attn
}

/** The trainable tensor names among `allNames` (the model's tensors), in the model's order. */
export function trainableTensorNames(method: JobSpec['spec']['method'], numLayers: number, allNames: readonly string[]): string[] {
  if (method.name === 'full') return [...allNames];
  const layers = Array.isArray(method.layers)
    ? method.layers
    : method.name === 'slam' ? SLAM_DEFAULT_LAYERS.filter((l) => l < numLayers) : [];
  const modules: readonly string[] = method.modules ?? (method.name === 'slam' ? SLAM_DEFAULT_MODULES : LAYER_MODULES);
  const prefixes = layers.flatMap((l) => modules.map((m) => tensorPrefix(l, m)));
  const chosen = allNames.filter((n) => prefixes.some((p) => n.startsWith(p)));
  if (chosen.length === 0) throw new Error(`method ${method.name} selects no tensor of this model (layers ${layers.join(',')}, modules ${modules.join(',')})`);
  return chosen;
}

/**
 * Parameters of the model and of what the method trains, from config.json's shapes. With
 * `layers: auto` the analysis has not chosen yet, but every layer has the same shapes, so k of
 * them (the analysis's `k`) count the same whichever they are.
 */
export function parameterCounts(method: JobSpec['spec']['method'], config: LlamaConfig): { trainable: number; total: number } {
  const shapes = expectedTensorShapes(config);
  const numel = (name: string): number => shapes.get(name)!.reduce((a, b) => a * b, 1);
  const names = [...shapes.keys()];
  const counted = method.layers === 'auto'
    ? { ...method, layers: Array.from({ length: Math.min(method.analysis?.k ?? SLAM_DEFAULT_LAYERS.length, config.numHiddenLayers) }, (_, i) => i) }
    : method;
  return {
    trainable: trainableTensorNames(counted, config.numHiddenLayers, names).reduce((n, name) => n + numel(name), 0),
    total: names.reduce((n, name) => n + numel(name), 0),
  };
}

/** "541.1M of 6.74B parameters (8.0%)". */
export function describeTrainable(counts: { trainable: number; total: number }): string {
  const human = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(1)}K`);
  return `${human(counts.trainable)} of ${human(counts.total)} parameters (${((100 * counts.trainable) / counts.total).toFixed(1)}%)`;
}
