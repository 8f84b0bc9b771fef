/**
 * Metrics during a real job: a real nats-server, a real coordinator (gRPC) and two real workers
 * (in this process, wasm backend, a tiny LLaMA) training over NATS; each serves `/metrics` from
 * its own prom-client Registry. `promtool check metrics` (Debian's prometheus package) must pass on
 * the coordinator's and a worker's output while the job runs, and a real Prometheus server,
 * started here on loopback, scrapes them and answers queries for the step duration.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../common/logging.js';
import { PromMeter, startMetricsServer, type MetricsServer } from '../../common/metrics.js';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { startCoordinator, type Coordinator } from '../../coordinator/server.js';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { runWorker } from '../../worker/run-worker.js';
import {
  findPromTools,
  runTool,
  startPrometheus,
  type PrometheusServer,
  type PromTools,
} from '../deploy/prometheus-tools.js';

const tools = findPromTools();
const skip = 'skip' in tools ? tools.skip : undefined;
if (skip) console.warn(`metrics-scrape: ${skip}`);

// Long enough that Prometheus (scraping every 500 ms) sees the counters rise while the job runs.
const STEPS = 150;

describe.skipIf(skip !== undefined)('metrics of a running job', () => {
  const { promtool, prometheus: prometheusBin } = tools as PromTools;
  let dir: string;
  let nats: NatsServer;
  let coordinator: Coordinator;
  let client: JobClient;
  const servers: MetricsServer[] = [];
  const workersAbort = new AbortController();
  const workersDone: Promise<void>[] = [];
  let prometheus: PrometheusServer | undefined;
  let coordinatorMetrics: MetricsServer;
  let workerMetrics: MetricsServer[];
  let jobId: string;

  beforeAll(async () => {
    await initBackend('wasm');
    dir = await mkdtemp(join(tmpdir(), 'polytune-metrics-'));
    await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
    await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(2, 5)));
    nats = await startNatsServer({ jetstream: true });
    const coordinatorMeter = new PromMeter();
    coordinator = await startCoordinator({
      listen: '127.0.0.1:0',
      natsUrl: nats.url,
      progressFlushMs: 50,
      meter: coordinatorMeter,
    });
    coordinatorMetrics = await startMetricsServer({ meter: coordinatorMeter, port: 0, host: '127.0.0.1' });
    servers.push(coordinatorMetrics);
    workerMetrics = [];
    for (let i = 0; i < 2; i++) {
      const meter = new PromMeter();
      const server = await startMetricsServer({ meter, port: 0, host: '127.0.0.1' });
      servers.push(server);
      workerMetrics.push(server);
      workersDone.push(
        runWorker({
          coordinator: coordinator.address,
          nats: nats.url,
          backend: 'wasm',
          workerId: `metrics-w${i}`,
          logger: createLogger(`w${i}`, { level: 'error' }),
          signal: workersAbort.signal,
          meter,
        }),
      );
    }
    prometheus = await startPrometheus(prometheusBin, {
      'polytune-coordinator': [`127.0.0.1:${coordinatorMetrics.port}`],
      'polytune-worker': workerMetrics.map((s) => `127.0.0.1:${s.port}`),
    });
    client = new JobClient({ address: coordinator.address, callTimeoutMs: 10_000 });
    jobId = await client.submitText(`
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: metrics-job }
spec:
  model: { path: ${join(dir, 'model')} }
  method: { name: slam, layers: [0] }
  data:
    train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca, language: sw }]
    maxSeqLen: 48
  training:
    maxSteps: ${STEPS}
    globalBatchSize: 2
    microBatchSize: 1
    optimizer: { name: sgd, lr: 0.01 }
  workers: { count: 2 }
  checkpoint: { everySteps: 10, keep: 1 }
  output: { dir: ${join(dir, 'out')} }
`);
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await prometheus?.stop();
    workersAbort.abort();
    await Promise.allSettled(workersDone);
    await coordinator?.stop();
    await Promise.allSettled(servers.map((s) => s.close()));
    await nats?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  const scrape = async (s: MetricsServer): Promise<string> =>
    (await fetch(`http://127.0.0.1:${s.port}/metrics`)).text();
  /** The value of the first sample line starting with `prefix`, or undefined. */
  const sample = (text: string, prefix: string): number | undefined => {
    const line = text.split('\n').find((l) => l.startsWith(prefix));
    return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
  };
  async function until<T>(fn: () => Promise<T | undefined>, what: string, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  it("promtool check metrics passes on the coordinator's and a worker's /metrics while the job runs", async () => {
    // Wait until the workers have done a few steps, and check while the job is still Running.
    const workerText = await until(async () => {
      const t = await scrape(workerMetrics[0]!);
      return (sample(t, `polytune_step_duration_seconds_count{job_id="${jobId}"}`) ?? 0) >= 3 ? t : undefined;
    }, 'three steps on worker 0');
    const coordinatorText = await scrape(coordinatorMetrics);
    const job = await client.get(jobId);
    expect(job.state).toBe('RUNNING');

    for (const [who, text] of [
      ['coordinator', coordinatorText],
      ['worker', workerText],
    ] as const) {
      const r = await runTool(promtool, ['check', 'metrics'], text);
      expect({ who, code: r.code, out: r.stdout + r.stderr }).toEqual({ who, code: 0, out: '' });
    }
    // What the exposition says, beyond being well formed.
    expect(sample(coordinatorText, 'polytune_jobs{state="Running"}')).toBe(1);
    expect(sample(coordinatorText, 'polytune_workers{state="busy"}')).toBe(2);
    expect(sample(coordinatorText, `polytune_job_generation{job_id="${jobId}"}`)).toBe(1);
    expect(sample(coordinatorText, `polytune_generation_changes_total{job_id="${jobId}"}`)).toBe(1);
    expect(sample(coordinatorText, 'polytune_scheduling_latency_seconds_count')).toBe(1);
    for (const phase of ['compute', 'allreduce', 'optimizer']) {
      expect(
        sample(workerText, `polytune_step_phase_seconds_total{job_id="${jobId}",phase="${phase}"}`),
      ).toBeGreaterThan(0);
    }
    expect(sample(workerText, `polytune_train_loss{job_id="${jobId}",language="all"}`)).toBeGreaterThan(0);
    expect(sample(workerText, `polytune_allreduce_bytes_total{job_id="${jobId}"}`)).toBeGreaterThan(0);
    expect(sample(workerText, `polytune_allreduce_bandwidth_bytes_per_second{job_id="${jobId}"}`)).toBeGreaterThan(0);
    expect(sample(workerText, `polytune_tokens_per_second{job_id="${jobId}"}`)).toBeGreaterThan(0);
    expect(sample(workerText, 'polytune_tfjs_tensors')).toBeGreaterThan(0);
    expect(sample(workerText, 'polytune_tfjs_memory_bytes')).toBeGreaterThan(0);
    expect(sample(workerText, `polytune_nonfinite_steps_total{job_id="${jobId}"}`)).toBe(0);
  });

  it(
    'a real Prometheus scrapes the coordinator and the ' + 'workers and answers for polytune_step_duration_seconds',
    async () => {
      const p = prometheus!;
      const series = await until(async () => {
        const r = await p.query(`polytune_step_duration_seconds_count{job_id="${jobId}"}`);
        return r.length === 2 && r.every((s) => Number(s.value[1]) > 0) ? r : undefined;
      }, 'step duration counts of both workers in Prometheus');
      expect(new Set(series.map((s) => s.metric['job']))).toEqual(new Set(['polytune-worker']));
      // The dashboard's query for step time, evaluated by Prometheus itself.
      const mean = await until(async () => {
        const r = await p.query(
          `sum(rate(polytune_step_duration_seconds_sum{job_id="${jobId}"}[1m])) / ` +
            `sum(rate(polytune_step_duration_seconds_count{job_id="${jobId}"}[1m]))`,
        );
        const v = Number(r[0]?.value[1]);
        return Number.isFinite(v) && v > 0 ? v : undefined;
      }, 'a mean step duration');
      expect(mean).toBeLessThan(60);
      const buckets = await p.query(`polytune_step_duration_seconds_bucket{job_id="${jobId}",le="+Inf"}`);
      expect(buckets).toHaveLength(2);
      const up = await p.query('up');
      expect(up.map((s) => [s.metric['job'], s.value[1]]).sort()).toEqual([
        ['polytune-coordinator', '1'],
        ['polytune-worker', '1'],
        ['polytune-worker', '1'],
      ]);
      const running = await p.query('sum(polytune_jobs{state=~"Running|Succeeded"})');
      expect(Number(running[0]?.value[1])).toBe(1);
    },
  );

  it('the job ends Succeeded with its checkpoint durations recorded', async () => {
    const final = await until(
      async () => {
        const j = await client.get(jobId);
        return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state) ? j : undefined;
      },
      'the job to end',
      60_000,
    );
    expect(final.state).toBe('SUCCEEDED');
    const texts = await Promise.all(workerMetrics.map(scrape));
    const checkpoints = texts.map(
      (t) => sample(t, `polytune_checkpoint_duration_seconds_count{job_id="${jobId}"}`) ?? 0,
    );
    expect(checkpoints.sort()).toEqual([0, Math.floor((STEPS - 1) / 10)]);
    // Gauges of a finished job are dropped; counters and histograms stay.
    expect(texts[0]).not.toContain(`polytune_tokens_per_second{job_id="${jobId}"}`);
    expect(sample(texts[0]!, `polytune_step_duration_seconds_count{job_id="${jobId}"}`)).toBe(STEPS);
  }, 90_000);
});
