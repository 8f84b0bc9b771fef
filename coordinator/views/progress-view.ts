/**
 * The progress view of `submit --watch` and `watch` (one job or several, a line each).
 *
 * On a terminal: one live line per job, redrawn in place by log-update (a maintained library, so
 * no hand-written escape codes: it erases what it drew, wraps to the terminal's width and hides
 * the cursor), with a bar, step/total, the loss, the rate in the kind's unit and the ETA from the
 * recent rate; the loss per language on a second line with `--languages`. State changes (Running,
 * a re-form) are printed above it and stay in the scrollback.
 *
 * Not a terminal (CI, logs, a pipe): a line per update, as before, greppable, with the same facts;
 * the loss per language stays on the line.
 *
 * Why the recent rate: a job's first steps include compiling and warming up, and a re-form stops
 * it for a while; the rate over the last RATE_WINDOW_MS says when it ends far better than the
 * average since the start (issue 19: a 580-step job scrolled hundreds of lines with no ETA).
 */
import { createLogUpdate } from 'log-update';
import {
  etaSeconds,
  formatDuration,
  formatLoss,
  formatRate,
  generationStepRate,
  jobRate,
  kindOf,
  kindUnits,
  languageLosses,
  stageText,
  stateName,
  type JobView,
  type Rate,
} from './job-view.js';

/** @default the ETA and the rate of the other kinds come from the last 30 s of progress. */
export const RATE_WINDOW_MS = 30_000;
/** @default the live line is redrawn every second between updates (the ETA counts down). */
export const REDRAW_MS = 1000;
/** @default 24 cells in the bar. */
export const BAR_WIDTH = 24;

/** Steps per second over a sliding window of (time, step) samples. Restarts when the step goes back (a re-form). */
export class RecentRate {
  private samples: { t: number; step: number }[] = [];

  constructor(private readonly windowMs = RATE_WINDOW_MS) {}

  /** Forget the samples (a new generation). */
  reset(): void {
    this.samples = [];
  }

  add(t: number, step: number): void {
    const last = this.samples.at(-1);
    if (last && step < last.step) this.samples = [];
    if (last && step === last.step) return; // no progress: keep the time the step was reached
    this.samples.push({ t, step });
    while (this.samples.length > 2 && this.samples[0]!.t < t - this.windowMs) this.samples.shift();
  }

  /** Steps per second, or undefined with fewer than two samples. */
  stepsPerSecond(): number | undefined {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.t <= first.t || last.step <= first.step) return undefined;
    return ((last.step - first.step) * 1000) / (last.t - first.t);
  }
}

/** `[████████░░░░░░░░]`; empty when the total is not known. */
export function bar(step: number, total: number, width = BAR_WIDTH): string {
  if (!(total > 0)) return '';
  const filled = Math.min(width, Math.max(0, Math.round((step / total) * width)));
  return `[${'█'.repeat(filled)}${'░'.repeat(width - filled)}]`;
}

/** The rate to show: a TrainJob's reported tokens/s; the other kinds' recent steps/s, else this generation's. */
function shownRate(job: JobView, recent: number | undefined): Rate | undefined {
  const kind = kindOf(job);
  if (kind === 'TrainJob' || recent === undefined) return jobRate(job);
  return { value: recent, unit: kindUnits(kind).rate };
}

/** A plain progress line (not a terminal): what changed at this step, one line. */
export function plainProgressLine(job: JobView, recentStepsPerSecond?: number): string {
  const stage = stageText(job);
  const parts = [...(stage ? [stage] : []), `${kindUnits(kindOf(job)).step} ${job.step}/${job.totalSteps}`];
  if (job.hasLoss) parts.push(`loss ${formatLoss(job.lastLoss)}`);
  const rate = shownRate(job, recentStepsPerSecond);
  if (rate) parts.push(formatRate(rate));
  const eta = etaSeconds(job, recentStepsPerSecond ?? generationStepRate(job));
  if (eta !== undefined && job.step < job.totalSteps) parts.push(`ETA ${formatDuration(eta)}`);
  parts.push(`elapsed ${formatDuration(job.wallSeconds || job.elapsedSeconds)}`);
  const langs = languageLosses(job);
  if (langs) parts.push(langs);
  return `[${job.id}] ${parts.join('  ')}`;
}

