/**
 * One operation at a time per key. The stores read a value, compare its revision with the one they
 * wrote last, and write: a read that overtook the store's own write in flight would take that
 * write for tampering, so reads and writes of one key are serialised here (keys do not wait for
 * each other).
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `fn` after every operation on `key` queued before it. */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
