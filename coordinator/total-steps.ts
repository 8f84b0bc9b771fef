/**
 * The number of "steps" of a job, for progress: a TrainJob's optimizer steps, from its training
 * data and spec (common/data-plan.ts); an EvalJob's problems; a LayerAnalysis's probe prompts.
 */
import { expandProblemSets, type ProblemSet } from '../common/eval-spec.js';
import { planSteps } from '../common/data-plan.js';
import type { AnyJobSpec } from '../common/job-kinds.js';
import { loadTrainingSet } from '../common/data-mixture.js';
import { readDataSource } from '../common/records.js';

async function countProblems(sets: readonly ProblemSet[]): Promise<number> {
  let n = 0;
  for (const src of expandProblemSets(sets)) {
    const records = await readDataSource({ path: src.path, format: src.format, language: src.language });
    n += Math.min(records.length, src.limit ?? records.length);
  }
  return n;
}

/** Reads the job's data files (throws `DataFormatError`, a UserError, on bad data). */
export async function computeTotalSteps(spec: AnyJobSpec): Promise<number> {
  if (spec.kind === 'EvalJob') return countProblems(spec.spec.eval.sets);
  if (spec.kind === 'LayerAnalysis') return countProblems(spec.spec.analysis.probe);
  const set = await loadTrainingSet(spec.spec.data, spec.spec.training.seed);
  return planSteps(set.samples.length, spec.spec.training).totalSteps;
}
