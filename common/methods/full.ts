/**
 * Full fine-tuning (a baseline): every tensor trains. `layers`, `modules` and `analysis` are
 * refused, with a message saying why, and typed `undefined` so that code reading them off any
 * method's block needs no case for this one.
 */
import { z } from 'zod';
import type { MethodContract } from './contract.js';

const FULL_SELECTS_ALL = 'method full trains every tensor: layers and modules must not be set';

/** A field a method does not take: only absent passes, and the message says why. */
const notAllowed = (message: string) => z.custom<undefined>((v) => v === undefined, { message }).optional();

export const fullSchema = z.strictObject({
  name: z.literal('full'),
  layers: notAllowed(FULL_SELECTS_ALL),
  modules: notAllowed(FULL_SELECTS_ALL),
  analysis: notAllowed('method full picks no layers: analysis must not be set'),
});
export type FullSpec = z.infer<typeof fullSchema>;

export const fullContract: MethodContract<FullSpec> = {
  name: 'full',
  schema: fullSchema,
  issues: () => [],
  modelIssues: () => [],
  trainableTensorNames: (_m, _numLayers, allNames) => [...allNames],
};
