/**
 * The coordinator's metrics (names in DESIGN.md's style; the dashboard and the alert rules under
 * deploy/ use exactly these):
 *
 * | metric | type | labels |
 * |---|---|---|
 * | `polytune_jobs` | gauge, read from the job store at scrape time | state |
 * | `polytune_job_generation` | gauge, Pending and Running jobs | job_id |
 * | `polytune_job_steps_completed` | gauge, Running jobs (rank 0's last progress) | job_id |
 * | `polytune_job_last_progress_timestamp_seconds` | gauge, Running jobs: when the record last changed | job_id |
 * | `polytune_workers` | gauge, read from the registry at scrape time | state (idle, busy, draining) |
 * | `polytune_workers_lost_total` | counter: a busy worker's stream closed or its heartbeat stopped | |
 * | `polytune_generation_changes_total` | counter: a gang formed (generation + 1) | job_id |
 * | `polytune_scheduling_latency_seconds` | histogram: Pending (submit, or back to Pending) to gang formed | |
 * | `polytune_submit_errors_total` | counter: Submit calls refused or failed | code (gRPC status name) |
 * | `polytune_store_bad_values_total` | counter: KV values refused (store-events.ts) | bucket, reason |
 * | `polytune_store_tampering_total` | counter: values it wrote, changed or deleted by others | bucket, kind |
 *
 * The job label is `job_id`, not `job`: Prometheus gives every scraped series a `job` target label
 * (the scrape job), and a metric's own `job` would be renamed `exported_job`.
 */
import { status } from '@grpc/grpc-js';
import type { MetricMeter } from '../common/metrics.js';
import { isTerminal, JobState } from './job-record.js';
import type { JobStore } from './job-store.js';
import type { StoreEvents } from './store-events.js';
import { WorkerStatus, type WorkerRegistry } from './worker-registry.js';
import { KvBucket } from '../common/subjects.js';

/** What the scheduler records (scheduler.ts calls these; `noopSchedulerMetrics` by default). */
export interface SchedulerMetrics {
  /** A gang was formed for `jobId` at `generation`, `waitSeconds` after the job became Pending. */
  gangFormed(jobId: string, generation: number, waitSeconds: number): void;
}

export const noopSchedulerMetrics: SchedulerMetrics = { gangFormed: () => {} };

export interface CoordinatorMetrics extends SchedulerMetrics {
  /** A Submit call failed with this gRPC status code. */
  submitFailed(code: status): void;

  /** Stops listening to the registry. Idempotent. */
  close(): void;
}

/** Scheduling waits: from a second to a day (a job may wait for a gang for hours). */
const SCHEDULING_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400];

/** Defines the coordinator's metrics on `meter`, reading jobs from `store` and workers from `registry`. */
export function createCoordinatorMetrics(
  meter: MetricMeter,
  sources: { store: JobStore; registry: WorkerRegistry; storeEvents?: StoreEvents },
): CoordinatorMetrics {
  const { store, registry } = sources;

  // Job gauges share one store listing per scrape (the first gauge collected lists; the others reuse it).
  let listing: { at: number; jobs: ReturnType<JobStore['list']> } | undefined;
  const jobs = (): ReturnType<JobStore['list']> => {
    const now = Date.now();
    // JobStore.list() can return a job twice when it is written while the KV keys are listed: dedupe by id.
    if (!listing || now - listing.at > 1_000)
      listing = { at: now, jobs: store.list().then((js) => [...new Map(js.map((j) => [j.id, j])).values()]) };
    return listing.jobs;
  };

  meter.observableGauge(
    { name: 'polytune_jobs', help: 'Jobs in the job store by state.', labelNames: ['state'] },
    async (observe) => {
      const counts = new Map<string, number>(Object.values(JobState).map((s) => [s, 0]));
      for (const j of await jobs()) counts.set(j.state, (counts.get(j.state) ?? 0) + 1);
      for (const [state, n] of counts) observe({ state }, n);
    },
  );
  meter.observableGauge(
    {
      name: 'polytune_job_generation',
      help: 'Current generation (gangs formed so far) of each Pending or Running job.',
      labelNames: ['job_id'],
    },
    async (observe) => {
      for (const j of await jobs()) if (!isTerminal(j.state)) observe({ job_id: j.id }, j.generation);
    },
  );
  meter.observableGauge(
    {
      name: 'polytune_job_steps_completed',
      help: "Optimizer steps completed by each Running job (rank 0's last progress).",
      labelNames: ['job_id'],
    },
    async (observe) => {
      for (const j of await jobs()) if (j.state === JobState.Running) observe({ job_id: j.id }, j.step);
    },
  );
  meter.observableGauge(
    {
      name: 'polytune_job_last_progress_timestamp_seconds',
      help: "Unix time of the last change to each Running job's record (gang formed or progress written).",
      labelNames: ['job_id'],
    },
    async (observe) => {
      for (const j of await jobs()) if (j.state === JobState.Running) observe({ job_id: j.id }, j.updatedAt / 1000);
    },
  );
  meter.observableGauge(
    { name: 'polytune_workers', help: 'Workers connected to this coordinator by state.', labelNames: ['state'] },
    (observe) => {
      const counts = new Map<string, number>(Object.values(WorkerStatus).map((s) => [s, 0]));
      for (const w of registry.all()) counts.set(w.status, (counts.get(w.status) ?? 0) + 1);
      for (const [state, n] of counts) observe({ state }, n);
    },
  );

  const lost = meter.counter({
    name: 'polytune_workers_lost_total',
    help: 'Busy workers lost (stream closed or heartbeat timed out) while running a job.',
  });
  lost.inc({}, 0);
  const unsubscribe = registry.on((e) => {
    if (e.type === 'lost' && e.worker.status === WorkerStatus.Busy) lost.inc({});
  });
  const generations = meter.counter({
    name: 'polytune_generation_changes_total',
    help: 'Gangs formed, each a new generation of a job.',
    labelNames: ['job_id'],
  });
  const latency = meter.histogram({
    name: 'polytune_scheduling_latency_seconds',
    help: 'Time from a job becoming Pending to its gang being formed.',
    buckets: SCHEDULING_BUCKETS,
  });
  const submitErrors = meter.counter({
    name: 'polytune_submit_errors_total',
    help: 'Submit calls that failed, by gRPC status (invalid_argument is a bad spec).',
    labelNames: ['code'],
  });
  submitErrors.inc({ code: 'invalid_argument' }, 0);
  const badValues = meter.counter({
    name: 'polytune_store_bad_values_total',
    help: "Values in the coordinator's KV buckets refused: unreadable, an invalid spec, or a record it did not write.",
    labelNames: ['bucket', 'reason'],
  });
  const tampering = meter.counter({
    name: 'polytune_store_tampering_total',
    help: 'Values the coordinator wrote that were changed or deleted by someone else (it restored its own).',
    labelNames: ['bucket', 'kind'],
  });
  tampering.inc({ bucket: KvBucket.jobs, kind: 'rewritten' }, 0);
  const unwatchStore = sources.storeEvents?.on((e) => {
    if (e.type === 'bad-value') badValues.inc({ bucket: e.bucket, reason: e.reason });
    else tampering.inc({ bucket: e.bucket, kind: e.kind });
  });

  return {
    gangFormed(jobId, _generation, waitSeconds) {
      generations.inc({ job_id: jobId });
      latency.observe({}, Math.max(0, waitSeconds));
    },
    submitFailed(code) {
      submitErrors.inc({ code: (status[code] ?? String(code)).toLowerCase() });
    },
    close: () => {
      unsubscribe();
      unwatchStore?.();
    },
  };
}
