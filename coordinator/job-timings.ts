/**
 * A job's timings, kept in its record so that they survive re-forms and coordinator restarts.
 *
 * Why: the workers report `elapsedSeconds` since *their* assignment began, so after a re-form the
 * record held the current generation's time only (issue 19: `status --json` said 2.1 s for a job
 * that ran 18 s). Here each generation is a row: when it started and ended (by the coordinator's
 * clock), its compute time (rank 0's last `elapsedSeconds` in it) and why it ended. From them:
 *
 * - wall: `startedAt` (the first gang) to `finishedAt`, or to now while it runs;
 * - compute: the sum of the generations' compute times;
 * - re-forming: the gaps between a generation's end and the next one's start. A generation cut by
 *   a coordinator restart ends at the record's last write before it (the last sign of life), so
 *   the time the coordinator was away counts as re-forming, not as nothing.
 *
 * Pure functions of a record and a clock: the scheduler calls them inside its store updates.
 */

/** One generation of a job, as the record keeps it. Times in ms since the Unix epoch. */
export interface GenerationRecord {
  readonly generation: number;
  readonly worldSize: number;
  readonly startedAt: number;
  /** 0 while it runs. */
  readonly endedAt: number;
  /** Rank 0's last reported `elapsedSeconds` in this generation. */
  readonly computeSeconds: number;
  /** The job's step when it started. */
  readonly fromStep: number;
  /** Why it ended; empty while it runs or when the job ended in it. */
  readonly endReason: string;
}

/** What of a record the timings read (older records have no `generations`). */
export interface TimedRecord {
  readonly startedAt: number;
  readonly finishedAt: number;
  readonly generations?: readonly GenerationRecord[];
}

export interface GenerationTimings extends GenerationRecord {
  readonly wallSeconds: number;
}

export interface JobTimings {
  readonly wallSeconds: number;
  readonly computeSeconds: number;
  readonly reformSeconds: number;
  readonly generations: readonly GenerationTimings[];
}

const seconds = (fromMs: number, toMs: number): number => Math.max(0, (toMs - fromMs) / 1000);

/** A new generation begins: a row appended (ending the previous one if it was left open). */
export function openGeneration(
  gens: readonly GenerationRecord[] | undefined,
  g: { generation: number; worldSize: number; fromStep: number },
  now: number,
): GenerationRecord[] {
  const closed = closeGeneration(gens, now, 'replaced by the next generation');
  return [...closed, { ...g, startedAt: now, endedAt: 0, computeSeconds: 0, endReason: '' }];
}

/** The open generation ends at `at` (no-op when none is open). */
export function closeGeneration(
  gens: readonly GenerationRecord[] | undefined,
  at: number,
  reason = '',
): GenerationRecord[] {
  const list = [...(gens ?? [])];
  const last = list.at(-1);
  if (last && last.endedAt === 0) {
    list[list.length - 1] = { ...last, endedAt: Math.max(at, last.startedAt), endReason: reason };
  }
  return list;
}

/** Rank 0 of `generation` reported `elapsedSeconds`: that generation's compute time. */
export function recordCompute(
  gens: readonly GenerationRecord[] | undefined,
  generation: number,
  elapsedSeconds: number,
): GenerationRecord[] {
  const list = [...(gens ?? [])];
  const i = list.findLastIndex((g) => g.generation === generation);
  const g = list[i];
  if (g && Number.isFinite(elapsedSeconds) && elapsedSeconds >= g.computeSeconds) {
    list[i] = { ...g, computeSeconds: elapsedSeconds };
  }
  return list;
}

/** The timings of a record at `now`. */
export function jobTimings(r: TimedRecord, now = Date.now()): JobTimings {
  const gens = r.generations ?? [];
  const end = r.finishedAt || now;
  const generations = gens.map((g) => ({ ...g, wallSeconds: seconds(g.startedAt, g.endedAt || end) }));
  let reformSeconds = 0;
  for (let i = 1; i < gens.length; i++) {
    const prev = gens[i - 1]!;
    if (prev.endedAt > 0) reformSeconds += seconds(prev.endedAt, gens[i]!.startedAt);
  }
  // A job waiting for its next gang is re-forming now.
  const last = gens.at(-1);
  if (last && last.endedAt > 0 && !r.finishedAt) reformSeconds += seconds(last.endedAt, now);
  return {
    wallSeconds: r.startedAt ? seconds(r.startedAt, end) : 0,
    computeSeconds: gens.reduce((s, g) => s + g.computeSeconds, 0),
    reformSeconds,
    generations,
  };
}
