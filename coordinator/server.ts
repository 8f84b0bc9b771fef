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
import { connect, credsAuthenticator, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage, UserError } from '../common/errors.js';
import { jobKindOf, parseAnyJobSpec } from '../common/job-kinds.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { noopMeter, type MetricMeter } from '../common/metrics.js';
import { peerCertificateNames, peerCertificateVerified, serverCredentials, type ServerTls } from '../common/tls.js';
import {
  loadCoordinatorProto,
  type CoordinatorMessage,
  type JobEvent,
  type JobServiceHandlers,
  type WorkerMessage__Output,
  type WorkerServiceHandlers,
} from '../proto/index.js';
import {
  authorizeJobCall,
  authorizeWorkerCall,
  authorizeWorkerId,
  clientIdentity,
  type CallAuthPolicy,
} from './auth.js';
import { createCoordinatorMetrics, type CoordinatorMetrics } from './coordinator-metrics.js';
import { CoordinatorStartError, JoinDeadlineError, WorkerProtocolError } from './errors.js';
import { toGrpcStatus } from './grpc-errors.js';
import { isTerminal, toWireJob, type JobState } from './job-record.js';
import { LedgerStore } from './ledger.js';
import type { NatsCredentialIssuer } from './nats-credentials.js';
import { NatsRevoker, WorkerCredentialLifecycle, type NatsRevocationSettings } from './nats-revocation.js';
import { checkNatsExposure, isLoopbackHost, NatsExposure } from './nats-exposure.js';
import {
  checkHello,
  checkJobId,
  checkReason,
  checkSubmit,
  checkWorkerMessage,
  DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
  workerMessageKind,
} from './request-limits.js';
import { JobStore } from './job-store.js';
import { Scheduler } from './scheduler.js';
import { checkJobFiles, checkStoredJobFiles, markOutputDirs } from './job-files.js';
import { resolveStorageRoots, STORAGE_ROOT_FLAG, type StorageRoots } from '../common/storage-roots.js';
import { checkPageSize, listPage } from './list-pages.js';
import { StoreEvents } from './store-events.js';
import { computeTotalSteps } from './total-steps.js';
import { DEFAULT_HEARTBEAT_TIMEOUT_MS, WorkerRegistry, type WorkerLink } from './worker-registry.js';
import { DEFAULT_HELLO_TIMEOUT_MS, resetHttp2Stream } from './join-deadlines.js';
import { KvBucket } from '../common/subjects.js';

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
  /** @default KvBucket.jobs */
  jobsBucket?: string;
  /** @default KvBucket.ledger */
  ledgerBucket?: string;
  /** @default DEFAULT_SHUTDOWN_GRACE_MS */
  shutdownGraceMs?: number;
  logger?: Logger;
  /** Where the coordinator's metrics are recorded (coordinator-metrics.ts). @default noopMeter */
  meter?: MetricMeter;
  /** TLS for the gRPC port; with `clientCa`, workers must present a certificate it signed. @default plaintext */
  tls?: ServerTls;
  /**
   * Bearer tokens: `clientToken` for JobService, `workerToken` for Join. @default none (open)
   * `workerIdFromCertificate` @default true under mutual TLS (`tls.clientCa`), else false.
   */
  auth?: Pick<CallAuthPolicy, 'clientToken' | 'workerToken' | 'workerIdFromCertificate'>;
  /** Extra options for the coordinator's own NATS connection (credentials: `authenticator`). */
  natsConnect?: Partial<ConnectionOptions>;
  /**
   * Use a NATS without authentication that is not on loopback (`--insecure-nats`); without it the
   * coordinator refuses to start (nats-exposure.ts). @default false
   */
  insecureNats?: boolean;
  /** Issues per-job NATS credentials sent to workers in their Assignment. @default none (workers connect without) */
  natsIssuer?: NatsCredentialIssuer;
  /**
   * Revokes the credentials `natsIssuer` issued when their generation ends or their worker leaves
   * (nats-revocation.ts). @default none: they expire after their lifetime
   */
  natsRevocation?: NatsRevocationSettings;
  /** `grpc.max_receive_message_length` of the server. @default DEFAULT_MAX_RECEIVE_MESSAGE_BYTES */
  maxReceiveMessageBytes?: number;
  /** A Join stream without Hello by then is ended (join-deadlines.ts). @default DEFAULT_HELLO_TIMEOUT_MS */
  helloTimeoutMs?: number;
  /** The directories jobs' paths may be in (`--storage-root`, common/storage-roots.ts). @default none: anywhere */
  storageRoots?: readonly string[];
  /** Finished jobs are deleted this long after they finished; 0 keeps them. @default DEFAULT_RETENTION_HOURS */
  retentionHours?: number;
  /** Pending jobs one client may have; 0: no limit. @default DEFAULT_MAX_PENDING_PER_CLIENT */
  maxPendingPerClient?: number;
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

