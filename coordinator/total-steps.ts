/** The number of optimizer steps a job will run, from its training data and spec (common/data-plan.ts). */
import { planSteps } from '../common/data-plan.js';
import type { JobSpec } from '../common/jobspec.js';
import { readTrainingRecords } from '../common/records.js';

/** Reads the job's training files (throws `DataFormatError`, a UserError, on bad data). */
export async function computeTotalSteps(spec: JobSpec): Promise<number> {
  const records = await readTrainingRecords(spec.spec.data.train);
  return planSteps(records.length, spec.spec.training).totalSteps;
}
