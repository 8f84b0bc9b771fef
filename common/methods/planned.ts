/**
 * Methods whose names are reserved (DESIGN.md's table) but not implemented yet: LinguaLIFT,
 * CC-Tuning (translation-calibrated pruning is a job kind: prune.ts). Their blocks parse with the
 * shared layer fields so that a spec naming one is refused at submit with one clear issue at `spec.method.name`, not a
 * list of unknown fields. Implementing one replaces its entry here with its own file.
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';
import { layerSelectionFields } from './layer-selection.js';

export const lingualiftSchema = z.strictObject({ name: z.literal('lingualift'), ...layerSelectionFields });
export const cctuningSchema = z.strictObject({ name: z.literal('cctuning'), ...layerSelectionFields });

type Planned = z.infer<typeof lingualiftSchema> | z.infer<typeof cctuningSchema>;

function planned<S extends Planned>(name: S['name'], schema: z.ZodType<S>): MethodContract<S> {
  return {
    name,
    schema,
    implemented: false,
    issues: () => [],
    modelIssues: () => [],
    trainableTensorNames: () => {
      throw new Error(`method ${name} is not implemented yet`);
    },
  };
}

export const lingualiftContract = planned('lingualift', lingualiftSchema);
export const cctuningContract = planned('cctuning', cctuningSchema);
