/** Full fine-tuning on the worker: every tensor trains (common/methods/full.ts). */
import type { MethodSpecOf } from '../../common/methods/index.js';
import { specTrainableTensors } from './layer-methods.js';
import type { TrainingMethod } from './training-method.js';

export const full: TrainingMethod<MethodSpecOf<'full'>> = {
  name: 'full',
  trainableTensors: specTrainableTensors,
};
