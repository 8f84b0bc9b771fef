/**
 * Jobs in the JetStream KV bucket `polytune_jobs`: key = job id, value = the JSON `JobRecord`.
 * Writes that race (state changes from RPCs, workers and the heartbeat monitor) go through
 * `update`, a compare-and-set on the entry's revision, retried on conflict.
 */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { JobConflictError, JobNotFoundError } from './errors.js';
import type { JobRecord } from './job-record.js';

export const JOBS_BUCKET = 'polytune_jobs';
/** @default 5 revisions kept per job (JetStream allows 1..64; we use 1..5). */
export const DEFAULT_JOBS_HISTORY = 5;
/** @default 20 attempts of a compare-and-set before `JobConflictError`. */
export const DEFAULT_UPDATE_ATTEMPTS = 20;

export interface JobStoreOptions {
  /** @default JOBS_BUCKET */
  bucket?: string;
  /** Revisions kept per key, 1..5. @default DEFAULT_JOBS_HISTORY */
  history?: number;
}

export interface StoredJob {
  readonly record: JobRecord;
  readonly revision: number;
}

/** What a mutation returns: the new record, or `null` to leave the job as it is. */
export type JobMutation = (current: JobRecord) => JobRecord | null;

function isConflict(e: unknown): boolean {
  return e instanceof JetStreamApiError
    && (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);
}

function decode(entry: KvEntry | null): StoredJob | null {
  if (!entry || entry.operation !== 'PUT' || entry.length === 0) return null;
  return { record: entry.json<JobRecord>(), revision: entry.revision };
}

function encode(record: JobRecord): string {
  return JSON.stringify(record);
}

export class JobStore {
  private constructor(private readonly kv: KV) {}

  /** Opens the bucket, creating it if it is missing. */
  static async open(nc: NatsConnection, options: JobStoreOptions = {}): Promise<JobStore> {
    const history = options.history ?? DEFAULT_JOBS_HISTORY;
    if (!Number.isInteger(history) || history < 1 || history > 5) throw new RangeError(`history must be 1..5, got ${history}`);
    const kv = await new Kvm(nc).create(options.bucket ?? JOBS_BUCKET, { history });
    return new JobStore(kv);
  }

  async get(id: string): Promise<StoredJob | null> {
    return decode(await this.kv.get(id));
  }

  /** Like `get`, throwing `JobNotFoundError` when there is no such job. */
  async mustGet(id: string): Promise<StoredJob> {
    const job = await this.get(id);
    if (!job) throw new JobNotFoundError(id);
    return job;
  }

  /** Stores a new job; fails if the id is taken. Returns the revision. */
  async create(record: JobRecord): Promise<number> {
    return this.kv.create(record.id, encode(record));
  }

  /**
   * Reads the job, applies `mutate`, writes it back only if nobody wrote in between (revision
   * check), retrying on conflict. Returns the record as stored afterwards, and whether it changed.
   */
  async update(id: string, mutate: JobMutation, attempts = DEFAULT_UPDATE_ATTEMPTS): Promise<{ record: JobRecord; changed: boolean }> {
    let lastError: unknown;
    for (let i = 0; i < attempts; i++) {
      const current = await this.mustGet(id);
      const next = mutate(structuredClone(current.record));
      if (next === null) return { record: current.record, changed: false };
      next.updatedAt = Date.now();
      try {
        await this.kv.update(id, encode(next), current.revision);
        return { record: next, changed: true };
      } catch (e) {
        if (!isConflict(e)) throw e;
        lastError = e;
      }
    }
    throw new JobConflictError(id, { cause: lastError });
  }

  /** Every job, newest first. */
  async list(): Promise<JobRecord[]> {
    // A key written while the keys are listed can be listed twice: a set keeps each job once.
    const ids = new Set<string>();
    for await (const k of await this.kv.keys()) ids.add(k);
    const jobs: JobRecord[] = [];
    for (const id of ids) {
      const job = await this.get(id);
      if (job) jobs.push(job.record);
    }
    return jobs.sort((a, b) => b.createdAt - a.createdAt || a.id.localeCompare(b.id));
  }

  /**
   * The job's current value, then each later write, until `signal` aborts or the returned
   * iterable's consumer stops. Deletions end the iteration.
   */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<StoredJob> {
    const it = await this.kv.watch({ key: id });
    const onAbort = (): void => it.stop();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal?.aborted) return;
      for await (const entry of it) {
        const job = decode(entry);
        if (!job) return;
        yield job;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      it.stop();
    }
  }
}