/** The host of a `HOST:PORT` listen address, without IPv6 brackets (`[::1]:7070` gives `::1`). */
export function listenHost(listen: string): string {
  return splitHostPort(listen).host.replace(/^\[(.*)\]$/, '$1');
}

/** The system-account connection that sends account updates (revocations), with the coordinator's TLS. */
async function connectRevoker(
  natsUrl: string,
  r: NatsRevocationSettings,
  base: Partial<ConnectionOptions> | undefined,
): Promise<NatsConnection> {
  try {
    return await connect({
      ...(base?.tls ? { tls: base.tls } : {}),
      servers: natsUrl,
      name: 'polytune-coordinator-revocations',
      maxReconnectAttempts: -1,
      authenticator: credsAuthenticator(new TextEncoder().encode(r.systemCreds)),
    });
  } catch (e) {
    throw new CoordinatorStartError(
      `cannot connect to NATS at ${natsUrl} as the system-account user (--nats-system-creds): ${errorMessage(e)}`,
      { cause: e },
    );
  }
}

/** Connects to NATS, recovers jobs, and serves gRPC. */
export async function startCoordinator(options: CoordinatorOptions = {}): Promise<Coordinator> {
  const logger = options.logger ?? silentLogger;
  const listen = options.listen ?? DEFAULT_LISTEN;
  const natsUrl = options.natsUrl ?? DEFAULT_NATS_URL;
  const { host } = splitHostPort(listen);
  const roots = await resolveStorageRoots(options.storageRoots ?? []);
  if (roots.length === 0) {
    const note = `no ${STORAGE_ROOT_FLAG}: jobs may name any path this coordinator and its workers can read or write`;
    if (isLoopbackHost(listenHost(listen))) logger.info(note, { listen });
    else logger.warn(`${note}, and ${listen} is reachable from other hosts`, { listen });
  }
  const requireWorkerCertificate = options.tls?.clientCa !== undefined;
  // Under mutual TLS a worker's id is a name of its certificate unless turned off
  // (--no-worker-id-from-cert): otherwise one certificate could join under any busy worker's id.
  const auth: CallAuthPolicy = {
    ...options.auth,
    requireWorkerCertificate,
    workerIdFromCertificate: options.auth?.workerIdFromCertificate ?? requireWorkerCertificate,
  };
  if (auth.workerIdFromCertificate && !auth.requireWorkerCertificate)
    throw new UserError('--worker-id-from-cert needs mutual TLS (--tls-client-ca)');
  const natsExposure = checkNatsExposure({ natsUrl, connect: options.natsConnect, insecureNats: options.insecureNats });
  if (natsExposure === NatsExposure.Insecure) {
    logger.warn(
      'NATS without authentication off loopback (--insecure-nats): whoever reaches it can forge gradients and jobs',
      { nats: natsUrl },
    );
  }
  let nc: NatsConnection;
  try {
    nc = await connect({
      ...options.natsConnect,
      servers: natsUrl,
      name: 'polytune-coordinator',
      maxReconnectAttempts: -1,
    });
  } catch (e) {
    throw new CoordinatorStartError(`cannot connect to NATS at ${natsUrl}: ${errorMessage(e)}`, { cause: e });
  }
  let server: grpc.Server | undefined;
  let registry: WorkerRegistry | undefined;
  let scheduler: Scheduler | undefined;
  let metrics: CoordinatorMetrics | undefined;
  let revocationNc: NatsConnection | undefined;
  let credentials: WorkerCredentialLifecycle | undefined;
  let openedStore: JobStore | undefined;
  try {
    const storeEvents = new StoreEvents();
    const storeOptions = {
      bucket: options.jobsBucket ?? KvBucket.jobs,
      logger: logger.child('store'),
      events: storeEvents,
    };
    const store = await JobStore.open(nc, storeOptions).catch((e: unknown) => {
      throw new CoordinatorStartError(
        `cannot open the KV bucket ${options.jobsBucket ?? KvBucket.jobs} ` +
          `on ${natsUrl} (is JetStream enabled?): ${errorMessage(e)}`,
        { cause: e },
      );
    });
    openedStore = store;
    const ledger = await LedgerStore.open(nc, options.ledgerBucket ?? KvBucket.ledger, {
      logger: logger.child('ledger'),
      events: storeEvents,
    });
    registry = new WorkerRegistry({
      heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS,
      logger: logger.child('registry'),
    });
    metrics = createCoordinatorMetrics(options.meter ?? noopMeter, { store, registry, storeEvents });
    if (options.natsIssuer) {
      revocationNc = options.natsRevocation
        ? await connectRevoker(natsUrl, options.natsRevocation, options.natsConnect)
        : undefined;
      const revoker =
        revocationNc && options.natsRevocation
          ? new NatsRevoker({ nc: revocationNc, ...options.natsRevocation, logger: logger.child('revocation') })
          : undefined;
      if (!revoker)
        logger.warn(
          'NATS credentials of ended generations are not revoked (no --nats-system-creds); they expire instead',
        );
      credentials = new WorkerCredentialLifecycle(options.natsIssuer, revoker, logger.child('credentials'));
      const lifecycle = credentials;
      registry.on((e) => {
        if (e.type === 'idle' || e.type === 'lost')
          lifecycle.end(e.worker.id, undefined, `worker ${e.type === 'idle' ? 'idle' : `lost: ${e.reason}`}`);
      });
    }
    scheduler = new Scheduler({
      store,
      registry,
      workerNatsUrl: options.workerNatsUrl ?? natsUrl,
      progressFlushMs: options.progressFlushMs,
      logger: logger.child('scheduler'),
      metrics,
      ledger,
      retentionHours: options.retentionHours,
      maxPendingPerClient: options.maxPendingPerClient,
      revalidate: (spec, jobId) => checkStoredJobFiles(spec, roots, `stored job ${jobId}`),
    });
    await scheduler.start();

    const watches = new Set<AbortController>();
    const proto = loadCoordinatorProto();
    const maxReceive = options.maxReceiveMessageBytes ?? DEFAULT_MAX_RECEIVE_MESSAGE_BYTES;
    server = new grpc.Server({
      'grpc.max_receive_message_length': maxReceive,
      'grpc.max_concurrent_streams': 1_000,
      // Metadata (headers) is bounded too: a token and a few headers fit in 16 KiB.
      'grpc.max_metadata_size': 16 * 1024,
    });
    if (!options.tls && (auth.clientToken || auth.workerToken))
      logger.warn('bearer tokens without TLS travel in clear text; serve with --tls-cert/--tls-key');
    if (!options.tls && options.natsIssuer)
      logger.warn('NATS credentials are sent to workers without TLS; serve with --tls-cert/--tls-key');
    server.addService(
      proto.JobService.service,
      jobHandlers({
        store,
        ledger,
        scheduler,
        watches,
        logger,
        metrics,
        auth,
        roots,
      }),
    );
    server.addService(
      proto.WorkerService.service,
      workerHandlers({
        registry,
        scheduler,
        logger,
        store,
        auth,
        credentials,
        helloTimeoutMs: options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS,
      }),
    );
    const srv = server;
    const port = await new Promise<number>((resolve, reject) => {
      srv.bindAsync(listen, serverCredentials(options.tls), (err, p) =>
        err
          ? reject(new CoordinatorStartError(`cannot listen on ${listen}: ${err.message}`, { cause: err }))
          : resolve(p),
      );
    });
    const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    logger.info('coordinator listening', {
      address,
      nats: natsUrl,
      natsExposure,
      tls: options.tls ? (options.tls.clientCa ? 'mutual' : 'on') : 'off',
      clientToken: auth.clientToken !== undefined,
      workerToken: auth.workerToken !== undefined,
      natsCredentials: options.natsIssuer !== undefined,
    });

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
        store.close();
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
        await revocationNc?.close();
      })();
      return stopped;
    };
    return { address, port, store, registry: reg, stop };
  } catch (e) {
    server?.forceShutdown();
    registry?.close();
    metrics?.close();
    await scheduler?.stop().catch(() => undefined);
    await revocationNc?.close();
    openedStore?.close();
    await nc.close();
    throw e;
  }
}

