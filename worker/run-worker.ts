/**
 * The worker's main loop: join the coordinator, wait for an assignment, train it with peers over
 * NATS, report progress and the result, and wait for the next one. One job at a time; a Cancel
 * aborts the job in flight.
 */
import { availableParallelism, hostname, totalmem } from 'node:os';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import { noopMeter, type MetricMeter } from '../common/metrics.js';
import { initBackend, type BackendName } from './backend.js';
import { GradientAllReduce } from './collective/index.js';
import { jobNatsConnection, type JobNats } from './job-nats.js';
import { chooseNatsUrl, CoordinatorSession, type AssignmentEvent, type SessionOptions } from './session.js';
import { train } from './train/trainer.js';
import { createWorkerMetrics } from './worker-metrics.js';

export interface WorkerOptions {
  /** Coordinator gRPC address, HOST:PORT. */
  readonly coordinator: string;
  /** NATS URL for gradient all-reduce; when absent, the one the coordinator names in the assignment. */
  readonly nats: string | undefined;
  /** @default 'wasm' */
  readonly backend: BackendName;
  readonly workerId: string;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  /** Where the worker's metrics are recorded (worker-metrics.ts). @default noopMeter */
  readonly meter?: MetricMeter;
  /** TLS to the coordinator and the worker token (see worker/cli.ts). @default plaintext, no token */
  readonly tls?: SessionOptions['tls'];
  readonly token?: string;
}

export async function runWorker(options: WorkerOptions): Promise<void> {
  const log = options.logger;
  const metrics = createWorkerMetrics(options.meter ?? noopMeter);
  const backend = await initBackend(options.backend);
  log.info('backend ready', { backend });
  const session = await CoordinatorSession.connect({
    address: options.coordinator,
    hello: {
      workerId: options.workerId, hostname: hostname(), backend, pid: process.pid,
      cores: availableParallelism(), memoryBytes: totalmem(),
    },
    logger: log.child('session'),
    signal: options.signal,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.token !== undefined ? { token: options.token } : {}),
  });
  let nc: NatsConnection | undefined;
  let running: { jobId: string; abort: AbortController; done: Promise<void> } | undefined;
  const stop = (): void => running?.abort.abort(new Error('worker shutting down'));
  options.signal.addEventListener('abort', stop, { once: true });

  const runJob = async (a: AssignmentEvent, abort: AbortController): Promise<void> => {
    const jlog = log.child(`job ${a.jobId} rank ${a.rank}/${a.worldSize}`);
    let allReduce: GradientAllReduce | undefined;
    let jobNats: JobNats | undefined;
    try {
      jobNats = await jobNatsConnection(a, {
        natsFlag: options.nats, workerId: options.workerId,
        shared: async () => (nc ??= await connect({ servers: chooseNatsUrl(options.nats, a), name: `polytune-worker-${options.workerId}`, maxReconnectAttempts: -1 })),
      });
      allReduce = await GradientAllReduce.create({
        nc: jobNats.nc, job: a.jobId, generation: a.generation, rank: a.rank, worldSize: a.worldSize, logger: jlog.child('allreduce'),
      });
      const ar = allReduce;
      const started = performance.now();
      const result = await train({
        spec: a.spec, rank: a.rank, worldSize: a.worldSize, signal: abort.signal, logger: jlog,
        allReduce: (step, data) => ar.allReduce(step, data, abort.signal),
        onCheckpoint: (c) => metrics.checkpoint(a.jobId, c.seconds),
        onStep: (r) => {
          metrics.step(a.jobId, r);
          session.progress({
            jobId: a.jobId, generation: a.generation, step: r.step, totalSteps: r.totalSteps, loss: r.loss,
            tokensPerSecond: r.tokensPerSecond, epoch: r.epoch, supervisedTokens: r.supervisedTokens, elapsedSeconds: (performance.now() - started) / 1000,
          });
          jlog.debug('step', { step: r.step, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm });
        },
      });
      jlog.info('job done', { steps: result.steps, firstLoss: result.firstLoss, finalLoss: result.finalLoss, seconds: result.seconds });
      session.result({
        jobId: a.jobId, generation: a.generation, ok: true, error: '', outputDir: result.outputDir,
        firstLoss: result.firstLoss, finalLoss: result.finalLoss, steps: result.steps,
      });
    } catch (e) {
      const msg = errorMessage(e);
      if (abort.signal.aborted) jlog.info('job stopped', { reason: msg });
      else jlog.error('job failed', { error: msg });
      session.result({ jobId: a.jobId, generation: a.generation, ok: false, error: msg, outputDir: '', firstLoss: NaN, finalLoss: NaN, steps: 0 });
    } finally {
      metrics.jobEnded(a.jobId);
      await allReduce?.close();
      await jobNats?.release();
    }
  };

  try {
    for await (const ev of session.events()) {
      if (ev.type === 'assignment') {
        if (running) {
          log.warn('assignment while busy: refused', { jobId: ev.jobId, busyWith: running.jobId });
          session.result({ jobId: ev.jobId, generation: ev.generation, ok: false, error: `worker ${options.workerId} is busy with ${running.jobId}`, outputDir: '', firstLoss: NaN, finalLoss: NaN, steps: 0 });
          continue;
        }
        const abort = new AbortController();
        const job = { jobId: ev.jobId, abort, done: Promise.resolve() };
        job.done = runJob(ev, abort).finally(() => {
          if (running === job) running = undefined;
        });
        running = job;
      } else if (ev.type === 'cancel') {
        if (running?.jobId === ev.jobId) running.abort.abort(new Error(`cancelled: ${ev.reason}`));
      } else if (ev.type === 'closed') {
        if (ev.error) log.error('coordinator session closed', { error: errorMessage(ev.error) });
        break;
      }
    }
  } finally {
    stop();
    await running?.done;
    await session.close();
    await nc?.drain().catch(() => undefined);
  }
}
