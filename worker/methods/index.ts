/** The worker's methods: the registry, the `TrainingMethod` interface, and the layer analysis (a job kind). */
export { trainingMethodFor } from './registry.js';
export { initModules } from './modules.js';
export type {
  LossBatch,
  MethodRun,
  ModuleInit,
  ModuleTensor,
  TrainingMethod,
  TrainingSamples,
} from './training-method.js';
