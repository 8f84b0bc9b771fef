/**
 * SLAM (Fan et al., COLING 2025) on the worker: the FFN up/down projections of the chosen layers
 * train (common/methods/slam.ts); the forward pass, loss and data are the defaults.
 */
import type { MethodSpecOf } from '../../common/methods/index.js';
import { specTrainableTensors } from './layer-methods.js';
import type { TrainingMethod } from './training-method.js';

export const slam: TrainingMethod<MethodSpecOf<'slam'>> = {
  name: 'slam',
  trainableTensors: specTrainableTensors,
};
