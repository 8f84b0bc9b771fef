/**
 * The coordinator process: the gRPC server (JobService for clients, WorkerService for workers),
 * the job store in NATS JetStream KV, the worker registry and the scheduler.
 *
 * Submit contract: `spec_yaml` is YAML or JSON; the client resolves relative paths against the
 * spec file's directory and sends the parsed spec as JSON (see `coordinator/client.ts`). The
 * coordinator parses it again (`parseJobSpec`, relative paths, if any, against its own working
 * directory), checks the files on its own file system (`validateJobSpecFiles`) and plans the steps.
 */
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../common/errors.js';
import { parseJobSpec, validateJobSpecFiles } from '../common/jobspec.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { noopMeter, type MetricMeter } from '../common/metrics.js';
import {
  loadCoordinatorProto,
  type CoordinatorMessage,
  type JobEvent,
  type JobServiceHandlers,
  type WorkerMessage__Output,
  type WorkerServiceHandlers,
} from '../proto/index.js';
import { createCoordinatorMetrics, type CoordinatorMetrics } from './coordinator-metrics.js';
import { CoordinatorStartError, WorkerProtocolError } from './errors.js';
import { toGrpcStatus } from './grpc-errors.js';
import { isTerminal, toWireJob, type JobState } from './job-record.js';
import { JobStore, JOBS_BUCKET } from './job-store.js';
import { Scheduler } from './scheduler.js';
import { computeTotalSteps } from './total-steps.js';
import { DEFAULT_HEARTBEAT_TIMEOUT_MS, WorkerRegistry, type WorkerLink } from './worker-registry.js';

export const DEFAULT_LISTEN = '0.0.0.0:7070';
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
/** @default 5 s for in-flight calls to finish on stop before they are cut. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 5_000;

export interface CoordinatorOptions {
  /** `HOST:PORT` to listen on; port 0 picks a free one. @default DEFAULT_LISTEN */
  listen?: string;
  /** The NATS (with JetStream) holding the coordinator's state. @default DEFAULT_NATS_URL */
  natsUrl?: string;
  /**
   * The NATS URL given to workers in their Assignment. A worker started with its own `--nats`
   * uses that instead. @default natsUrl
   */
  workerNatsUrl?: string;
  /** @default DEFAULT_HEARTBEAT_TIMEOUT_MS */
  heartbeatTimeoutMs?: number;
  /** @default DEFAULT_PROGRESS_FLUSH_MS (scheduler.ts) */
  progressFlushMs?: number;
  /** @default JOBS_BUCKET */
  jobsBucket?: string;
  /** @default DEFAULT_SHUTDOWN_GRACE_MS */
  shutdownGraceMs?: number;
  logger?: Logger;
  /** Where the coordinator's metrics are recorded (coordinator-metrics.ts). @default noopMeter */
  meter?: MetricMeter;
}

export interface Coordinator {
  /** `HOST:PORT` actually bound (the port resolved when 0 was asked for). */
  readonly address: string;
  readonly port: number;
  readonly store: JobStore;
  readonly registry: WorkerRegistry;
  /** Stops taking calls, ends streams, writes pending progress, closes NATS. Idempotent. */
  stop(): Promise<void>;
}

function splitHostPort(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  if (i < 0) throw new RangeError(`listen address must be HOST:PORT, got "${listen}"`);
  const port = Number(listen.slice(i + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`bad port in "${listen}"`);
  return { host: listen.slice(0, i), port };
}

/** Connects to NATS, recovers jobs, and serves gRPC. */
export async function startCoordinator(options: CoordinatorOptions = {}): Promise<Coordinator> {
  const logger = options.logger ?? silentLogger;
  const listen = options.listen ?? DEFAULT_LISTEN;
  const natsUrl = options.natsUrl ?? DEFAULT_NATS_URL;
  const { host } = splitHostPort(listen);
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: natsUrl, name: 'polytune-coordinator', maxReconnectAttempts: -1 });
  } catch (e) {
    throw new CoordinatorStartError(`cannot connect to NATS at ${natsUrl}: ${errorMessage(e)}`, { cause: e });
  }
  let server: grpc.Server | undefined;
  let registry: WorkerRegistry | undefined;
  let scheduler: Scheduler | undefined;
  let metrics: CoordinatorMetrics | undefined;
  try {
    const store = await JobStore.open(nc, { bucket: options.jobsBucket ?? JOBS_BUCKET }).catch((e: unknown) => {
      throw new CoordinatorStartError(`cannot open the KV bucket ${options.jobsBucket ?? JOBS_BUCKET} on ${natsUrl} (is JetStream enabled?): ${errorMessage(e)}`, { cause: e });
    });
    registry = new WorkerRegistry({ heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS, logger: logger.child('registry') });
    metrics = createCoordinatorMetrics(options.meter ?? noopMeter, { store, registry });
    scheduler = new Scheduler({
      store, registry, workerNatsUrl: options.workerNatsUrl ?? natsUrl, progressFlushMs: options.progressFlushMs, logger: logger.child('scheduler'),
      metrics,
    });
    await scheduler.start();

    const watches = new Set<AbortController>();
    const proto = loadCoordinatorProto();
    server = new grpc.Server();
    server.addService(proto.JobService.service, jobHandlers({ store, scheduler, watches, logger, metrics }));
    server.addService(proto.WorkerService.service, workerHandlers({ registry, scheduler, logger }));
    const srv = server;
    const port = await new Promise<number>((resolve, reject) => {
      srv.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, p) => (
        err ? reject(new CoordinatorStartError(`cannot listen on ${listen}: ${err.message}`, { cause: err })) : resolve(p)));
    });
    const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    logger.info('coordinator listening', { address, nats: natsUrl });

    const reg = registry;
    const sch = scheduler;
    const met = metrics;
    let stopped: Promise<void> | undefined;
    const stop = (): Promise<void> => {
      stopped ??= (async () => {
        logger.info('coordinator stopping');
        await sch.stop();
        met.close();
        for (const w of watches) w.abort();
        reg.close();
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            srv.forceShutdown();
            resolve();
          }, options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS);
          srv.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        });
        await nc.drain().catch(() => nc.close());
      })();
      return stopped;
    };
    return { address, port, store, registry: reg, stop };
  } catch (e) {
    server?.forceShutdown();
    registry?.close();
    metrics?.close();
    await scheduler?.stop().catch(() => undefined);
    await nc.close();
    throw e;
  }
}

