/**
 * `coordinator status`: the jobs as a table (`kubectl get` style: id, kind, state, stage,
 * step/total, loss, rate, age; `-o wide` adds generation, world, wall time and ETA) and one job as
 * a readable block (state, stage, generation and world, step/total, losses, rate, ETA, the time
 * it took and lost, the ledger, outputs). `-o json|yaml` are for scripts; `--json` stays `-o json`.
 * Pure functions of wire jobs and a clock.
 */
import { UsageError } from '../../common/cli.js';
import type { Ledger, StepRange } from '../ledger.js';
import {
  ageSeconds,
  etaSeconds,
  formatDuration,
  formatLoss,
  formatRate,
  generationStepRate,
  jobRate,
  kindOf,
  kindUnits,
  languageLosses,
  layerChoiceLines,
  stateName,
  type JobView,
} from './job-view.js';

export const OUTPUT_FORMATS = ['table', 'wide', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** `-o` / `--json` as a format; a wrong `-o` is a usage error naming the flag. */
export function outputFormat(o: string | undefined, json: boolean | undefined): OutputFormat {
  if (json && o !== undefined && o !== 'json') throw new UsageError(`--json and -o ${o} disagree: give one`);
  if (json) return 'json';
  if (o === undefined) return 'table';
  if (!(OUTPUT_FORMATS as readonly string[]).includes(o) || o === 'table') {
    throw new UsageError(`-o: must be one of json, yaml, wide, got "${o}"`);
  }
  return o as OutputFormat;
}

/** The timings part of `status --json`: wall, compute and re-forming seconds, and per generation. */
export function timingsJson(job: JobView): Record<string, unknown> {
  return {
    wallSeconds: job.wallSeconds,
    generationSeconds: job.generations.at(-1)?.wallSeconds ?? 0,
    computeSeconds: job.computeSeconds,
    reformSeconds: job.reformSeconds,
    generations: job.generations.map((g) => ({
      generation: Number(g.generation),
      worldSize: g.worldSize,
      startedAt: g.startedAt ? new Date(Number(g.startedAt)).toISOString() : null,
      endedAt: g.endedAt ? new Date(Number(g.endedAt)).toISOString() : null,
      wallSeconds: g.wallSeconds,
      computeSeconds: g.computeSeconds,
      fromStep: Number(g.fromStep),
      ...(g.endReason ? { endReason: g.endReason } : {}),
    })),
  };
}

function align(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) =>
    r
      .map((cell, c) => cell.padEnd(widths[c]!))
      .join('   ')
      .trimEnd(),
  );
}

const stepText = (j: JobView): string =>
  j.totalSteps > 0 ? `${j.step}/${j.totalSteps}` : j.step > 0 ? String(j.step) : '-';
const stageCell = (j: JobView): string =>
  j.stageCount ? `${(j.stageIndex ?? 0) + 1}/${j.stageCount} ${j.stageName ?? ''}` : '-';

/** The jobs as table lines, header first. */
export function statusTable(jobs: readonly JobView[], wide: boolean, now: number): string[] {
  const head = ['ID', 'KIND', 'STATE', 'STAGE', 'STEP', 'LOSS', 'RATE', 'AGE'];
  if (wide) head.push('GEN', 'WORKERS', 'WALL', 'ETA');
  const rows = jobs.map((j) => {
    const s = stateName(j);
    const row = [
      // A Pending job that ran before is waiting for its next gang, not queued: say so.
      j.id,
      kindOf(j),
      s === 'Pending' && j.generation > 0 ? 'Pending (re-forming)' : s,
      stageCell(j),
      stepText(j),
      j.hasLoss ? formatLoss(j.lastLoss) : '-',
      s === 'Running' ? formatRate(jobRate(j)) : '-',
      formatDuration(ageSeconds(j, now)),
    ];
    if (wide) {
      const eta = s === 'Running' ? etaSeconds(j, generationStepRate(j)) : undefined;
      const wall = formatDuration(j.wallSeconds || undefined);
      row.push(String(j.generation), String(j.workers.length), wall, formatDuration(eta));
    }
    return row;
  });
  return align([head, ...rows]);
}

