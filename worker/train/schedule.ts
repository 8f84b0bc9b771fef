/**
 * Learning-rate schedules, as HF transformers defines them (`get_*_schedule_with_warmup`): the
 * rate of optimizer step s (0-based) is lr · factor(s), with a linear warm-up over
 * ceil(warmupRatio · totalSteps) steps from 0.
 */
import type { ScheduleSpec } from '../../common/jobspec.js';

export function warmupSteps(schedule: ScheduleSpec, totalSteps: number): number {
  return Math.ceil(schedule.warmupRatio * totalSteps);
}

export function learningRate(baseLr: number, schedule: ScheduleSpec, step: number, totalSteps: number): number {
  const warmup = warmupSteps(schedule, totalSteps);
  if (step < warmup) return (baseLr * step) / Math.max(1, warmup);
  if (schedule.name === 'constant') return baseLr;
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  if (schedule.name === 'linear') return baseLr * Math.max(0, 1 - progress);
  return baseLr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
