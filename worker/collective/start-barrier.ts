/**
 * The collective's start barrier: every rank says hello on `ctl.hello` (with the ranks it has heard
 * from and its settings) until it has heard every peer and every peer has heard it. That proves
 * that the subscriptions of every rank are known on every server (interest crosses a NATS
 * cluster's routes asynchronously; on one server it is there as soon as a subscription is
 * flushed). It also checks that all ranks share world size, compression and exact prefix, and
 * yields the smallest chunk size among them, which every rank then uses.
 *
 * The engine receives, authenticates and parses the hellos (`ControlMac`) and hands them here; this
 * class only keeps who heard whom and decides when the barrier is passed.
 */
import { CollectiveError } from '../../common/errors.js';
import type { HelloMessage } from '../../common/subjects.js';

const HELLO_INTERVAL_MS = 50;

export interface BarrierSettings {
  readonly rank: number;
  readonly worldSize: number;
  readonly compression: string;
  readonly exactPrefix: number;
}

export class StartBarrier {
  readonly #s: BarrierSettings;
  readonly #publish: (msg: HelloMessage) => void;
  readonly #chunkElements: () => number;
  readonly #heard = new Set<number>();
  readonly #heardMe = new Set<number>();
  readonly #peerChunkElements = new Map<number, number>();
  #done = false;
  #waiter: (() => void) | undefined;
  #error: CollectiveError | undefined;
  #lastHelloAt = 0;

  /**
   * `publish` sends a hello (the engine seals it); `chunkElements` is this rank's chunk size now.
   */
  constructor(settings: BarrierSettings, publish: (msg: HelloMessage) => void, chunkElements: () => number) {
    this.#s = settings;
    this.#publish = publish;
    this.#chunkElements = chunkElements;
  }

  /** True once `wait` has resolved. */
  get done(): boolean {
    return this.#done;
  }

  #passed(): boolean {
    const peers = this.#s.worldSize - 1;
    return this.#heard.size >= peers && this.#heardMe.size >= peers;
  }

  /** Publishes this rank's hello now. */
  say(): void {
    this.#lastHelloAt = Date.now();
    this.#publish({
      type: 'hello',
      from: this.#s.rank,
      heard: [...this.#heard],
      ready: this.#done,
      worldSize: this.#s.worldSize,
      compression: this.#s.compression,
      exactPrefix: this.#s.exactPrefix,
      chunkElements: this.#chunkElements(),
    });
  }

  /** A peer's authenticated hello. */
  onHello(h: HelloMessage, open: boolean): void {
    const { rank, worldSize } = this.#s;
    if (h.type !== 'hello' || !Number.isInteger(h.from) || h.from < 0 || h.from >= worldSize || h.from === rank) return;
    const mismatch =
      h.worldSize !== worldSize
        ? `world size ${h.worldSize} ≠ ${worldSize}`
        : h.compression !== this.#s.compression
          ? `compression ${h.compression} ≠ ${this.#s.compression}`
          : h.exactPrefix !== this.#s.exactPrefix
            ? `exactPrefix ${h.exactPrefix} ≠ ${this.#s.exactPrefix}`
            : undefined;
    if (mismatch !== undefined) {
      this.#error ??= new CollectiveError(`ready: rank ${h.from} differs from rank ${rank}: ${mismatch}`, {
        step: -1,
        missingRanks: [h.from],
      });
      this.#waiter?.();
      return;
    }
    const newPeer = !this.#heard.has(h.from);
    this.#heard.add(h.from);
    const heard = Array.isArray(h.heard) ? h.heard : [];
    if (heard.includes(rank)) this.#heardMe.add(h.from);
    if (Number.isInteger(h.chunkElements) && h.chunkElements > 0) this.#peerChunkElements.set(h.from, h.chunkElements);
    // A peer still waiting, or one we just heard of, gets our news (rate-limited).
    const peerNeedsUs = h.ready !== true && (newPeer || !heard.includes(rank) || this.#passed());
    if (open && peerNeedsUs && Date.now() - this.#lastHelloAt >= 10) this.say();
    if (this.#passed()) this.#waiter?.();
  }

  /** Wakes a waiting `wait` (to see that the collective closed). */
  wake(): void {
    this.#waiter?.();
  }

  /**
   * Says hello every 50 ms until the barrier is passed; resolves with the smallest chunk size of
   * all ranks. `isOpen` false ends the wait with a CollectiveError ("ready: closed").
   * @throws CollectiveError naming the ranks not heard from at the deadline, or on a mismatch
   */
  async wait(timeoutMs: number, signal: AbortSignal | undefined, isOpen: () => boolean): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#passed()) {
      if (this.#error) throw this.#error;
      if (!isOpen()) throw new CollectiveError('ready: closed', { step: -1 });
      if (signal?.aborted) throw new CollectiveError('ready: aborted', { step: -1, cause: signal.reason });
      if (Date.now() >= deadline) {
        const missing = [];
        for (let r = 0; r < this.#s.worldSize; r++)
          if (r !== this.#s.rank && (!this.#heard.has(r) || !this.#heardMe.has(r))) missing.push(r);
        throw new CollectiveError(
          `ready: rank ${this.#s.rank} has not exchanged hellos ` +
            `with ranks ${missing.join(', ')} within ${timeoutMs} ms`,
          { step: -1, missingRanks: missing },
        );
      }
      this.say();
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(HELLO_INTERVAL_MS, Math.max(0, deadline - Date.now())));
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        this.#waiter = done;
      });
      this.#waiter = undefined;
    }
    if (this.#error) throw this.#error;
    this.#done = true;
    let ce = this.#chunkElements();
    for (const peer of this.#peerChunkElements.values()) ce = Math.min(ce, peer);
    return ce;
  }
}
