/**
 * What a person sees from the `coordinator` CLI (issue 19): the progress view of `submit --watch`
 * and `watch`, the `status` table and block, and the facts they share (units per kind, durations,
 * ETA). Pure functions of wire jobs and a clock, apart from the live writer (log-update).
 */
export {
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
  stageText,
  stateName,
} from './job-view.js';
export type { JobView, Rate } from './job-view.js';
export {
  bar,
  BAR_WIDTH,
  createProgressView,
  isLiveTerminal,
  liveBlock,
  logUpdateWriter,
  plainProgressLine,
  RATE_WINDOW_MS,
  RecentRate,
  REDRAW_MS,
  stateLine,
} from './progress-view.js';
export type { LiveWriter, ProgressView, ProgressViewOptions, WatchEventKind } from './progress-view.js';
export { OUTPUT_FORMATS, outputFormat, statusBlock, statusTable, timingsJson } from './status-view.js';
export type { OutputFormat } from './status-view.js';
