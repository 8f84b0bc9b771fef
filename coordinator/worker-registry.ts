/**
 * The workers connected to this coordinator: who they are, whether they are free, which job they
 * run, and whether they are still alive. A worker sends a heartbeat every 2 s; one silent for
 * `heartbeatTimeoutMs`, or whose stream closes, is lost. The registry knows nothing of gRPC: a
 * worker is reached through its `WorkerLink`.
 */
import type { Logger } from '../common/logging.js';
import { silentLogger } from '../common/logging.js';
import type { CoordinatorMessage, Hello__Output } from '../proto/index.js';
import { WorkerIdInUseError } from './errors.js';

/** @default 10 s without any message from a worker and it is lost. */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10_000;
/** @default 10 s for a cancelled worker to report its Result before it is considered idle anyway. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;

export const WorkerStatus = { Idle: 'idle', Busy: 'busy', Draining: 'draining' } as const;
export type WorkerStatus = (typeof WorkerStatus)[keyof typeof WorkerStatus];

/** How the registry reaches a worker; the gRPC stream in production. */
export interface WorkerLink {
  /** Queues a message; false if the link is already closed. */
  send(msg: CoordinatorMessage): boolean;
  /** Ends the stream from the coordinator's side. */
  close(reason: string): void;
  /** False once the stream is known to be closed (its HTTP/2 stream ended). @default always open */
  isOpen?(): boolean;
}

export interface WorkerAssignmentRef {
  readonly jobId: string;
  readonly generation: number;
  readonly rank: number;
}

export interface WorkerInfo {
  readonly id: string;
  readonly hostname: string;
  readonly backend: string;
  readonly pid: number;
  readonly cores: number;
  readonly memoryBytes: number;
  readonly joinedAt: number;
  lastSeen: number;
  status: WorkerStatus;
  /** The job the worker runs (busy) or is leaving (draining). */
  job: WorkerAssignmentRef | undefined;
  drainUntil: number;
}

export type RegistryEvent =
  | { type: 'joined'; worker: WorkerInfo }
  | { type: 'idle'; worker: WorkerInfo }
  | { type: 'lost'; worker: WorkerInfo; reason: string };

export interface WorkerRegistryOptions {
  /** @default DEFAULT_HEARTBEAT_TIMEOUT_MS */
  heartbeatTimeoutMs?: number;
  /** @default DEFAULT_DRAIN_TIMEOUT_MS */
  drainTimeoutMs?: number;
  logger?: Logger;
}

interface Entry {
  info: WorkerInfo;
  link: WorkerLink;
}

export class WorkerRegistry {
  private readonly workers = new Map<string, Entry>();
  private readonly listeners = new Set<(e: RegistryEvent) => void>();
  private readonly heartbeatTimeoutMs: number;
  private readonly drainTimeoutMs: number;
  private readonly logger: Logger;
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(options: WorkerRegistryOptions = {}) {
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    this.drainTimeoutMs = options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
    this.logger = options.logger ?? silentLogger;
    const tick = Math.max(50, Math.min(1000, Math.floor(this.heartbeatTimeoutMs / 4)));
    this.timer = setInterval(() => this.check(), tick);
    this.timer.unref();
  }

  /** Subscribes to joins, losses and workers becoming idle. Returns the unsubscribe function. */
  on(listener: (e: RegistryEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: RegistryEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch (err) {
        this.logger.error('registry listener failed', { error: String(err) });
      }
    }
  }

