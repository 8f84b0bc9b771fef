/**
 * The worker's side of `WorkerService.Join`: one bidirectional stream to the coordinator. It
 * opens with Hello (retrying with backoff while the coordinator is not up yet), sends a heartbeat
 * every 2 s, and offers what the coordinator says as an `AsyncIterable` of events:
 *
 * - `assignment`: train `spec` as `rank` of `worldSize` in `generation`. Which NATS to use:
 *   the worker's own `--nats` flag when it was given, else the assignment's `natsUrl` (the
 *   coordinator's) — see `chooseNatsUrl`.
 * - `cancel`: stop the job, then report `result({ ok: false, error: 'cancelled' ... })`; the
 *   coordinator keeps the worker out of scheduling until that Result (or 10 s).
 * - `closed`: the stream ended (coordinator gone, or `close()`); abandon any assignment. The
 *   iteration ends after it.
 */
import { hostname as osHostname, availableParallelism, totalmem } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { PolytuneError, errorMessage } from '../common/errors.js';
import { parseAnyJobSpec, type AnyJobSpec } from '../common/job-kinds.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { channelCredentials, channelTlsOptions, type ClientTls } from '../common/tls.js';
import { checkCollectiveKey } from './collective/chunk-mac.js';
import {
  loadCoordinatorProto,
  type CoordinatorMessage__Output,
  type WorkerMessage,
  type WorkerServiceClient,
} from '../proto/index.js';

/** @default 30 s of retrying before connect gives up. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
/** @default a heartbeat every 2 s. */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000;
/** @default first retry after 200 ms, doubling up to 2 s, with ±50 % jitter. */
export const DEFAULT_BACKOFF_INITIAL_MS = 200;
export const DEFAULT_BACKOFF_MAX_MS = 2_000;
/** @default 5 s for one attempt (stream open + Ack). */
export const DEFAULT_ATTEMPT_TIMEOUT_MS = 5_000;
/**
 * @default 64 events queued before the session reports itself slow (the queue keeps them all: they are few and small).
 */
export const DEFAULT_EVENT_QUEUE_WARN = 64;

export interface SessionHello {
  /** Stable id of this worker (e.g. pod name + local rank). */
  workerId: string;
  /** @default os.hostname() */
  hostname?: string;
  /** The compute backend (wasm | cpu | tensorflow). */
  backend: string;
  /** @default process.pid */
  pid?: number;
  /** @default os.availableParallelism() */
  cores?: number;
  /** @default os.totalmem() */
  memoryBytes?: number;
}

export interface SessionOptions {
  /** Coordinator `HOST:PORT`. */
  address: string;
  hello: SessionHello;
  logger?: Logger;
  /** Aborting stops connecting, or closes the session. */
  signal?: AbortSignal;
  /** @default DEFAULT_CONNECT_TIMEOUT_MS */
  connectTimeoutMs?: number;
  /** @default DEFAULT_HEARTBEAT_INTERVAL_MS */
  heartbeatIntervalMs?: number;
  /** TLS to the coordinator; a client certificate when it requires mutual TLS. @default plaintext */
  tls?: ClientTls;
  /** The worker token, sent as `authorization: Bearer <token>` on Join. @default none */
  token?: string;
}

/** @default 4 MiB: the largest message a worker decodes (an assignment carries the spec). */
export const DEFAULT_SESSION_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface AssignmentEvent {
  type: 'assignment';
  jobId: string;
  generation: number;
  rank: number;
  worldSize: number;
  /** The coordinator-validated, path-resolved spec (any kind: common/job-kinds.ts). */
  spec: AnyJobSpec;
  /** The coordinator's NATS; a worker's own `--nats` wins (`chooseNatsUrl`). */
  natsUrl: string;
  totalSteps: number;
  /** NATS credentials (`.creds` text) limited to this job's subjects; empty when NATS runs without security. */
  natsCreds: string;
  /** The inbox prefix `natsCreds` allows (connect with it); empty with `natsCreds`. */
  natsInboxPrefix: string;
  /** Agree with the other ranks on the newest state (memory or checkpoint) before training. */
  resume: boolean;
  /** The generation's collective key (32 bytes, checked on receipt): MACs the gradient chunks. Secret: never log it. */
  collectiveKey: Uint8Array;
}

