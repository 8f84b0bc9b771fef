/**
 * A worker's metrics, recorded from the trainer's per-step report (names in DESIGN.md's style; the
 * dashboard and alert rules under deploy/ use exactly these):
 *
 * | metric | type | labels |
 * |---|---|---|
 * | `polytune_step_duration_seconds` | histogram: a whole optimizer step | job_id |
 * | `polytune_step_phase_seconds_total` | counter: seconds spent per phase (`compute`, `allreduce`, `optimizer`) | job_id, phase |
 * | `polytune_tokens_per_second` | gauge: non-padding tokens of the global batch per second (last step; the same on every rank) | job_id |
 * | `polytune_supervised_tokens_total` | counter: supervised tokens of the global batches trained | job_id |
 * | `polytune_train_loss` | gauge: last finite loss | job_id, language |
 * | `polytune_layer_choices_total` | counter: samples of the global batches whose per-sample layer choice (CC-Tuning's Decision Maker) picked `layer` (0-based; the same on every rank) | job_id, language, layer |
 * | `polytune_nonfinite_steps_total` | counter: steps skipped for a non-finite loss or gradient | job_id |
 * | `polytune_allreduce_bytes_total` | counter: bytes of the gradient buffers this rank all-reduced (the payload, not wire traffic) | job_id |
 * | `polytune_allreduce_bandwidth_bytes_per_second` | gauge: payload bytes / all-reduce seconds of the last step (algorithm bandwidth) | job_id |
 * | `polytune_collective_rejected_chunks_total` | counter: gradient chunks dropped unused, by why (`RejectReason`: `mac` forged or altered, `header` not what this rank expects, `malformed`, `stale` a replay or late copy, `ahead`, `duplicate`, `position`) | job_id, reason |
 * | `polytune_checkpoint_duration_seconds` | histogram: rank 0 writing a checkpoint | job_id |
 * | `polytune_checkpoint_failures_total` | counter: checkpoints or final outputs rank 0 failed to write (the state stayed in memory) | job_id |
 * | `polytune_job_stage` | gauge: the stage a job of several stages is in, 1-based; `stage` is its name (one series a job: the previous stage's goes) | job_id, stage |
 * | `polytune_eval_accuracy_ratio` | gauge: accuracy of the last evaluation (rank 0 only), `language="avg"` the unweighted mean; kept after the job ends so the last table can be scraped | job_id, benchmark, language |
 * | `polytune_tfjs_tensors` | gauge, read at scrape time from `tf.memory()` | |
 * | `polytune_tfjs_memory_bytes` | gauge, read at scrape time from `tf.memory()` | |
 * | `polytune_worker_backend_info` | gauge, always 1: what the worker computes on (worker/backend-tensorflow.ts) | backend, device, tf32, cuda, cudnn |
 *
 * Loss: the global batch's with `language="all"`, and each language's from the report's
 * `lossByLanguage`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { MetricMeter } from '../common/metrics.js';
import type { BackendInfo } from './backend-tensorflow.js';
import type { RejectReason } from './collective/index.js';
import type { EvalReport } from './eval/report.js';
import type { StagePosition } from './kind-context.js';
import type { StepReport } from './train/trainer.js';

/** What `step()` reads of a report; `lossByLanguage` is the hook for the per-language loss. */
export type StepSample = Pick<
  StepReport,
  | 'loss'
  | 'tokensPerSecond'
  | 'supervisedTokens'
  | 'stepSeconds'
  | 'computeSeconds'
  | 'allReduceSeconds'
  | 'optimizerSeconds'
  | 'allReduceBytes'
  | 'skipped'
  | 'choicesByLanguage'
> & { readonly lossByLanguage?: ReadonlyMap<string, number> | Readonly<Record<string, number>> };

export const StepPhase = { compute: 'compute', allreduce: 'allreduce', optimizer: 'optimizer' } as const;
export type StepPhase = (typeof StepPhase)[keyof typeof StepPhase];

/** The language label of the global loss. */
export const ALL_LANGUAGES = 'all';