  /**
   * Registers a worker from its Hello. A worker id that is already connected is refused
   * (`WorkerIdInUseError`) while its stream is alive: whoever holds the worker token must not be
   * able to evict a busy worker and take its job and NATS credentials. A dead one (stream closed,
   * or silent for `heartbeatTimeoutMs`, before the monitor noticed) is replaced: it is lost.
   */
  join(hello: Hello__Output, link: WorkerLink): WorkerInfo {
    const id = hello.workerId;
    const old = this.workers.get(id);
    const now = Date.now();
    if (old) {
      const silentMs = now - old.info.lastSeen;
      const open = old.link.isOpen?.() ?? true;
      if (open && silentMs <= this.heartbeatTimeoutMs) throw new WorkerIdInUseError(id, silentMs);
      this.remove(
        id,
        old,
        open
          ? `no heartbeat for ${Math.round(silentMs / 1000)} s; replaced by a new connection`
          : 'stream closed; replaced by a new connection',
      );
      old.link.close('replaced by a new connection');
    }
    const info: WorkerInfo = {
      id,
      hostname: hello.hostname,
      backend: hello.backend || hello.capabilities?.backend || '',
      pid: hello.pid,
      cores: hello.capabilities?.cores ?? 0,
      memoryBytes: hello.capabilities?.memoryBytes ?? 0,
      joinedAt: now,
      lastSeen: now,
      status: WorkerStatus.Idle,
      job: undefined,
      drainUntil: 0,
    };
    this.workers.set(id, { info, link });
    this.logger.info('worker joined', { worker: id, hostname: info.hostname, backend: info.backend });
    this.emit({ type: 'joined', worker: info });
    return info;
  }

  /** Any message from the worker proves it alive. */
  touch(id: string): void {
    const e = this.workers.get(id);
    if (e) e.info.lastSeen = Date.now();
  }

  /** The worker's stream ended (or failed); it is lost if it was still registered on `link`. */
  leave(id: string, link: WorkerLink, reason: string): void {
    const e = this.workers.get(id);
    if (e && e.link === link) this.remove(id, e, reason);
  }

  private remove(id: string, e: Entry, reason: string): void {
    this.workers.delete(id);
    if (e.info.status === WorkerStatus.Busy)
      this.logger.warn('worker lost', { worker: id, reason, job: e.info.job?.jobId });
    else this.logger.info('worker left', { worker: id, reason });
    this.emit({ type: 'lost', worker: e.info, reason });
  }

  get(id: string): WorkerInfo | undefined {
    return this.workers.get(id)?.info;
  }

  all(): WorkerInfo[] {
    return [...this.workers.values()].map((e) => e.info);
  }

  /** Idle workers, longest-connected first. */
  idle(): WorkerInfo[] {
    return this.all()
      .filter((w) => w.status === WorkerStatus.Idle)
      .sort((a, b) => a.joinedAt - b.joinedAt || a.id.localeCompare(b.id));
  }

  /** Marks the worker busy with a job. */
  assign(id: string, job: WorkerAssignmentRef): void {
    const e = this.workers.get(id);
    if (!e) return;
    e.info.status = WorkerStatus.Busy;
    e.info.job = job;
  }

  /**
   * Frees the worker. With `drain`, it stays out of scheduling until it reports a Result for its
   * job (then `release` again without drain) or `drainTimeoutMs` passes.
   */
  release(id: string, options: { drain?: boolean } = {}): void {
    const e = this.workers.get(id);
    if (!e) return;
    if (options.drain) {
      e.info.status = WorkerStatus.Draining;
      e.info.drainUntil = Date.now() + this.drainTimeoutMs;
      return;
    }
    e.info.status = WorkerStatus.Idle;
    e.info.job = undefined;
    e.info.drainUntil = 0;
    this.emit({ type: 'idle', worker: e.info });
  }

  /** Sends a message to the worker; false if it is gone. */
  send(id: string, msg: CoordinatorMessage): boolean {
    const e = this.workers.get(id);
    return e ? e.link.send(msg) : false;
  }

  private check(): void {
    const now = Date.now();
    for (const [id, e] of [...this.workers]) {
      if (now - e.info.lastSeen > this.heartbeatTimeoutMs) {
        this.remove(id, e, `no heartbeat for ${Math.round((now - e.info.lastSeen) / 1000)} s`);
        e.link.close('heartbeat timeout');
      } else if (e.info.status === WorkerStatus.Draining && now >= e.info.drainUntil) {
        this.release(id);
      }
    }
  }

  /** Stops the heartbeat monitor and closes every link. Idempotent. */
  close(reason = 'coordinator shutting down'): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const e of this.workers.values()) e.link.close(reason);
    this.workers.clear();
    this.listeners.clear();
  }
}
