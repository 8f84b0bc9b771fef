/**
 * The number of "steps" of a job, for progress: a TrainJob's optimizer steps, from its training
 * data and spec (common/data-plan.ts; a job of several stages: theirs end to end); an EvalJob's
 * problems; a LayerAnalysis's probe prompts. Each kind says how (common/job-kinds.ts).
 *
 * Planning reads the job's data on the coordinator, so it is bounded three ways: the spec's limits
 * (at most 10M samples an epoch, common/spec-primitives.ts), slices that give the event loop a
 * turn (records.ts, data-mixture.ts: heartbeats keep flowing), and at most
 * `MAX_CONCURRENT_PLANS` plans at a time in this process (the others wait), so a burst of submits
 * holds a bounded amount of memory (each plan up to ~40 MB of sample indices and its records).
 */
import { jobKindOf, type AnyJobSpec } from '../common/job-kinds.js';

/** Plans computed at the same time; more wait for a slot. */
export const MAX_CONCURRENT_PLANS = 2;
let plansRunning = 0;
const planQueue: (() => void)[] = [];

async function inPlanSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (plansRunning >= MAX_CONCURRENT_PLANS) await new Promise<void>((resolve) => planQueue.push(resolve));
  else plansRunning++;
  try {
    return await fn();
  } finally {
    const next = planQueue.shift();
    if (next)
      next(); // the slot passes to the next plan
    else plansRunning--;
  }
}

/** Reads the job's data files (throws `DataFormatError`, a UserError, on bad data). */
export async function computeTotalSteps(spec: AnyJobSpec): Promise<number> {
  return inPlanSlot(() => jobKindOf(spec).totalSteps(spec));
}
