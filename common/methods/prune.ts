/**
 * `method: { name: prune }` on a TrainJob: pruning trains nothing, so it is a job kind of its own
 * (`kind: PruneJob` with `spec.prune`, common/prune-spec.ts). The name stays in the method table
 * so that a TrainJob naming it is refused at submit with one issue at `spec.method.name` pointing
 * there, whatever other fields the block has, instead of "must be one of ...".
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';
import { layerSelectionFields } from './layer-selection.js';

/** Loose on purpose: the fields of a misplaced block (`sparsity`, ...) are not the problem to report. */
export const pruneSchema = z.looseObject({ name: z.literal('prune'), ...layerSelectionFields });
type PruneMethod = z.infer<typeof pruneSchema>;

export const pruneContract: MethodContract<PruneMethod> = {
  name: 'prune',
  schema: pruneSchema,
  refusal:
    'is not a training method: pruning is its own job kind, kind: PruneJob with spec.prune ' +
    '(sparsity or pattern, modules, layers, calibration; README "Pruning")',
  issues: () => [],
  modelIssues: () => [],
  trainableTensorNames: () => {
    throw new Error('prune is a job kind (PruneJob), not a training method');
  },
};
