/** Freeze tuning on the worker: the chosen modules of the chosen layers train (common/methods/freeze.ts). */
import type { MethodSpecOf } from '../../common/methods/index.js';
import { specTrainableTensors } from './layer-methods.js';
import type { TrainingMethod } from './training-method.js';

export const freeze: TrainingMethod<MethodSpecOf<'freeze'>> = {
  name: 'freeze',
  trainableTensors: specTrainableTensors,
};
