/**
 * Message buffers for reuse: a chunk message's buffer is handed back once the client no longer
 * holds it (a peer's ack shows it went through the server, or the step's final flush returned)
 * and built into a later message of the same size, instead of a new allocation each message.
 * Bounded (`capBytes`): at most what a step can have in flight is kept.
 */
import { Buffer } from 'node:buffer';

export class MessagePool {
  readonly capBytes: number;
  readonly #free = new Map<number, Uint8Array[]>();
  #bytes = 0;
  /** Buffers handed out from the pool rather than allocated (`AllReduceStats.messageBuffersReused`). */
  reused = 0;

  constructor(capBytes: number) {
    this.capBytes = capBytes;
  }

  /**
   * A buffer of `bytes` that the caller fills completely (header and payload): a released one of
   * that size, else a new one, not zero-filled first (one more pass over every byte sent), with
   * its own ArrayBuffer (offset 0, not Node's shared pool: the client keeps it until it is written).
   */
  alloc(bytes: number): Uint8Array {
    const buf = this.#free.get(bytes)?.pop();
    if (buf !== undefined) {
      this.#bytes -= bytes;
      this.reused++;
      return buf;
    }
    return Buffer.allocUnsafeSlow(bytes);
  }

  /** Takes a buffer back (dropped when the pool is full). */
  release(buf: Uint8Array): void {
    if (this.#bytes + buf.byteLength > this.capBytes) return;
    let free = this.#free.get(buf.byteLength);
    if (free === undefined) this.#free.set(buf.byteLength, (free = []));
    free.push(buf);
    this.#bytes += buf.byteLength;
  }

  clear(): void {
    this.#free.clear();
    this.#bytes = 0;
  }
}
