/**
 * The data ledger: which global steps of a job were committed, by which generation and world
 * size. The data plan (common/data-plan.ts) maps a step to its global batch, a pure function of
 * the spec, so committing every step 0..total-1 exactly once is consuming every sample exactly
 * once an epoch.
 *
 * When a re-formed world goes on from an earlier step than the last one reported (its state is the
 * newest any rank held), the steps after it are rolled back: moved from `committed` to
 * `rolledBack`, to be committed again by the new generation.
 *
 * Kept in the JetStream KV bucket `polytune_ledger`, key = job id. The bucket is not trusted (see
 * job-store.ts): a value is parsed against `ledgerSchema`, and one that changed behind the
 * coordinator's back (not the revision it wrote) is replaced by the coordinator's own, reported
 * as tampering; an unreadable one is reported and read as empty.
 */
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { z } from 'zod';
import { silentLogger, type Logger } from '../common/logging.js';
import { KeyedMutex } from './keyed-mutex.js';
import { BadValueReason, StoreEvents, TamperKind } from './store-events.js';
import { KvBucket } from '../common/subjects.js';

/** Steps [from, to) run by one generation. */
export interface StepRange {
  readonly from: number;
  readonly to: number;
  readonly generation: number;
  readonly worldSize: number;
  /**
   * Committed while no report reached the coordinator (it was restarting): known only because the
   * next generation went on from a later step, which its state proves were committed.
   */
  readonly unreported?: true;
}

export interface Ledger {
  readonly committed: readonly StepRange[];
  readonly rolledBack: readonly StepRange[];
}

export const EMPTY_LEDGER: Ledger = { committed: [], rolledBack: [] };

/**
 * Record that `generation` completed step `completed - 1` (`completed` optimizer steps done).
 * The first report of a generation opens its range where its state began; anything committed at
 * or after that step is rolled back, and steps between the last reported one and that step (run
 * while the coordinator was away) are recorded as committed, unreported.
 */
export function recordStep(ledger: Ledger, generation: number, worldSize: number, completed: number): Ledger {
  const step = completed - 1;
  const last = ledger.committed.at(-1);
  if (last && last.generation === generation && last.to === step) {
    return { ...ledger, committed: [...ledger.committed.slice(0, -1), { ...last, to: completed }] };
  }
  if (last && last.generation === generation && step < last.to) return ledger; // a repeat
  const committed: StepRange[] = [];
  const rolledBack = [...ledger.rolledBack];
  for (const r of ledger.committed) {
    if (r.to <= step) committed.push(r);
    else if (r.from >= step) rolledBack.push(r);
    else {
      committed.push({ ...r, to: step });
      rolledBack.push({ ...r, from: step });
    }
  }
  const before = committed.at(-1);
  if (before && before.to < step) {
    committed.push({
      from: before.to,
      to: step,
      generation: before.generation,
      worldSize: before.worldSize,
      unreported: true,
    });
  }
  committed.push({ from: step, to: completed, generation, worldSize });
  return { committed, rolledBack };
}

/**
 * The job ended successfully after `completed` steps. Steps after the last reported one were
 * committed while no report reached the coordinator (it was restarting, and the world finished the
 * job meanwhile, so no later generation reported a step); the result proves them, and they are
 * recorded as committed, unreported, by the last generation that reported. An empty ledger stays.
 */
export function completeLedger(ledger: Ledger, completed: number): Ledger {
  const last = ledger.committed.at(-1);
  if (!last || last.to >= completed) return ledger;
  const tail: StepRange = {
    from: last.to,
    to: completed,
    generation: last.generation,
    worldSize: last.worldSize,
    unreported: true,
  };
  return { ...ledger, committed: [...ledger.committed, tail] };
}