interface JobHandlerDeps {
  store: JobStore;
  ledger: LedgerStore;
  scheduler: Scheduler;
  watches: Set<AbortController>;
  logger: Logger;
  metrics: CoordinatorMetrics;
  auth: CallAuthPolicy;
  roots: StorageRoots;
}

function jobHandlers(deps: JobHandlerDeps): JobServiceHandlers {
  const { store, ledger, scheduler, watches, logger, metrics, auth, roots } = deps;
  const unary =
    <Req, Res>(name: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>): void => {
      Promise.resolve()
        .then(() => {
          authorizeJobCall(auth, name, call.metadata);
          return fn(call.request, call);
        })
        .then(
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
    Submit: unary('Submit', async (req, call) => {
      const { specYaml, sourceName } = checkSubmit(req);
      const source = sourceName || 'spec';
      const client = clientIdentity(call.metadata, call.getPeer());
      await scheduler.checkPendingLimit(client);
      const spec = parseAnyJobSpec(specYaml, { source });
      // The kind's row (common/job-kinds.ts): its files, its steps, what it trains (0 of 0: nothing
      // trains in an EvalJob or a LayerAnalysis, whose "steps" are problems and prompts).
      const kind = jobKindOf(spec);
      const { numLayers, parameters } = await checkJobFiles(
        spec,
        roots,
        () => kind.validateFiles(spec, source),
        source,
      );
      const totalSteps = await computeTotalSteps(spec);
      await markOutputDirs(spec);
      const record = await scheduler.submit(spec, numLayers, totalSteps, kind.resumable && req.resume === true, client);
      return { jobId: record.id, trainableParameters: parameters.trainable, totalParameters: parameters.total };
    }),
    Get: unary('Get', async (req) => {
      const id = checkJobId(req.jobId);
      return toWireJob((await store.mustGet(id)).record, await ledger.get(id));
    }),
    List: unary('List', async (req) => {
      const pageSize = checkPageSize(req.pageSize);
      const token = typeof req.pageToken === 'string' ? req.pageToken : '';
      const { page, next } = listPage(await store.list(), pageSize, token);
      return {
        jobs: page.map((r) => toWireJob(r, undefined, { withSpec: false })),
        nextPageToken: next,
        corruptKeys: token ? [] : store.corruptKeys().map((k) => k.key),
      };
    }),
    Delete: unary('Delete', async (req) => toWireJob(await scheduler.delete(checkJobId(req.jobId)))),
    Cancel: unary('Cancel', async (req) => {
      const jobId = checkJobId(req.jobId);
      const reason = checkReason(req.reason);
      await store.mustGet(jobId);
      return toWireJob(await scheduler.cancel(jobId, reason || 'cancelled by user'));
    }),
    Watch: (call) => {
      const ac = new AbortController();
      watches.add(ac);
      call.on('cancelled', () => ac.abort());
      void (async () => {
        try {
          authorizeJobCall(auth, 'Watch', call.metadata);
          const jobId = checkJobId(call.request.jobId);
          await store.mustGet(jobId);
          let last: JobState | undefined;
          for await (const { record } of store.watch(jobId, ac.signal)) {
            const kind: JobEvent['kind'] =
              last === undefined ? 'SNAPSHOT' : record.state !== last ? 'STATE' : 'PROGRESS';
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
  store: JobStore;
  auth: CallAuthPolicy;
  credentials: WorkerCredentialLifecycle | undefined;
  helloTimeoutMs: number;
}

/**
 * The Join stream. Every message is checked before it reaches the registry or the scheduler:
 * - the call itself: worker token and/or verified client certificate (auth.ts);
 * - the protocol: Hello first and only once, well-formed (else the stream ends, INVALID_ARGUMENT),
 *   within `helloTimeoutMs` (else DEADLINE_EXCEEDED), under a worker id not connected already
 *   (else ALREADY_EXISTS; join-deadlines.ts, worker-registry.ts);
 * - each later message: field types and ranges (request-limits.ts), then membership: the job is
 *   the one the worker is assigned to, at the current generation. A message that fails is not
 *   applied; the worker gets a `Refusal` naming the field, and the stream stays open.
 */
function workerHandlers({
  registry,
  scheduler,
  logger,
  store,
  auth,
  credentials,
  helloTimeoutMs,
}: WorkerHandlerDeps): WorkerServiceHandlers {
  return {
    Join: (call) => {
      let workerId: string | undefined;
      let ended = false;
      // Writes are chained so that an assignment (whose NATS credentials are signed
      // asynchronously) is never overtaken by a later message such as its cancel.
      let writes = Promise.resolve();
      const write = (msg: CoordinatorMessage): void => {
        writes = writes
          .then(async () => {
            if (ended) return;
            const a = msg.assignment;
            if (a && credentials && workerId !== undefined && a.jobId) {
              const c = await credentials.forAssignment(workerId, a.jobId, Number(a.generation));
              msg = { assignment: { ...a, natsCreds: c.creds, natsInboxPrefix: c.inboxPrefix } };
            }
            // The generation ends for this worker: its credentials stop working (the cancel goes first).
            if (msg.cancel && credentials && workerId !== undefined) {
              const { jobId } = msg.cancel;
              if (!ended) call.write(msg);
              credentials.end(workerId, jobId || undefined, `cancel: ${msg.cancel.reason ?? ''}`);
              return;
            }
            if (!ended) call.write(msg);
          })
          .catch((e: unknown) => {
            logger.error('cannot send to worker', { worker: workerId, error: errorMessage(e) });
            fail(new WorkerProtocolError(`coordinator could not send a message: ${errorMessage(e)}`, workerId));
          });
      };
      const link: WorkerLink = {
        send: (msg: CoordinatorMessage) => {
          if (ended) return false;
          write(msg);
          return true;
        },
        close: () => {
          if (ended) return;
          ended = true;
          call.end();
          resetHttp2Stream(call);
        },
        isOpen: () => !ended && !call.cancelled,
      };
      const gone = (reason: string): void => {
        if (workerId !== undefined) registry.leave(workerId, link, reason);
        clearTimeout(helloTimer);
        if (!ended) {
          ended = true;
          call.end();
          resetHttp2Stream(call);
        }
      };
      /** Ends the stream with the error's status (protocol violations, failed authentication). */
      const fail = (e: Error): void => {
        if (ended) return;
        ended = true;
        clearTimeout(helloTimer);
        logger.warn('worker stream refused', { worker: workerId, error: e.message });
        if (workerId !== undefined) registry.leave(workerId, link, `refused: ${e.message}`);
        call.emit('error', toGrpcStatus(e));
        resetHttp2Stream(call);
      };
      const helloTimer = setTimeout(() => {
        if (workerId === undefined)
          fail(new JoinDeadlineError(`no Hello within ${helloTimeoutMs} ms of the Join call`));
      }, helloTimeoutMs);
      helloTimer.unref();
      const refuse = (message: string, error: string, jobId = '', generation = 0): void => {
        logger.warn('worker message refused', { worker: workerId, message, error });
        link.send({ refusal: { message, error, jobId, generation } });
      };
      /**
       * Undefined when `workerId` is in `jobId`'s gang at `generation`; else why not (the store is asked whether the
       * job exists).
       */
      const membership = async (
        wid: string,
        kind: string,
        jobId: string,
        generation: number,
      ): Promise<string | undefined> => {
        const ref = registry.get(wid)?.job;
        if (ref && ref.jobId === jobId) {
          if (ref.generation === generation) return undefined;
          return generation < ref.generation
            ? `${kind}.generation: ${generation} is stale (worker ${wid} ` +
                `is in generation ${ref.generation} of job ${jobId})`
            : `${kind}.generation: ${generation} is not the current generation ${ref.generation} of job ${jobId}`;
        }
        if (!(await store.get(jobId))) return `${kind}.job_id: job ${jobId} not found`;
        return (
          `${kind}.job_id: worker ${wid} is not in the gang of job ` +
          `${jobId}${ref ? ` (it is assigned ${ref.jobId})` : ''}`
        );
      };

      call.on('data', (raw: WorkerMessage__Output) => {
        if (ended) return;
        if (workerId === undefined) {
          if (raw?.msg !== 'hello') {
            fail(
              new WorkerProtocolError(
                `the first message on Join must be Hello, got ${workerMessageKind(raw) || 'an empty message'}`,
              ),
            );
            return;
          }
          let hello;
          try {
            hello = checkHello(raw.hello);
          } catch (e) {
            fail(new WorkerProtocolError(`bad Hello: ${errorMessage(e)}`));
            return;
          }
          try {
            authorizeWorkerId(auth, hello.workerId, peerCertificateNames(call));
            // Refused (WorkerIdInUseError) while a live stream holds this id; the ack follows the join.
            registry.join(hello, link);
          } catch (e) {
            fail(e as Error);
            return;
          }
          clearTimeout(helloTimer);
          workerId = hello.workerId;
          link.send({ ack: { workerId } });
          return;
        }
        const wid = workerId;
        registry.touch(wid);
        let msg;
        try {
          msg = checkWorkerMessage(raw);
        } catch (e) {
          refuse(workerMessageKind(raw), errorMessage(e));
          return;
        }
        switch (msg.type) {
          case 'hello':
            fail(new WorkerProtocolError(`a second Hello on the stream of worker ${wid}`, wid));
            return;
          case 'heartbeat':
            return;
          case 'progress':
          case 'result': {
            const body = msg.type === 'progress' ? msg.progress : msg.result;
            const ref = registry.get(wid)?.job;
            if (ref?.jobId !== body.jobId || ref.generation !== body.generation) {
              void membership(wid, msg.type, body.jobId, body.generation)
                .then((why) =>
                  refuse(
                    msg.type,
                    why ?? `${msg.type}: worker ${wid} is no longer in job ${body.jobId}`,
                    body.jobId,
                    body.generation,
                  ),
                )
                .catch((e: unknown) =>
                  refuse(
                    msg.type,
                    `${msg.type}.job_id: cannot check job ${body.jobId}: ${errorMessage(e)}`,
                    body.jobId,
                    body.generation,
                  ),
                );
              return;
            }
            if (msg.type === 'progress') {
              credentials?.progress(body.jobId, body.generation);
              scheduler.onProgress(wid, msg.progress);
            } else {
              scheduler
                .onResult(wid, msg.result)
                .catch((e: unknown) =>
                  logger.error('handling a result failed', { worker: wid, error: errorMessage(e) }),
                );
            }
            return;
          }
        }
      });
      call.on('end', () => gone('stream closed by the worker'));
      call.on('cancelled', () => gone('stream cancelled'));
      call.on('error', (e) => gone(`stream failed: ${errorMessage(e)}`));
      // Checked after the listeners are attached (an 'error' needs one); no data is read before.
      try {
        authorizeWorkerCall(auth, call.metadata, peerCertificateVerified(call));
      } catch (e) {
        fail(e as Error);
      }
    },
  };
}
