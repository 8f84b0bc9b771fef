/**
 * Methods whose names are reserved (DESIGN.md's table) but not implemented yet: LinguaLIFT
 * (translation-calibrated pruning is a job kind: prune.ts). Its block parses with the shared layer
 * fields so that a spec naming it is refused at submit with one clear issue at `spec.method.name`,
 * not a list of unknown fields. Implementing one replaces its entry here with its own file.
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';
import { layerSelectionFields } from './layer-selection.js';

export const lingualiftSchema = z.strictObject({ name: z.literal('lingualift'), ...layerSelectionFields });

type Planned = z.infer<typeof lingualiftSchema>;

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
