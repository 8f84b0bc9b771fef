/**
 * The worker's method registry: each implemented method's name to its `TrainingMethod` (as tfjs's
 * `registerKernel` maps a kernel to its implementation). The only place on the worker that
 * dispatches on a method's name; the names and spec blocks are common/methods/'s table.
 */
import { UserError } from '../../common/errors.js';
import { SUPPORTED_METHODS, type MethodName, type MethodSpec, type MethodSpecOf } from '../../common/methods/index.js';
import { cctuning } from './cctuning.js';
import { freeze } from './freeze.js';
import { full } from './full.js';
import { slam } from './slam.js';
import type { TrainingMethod } from './training-method.js';

const TRAINING_METHODS: { readonly [N in MethodName]?: TrainingMethod<MethodSpecOf<N>> } = {
  slam,
  freeze,
  full,
  cctuning,
};

/** The `TrainingMethod` of a spec's method block; a `UserError` for a method this worker cannot train. */
export function trainingMethodFor<M extends MethodSpec>(method: M): TrainingMethod<M> {
  const m = TRAINING_METHODS[method.name];
  if (!m)
    throw new UserError(
      `method ${method.name} is not implemented by this worker (supported: ${SUPPORTED_METHODS.join(', ')})`,
    );
  return m as unknown as TrainingMethod<M>;
}