export interface WorkerMetrics {
  step(jobId: string, report: StepSample): void;
  /** Rank 0 wrote a checkpoint in `seconds`, or failed to (`failed`). */
  checkpoint(jobId: string, seconds: number, failed?: boolean): void;
  /** An evaluation table (recorded by rank 0 only: every rank holds the same one). */
  evalReport(jobId: string, report: EvalReport, rank?: number): void;
  /** The stage of a job of several stages that this rank's last step was in. */
  stage(jobId: string, stage: StagePosition): void;
  /** A gradient chunk was dropped unused (`RejectReason`). */
  rejectedChunk(jobId: string, reason: RejectReason): void;
  /** Drops the job's gauges when this worker leaves it (counters and histograms stay: they are cumulative). */
  jobEnded(jobId: string): void;
  /** What the worker computes on, once at start. */
  backend(info: BackendInfo): void;
}

export function createWorkerMetrics(meter: MetricMeter): WorkerMetrics {
  const stepDuration = meter.histogram({
    name: 'polytune_step_duration_seconds',
    help: 'Duration of an optimizer step.',
    labelNames: ['job_id'],
  });
  const phaseSeconds = meter.counter({
    name: 'polytune_step_phase_seconds_total',
    help: 'Seconds spent in each phase of the optimizer steps: compute (forward/backward), allreduce, optimizer.',
    labelNames: ['job_id', 'phase'],
  });
  const tokensPerSecond = meter.gauge({
    name: 'polytune_tokens_per_second',
    help: 'Non-padding tokens of the global batch per second of the last step (the same on every rank).',
    labelNames: ['job_id'],
  });
  const supervisedTokens = meter.counter({
    name: 'polytune_supervised_tokens_total',
    help: 'Supervised tokens of the global batches trained (the same on every rank).',
    labelNames: ['job_id'],
  });
  const loss = meter.gauge({
    name: 'polytune_train_loss',
    help: 'Mean token NLL of the last finite step; language="all" is the global batch.',
    labelNames: ['job_id', 'language'],
  });
  const layerChoices = meter.counter({
    name: 'polytune_layer_choices_total',
    help: "Samples of the global batches whose layer choice (CC-Tuning's Decision Maker) picked the layer.",
    labelNames: ['job_id', 'language', 'layer'],
  });
  const nonFinite = meter.counter({
    name: 'polytune_nonfinite_steps_total',
    help: 'Steps skipped for a non-finite loss or gradient.',
    labelNames: ['job_id'],
  });
  const allReduceBytes = meter.counter({
    name: 'polytune_allreduce_bytes_total',
    help: 'Bytes of gradient buffers all-reduced by this rank (the payload, not the wire traffic).',
    labelNames: ['job_id'],
  });
  const bandwidth = meter.gauge({
    name: 'polytune_allreduce_bandwidth_bytes_per_second',
    help: 'All-reduced payload bytes per second of all-reduce in the last step (algorithm bandwidth).',
    labelNames: ['job_id'],
  });
  const checkpoint = meter.histogram({
    name: 'polytune_checkpoint_duration_seconds',
    help: 'Time for rank 0 to write a checkpoint.',
    labelNames: ['job_id'],
  });
  const checkpointFailures = meter.counter({
    name: 'polytune_checkpoint_failures_total',
    help: 'Checkpoints or final outputs rank 0 failed to write (a full disk, say); the state stayed in memory.',
    labelNames: ['job_id'],
  });
  const evalAccuracy = meter.gauge({
    name: 'polytune_eval_accuracy_ratio',
    help:
      'Accuracy of the last evaluation per benchmark and language ' +
      '(greedy, last number); language="avg" is the mean over languages.',
    labelNames: ['job_id', 'benchmark', 'language'],
  });
  const rejectedChunks = meter.counter({
    name: 'polytune_collective_rejected_chunks_total',
    help:
      'Gradient chunks dropped unused, by reason: mac (forged or altered), ' +
      'header, malformed, stale (replay or late copy), ahead, duplicate, position.',
    labelNames: ['job_id', 'reason'],
  });
  meter.observableGauge(
    { name: 'polytune_tfjs_tensors', help: 'Tensors held by TensorFlow.js (tf.memory().numTensors).' },
    (observe) => {
      observe({}, tf.memory().numTensors);
    },
  );
  meter.observableGauge(
    { name: 'polytune_tfjs_memory_bytes', help: 'Bytes held by TensorFlow.js tensors (tf.memory().numBytes).' },
    (observe) => {
      observe({}, tf.memory().numBytes);
    },
  );
  const stageGauge = meter.gauge({
    name: 'polytune_job_stage',
    help: 'The stage a job of several stages is in, 1-based; the stage label is its name.',
    labelNames: ['job_id', 'stage'],
  });
  const languages = new Map<string, Set<string>>();
  const stages = new Map<string, string>();

  const backendGauge = meter.gauge({
    name: 'polytune_worker_backend_info',
    help: 'What the worker computes on (always 1): backend, device (gpu or cpu), TF32, CUDA and cuDNN versions.',
    labelNames: ['backend', 'device', 'tf32', 'cuda', 'cudnn'],
  });
  return {
    backend(info) {
      backendGauge.set(
        { backend: info.backend, device: info.device, tf32: info.tf32, cuda: info.cuda, cudnn: info.cudnn },
        1,
      );
    },
    step(jobId, r) {
      const job = { job_id: jobId };
      stepDuration.observe(job, r.stepSeconds);
      phaseSeconds.inc({ ...job, phase: StepPhase.compute }, r.computeSeconds);
      phaseSeconds.inc({ ...job, phase: StepPhase.allreduce }, r.allReduceSeconds);
      phaseSeconds.inc({ ...job, phase: StepPhase.optimizer }, r.optimizerSeconds);
      if (Number.isFinite(r.tokensPerSecond)) tokensPerSecond.set(job, r.tokensPerSecond);
      supervisedTokens.inc(job, r.supervisedTokens);
      allReduceBytes.inc(job, r.allReduceBytes);
      if (r.allReduceSeconds > 0) bandwidth.set(job, r.allReduceBytes / r.allReduceSeconds);
      nonFinite.inc(job, r.skipped ? 1 : 0);
      for (const [language, counts] of Object.entries(r.choicesByLanguage ?? {}))
        counts.forEach((n, layer) => n > 0 && layerChoices.inc({ ...job, language, layer: String(layer) }, n));
      if (r.skipped) return;
      const seen = languages.get(jobId) ?? new Set<string>();
      languages.set(jobId, seen);
      if (Number.isFinite(r.loss)) {
        loss.set({ ...job, language: ALL_LANGUAGES }, r.loss);
        seen.add(ALL_LANGUAGES);
      }
      const byLanguage =
        r.lossByLanguage instanceof Map ? r.lossByLanguage : new Map(Object.entries(r.lossByLanguage ?? {}));
      for (const [language, l] of byLanguage) {
        if (!Number.isFinite(l)) continue;
        loss.set({ ...job, language }, l);
        seen.add(language);
      }
    },
    stage(jobId, stage) {
      const previous = stages.get(jobId);
      if (previous !== undefined && previous !== stage.name) stageGauge.remove({ job_id: jobId, stage: previous });
      stages.set(jobId, stage.name);
      stageGauge.set({ job_id: jobId, stage: stage.name }, stage.index + 1);
    },
    evalReport(jobId, report, rank = 0) {
      if (rank !== 0) return;
      for (const b of report.benchmarks) {
        for (const l of b.languages)
          evalAccuracy.set({ job_id: jobId, benchmark: b.benchmark, language: l.language }, l.accuracy);
        evalAccuracy.set({ job_id: jobId, benchmark: b.benchmark, language: 'avg' }, b.average);
      }
    },
    checkpoint(jobId, seconds, failed = false) {
      if (failed) checkpointFailures.inc({ job_id: jobId });
      else checkpoint.observe({ job_id: jobId }, seconds);
    },
    rejectedChunk(jobId, reason) {
      rejectedChunks.inc({ job_id: jobId, reason });
    },
    jobEnded(jobId) {
      tokensPerSecond.remove({ job_id: jobId });
      bandwidth.remove({ job_id: jobId });
      for (const language of languages.get(jobId) ?? []) loss.remove({ job_id: jobId, language });
      languages.delete(jobId);
      const stage = stages.get(jobId);
      if (stage !== undefined) stageGauge.remove({ job_id: jobId, stage });
      stages.delete(jobId);
    },
  };
}