export interface CancelEvent {
  type: 'cancel';
  jobId: string;
  reason: string;
}

export interface ClosedEvent {
  type: 'closed';
  /** Undefined when the session was closed by `close()` or the coordinator ended the stream cleanly. */
  error?: Error;
}

export type SessionEvent = AssignmentEvent | CancelEvent | ClosedEvent;

export interface ProgressReport {
  jobId: string;
  generation: number;
  step: number;
  totalSteps: number;
  loss: number;
  tokensPerSecond: number;
  epoch: number;
  supervisedTokens: number;
  elapsedSeconds: number;
  lossByLanguage?: Record<string, number>;
  /** Per language, the samples that chose each layer, over this generation's steps (proto Progress). */
  layerChoices?: Record<string, { counts: number[] }>;
  /** Layers chosen by the layer analysis; evaluation table as JSON (proto Progress). */
  chosenLayers?: number[];
  evalJson?: string;
  /** A job of several stages: the step's stage (0-based) of `stageCount`, and its name (proto Progress). */
  stageIndex?: number;
  stageCount?: number;
  stageName?: string;
}

export interface ResultReport {
  jobId: string;
  generation: number;
  ok: boolean;
  /** Why it failed (ok false). */
  error?: string;
  outputDir?: string;
  firstLoss?: number;
  finalLoss?: number;
  steps?: number;
  /** The generation failed, not the job: the coordinator may re-form the world. */
  retryable?: boolean;
  chosenLayers?: number[];
  evalJson?: string;
}

/** The coordinator could not be reached within the connect timeout, or refused the Hello. */
export class CoordinatorConnectError extends PolytuneError {
  readonly address: string;
  constructor(address: string, message: string, options: { cause?: unknown } = {}) {
    super(`coordinator ${address}: ${message}`, { ...options, retryable: true });
    this.name = 'CoordinatorConnectError';
    this.address = address;
  }
}

/** The NATS URL a worker uses: its own `--nats` flag when given, else the one in its assignment. */
export function chooseNatsUrl(flag: string | undefined, assignment: Pick<AssignmentEvent, 'natsUrl'>): string {
  return flag && flag.length > 0 ? flag : assignment.natsUrl;
}

type SessionState = 'open' | 'closed';

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

function jittered(ms: number): number {
  return Math.round(ms * (0.5 + Math.random()));
}

type Stream = grpc.ClientDuplexStream<WorkerMessage, CoordinatorMessage__Output>;

/** Opens the Join stream and waits for the coordinator's Ack. Rejects on error, end or timeout. */
function attempt(
  client: WorkerServiceClient,
  hello: WorkerMessage,
  timeoutMs: number,
  metadata: grpc.Metadata,
): Promise<{ stream: Stream; workerId: string }> {
  return new Promise((resolve, reject) => {
    const stream = client.Join(metadata, { deadline: undefined });
    let settled = false;
    const timer = setTimeout(() => fail(new Error(`no answer to Hello within ${timeoutMs} ms`)), timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('error', fail);
      stream.off('end', onEnd);
    }
    function fail(e: Error): void {
      if (settled) return;
      settled = true;
      cleanup();
      stream.on('error', () => undefined);
      stream.cancel();
      reject(e);
    }
    function onEnd(): void {
      fail(new Error('coordinator ended the stream before answering Hello'));
    }
    function onData(msg: CoordinatorMessage__Output): void {
      if (msg.msg !== 'ack' || !msg.ack) {
        fail(new Error(`expected Ack, got ${msg.msg ?? 'an empty message'}`));
        return;
      }
      settled = true;
      cleanup();
      stream.pause();
      resolve({ stream, workerId: msg.ack.workerId });
    }
    stream.on('data', onData);
    stream.on('error', fail);
    stream.on('end', onEnd);
    stream.write(hello);
  });
}

export class CoordinatorSession {
  /** The worker id the coordinator registered. */
  readonly workerId: string;
  readonly address: string;
  private state: SessionState = 'open';
  private readonly queue: SessionEvent[] = [];
  private wake: (() => void) | undefined;
  private readonly heartbeat: NodeJS.Timeout;
  private iterating = false;
  private closing: Promise<void> | undefined;
  private readonly onAbort: () => void;

