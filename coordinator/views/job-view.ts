/**
 * What the CLI's views say about a job, as pure functions of the wire `Job`: its kind, its rate in
 * the kind's own unit, durations, the stage, the ETA. Shared by the status table and block
 * (status-view.ts) and the progress view (progress-view.ts); unit-tested without a server.
 *
 * Units (issue 19: EvalJob and LayerAnalysis showed `0 tok/s` at every line): a TrainJob's rate is
 * the tokens per second its rank 0 reports; an EvalJob's "steps" are problems and a LayerAnalysis's
 * are probe prompts and a PruneJob's are layers (coordinator/total-steps.ts), so theirs are steps per
 * second of the current generation (they start over in a new one). A rate not known yet is absent,
 * never 0. The words are each kind's row of JOB_KIND_TABLE (`units`): `layer 3/8`, `layers/s`.
 */
import { isJobKind, JOB_KIND_TABLE } from '../../common/job-kinds.js';
import { fromWireState } from '../job-record.js';
import type { Job__Output } from '../../proto/index.js';

/** The fields of a job a view reads; the stage fields come with multi-stage jobs (spec.stages). */
export type JobView = Pick<
  Job__Output,
  | 'id'
  | 'name'
  | 'state'
  | 'step'
  | 'totalSteps'
  | 'hasLoss'
  | 'lastLoss'
  | 'firstLoss'
  | 'tokensPerSecond'
  | 'elapsedSeconds'
  | 'generation'
  | 'workers'
  | 'error'
  | 'outputDir'
  | 'createdAt'
  | 'startedAt'
  | 'finishedAt'
  | 'lossByLanguage'
  | 'specJson'
  | 'kind'
  | 'wallSeconds'
  | 'computeSeconds'
  | 'reformSeconds'
  | 'generations'
  | 'ledgerJson'
  | 'chosenLayers'
  | 'evalJson'
> & {
  readonly stageIndex?: number;
  readonly stageCount?: number;
  readonly stageName?: string;
  readonly layerChoices?: Job__Output['layerChoices'];
};

/** A kind's step and rate units (its row of JOB_KIND_TABLE); a kind this CLI does not know: steps. */
export function kindUnits(kind: string): { readonly step: string; readonly rate: string } {
  return isJobKind(kind) ? JOB_KIND_TABLE[kind].units : { step: 'step', rate: 'steps/s' };
}

export function stateName(job: Pick<JobView, 'state'>): string {
  return fromWireState(job.state) ?? job.state;
}

/** The job's kind: the wire field, else the spec's (an older coordinator), else TrainJob. */
export function kindOf(job: Pick<JobView, 'kind' | 'specJson'>): string {
  if (job.kind) return job.kind;
  if (job.specJson) {
    try {
      const k = (JSON.parse(job.specJson) as { kind?: unknown }).kind;
      if (typeof k === 'string') return k;
    } catch {
      // not JSON: fall through
    }
  }
  return 'TrainJob';
}

export interface Rate {
  readonly value: number;
  readonly unit: string;
}

/**
 * The job's rate as the coordinator last heard it: a TrainJob's tokens/s, the other kinds' steps
 * per second of this generation. Undefined before there is one.
 */
export function jobRate(
  job: Pick<JobView, 'kind' | 'specJson' | 'tokensPerSecond' | 'step' | 'elapsedSeconds' | 'generations'>,
): Rate | undefined {
  const kind = kindOf(job);
  if (kind === 'TrainJob') {
    const known = job.tokensPerSecond > 0 && Number.isFinite(job.tokensPerSecond);
    return known ? { value: job.tokensPerSecond, unit: kindUnits(kind).rate } : undefined;
  }
  const done = job.step - Number(job.generations.at(-1)?.fromStep ?? 0);
  if (done <= 0 || !(job.elapsedSeconds > 0)) return undefined;
  return { value: done / job.elapsedSeconds, unit: kindUnits(kind).rate };
}

/** `1234 tok/s`, `3.2 problems/s`: three significant figures at most, no false precision. */
export function formatRate(r: Rate | undefined): string {
  if (!r) return '-';
  const v = r.value >= 100 ? Math.round(r.value).toString() : r.value >= 10 ? r.value.toFixed(1) : r.value.toFixed(2);
  return `${v} ${r.unit}`;
}

/** `42s`, `3m05s`, `2h07m`, `3d04h`; `-` for an unknown one. */
export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const pad = (n: number): string => String(n).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

export const formatLoss = (x: number): string => (Number.isFinite(x) ? x.toFixed(4) : String(x));

/** `stage 2/3 (answers)` for a job of several stages; undefined for a job of one. */
export function stageText(job: Pick<JobView, 'stageIndex' | 'stageCount' | 'stageName'>): string | undefined {
  return job.stageCount ? `stage ${(job.stageIndex ?? 0) + 1}/${job.stageCount} (${job.stageName ?? ''})` : undefined;
}

/** Seconds until the job's last step at `stepsPerSecond`; undefined when that is not known. */
export function etaSeconds(
  job: Pick<JobView, 'step' | 'totalSteps'>,
  stepsPerSecond: number | undefined,
): number | undefined {
  if (!stepsPerSecond || !(stepsPerSecond > 0) || !(job.totalSteps > 0)) return undefined;
  return Math.max(0, job.totalSteps - job.step) / stepsPerSecond;
}

/** Steps per second of the current generation, from the record (for `status`, which has no history). */
export function generationStepRate(job: Pick<JobView, 'step' | 'elapsedSeconds' | 'generations'>): number | undefined {
  const done = job.step - Number(job.generations.at(-1)?.fromStep ?? 0);
  return done > 0 && job.elapsedSeconds > 0 ? done / job.elapsedSeconds : undefined;
}

/** The last step's loss per language, sorted: `de 1.23 en 0.98`. Empty for fewer than two. */
export function languageLosses(job: Pick<JobView, 'lossByLanguage'>): string {
  const byLanguage = Object.entries(job.lossByLanguage ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return byLanguage.length > 1 ? byLanguage.map(([l, v]) => `${l} ${v.toFixed(2)}`).join(' ') : '';
}

/**
 * CC-Tuning's Decision Maker choices per language, as shares of each language's samples by layer
 * (the three most chosen): `sw L0 62% L3 20% L1 9%`; one language a line. Empty without choices.
 */
export function layerChoiceLines(job: Pick<JobView, 'layerChoices'>): string[] {
  return Object.entries(job.layerChoices ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([language, { counts }]) => {
      const total = counts.reduce((s, n) => s + Number(n), 0);
      const top = counts
        .map((n, layer) => ({ layer, n: Number(n) }))
        .filter((x) => x.n > 0)
        .sort((x, y) => y.n - x.n || x.layer - y.layer)
        .slice(0, 3)
        .map((x) => `L${x.layer} ${Math.round((100 * x.n) / total)}%`);
      return `${language} ${top.join(' ')} (${total} samples)`;
    });
}

/** The job's age: since it was created, by `now`. */
export function ageSeconds(job: Pick<JobView, 'createdAt'>, now: number): number | undefined {
  return job.createdAt ? Math.max(0, (now - Number(job.createdAt)) / 1000) : undefined;
}
