/**
 * What a rank keeps of a job between steps and between generations: the step, the float32 master
 * copies of what trains, the optimizer's arrays, and (in a holder that outlives a generation) the
 * loaded model.
 */
import type { LlamaModel } from '../model/llama.js';
import type { Optimizer } from './optimizers.js';

/** What a rank holds of a job: enough to go on from `step`. Updated in place after every step. */
export interface TrainingState {
  /** Optimizer steps completed = the next global step. */
  step: number;
  readonly params: readonly Float32Array[];
  readonly optimizer: Optimizer;
}

/** Outlives a generation: the worker keeps one per job, so a re-formed world can go on from it. */
export interface StateHolder {
  state: TrainingState | undefined;
  /**
   * The loaded model, kept for the job's next generation (loading 7B from disk takes minutes): its
   * frozen tensors never change, and a resuming generation sets the trainable ones from the state
   * the ranks agree on. Freed by `releaseHolder`.
   */
  model?: LlamaModel;
}

/** Frees what a holder keeps (when its job is over on this worker). */
export function releaseHolder(holder: StateHolder): void {
  holder.model?.dispose();
  holder.model = undefined;
  holder.state = undefined;
}