  private constructor(
    private readonly client: WorkerServiceClient,
    private readonly stream: Stream,
    workerId: string,
    address: string,
    heartbeatIntervalMs: number,
    private readonly logger: Logger,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.workerId = workerId;
    this.address = address;
    this.heartbeat = setInterval(() => this.send({ heartbeat: {} }), heartbeatIntervalMs);
    this.heartbeat.unref();
    stream.on('data', (msg: CoordinatorMessage__Output) => this.onMessage(msg));
    stream.on('error', (e: grpc.ServiceError) =>
      this.finish(e.code === grpc.status.CANCELLED && this.closing ? undefined : e),
    );
    stream.on('end', () => this.finish(undefined));
    stream.resume();
    this.onAbort = () => void this.close();
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /**
   * Connects to the coordinator and says Hello, retrying (exponential backoff with jitter) until
   * `connectTimeoutMs` passes or `signal` aborts. Throws `CoordinatorConnectError`.
   */
  static async connect(options: SessionOptions): Promise<CoordinatorSession> {
    const logger = options.logger ?? silentLogger;
    const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const h = options.hello;
    const hello: WorkerMessage = {
      hello: {
        workerId: h.workerId,
        hostname: h.hostname ?? osHostname(),
        backend: h.backend,
        pid: h.pid ?? process.pid,
        capabilities: {
          cores: h.cores ?? availableParallelism(),
          memoryBytes: h.memoryBytes ?? totalmem(),
          backend: h.backend,
        },
      },
    };
    const proto = loadCoordinatorProto();
    const client = new proto.WorkerService(options.address, channelCredentials(options.tls), {
      ...channelTlsOptions(options.tls),
      'grpc.max_receive_message_length': DEFAULT_SESSION_MAX_RECEIVE_MESSAGE_BYTES,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1_000,
    });
    let backoff = DEFAULT_BACKOFF_INITIAL_MS;
    let lastError: unknown;
    // The coordinator's last answer (a gRPC status, e.g. ALREADY_EXISTS): what the final error
    // names when a later attempt was only cut short by the deadline, which says less.
    let lastAnswer: unknown;
    for (let n = 1; ; n++) {
      if (options.signal?.aborted) {
        client.close();
        throw new CoordinatorConnectError(options.address, 'connect aborted', { cause: options.signal.reason });
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        await new Promise<void>((resolve, reject) => {
          client.waitForReady(Date.now() + Math.min(left, DEFAULT_ATTEMPT_TIMEOUT_MS), (e) =>
            e ? reject(e) : resolve(),
          );
        });
        const metadata = new grpc.Metadata();
        if (options.token !== undefined) metadata.set('authorization', `Bearer ${options.token}`);
        const { stream, workerId } = await attempt(
          client,
          hello,
          Math.min(Math.max(deadline - Date.now(), 1), DEFAULT_ATTEMPT_TIMEOUT_MS),
          metadata,
        );
        logger.info('joined coordinator', { address: options.address, worker: workerId, attempts: n });
        return new CoordinatorSession(
          client,
          stream,
          workerId,
          options.address,
          options.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
          logger,
          options.signal,
        );
      } catch (e) {
        lastError = e;
        const code = (e as Partial<grpc.ServiceError>).code;
        if (typeof code === 'number') lastAnswer = e;
        // A refused Hello or refused credentials do not get better by retrying.
        if (
          code === grpc.status.INVALID_ARGUMENT ||
          code === grpc.status.UNAUTHENTICATED ||
          code === grpc.status.PERMISSION_DENIED
        )
          break;
        logger.debug('coordinator not reachable yet', { address: options.address, attempt: n, error: errorMessage(e) });
      }
      await sleep(Math.min(jittered(backoff), Math.max(0, deadline - Date.now())), options.signal);
      backoff = Math.min(backoff * 2, DEFAULT_BACKOFF_MAX_MS);
    }
    client.close();
    const reason = lastAnswer ?? lastError;
    throw new CoordinatorConnectError(
      options.address,
      `not reachable within ${Math.round(timeoutMs / 1000)} s: ${errorMessage(reason)}`,
      { cause: reason },
    );
  }

  /** Whether the stream is still open. */
  get open(): boolean {
    return this.state === 'open';
  }

  private onMessage(msg: CoordinatorMessage__Output): void {
    switch (msg.msg) {
      case 'assignment': {
        const a = msg.assignment;
        if (!a) return;
        let spec: AnyJobSpec;
        try {
          // The coordinator validated and path-resolved the spec, but what crossed the wire (and the
          // store it came from) is checked again here, by the coordinator's own parser.
          spec = parseAnyJobSpec(a.specJson, { source: `assignment of job ${a.jobId}` });
        } catch (e) {
          this.logger.error('assignment with an invalid spec refused', { job: a.jobId, error: errorMessage(e) });
          const error = `refused: the assignment's spec_json is invalid: ${errorMessage(e)}`;
          this.result({ jobId: a.jobId, generation: a.generation, ok: false, error });
          return;
        }
        let collectiveKey: Uint8Array;
        try {
          collectiveKey = checkCollectiveKey(a.collectiveKey, 'assignment.collective_key');
        } catch (e) {
          this.logger.error('assignment without a usable collective key', { job: a.jobId, error: errorMessage(e) });
          this.result({ jobId: a.jobId, generation: a.generation, ok: false, error: errorMessage(e) });
          return;
        }
        this.push({
          type: 'assignment',
          jobId: a.jobId,
          generation: a.generation,
          rank: a.rank,
          worldSize: a.worldSize,
          spec,
          natsUrl: a.natsUrl,
          totalSteps: a.totalSteps,
          natsCreds: a.natsCreds,
          natsInboxPrefix: a.natsInboxPrefix,
          resume: a.resume,
          collectiveKey,
        });
        return;
      }
      case 'cancel':
        if (msg.cancel) this.push({ type: 'cancel', jobId: msg.cancel.jobId, reason: msg.cancel.reason });
        return;
      case 'refusal':
        // The coordinator dropped one of our messages (e.g. progress of a generation it has moved past).
        if (msg.refusal)
          this.logger.warn('coordinator refused a message', {
            message: msg.refusal.message,
            error: msg.refusal.error,
            job: msg.refusal.jobId,
          });
        return;
      default:
        return;
    }
  }

  private push(e: SessionEvent): void {
    this.queue.push(e);
    if (this.queue.length === DEFAULT_EVENT_QUEUE_WARN)
      this.logger.warn('session events are not being consumed', { depth: this.queue.length });
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private finish(error: Error | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearInterval(this.heartbeat);
    this.signal?.removeEventListener('abort', this.onAbort);
    if (error) this.logger.warn('coordinator stream closed', { error: errorMessage(error) });
    this.push(error ? { type: 'closed', error } : { type: 'closed' });
    this.client.close();
  }

  /** The coordinator's messages, then one `closed` event; single consumer. */
  events(): AsyncIterable<SessionEvent> {
    if (this.iterating) throw new PolytuneError('CoordinatorSession.events() has a single consumer');
    this.iterating = true;
    return { [Symbol.asyncIterator]: () => this.iterate() };
  }

  private async *iterate(): AsyncGenerator<SessionEvent> {
    for (;;) {
      const e = this.queue.shift();
      if (e) {
        yield e;
        if (e.type === 'closed') return;
        continue;
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private send(msg: WorkerMessage): boolean {
    if (this.state !== 'open') return false;
    this.stream.write(msg);
    return true;
  }

  /** Reports training progress (rank 0's updates the job). False if the session is closed. */
  progress(p: ProgressReport): boolean {
    return this.send({ progress: p });
  }

  /** Reports the end of an assignment. False if the session is closed. */
  result(r: ResultReport): boolean {
    return this.send({
      result: {
        jobId: r.jobId,
        generation: r.generation,
        ok: r.ok,
        error: r.error ?? '',
        outputDir: r.outputDir ?? '',
        firstLoss: r.firstLoss ?? 0,
        finalLoss: r.finalLoss ?? 0,
        steps: r.steps ?? 0,
        retryable: r.retryable ?? false,
        chosenLayers: r.chosenLayers ?? [],
        evalJson: r.evalJson ?? '',
      },
    });
  }

  /** Ends the stream (flushing what was written) and closes the channel. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.state === 'open') {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 2_000);
          t.unref();
          this.stream.once('end', () => {
            clearTimeout(t);
            resolve();
          });
          this.stream.once('error', () => {
            clearTimeout(t);
            resolve();
          });
          this.stream.once('close', () => {
            clearTimeout(t);
            resolve();
          });
          this.stream.end();
        });
      }
      this.finish(undefined);
    })();
    return this.closing;
  }
}
