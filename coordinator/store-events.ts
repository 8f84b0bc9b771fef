/**
 * What the stores (job-store.ts, ledger.ts) report about values they did not write: a bad record
 * (not JSON, the wrong shape, an invalid spec, injected) and tampering (a value the coordinator
 * wrote changed or deleted behind its back). The metrics (coordinator-metrics.ts) count them; the
 * stores log them. A small hub, so that the stores can be opened before the metrics exist.
 */

/** Why a value was refused. */
export const BadValueReason = {
  /** Not JSON, or not the shape of a record. */
  unreadable: 'unreadable',
  /** A readable job record whose spec fails validation. */
  spec: 'spec',
  /** A job record the coordinator did not write (injected into the bucket). */
  foreign: 'foreign',
} as const;
export type BadValueReason = (typeof BadValueReason)[keyof typeof BadValueReason];

/** How a value the coordinator wrote was changed. */
export const TamperKind = {
  rewritten: 'rewritten',
  deleted: 'deleted',
} as const;
export type TamperKind = (typeof TamperKind)[keyof typeof TamperKind];

export type StoreEvent =
  | {
      readonly type: 'bad-value';
      readonly bucket: string;
      readonly key: string;
      readonly reason: BadValueReason;
      readonly message: string;
    }
  | { readonly type: 'tampered'; readonly bucket: string; readonly key: string; readonly kind: TamperKind };

/** Events kept while nobody listens (the stores check their buckets when they open, before the metrics exist). */
const MAX_EARLY_EVENTS = 1000;

export class StoreEvents {
  private readonly listeners = new Set<(e: StoreEvent) => void>();
  private early: StoreEvent[] = [];

  /** Listens; the first listener also receives the events emitted before it (at most `MAX_EARLY_EVENTS`). */
  on(listener: (e: StoreEvent) => void): () => void {
    this.listeners.add(listener);
    const early = this.early;
    this.early = [];
    for (const e of early) listener(e);
    return () => this.listeners.delete(listener);
  }

  emit(e: StoreEvent): void {
    if (this.listeners.size === 0) {
      if (this.early.length < MAX_EARLY_EVENTS) this.early.push(e);
      return;
    }
    for (const l of this.listeners) l(e);
  }
}
