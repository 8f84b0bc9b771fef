/**
 * Jobs in the JetStream KV bucket `polytune_jobs`: key = job id, value = the JSON `JobRecord`.
 * Writes that race (state changes from RPCs, workers and the heartbeat monitor) go through
 * `update`, a compare-and-set on the entry's revision, retried on conflict.
 *
 * The bucket is not trusted: anyone who can reach the NATS account can write it. So:
 * - the store remembers the revision of every value it wrote (and the record it wrote); a value
 *   with another revision was written behind its back. For a job it knows, its own record wins: it
 *   is written back (restored), and the tampering is reported (`StoreEvents`: a counter and an
 *   alert, and an error in the log). A deleted record is restored the same way.
 * - a key it does not know, after start, was injected: its value is parsed, and the job is set
 *   Failed ("not written by this coordinator") so it never runs and shows up in List; a value that
 *   is not a record at all (not JSON, wrong shape) is listed in `corruptKeys()` and skipped.
 * - at start (`open`), the records found are taken as its own when they parse and their spec
 *   validates (the same parser as Submit); others are marked as above. Tampering while no
 *   coordinator ran is not detectable this way (no key signs the records).
 * A watch on the whole bucket notices foreign writes as they happen, so a restore and its alert do
 * not wait for the next read. Reads and writes of one key are serialised (keyed-mutex.ts).
 */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { Kvm, KvWatchInclude, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { JobConflictError, JobNotFoundError } from './errors.js';
import { isTerminal, JobState, parseStoredRecord, type JobRecord } from './job-record.js';
import { KeyedMutex } from './keyed-mutex.js';
import { BadValueReason, StoreEvents, TamperKind } from './store-events.js';
import { KvBucket } from '../common/subjects.js';

/** @default 5 revisions kept per job (JetStream allows 1..64; we use 1..5). */
export const DEFAULT_JOBS_HISTORY = 5;
/** @default 20 attempts of a compare-and-set before `JobConflictError`. */
export const DEFAULT_UPDATE_ATTEMPTS = 20;
/** Revisions of one key remembered as the store's own (a Watch may deliver an older one late). */
const OWN_REVISIONS_KEPT = 32;

export interface JobStoreOptions {
  /** @default KvBucket.jobs */
  bucket?: string;
  /** Revisions kept per key, 1..5. @default DEFAULT_JOBS_HISTORY */
  history?: number;
  /** @default silentLogger */
  logger?: Logger;
  /** Where bad values and tampering are reported. @default a hub nobody listens to */
  events?: StoreEvents;
  /** Watch the bucket for foreign writes as they happen. @default true */
  sentinel?: boolean;
}

export interface StoredJob {
  readonly record: JobRecord;
  readonly revision: number;
}

/** What a mutation returns: the new record, or `null` to leave the job as it is. */
export type JobMutation = (current: JobRecord) => JobRecord | null;

function isConflict(e: unknown): boolean {
  return (
    e instanceof JetStreamApiError &&
    (e.code === JetStreamApiCodes.StreamWrongLastSequence ||
      e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

function isPut(entry: KvEntry | null): entry is KvEntry {
  return entry !== null && entry.operation === 'PUT' && entry.length > 0;
}

function encode(record: JobRecord): string {
  return JSON.stringify(record);
}

interface Own {
  readonly revision: number;
  readonly record: JobRecord;
  readonly revisions: readonly number[];
}

export class JobStore {
  readonly bucket: string;
  private readonly own = new Map<string, Own>();
  private readonly corrupt = new Map<string, { revision: number; message: string }>();
  private readonly mutex = new KeyedMutex();
  private sentinel: { stop(): void } | undefined;
  private closed = false;

  private constructor(
    private readonly kv: KV,
    bucket: string,
    private readonly logger: Logger,
    readonly events: StoreEvents,
  ) {
    this.bucket = bucket;
  }

  /** Opens the bucket (creating it if it is missing) and takes the records in it (see the header). */
  static async open(nc: NatsConnection, options: JobStoreOptions = {}): Promise<JobStore> {
    const history = options.history ?? DEFAULT_JOBS_HISTORY;
    if (!Number.isInteger(history) || history < 1 || history > 5)
      throw new RangeError(`history must be 1..5, got ${history}`);
    const bucket = options.bucket ?? KvBucket.jobs;
    const kv = await new Kvm(nc).create(bucket, { history });
    const store = new JobStore(kv, bucket, options.logger ?? silentLogger, options.events ?? new StoreEvents());
    await store.adopt();
    if (options.sentinel !== false) await store.watchForeignWrites();
    return store;
  }

  /** Keys whose value is not a job record (not JSON, wrong shape), with what is wrong. */
  corruptKeys(): { key: string; message: string }[] {
    return [...this.corrupt]
      .map(([key, v]) => ({ key, message: v.message }))
      .sort((a, b) => a.key.localeCompare(b.key));
  }

  private async keys(): Promise<string[]> {
    // A key written while the keys are listed can be listed twice: a set keeps each once.
    const ids = new Set<string>();
    for await (const k of await this.kv.keys()) ids.add(k);
    return [...ids];
  }

  private async adopt(): Promise<void> {
    for (const key of await this.keys()) {
      await this.mutex.run(key, async () => {
        const entry = await this.kv.get(key);
        if (!isPut(entry)) return;
        const parsed = parseStoredRecord(key, entry.string());
        if (parsed.ok) this.remember(key, entry.revision, parsed.record);
        // A finished job never runs again: its record is kept as it is even if its spec no longer
        // passes (limits tightened since); an unfinished one must pass to be scheduled.
        else if (parsed.record && isTerminal(parsed.record.state)) this.remember(key, entry.revision, parsed.record);
        else await this.refuse(key, entry, parsed.reason, parsed.message, parsed.record);
      });
    }
  }

  private async watchForeignWrites(): Promise<void> {
    const it = await this.kv.watch({ key: '>', include: KvWatchInclude.UpdatesOnly });
    this.sentinel = it;
    void (async () => {
      try {
        for await (const entry of it) {
          if (this.closed) return;
          if (this.isOwnRevision(entry.key, entry.revision)) continue;
          if (entry.operation !== 'PUT' && !this.own.has(entry.key)) continue; // our own delete, or a junk key's
          await this.get(entry.key).catch((e: unknown) => {
            if (this.closed) return;
            this.logger.warn('checking a job record failed', { key: entry.key, error: errorMessage(e) });
          });
        }
      } catch (e) {
        // Reads still check every value; only the immediate notice of foreign writes is lost.
        if (!this.closed) this.logger.error('the watch on the job store ended', { error: errorMessage(e) });
      }
    })();
  }

  /** Stops watching the bucket. Idempotent. */
  close(): void {
    this.closed = true;
    this.sentinel?.stop();
  }

  private isOwnRevision(key: string, revision: number): boolean {
    return this.own.get(key)?.revisions.includes(revision) ?? false;
  }

  private remember(key: string, revision: number, record: JobRecord): StoredJob {
    const before = this.own.get(key)?.revisions ?? [];
    this.own.set(key, { revision, record, revisions: [...before.slice(-(OWN_REVISIONS_KEPT - 1)), revision] });
    this.corrupt.delete(key);
    return { record, revision };
  }

  /**
   * A value the store cannot take: a record it did not write (or whose spec is invalid) is set
   * Failed, never to run; anything else is listed as corrupt. Reported either way.
   */
  private async refuse(
    key: string,
    entry: KvEntry,
    reason: BadValueReason,
    message: string,
    record?: JobRecord,
  ): Promise<StoredJob | null> {
    if (this.corrupt.get(key)?.revision === entry.revision) return null; // reported already
    this.events.emit({ type: 'bad-value', bucket: this.bucket, key, reason, message });
    if (!record) {
      this.logger.error('a value in the job store is not a job record; skipped', {
        key,
        revision: entry.revision,
        error: message,
      });
      this.corrupt.set(key, { revision: entry.revision, message });
      return null;
    }
    const why =
      reason === BadValueReason.foreign
        ? `record not written by this coordinator (injected into ${this.bucket}): never run`
        : `stored record refused: ${message}`;
    this.logger.error('a job record in the store is refused; the job is set Failed', {
      job: key,
      reason,
      error: message,
    });
    const failed: JobRecord = {
      ...record,
      state: JobState.Failed,
      error: why,
      workers: [],
      finishedAt: Date.now(),
      updatedAt: Date.now(),
    };
    try {
      return this.remember(key, await this.kv.update(key, encode(failed), entry.revision), failed);
    } catch (e) {
      // Changed again meanwhile: the next read looks at it afresh.
      this.logger.warn('marking a refused job record failed', { job: key, error: errorMessage(e) });
      return null;
    }
  }

  /** Reads and checks `key` (under its lock): see the header. */
  private async read(key: string): Promise<StoredJob | null> {
    for (let attempt = 0; ; attempt++) {
      const entry = await this.kv.get(key);
      const mine = this.own.get(key);
      if (mine && isPut(entry) && entry.revision === mine.revision) {
        return { record: mine.record, revision: mine.revision };
      }
      if (!mine) {
        if (!isPut(entry)) return null;
        const parsed = parseStoredRecord(key, entry.string());
        if (!parsed.ok) return this.refuse(key, entry, parsed.reason, parsed.message, parsed.record);
        return this.refuse(key, entry, BadValueReason.foreign, 'the coordinator did not write it', parsed.record);
      }
      // Ours, changed or deleted by someone else: ours wins.
      const kind = isPut(entry) ? TamperKind.rewritten : TamperKind.deleted;
      try {
        const value = encode(mine.record);
        const revision =
          entry === null ? await this.kv.create(key, value) : await this.kv.update(key, value, entry.revision);
        this.events.emit({ type: 'tampered', bucket: this.bucket, key, kind });
        this.logger.error("a job record was changed behind the coordinator's back; restored", {
          job: key,
          kind,
          state: mine.record.state,
          revision: entry?.revision,
          restoredAs: revision,
        });
        return this.remember(key, revision, mine.record);
      } catch (e) {
        if (attempt >= 5 || !(isConflict(e) || entry === null)) throw e;
      }
    }
  }

  async get(id: string): Promise<StoredJob | null> {
    return this.mutex.run(id, () => this.read(id));
  }

  /** Like `get`, throwing `JobNotFoundError` when there is no such job. */
  async mustGet(id: string): Promise<StoredJob> {
    const job = await this.get(id);
    if (!job) throw new JobNotFoundError(id);
    return job;
  }

  /** Stores a new job; fails if the id is taken. Returns the revision. */
  async create(record: JobRecord): Promise<number> {
    return this.mutex.run(record.id, async () => {
      const revision = await this.kv.create(record.id, encode(record));
      this.remember(record.id, revision, record);
      return revision;
    });
  }

  /**
   * Reads the job, applies `mutate`, writes it back only if nobody wrote in between (revision
   * check), retrying on conflict. Returns the record as stored afterwards, and whether it changed.
   */
  async update(
    id: string,
    mutate: JobMutation,
    attempts = DEFAULT_UPDATE_ATTEMPTS,
  ): Promise<{ record: JobRecord; changed: boolean }> {
    return this.mutex.run(id, async () => {
      let lastError: unknown;
      for (let i = 0; i < attempts; i++) {
        const current = await this.read(id);
        if (!current) throw new JobNotFoundError(id);
        const next = mutate(structuredClone(current.record));
        if (next === null) return { record: current.record, changed: false };
        next.updatedAt = Date.now();
        try {
          this.remember(id, await this.kv.update(id, encode(next), current.revision), next);
          return { record: next, changed: true };
        } catch (e) {
          if (!isConflict(e)) throw e;
          lastError = e;
        }
      }
      throw new JobConflictError(id, { cause: lastError });
    });
  }

  /** Removes a job's record and its history. */
  async delete(id: string): Promise<void> {
    await this.mutex.run(id, async () => {
      this.own.delete(id);
      this.corrupt.delete(id);
      await this.kv.purge(id);
    });
  }

  /** Every job, newest first. Values that are not job records are skipped (see `corruptKeys`). */
  async list(): Promise<JobRecord[]> {
    const jobs: JobRecord[] = [];
    for (const id of await this.keys()) {
      const job = await this.get(id).catch((e: unknown) => {
        this.logger.warn('reading a job record failed; skipped', { key: id, error: errorMessage(e) });
        return null;
      });
      if (job) jobs.push(job.record);
    }
    return jobs.sort((a, b) => b.createdAt - a.createdAt || a.id.localeCompare(b.id));
  }

  /**
   * The job's current value, then each later write, until `signal` aborts or the returned
   * iterable's consumer stops. Deletions end the iteration. Only values the store wrote are
   * yielded: a foreign one is checked (and restored) first.
   */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<StoredJob> {
    const it = await this.kv.watch({ key: id });
    const onAbort = (): void => it.stop();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal?.aborted) return;
      for await (const entry of it) {
        if (!this.isOwnRevision(id, entry.revision)) {
          // Our own write still in flight, or someone else's: `get` waits for the first and restores the second.
          const now = await this.get(id);
          if (!now) return;
          if (!this.isOwnRevision(id, entry.revision)) continue;
        }
        if (!isPut(entry)) return;
        yield { record: entry.json<JobRecord>(), revision: entry.revision };
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      it.stop();
    }
  }
}
