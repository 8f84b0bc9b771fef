/** The worker's methods: the registry, the `TrainingMethod` interface, and the layer analysis (a job kind). */
export { trainingMethodFor } from './registry.js';
export { initModules, startingModules } from './modules.js';
export type {
  LossBatch,
  MethodResources,
  MethodRun,
  ModuleInit,
  ModuleSource,
  ModuleTensor,
  TrainingMethod,
  TrainingSamples,
} from './training-method.js';