function ledgerSummary(ledgerJson: string): string | undefined {
  let ledger: Ledger;
  try {
    ledger = JSON.parse(ledgerJson) as Ledger;
  } catch {
    return undefined;
  }
  // From the coordinator: only a ledger of the right shape is summarised.
  const isRange = (r: unknown): r is StepRange =>
    typeof r === 'object' &&
    r !== null &&
    ['from', 'to', 'generation', 'worldSize'].every((k) => Number.isFinite((r as Record<string, unknown>)[k]));
  if (!Array.isArray(ledger?.committed) || !Array.isArray(ledger.rolledBack)) return undefined;
  if (!ledger.committed.every(isRange) || !ledger.rolledBack.every(isRange)) return undefined;
  const range = (r: StepRange): string =>
    `${r.from}-${r.to} (gen ${r.generation}, world ${r.worldSize}${r.unreported ? ', unreported' : ''})`;
  const committed = ledger.committed.reduce((s, r) => s + r.to - r.from, 0);
  const list = ledger.committed.length ? `: ${ledger.committed.map(range).join(', ')}` : '';
  const parts = [`${committed} steps committed${list}`];
  if (ledger.rolledBack.length) parts.push(`rolled back ${ledger.rolledBack.map(range).join(', ')}`);
  return parts.join('; ');
}

/** One job as a block of `label  value` lines. */
export function statusBlock(job: JobView, now: number): string[] {
  const s = stateName(job);
  const rows: [string, string][] = [
    ['job', `${job.id} (${kindOf(job)})`],
    ['state', s + (job.error ? `: ${job.error}` : '')],
  ];
  if (job.stageCount) rows.push(['stage', `${(job.stageIndex ?? 0) + 1}/${job.stageCount} (${job.stageName ?? ''})`]);
  if (job.generation > 0) {
    const who = job.workers.length ? `: ${job.workers.join(', ')}` : '';
    rows.push(['generation', `${job.generation}, world ${job.workers.length}${who}`]);
  }
  const pct = job.totalSteps > 0 ? ` (${Math.floor((100 * job.step) / job.totalSteps)}%)` : '';
  rows.push([kindUnits(kindOf(job)).step, `${stepText(job)}${pct}`]);
  if (job.hasLoss) {
    const langs = languageLosses(job);
    rows.push(['loss', `${formatLoss(job.firstLoss)} -> ${formatLoss(job.lastLoss)}${langs ? `   (${langs})` : ''}`]);
  }
  layerChoiceLines(job).forEach((l, i) => rows.push([i === 0 ? 'layer choices' : '', l]));
  if (s === 'Running') {
    const eta = etaSeconds(job, generationStepRate(job));
    rows.push(['rate', `${formatRate(jobRate(job))}${eta !== undefined ? `, ETA ${formatDuration(eta)}` : ''}`]);
  }
  const gen = job.generations.at(-1);
  if (job.wallSeconds > 0) {
    const n = job.generations.length - 1;
    const lost = n > 0 ? `, re-forming ${formatDuration(job.reformSeconds)} (${n} re-form${n > 1 ? 's' : ''})` : '';
    rows.push([
      'time',
      `wall ${formatDuration(job.wallSeconds)}, this generation ${formatDuration(gen?.wallSeconds)}, ` +
        `compute ${formatDuration(job.computeSeconds)}${lost}`,
    ]);
  } else {
    rows.push(['age', formatDuration(ageSeconds(job, now))]);
  }
  const ledger = job.ledgerJson ? ledgerSummary(job.ledgerJson) : undefined;
  if (ledger) rows.push(['ledger', ledger]);
  if (job.chosenLayers?.length) rows.push(['layers', job.chosenLayers.join(', ')]);
  rows.push(['output', job.outputDir]);
  const width = Math.max(...rows.map(([l]) => l.length));
  return rows.map(([l, v]) => `${l.padEnd(width)}  ${v}`);
}
