/**
 * A job as the coordinator stores it (JSON in the `polytune_jobs` KV bucket), its lifecycle, and
 * its conversion to the wire `Job` message.
 */
import { z } from 'zod';
import { errorMessage, JobSpecError } from '../common/errors.js';
import { jobKindOf, jobSpecFromObject, type AnyJobSpec } from '../common/job-kinds.js';
import { isJobName } from '../common/subjects.js';
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
  /**
   * A job of several stages (spec.stages): the stage it is in, 0-based, as the last progress said
   * (before any: the first stage, or, for a resumed job, unknown and absent); absent for a job of one stage.
   */
  stage?: JobStage;
  /** The last reported step's loss per language. */
  lossByLanguage: Record<string, number>;
  /**
   * CC-Tuning's Decision Maker: per language, the samples that chose each layer over the current
   * generation's steps, as the last progress said; absent for other methods.
   */
  layerChoices?: Record<string, number[]>;
  /** One row per generation, for the job's timings (job-timings.ts); absent in older records. */
  generations?: GenerationRecord[];
  outputDir: string;
  /** Who submitted it (auth.ts `clientIdentity`), for the Pending cap; absent in older records. */
  readonly submittedBy?: string;
  readonly createdAt: number;
  updatedAt: number;
  startedAt: number;
  finishedAt: number;
}

/** Where a job of several stages is: `index` (0-based) of `count`, named `name`. */
export interface JobStage {
  readonly index: number;
  readonly count: number;
  readonly name: string;
}

/** A fresh Pending record for a validated spec. */
export function newJobRecord(
  id: string,
  spec: AnyJobSpec,
  numLayers: number,
  now = Date.now(),
  resume = false,
  submittedBy?: string,
): JobRecord {
  const stages = jobKindOf(spec).stageNames(spec);
  return {
    ...(submittedBy !== undefined ? { submittedBy } : {}),
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
    // A resumed job may start at any stage: it says which in its first progress.
    ...(stages.length > 0 && !resume ? { stage: { index: 0, count: stages.length, name: stages[0]! } } : {}),
    outputDir: spec.spec.output.dir,
    createdAt: now,
    updatedAt: now,
    startedAt: 0,
    finishedAt: 0,
  };
}

/**
 * The shape of a stored record, for reading it back from the store, which is not trusted (anyone
 * with access to the NATS account can write the bucket). Loose: fields added by a newer
 * coordinator are kept, not dropped. The spec is checked apart (`parseStoredRecord`).
 */
const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const time = z.number().nonnegative().max(8.64e15);
const finite = z.number().refine(Number.isFinite, 'must be finite');
export const jobRecordSchema = z.looseObject({
  id: z.string().refine(isJobName, 'must be a job id'),
  name: z.string().max(63),
  state: z.enum(Object.values(JobState) as [JobState, ...JobState[]]),
  spec: z.record(z.string(), z.unknown()),
  numLayers: count,
  step: count,
  totalSteps: count,
  epoch: count,
  firstLoss: finite.nullable(),
  lastLoss: finite.nullable(),
  tokensPerSecond: z.number().nonnegative(),
  elapsedSeconds: z.number().nonnegative(),
  error: z.string().max(64 * 1024),
  generation: count,
  workers: z.array(z.string().max(253)).max(4096),
  // Fields added after the first release: records written before them read with their defaults.
  resume: z.boolean().default(false),
  reforms: count.default(0),
  chosenLayers: z.array(count).max(4096).optional(),
  evalJson: z
    .string()
    .max(4 * 1024 * 1024)
    .optional(),
  lossByLanguage: z.record(z.string().max(16), finite).default({}),
  layerChoices: z.record(z.string().max(16), z.array(count).max(4096)).optional(),
  generations: z
    .array(
      z.looseObject({
        generation: count,
        worldSize: count,
        startedAt: time,
        endedAt: time,
        computeSeconds: z.number().nonnegative().refine(Number.isFinite, 'must be finite'),
        fromStep: count,
        endReason: z.string().max(64 * 1024),
      }),
    )
    .max(4096)
    .optional(),
  outputDir: z.string().max(4096),
  submittedBy: z.string().max(256).optional(),
  // A job of several stages; checked against the spec's stages in parseStoredRecord.
  stage: z.strictObject({ index: count, count, name: z.string().max(63) }).optional(),
  createdAt: time,
  updatedAt: time,
  startedAt: time,
  finishedAt: time,
});

/** Why a stored value is not a usable record: `unreadable` (not JSON, wrong shape) or `spec` (an invalid spec). */
export type BadRecordReason = 'unreadable' | 'spec';

export type ParsedRecord =
  | { readonly ok: true; readonly record: JobRecord }
  | { readonly ok: false; readonly reason: BadRecordReason; readonly message: string; readonly record?: JobRecord };

/**
 * A stored value as a record: JSON, the record's shape, its id the key, and its spec valid by
 * the same parser as a submitted one (paths in it are absolute). A value whose record is readable
 * but whose spec is not comes back with the record, so that it can be marked Failed.
 */
export function parseStoredRecord(key: string, text: string): ParsedRecord {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'unreadable', message: 'not JSON' };
  }
  const parsed = jobRecordSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'bad shape';
    return { ok: false, reason: 'unreadable', message: `not a job record (${where})` };
  }
  if (parsed.data.id !== key) {
    return { ok: false, reason: 'unreadable', message: `holds the record of job ${parsed.data.id}, not ${key}` };
  }
  const record = parsed.data as unknown as JobRecord;
  try {
    const spec = jobSpecFromObject(record.spec, { source: `stored job ${key}` });
    // A stage the spec does not have (index, count or name) is dropped: the next progress sets it.
    const names = jobKindOf(spec).stageNames(spec);
    const { stage, ...rest } = record;
    const known = stage && stage.count === names.length && names[stage.index] === stage.name;
    return { ok: true, record: { ...rest, ...(known ? { stage } : {}), spec } };
  } catch (e) {
    const message =
      e instanceof JobSpecError ? e.issues.map((i) => `${i.path}: ${i.message}`).join('; ') : errorMessage(e);
    return { ok: false, reason: 'spec', message: `its spec is invalid: ${message}`, record };
  }
}

const WIRE_STATE = {
  Pending: 'PENDING',
  Running: 'RUNNING',
  Succeeded: 'SUCCEEDED',
  Failed: 'FAILED',
  Cancelled: 'CANCELLED',
} as const satisfies Record<JobState, string>;

/** The wire form of a record (its timings by the clock now); without its spec for `List` (`withSpec: false`). */
export function toWireJob(r: JobRecord, ledger?: Ledger, options: { withSpec?: boolean } = {}): Job {
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
    layerChoices: Object.fromEntries(Object.entries(r.layerChoices ?? {}).map(([l, counts]) => [l, { counts }])),
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
    specJson: options.withSpec === false ? '' : JSON.stringify(r.spec),
    tokensPerSecond: r.tokensPerSecond,
    elapsedSeconds: r.elapsedSeconds,
    epoch: r.epoch,
    stageIndex: r.stage?.index ?? 0,
    stageCount: r.stage?.count ?? 0,
    stageName: r.stage?.name ?? '',
  };
}

/** The record's state from a wire state name (`RUNNING` -> `Running`). */
export function fromWireState(state: string): JobState | undefined {
  for (const [k, v] of Object.entries(WIRE_STATE)) if (v === state) return k as JobState;
  return undefined;
}