/** The live block (a terminal): the bar line, and the languages' line when asked for. */
export function liveBlock(
  job: JobView,
  recentStepsPerSecond: number | undefined,
  languages: boolean,
  secondsSinceUpdate = 0,
): string[] {
  const s = stateName(job);
  const stage = stageText(job);
  const pct = job.totalSteps > 0 ? `${String(Math.floor((100 * job.step) / job.totalSteps)).padStart(3)}%` : '';
  const steps = `${job.step}/${job.totalSteps || '?'}`;
  const parts = [`${job.id}`, ...(stage ? [stage] : []), bar(job.step, job.totalSteps), steps, pct];
  if (s !== 'Running') parts.push(s);
  if (job.hasLoss) parts.push(`loss ${formatLoss(job.lastLoss)}`);
  const rate = shownRate(job, recentStepsPerSecond);
  if (rate) parts.push(formatRate(rate));
  if (s === 'Running') {
    // Between updates the ETA counts down (a step of a large model can take minutes).
    const eta = etaSeconds(job, recentStepsPerSecond ?? generationStepRate(job));
    parts.push(`ETA ${formatDuration(eta === undefined ? undefined : Math.max(0, eta - secondsSinceUpdate))}`);
  }
  const lines = [parts.filter((p) => p !== '').join('  ')];
  const langs = languageLosses(job);
  if (languages && langs) lines.push(`  loss by language: ${langs}`);
  return lines;
}

/** A state change, as a line: `[id] Running (generation 2, workers a, b)`, `[id] Pending: worker w lost`. */
export function stateLine(job: JobView): string {
  const s = stateName(job);
  const stage = stageText(job);
  const extra =
    s === 'Running'
      ? ` (${stage ? `${stage}, ` : ''}generation ${job.generation}, workers ${job.workers.join(', ')})`
      : job.error
        ? `: ${job.error}`
        : '';
  return `[${job.id}] ${s}${extra}`;
}

/** What draws on a terminal: log-update's three calls. */
export interface LiveWriter {
  render(text: string): void;
  persist(line: string): void;
  done(): void;
}

export type WatchEventKind = 'SNAPSHOT' | 'STATE' | 'PROGRESS' | 'KIND_UNSPECIFIED';

export interface ProgressView {
  /** A watch event. `now` is for the rate (ms). */
  update(kind: WatchEventKind, job: JobView, now?: number): void;
  /** Leaves the last frame on screen (a terminal); nothing more is drawn. */
  done(): void;
}

export interface ProgressViewOptions {
  /** A terminal: redraw in place. */
  live: boolean;
  /** Where plain lines go. */
  write: (line: string) => void;
  /** The live writer. @default log-update on process.stdout */
  liveWriter?: LiveWriter;
  /** Loss per language on a second line (live). @default false */
  languages?: boolean;
  /** Live: redraw this often between updates; 0 never. @default REDRAW_MS */
  redrawMs?: number;
}

export function logUpdateWriter(stream: NodeJS.WriteStream = process.stdout): LiveWriter {
  const lu = createLogUpdate(stream);
  return { render: (t) => lu(t), persist: (l) => lu.persist(l), done: () => lu.done() };
}

/** Redraw in place only on a terminal that says its size (a 0x0 pseudo-terminal would show nothing). */
export function isLiveTerminal(stream: NodeJS.WriteStream = process.stdout): boolean {
  return stream.isTTY === true && (stream.columns ?? 0) > 0 && (stream.rows ?? 0) > 0;
}

export function createProgressView(options: ProgressViewOptions): ProgressView {
  /** Per job (a view may follow several): its recent rate, last step and generation, what is shown. */
  interface Followed {
    recent: RecentRate;
    lastStep?: number;
    lastGeneration?: number;
    shown?: { job: JobView; sps: number | undefined; at: number };
  }
  const jobs = new Map<string, Followed>();
  let live: LiveWriter | undefined;
  let ticker: NodeJS.Timeout | undefined;
  const draw = (now: number): void => {
    if (!live) return;
    const lines: string[] = [];
    for (const { shown } of jobs.values()) {
      if (!shown) continue;
      const since = Math.max(0, (now - shown.at) / 1000);
      lines.push(...liveBlock(shown.job, shown.sps, options.languages === true, since));
    }
    live.render(lines.join('\n'));
  };
  const track = (f: Followed, job: JobView, now: number): number | undefined => {
    if (job.generation !== f.lastGeneration) {
      f.lastGeneration = job.generation;
      f.recent.reset(); // a new generation: the window starts over
    }
    f.recent.add(now, job.step);
    return f.recent.stepsPerSecond();
  };
  return {
    update(kind, job, now = Date.now()) {
      let f = jobs.get(job.id);
      if (!f) jobs.set(job.id, (f = { recent: new RecentRate() }));
      const sps = track(f, job, now);
      if (!options.live) {
        if (kind === 'PROGRESS') {
          if (job.step !== f.lastStep) options.write(plainProgressLine(job, sps));
        } else {
          options.write(stateLine(job));
        }
        f.lastStep = job.step;
        return;
      }
      live ??= options.liveWriter ?? logUpdateWriter();
      if (kind !== 'PROGRESS') live.persist(stateLine(job));
      f.shown = { job, sps, at: now };
      f.lastStep = job.step;
      draw(now);
      const every = options.redrawMs ?? REDRAW_MS;
      if (!ticker && every > 0) {
        ticker = setInterval(() => draw(Date.now()), every);
        ticker.unref();
      }
    },
    done() {
      if (ticker) clearInterval(ticker);
      ticker = undefined;
      live?.done();
      live = undefined;
    },
  };
}
