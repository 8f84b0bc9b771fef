/**
 * A job as the coordinator stores it (JSON in the `polytune_jobs` KV bucket), its lifecycle, and
 * its conversion to the wire `Job` message.
 */
import type { AnyJobSpec } from '../common/job-kinds.js';
import type { Job } from '../proto/index.js';
import { jobTimings, type GenerationRecord } from './job-timings.js';
import type { Ledger } from './ledger.js';

/** The job lifecycle. Pending -> Running -> Succeeded | Failed | Cancelled; Running -> Pending on recovery. */
export const JobState = {
  Pending: 'Pending',
  Running: 'Running',
  Succeeded: 'Succeeded',
  Failed: 'Failed',
  Cancelled: 'Cancelled',
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];

export const TERMINAL_STATES: readonly JobState[] = [JobState.Succeeded, JobState.Failed, JobState.Cancelled];

export function isTerminal(state: JobState): boolean {
  return TERMINAL_STATES.includes(state);
}

/** The stored record. Times are milliseconds since the Unix epoch; 0 means "not yet". */
export interface JobRecord {
  readonly id: string;
  readonly name: string;
  state: JobState;
  /** The validated, path-resolved spec (any kind). */
  readonly spec: AnyJobSpec;
  /** Number of model layers found at submit time. */
  readonly numLayers: number;
  step: number;
  totalSteps: number;
  epoch: number;
  /** null until the first progress report. */
  firstLoss: number | null;
  lastLoss: number | null;
  tokensPerSecond: number;
  elapsedSeconds: number;
  error: string;
  /** Incremented each time a gang is formed for the job; 0 before the first. */
  generation: number;
  /** Worker ids of the current gang, by rank. */
  workers: string[];
  /** Submitted with resume: the first generation goes on from the newest valid checkpoint. */
  readonly resume: boolean;
  /** Times the world was re-formed after a lost worker or a failed generation. */
  reforms: number;
  /** Layers chosen by the layer analysis (method.layers auto, LayerAnalysis); absent before. */
  chosenLayers?: number[];
  /** The latest evaluation table (spec.eval, EvalJob) as JSON; absent before one. */
  evalJson?: string;
  /** The last reported step's loss per language. */
  lossByLanguage: Record<string, number>;
  /** One row per generation, for the job's timings (job-timings.ts); absent in older records. */
  generations?: GenerationRecord[];
  outputDir: string;
  readonly createdAt: number;
  updatedAt: number;
  startedAt: number;
  finishedAt: number;
}

/** A fresh Pending record for a validated spec. */
export function newJobRecord(id: string, spec: AnyJobSpec, numLayers: number, now = Date.now(), resume = false): JobRecord {
  return {
    id,
    name: spec.metadata.name,
    state: JobState.Pending,
    spec,
    numLayers,
    step: 0,
    totalSteps: 0,
    epoch: 0,
    firstLoss: null,
    lastLoss: null,
    tokensPerSecond: 0,
    elapsedSeconds: 0,
    error: '',
    generation: 0,
    workers: [],
    resume,
    reforms: 0,
    lossByLanguage: {},
    outputDir: spec.spec.output.dir,
    createdAt: now,
    updatedAt: now,
    startedAt: 0,
    finishedAt: 0,
  };
}

const WIRE_STATE = {
  Pending: 'PENDING',
  Running: 'RUNNING',
  Succeeded: 'SUCCEEDED',
  Failed: 'FAILED',
  Cancelled: 'CANCELLED',
} as const satisfies Record<JobState, string>;

/** The wire form of a record (its timings by the clock now). */
export function toWireJob(r: JobRecord, ledger?: Ledger): Job {
  const t = jobTimings(r);
  return {
    kind: r.spec.kind,
    wallSeconds: t.wallSeconds,
    computeSeconds: t.computeSeconds,
    reformSeconds: t.reformSeconds,
    generations: [...t.generations],
    ledgerJson: ledger ? JSON.stringify(ledger) : '',
    chosenLayers: r.chosenLayers ?? [],
    evalJson: r.evalJson ?? '',
    lossByLanguage: r.lossByLanguage ?? {},
    id: r.id,
    name: r.name,
    state: WIRE_STATE[r.state],
    step: r.step,
    totalSteps: r.totalSteps,
    lastLoss: r.lastLoss ?? 0,
    firstLoss: r.firstLoss ?? 0,
    hasLoss: r.lastLoss !== null,
    error: r.error,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
    generation: r.generation,
    workers: r.workers,
    outputDir: r.outputDir,
    specJson: JSON.stringify(r.spec),
    tokensPerSecond: r.tokensPerSecond,
    elapsedSeconds: r.elapsedSeconds,
    epoch: r.epoch,
  };
}

/** The record's state from a wire state name (`RUNNING` -> `Running`). */
export function fromWireState(state: string): JobState | undefined {
  for (const [k, v] of Object.entries(WIRE_STATE)) if (v === state) return k as JobState;
  return undefined;
}
