/**
 * The number of "steps" of a job, for progress: a TrainJob's optimizer steps, from its training
 * data and spec (common/data-plan.ts; a job of several stages: theirs end to end); an EvalJob's
 * problems; a LayerAnalysis's probe prompts. Each kind says how (common/job-kinds.ts).
 */
import { jobKindOf, type AnyJobSpec } from '../common/job-kinds.js';

/** Reads the job's data files (throws `DataFormatError`, a UserError, on bad data). */
export function computeTotalSteps(spec: AnyJobSpec): Promise<number> {
  return jobKindOf(spec).totalSteps(spec);
}