/** Steps committed more than once, and steps below `upTo` never committed. */
export function ledgerGaps(ledger: Ledger, upTo: number): { missing: number[]; repeated: number[] } {
  const seen = new Uint8Array(upTo);
  const repeated: number[] = [];
  for (const r of ledger.committed) {
    for (let s = r.from; s < r.to; s++) {
      if (s < upTo && seen[s]) repeated.push(s);
      if (s < upTo) seen[s] = 1;
    }
  }
  const missing: number[] = [];
  seen.forEach((v, s) => {
    if (!v) missing.push(s);
  });
  return { missing, repeated };
}

const step = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const rangeSchema = z
  .strictObject({
    from: step,
    to: step,
    generation: step,
    worldSize: step.max(65_536),
    unreported: z.literal(true).optional(),
  })
  .refine((r) => r.from <= r.to, 'from must be <= to');
/** A stored ledger: at most 100,000 ranges each way (a range per generation, a re-form at most every step). */
export const ledgerSchema = z.strictObject({
  committed: z.array(rangeSchema).max(100_000),
  rolledBack: z.array(rangeSchema).max(100_000),
});

export interface LedgerStoreOptions {
  /** @default silentLogger */
  logger?: Logger;
  events?: StoreEvents;
}

export class LedgerStore {
  private readonly own = new Map<string, { revision: number; ledger: Ledger }>();
  private readonly mutex = new KeyedMutex();

  private constructor(
    private readonly kv: KV,
    private readonly bucket: string,
    private readonly logger: Logger,
    private readonly events: StoreEvents,
  ) {}

  static async open(
    nc: NatsConnection,
    bucket: string = KvBucket.ledger,
    options: LedgerStoreOptions = {},
  ): Promise<LedgerStore> {
    const kv = await new Kvm(nc).create(bucket, { history: 1 });
    return new LedgerStore(kv, bucket, options.logger ?? silentLogger, options.events ?? new StoreEvents());
  }

  async get(jobId: string): Promise<Ledger> {
    return this.mutex.run(jobId, async () => {
      const e = await this.kv.get(jobId);
      const present = e !== null && e.operation === 'PUT' && e.length > 0;
      const mine = this.own.get(jobId);
      if (mine) {
        if (present && e.revision === mine.revision) return mine.ledger;
        const kind = present ? TamperKind.rewritten : TamperKind.deleted;
        this.events.emit({ type: 'tampered', bucket: this.bucket, key: jobId, kind });
        this.logger.error("a ledger was changed behind the coordinator's back; restored", { job: jobId, kind });
        await this.write(jobId, mine.ledger);
        return mine.ledger;
      }
      if (!present) return EMPTY_LEDGER;
      // Written before this coordinator started (or by someone else): taken only if it is a ledger.
      let raw: unknown;
      try {
        raw = JSON.parse(e.string());
      } catch {
        raw = undefined;
      }
      const parsed = ledgerSchema.safeParse(raw);
      if (!parsed.success) {
        const message =
          raw === undefined ? 'not JSON' : `not a ledger (${parsed.error.issues[0]?.message ?? 'bad shape'})`;
        const reason = BadValueReason.unreadable;
        this.events.emit({ type: 'bad-value', bucket: this.bucket, key: jobId, reason, message });
        this.logger.error('a ledger in the store is unreadable; read as empty', { job: jobId, error: message });
        return EMPTY_LEDGER;
      }
      const ledger = parsed.data as Ledger;
      this.own.set(jobId, { revision: e.revision, ledger });
      return ledger;
    });
  }

  private async write(jobId: string, ledger: Ledger): Promise<void> {
    this.own.set(jobId, { revision: await this.kv.put(jobId, JSON.stringify(ledger)), ledger });
  }

  async put(jobId: string, ledger: Ledger): Promise<void> {
    await this.mutex.run(jobId, () => this.write(jobId, ledger));
  }

  /** Removes a job's ledger. */
  async delete(jobId: string): Promise<void> {
    await this.mutex.run(jobId, async () => {
      this.own.delete(jobId);
      await this.kv.purge(jobId);
    });
  }
}