interface JobHandlerDeps {
  store: JobStore;
  scheduler: Scheduler;
  watches: Set<AbortController>;
  logger: Logger;
  metrics: CoordinatorMetrics;
}

function jobHandlers({ store, scheduler, watches, logger, metrics }: JobHandlerDeps): JobServiceHandlers {
  const unary = <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>): void => {
      fn(call.request).then(
        (res) => callback(null, res),
        (e: unknown) => {
          const st = toGrpcStatus(e);
          if (name === 'Submit') metrics.submitFailed(st.code);
          if (st.code === grpc.status.INTERNAL) logger.error(`${name} failed`, { error: errorMessage(e) });
          callback(st);
        },
      );
    };

  return {
    Submit: unary('Submit', async (req) => {
      const source = req.sourceName || 'spec';
      const spec = parseJobSpec(req.specYaml, { source });
      const { numLayers } = await validateJobSpecFiles(spec, source);
      const totalSteps = await computeTotalSteps(spec);
      const record = await scheduler.submit(spec, numLayers, totalSteps);
      return { jobId: record.id };
    }),
    Get: unary('Get', async (req) => toWireJob((await store.mustGet(req.jobId)).record)),
    List: unary('List', async () => ({ jobs: (await store.list()).map(toWireJob) })),
    Cancel: unary('Cancel', async (req) => {
      await store.mustGet(req.jobId);
      return toWireJob(await scheduler.cancel(req.jobId, req.reason || 'cancelled by user'));
    }),
    Watch: (call) => {
      const ac = new AbortController();
      watches.add(ac);
      call.on('cancelled', () => ac.abort());
      void (async () => {
        try {
          await store.mustGet(call.request.jobId);
          let last: JobState | undefined;
          for await (const { record } of store.watch(call.request.jobId, ac.signal)) {
            const kind: JobEvent['kind'] = last === undefined ? 'SNAPSHOT' : record.state !== last ? 'STATE' : 'PROGRESS';
            last = record.state;
            call.write({ kind, job: toWireJob(record) });
            if (isTerminal(record.state)) break;
          }
          call.end();
        } catch (e) {
          if (ac.signal.aborted) call.end();
          else call.emit('error', toGrpcStatus(e));
        } finally {
          watches.delete(ac);
        }
      })();
    },
  };
}

interface WorkerHandlerDeps {
  registry: WorkerRegistry;
  scheduler: Scheduler;
  logger: Logger;
}

function workerHandlers({ registry, scheduler, logger }: WorkerHandlerDeps): WorkerServiceHandlers {
  return {
    Join: (call) => {
      let workerId: string | undefined;
      let ended = false;
      const link: WorkerLink = {
        send: (msg: CoordinatorMessage) => {
          if (ended) return false;
          call.write(msg);
          return true;
        },
        close: () => {
          if (ended) return;
          ended = true;
          call.end();
        },
      };
      const gone = (reason: string): void => {
        if (workerId !== undefined) registry.leave(workerId, link, reason);
        if (!ended) {
          ended = true;
          call.end();
        }
      };
      call.on('data', (msg: WorkerMessage__Output) => {
        if (workerId === undefined) {
          if (msg.msg !== 'hello' || !msg.hello || !msg.hello.workerId) {
            ended = true;
            call.emit('error', toGrpcStatus(new WorkerProtocolError('the first message on Join must be Hello with a worker_id')));
            return;
          }
          workerId = msg.hello.workerId;
          link.send({ ack: { workerId } });
          registry.join(msg.hello, link);
          return;
        }
        registry.touch(workerId);
        switch (msg.msg) {
          case 'progress':
            if (msg.progress) scheduler.onProgress(workerId, msg.progress);
            break;
          case 'result':
            if (msg.result) {
              scheduler.onResult(workerId, msg.result)
                .catch((e: unknown) => logger.error('handling a result failed', { worker: workerId, error: errorMessage(e) }));
            }
            break;
          default:
            break;
        }
      });
      call.on('end', () => gone('stream closed by the worker'));
      call.on('cancelled', () => gone('stream cancelled'));
      call.on('error', (e) => gone(`stream failed: ${errorMessage(e)}`));
    },
  };
}
