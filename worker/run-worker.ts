/**
 * The worker's main loop: join the coordinator, wait for an assignment, train it with peers over
 * NATS, report progress and the result, and wait for the next one. One job at a time; a Cancel
 * aborts the job in flight.
 *
 * Generations: an assignment for the job in flight with a higher generation (the coordinator
 * re-formed the world) stops the old generation at once and starts the new one; the rank's state
 * of the job (`StateHolder`) outlives both, so the new world goes on from the newest step any
 * rank holds. A failure of the generation rather than of the job (a broken collective) is
 * reported as retryable. The coordinator is not on the per-step path: when its stream breaks, the
 * job goes on and the worker joins again, with backoff, until it is back.
 */
import { availableParallelism, hostname, totalmem } from 'node:os';
import { connect, type NatsConnection, type Status } from '@nats-io/transport-node';
import { CollectiveError, errorMessage, PolytuneError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import { noopMeter, type MetricMeter } from '../common/metrics.js';
import type { NatsTls } from '../common/tls.js';
import { backendInfo, initBackend, nativeStatus, type BackendName } from './backend.js';
import { checkTf32, type TensorflowOptions } from './backend-tensorflow.js';
import { checkStorageRoots, resolveStorageRoots, STORAGE_ROOT_FLAG } from '../common/storage-roots.js';
import { isStaged } from '../common/stages.js';
import { GradientAllReduce } from './collective/index.js';
import { jobKindOf } from '../common/job-kinds.js';
import { runJobKind, type KindContext } from './job-kinds.js';
import { isCredentialFailure, jobNatsConnection, type JobNats } from './job-nats.js';
import type { NativeOptions } from './native/index.js';
import {
  chooseNatsUrl,
  CoordinatorSession,
  type AssignmentEvent,
  type ProgressReport,
  type ResultReport,
  type SessionOptions,
} from './session.js';
import { releaseHolder, type StateHolder } from './train/trainer.js';
import { createWorkerMetrics } from './worker-metrics.js';

export interface WorkerOptions {
  /** Coordinator gRPC address, HOST:PORT. */
  readonly coordinator: string;
  /** NATS URL for gradient all-reduce; when absent, the one the coordinator names in the assignment. */
  readonly nats: string | undefined;
  /** @default 'wasm' */
  readonly backend: BackendName;
  /** The wasm backend's OpenBLAS products (`--no-native`, `--threads`). @default on when built, 1 thread */
  readonly native?: NativeOptions;
  /** `tensorflow` only: run without a GPU, TF32 (worker/backend-tensorflow.ts). @default both off */
  readonly backendOptions?: TensorflowOptions;
  readonly workerId: string;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  /** Where the worker's metrics are recorded (worker-metrics.ts). @default noopMeter */
  readonly meter?: MetricMeter;
  /** TLS to the coordinator and the worker token (see worker/cli.ts). @default plaintext, no token */
  readonly tls?: SessionOptions['tls'];
  readonly token?: string;
  /** TLS toward NATS (`--nats-tls-ca`, ...). @default plaintext */
  readonly natsTls?: NatsTls;
  /**
   * `--storage-root`: an assignment whose spec names a path outside them is refused before
   * anything is read (common/storage-roots.ts, as the coordinator checks at submit). @default none: any path
   */
  readonly storageRoots?: readonly string[];
}

/** Which kernels run the products, for the log line: `openblas (1 thread)` or `xnnpack`. */
function productKernelsField(): { products?: string } {
  const s = nativeStatus();
  if (!s) return {};
  if (s.kernels === 'xnnpack') return { products: 'xnnpack' };
  return { products: `openblas (${s.threads} thread${s.threads === 1 ? '' : 's'})` };
}

export async function runWorker(options: WorkerOptions): Promise<void> {
  const log = options.logger;
  const metrics = createWorkerMetrics(options.meter ?? noopMeter);
  /** TLS toward NATS, for the shared connection and each job's own. */
  const natsTls = options.natsTls ? { tls: options.natsTls } : {};
  const roots = await resolveStorageRoots(options.storageRoots ?? []);
  if (roots.length === 0)
    log.info(`no ${STORAGE_ROOT_FLAG}: assignments may name any path this worker can read or write`);
  const backend = await initBackend(options.backend, { ...options.native, logger: log }, options.backendOptions);
  const device = backendInfo();
  log.info('backend ready', { ...device, ...productKernelsField() });
  metrics.backend(device);
  const connectSession = (): Promise<CoordinatorSession> =>
    CoordinatorSession.connect({
      address: options.coordinator,
      hello: {
        workerId: options.workerId,
        hostname: hostname(),
        backend,
        pid: process.pid,
        cores: availableParallelism(),
        memoryBytes: totalmem(),
      },
      logger: log.child('session'),
      signal: options.signal,
      ...(options.tls ? { tls: options.tls } : {}),
      ...(options.token !== undefined ? { token: options.token } : {}),
    });
  let session = await connectSession();
  let nc: NatsConnection | undefined;
  let running: { jobId: string; generation: number; abort: AbortController; done: Promise<void> } | undefined;
  /** The state of the latest job, kept across its generations. */
  let held: { jobId: string; holder: StateHolder } | undefined;
  const stop = (): void => running?.abort.abort(new Error('worker shutting down'));
  options.signal.addEventListener('abort', stop, { once: true });

  const runJob = async (a: AssignmentEvent, abort: AbortController, holder: StateHolder): Promise<void> => {
    const jlog = log.child(`job ${a.jobId} rank ${a.rank}/${a.worldSize}`);
    let allReduce: GradientAllReduce | undefined;
    let jobNats: JobNats | undefined;
    let statuses: AsyncIterator<Status> | undefined;
    let report: ResultReport;
    try {
      // The coordinator checked the paths at submit; a forged assignment is checked here, before any is read.
      await checkStorageRoots(a.spec, roots, `assignment of job ${a.jobId}`);
      jobNats = await jobNatsConnection(a, {
        natsFlag: options.nats,
        workerId: options.workerId,
        ...natsTls,
        shared: async () =>
          (nc ??= await connect({
            servers: chooseNatsUrl(options.nats, a),
            name: `polytune-worker-${options.workerId}`,
            maxReconnectAttempts: -1,
            ...natsTls,
          })),
      });
      // NATS lost: a collective in flight cannot finish (core NATS does not replay what was lost),
      // so the generation ends at once as a retryable failure instead of waiting for its deadline.
      const events = (statuses = jobNats.nc.status()[Symbol.asyncIterator]());
      void (async () => {
        // The server's word before it closes the connection (credentials expired or revoked) says why.
        let refusal = '';
        for (let ev = await events.next(); !ev.done; ev = await events.next()) {
          if (ev.value.type === 'error' && isCredentialFailure(ev.value.error)) refusal = errorMessage(ev.value.error);
          if (ev.value.type !== 'disconnect') continue;
          abort.abort(
            new CollectiveError(
              `NATS connection to ${ev.value.server} lost${refusal ? ` (${refusal})` : ''}: this generation ends`,
              { step: -1 },
            ),
          );
          return;
        }
      })();
      const collective = jobKindOf(a.spec).collective(a.spec);
      allReduce = await GradientAllReduce.create({
        nc: jobNats.nc,
        key: a.collectiveKey,
        job: a.jobId,
        generation: a.generation,
        rank: a.rank,
        worldSize: a.worldSize,
        logger: jlog.child('allreduce'),
        onRejected: (reason) => metrics.rejectedChunk(a.jobId, reason),
        timeoutMs: collective.timeoutSeconds * 1000,
        compression: collective.compression,
        // The trainer's head ([nll sum, supervised tokens, tokens] + 2 per language) stays exact
        // under compression; exactness is per chunk anyway, so a generous bound costs nothing more.
        exactPrefix: 4096,
      });
      // Start barrier: every peer's subscriptions are known on every NATS server (a cluster's routes
      // propagate interest asynchronously), and all ranks share the collective's settings.
      await allReduce.ready({ timeoutMs: collective.timeoutSeconds * 1000, signal: abort.signal });
      const ar = allReduce;
      const started = performance.now();
      const methodTotals: Record<string, number> = {};
      // Every collective call of this generation gets the next number, the same on every rank: the
      // kind's own sums (analysis, evaluation, stage agreement) and the trainer's (worker/job-kinds.ts).
      const calls = { next: 0 };
      let lastProgress: ProgressReport | undefined;
      let evalJson: string | undefined;
      // The steps' layer choices (CC-Tuning's Decision Maker), summed over this generation's steps.
      const layerChoices: Record<string, { counts: number[] }> = {};
      const kindCtx: KindContext = {
        rank: a.rank,
        worldSize: a.worldSize,
        signal: abort.signal,
        logger: jlog,
        // Counts and chosen layers: always float32 on the wire, whatever the gradients' compression.
        reduce: (data) => ar.allReduce(calls.next++, data, abort.signal, { exact: true }),
        progress: (done, totalSteps, extra) =>
          session.progress(
            lastProgress && extra
              ? { ...lastProgress, ...extra }
              : {
                  jobId: a.jobId,
                  generation: a.generation,
                  step: done,
                  totalSteps,
                  loss: NaN,
                  tokensPerSecond: 0,
                  epoch: 0,
                  supervisedTokens: 0,
                  elapsedSeconds: (performance.now() - started) / 1000,
                  ...extra,
                },
          ),
        onEvalReport: (r) => {
          evalJson = JSON.stringify(r);
          metrics.evalReport(a.jobId, r, a.rank);
        },
        collective: {
          allReduce: (call, data, opts) => ar.allReduce(call, data, abort.signal, opts),
          begin: (call, length, opts) => ar.begin(call, length, abort.signal, opts),
        },
        calls,
        holder,
        storageRoots: roots,
        resume: a.resume || a.generation > 1,
        // The histogram is of checkpoints; a failure of either kind is counted.
        onCheckpoint: (c) => {
          if (!c.final || c.error !== undefined) metrics.checkpoint(a.jobId, c.seconds, c.error !== undefined);
        },
        onStep: (r, at) => {
          metrics.step(a.jobId, r);
          for (const [language, counts] of Object.entries(r.choicesByLanguage ?? {})) {
            const sum = (layerChoices[language] ??= { counts: counts.map(() => 0) }).counts;
            counts.forEach((n, l) => (sum[l] = (sum[l] ?? 0) + n));
          }
          if (at.stage) metrics.stage(a.jobId, at.stage);
          session.progress(
            (lastProgress = {
              jobId: a.jobId,
              generation: a.generation,
              step: at.step,
              totalSteps: at.totalSteps,
              loss: r.loss,
              tokensPerSecond: r.tokensPerSecond,
              epoch: r.epoch,
              supervisedTokens: r.supervisedTokens,
              elapsedSeconds: (performance.now() - started) / 1000,
              lossByLanguage: { ...r.lossByLanguage },
              ...(r.choicesByLanguage ? { layerChoices: structuredClone(layerChoices) } : {}),
              ...(at.stage ? { stageIndex: at.stage.index, stageCount: at.stage.count, stageName: at.stage.name } : {}),
            }),
          );
          for (const [k, v] of Object.entries(r.methodStats ?? {})) methodTotals[k] = (methodTotals[k] ?? 0) + v;
          jlog.debug('step', {
            step: at.step,
            loss: r.loss,
            lr: r.lr,
            gradNorm: r.gradNorm,
            seconds: r.stepSeconds,
            ...(at.stage ? { stage: at.stage.name } : {}),
            ...r.methodStats,
          });
        },
      };
      // TF32 is fixed when TensorFlow loads: a TrainJob (each stage) must ask for this worker's setting.
      if (a.spec.kind === 'TrainJob') {
        for (const t of isStaged(a.spec) ? a.spec.spec.stages.map((st) => st.training) : [a.spec.spec.training])
          checkTf32(device, t.tf32);
      }
      const r = await runJobKind(a.spec, kindCtx);
      jlog.info('job done', {
        kind: a.spec.kind,
        steps: r.steps,
        firstLoss: r.firstLoss,
        finalLoss: r.finalLoss,
        seconds: (performance.now() - started) / 1000,
        // The method's own costs summed over the job (CC-Tuning's English pass, LinguaLIFT's encoder).
        ...methodTotals,
      });
      report = {
        jobId: a.jobId,
        generation: a.generation,
        ok: true,
        error: '',
        outputDir: r.outputDir,
        firstLoss: r.firstLoss ?? NaN,
        finalLoss: r.finalLoss ?? NaN,
        steps: r.steps,
        ...(r.chosenLayers ? { chosenLayers: r.chosenLayers } : {}),
        ...((r.evalJson ?? evalJson) ? { evalJson: r.evalJson ?? evalJson } : {}),
      };
    } catch (e) {
      const msg = errorMessage(e);
      const retryable = e instanceof PolytuneError && e.retryable;
      const why = abort.signal.aborted ? errorMessage(abort.signal.reason) : '';
      if (abort.signal.aborted) jlog.info('generation stopped', { reason: why });
      else if (retryable) jlog.warn('generation failed; the job can go on in a new one', { error: msg });
      else jlog.error('job failed', { error: msg });
      report = {
        jobId: a.jobId,
        generation: a.generation,
        ok: false,
        // What was cut short, and why (the generation's end reason in the job record).
        error: why && !msg.includes(why) ? `${msg} (${why})` : msg,
        outputDir: '',
        firstLoss: NaN,
        finalLoss: NaN,
        steps: 0,
        retryable: retryable || abort.signal.aborted,
      };
    } finally {
      // Not awaited: a status iterator's pending read ends only when the connection does.
      void statuses?.return?.();
      metrics.jobEnded(a.jobId);
      await allReduce
        ?.close()
        .catch((e: unknown) => jlog.warn('closing the collective failed', { error: errorMessage(e) }));
      await jobNats
        ?.release()
        .catch((e: unknown) => jlog.warn('closing the job connection failed', { error: errorMessage(e) }));
    }
    // Over for this worker (done, or failed for good): what it kept for a next generation goes.
    if (report.ok || !report.retryable) releaseHolder(holder);
    // Reported last: a Result tells the coordinator this worker is free for the next assignment.
    session.result(report);
  };

  const onAssignment = async (ev: AssignmentEvent): Promise<void> => {
    if (running && running.jobId === ev.jobId && running.generation < ev.generation) {
      log.info('world re-formed: leaving the old generation', {
        jobId: ev.jobId,
        from: running.generation,
        to: ev.generation,
      });
      running.abort.abort(new Error(`generation ${ev.generation} replaces ${running.generation}`));
      await running.done;
    }
    // A job told to stop (cancelled, or its generation replaced) is only finishing: wait for it.
    if (running?.abort.signal.aborted) await running.done;
    if (running) {
      log.warn('assignment while busy: refused', { jobId: ev.jobId, busyWith: running.jobId });
      session.result({
        jobId: ev.jobId,
        generation: ev.generation,
        ok: false,
        error: `worker ${options.workerId} is busy with ${running.jobId}`,
        outputDir: '',
        firstLoss: NaN,
        finalLoss: NaN,
        steps: 0,
      });
      return;
    }
    if (held?.jobId !== ev.jobId) {
      if (held) releaseHolder(held.holder);
      held = { jobId: ev.jobId, holder: { state: undefined } };
    }
    const abort = new AbortController();
    const job = { jobId: ev.jobId, generation: ev.generation, abort, done: Promise.resolve() };
    job.done = runJob(ev, abort, held.holder).finally(() => {
      if (running === job) running = undefined;
    });
    running = job;
  };

  try {
    while (!options.signal.aborted) {
      for await (const ev of session.events()) {
        if (ev.type === 'assignment') {
          await onAssignment(ev);
        } else if (ev.type === 'cancel') {
          if (running?.jobId === ev.jobId) running.abort.abort(new Error(`cancelled: ${ev.reason}`));
        } else if (ev.type === 'closed') {
          if (ev.error) log.warn('coordinator session closed; joining again', { error: errorMessage(ev.error) });
          break;
        }
      }
      if (options.signal.aborted) break;
      await session.close();
      // The job in flight goes on meanwhile: the coordinator is not on the per-step path.
      session = await rejoin(connectSession, options.signal, log);
    }
  } finally {
    stop();
    await running?.done;
    if (held) releaseHolder(held.holder);
    await session.close();
    await nc?.drain().catch(() => undefined);
  }
}

/** Join again until it works or the worker stops; each attempt already retries for a while. */
async function rejoin(
  connect: () => Promise<CoordinatorSession>,
  signal: AbortSignal,
  log: Logger,
): Promise<CoordinatorSession> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await connect();
    } catch (e) {
      if (signal.aborted) throw e;
      log.warn('coordinator unreachable; trying again', { attempt, error: errorMessage(e) });
      await new Promise((r) => setTimeout(r, Math.min(5_000, 500 * attempt) * (0.5 + Math.random())));
    }
  }
}
