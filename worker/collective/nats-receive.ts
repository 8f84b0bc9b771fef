/**
 * Large messages in nats.js without the growing copies. The client reads the socket 64 KiB at a
 * time; a message longer than a read is gathered in a `DenoBuffer`, made from the first read's bytes
 * and grown by doubling as the next reads arrive: for a 1 MiB chunk, four allocations (2.6 MiB,
 * zero-filled) and 1.6 MiB of copies besides the payload's own, the largest single cost of a rank
 * in the collective. Once the parser has read a message's size, this swaps that buffer for one of
 * exactly the message's size holding the bytes so far: one allocation, and each read is copied
 * once more only.
 *
 * The new buffer comes from a pool when one of that size was handed back (`releaseReceived`):
 * the collective gives back a chunk's buffer once it has summed or copied its numbers, which saves
 * the zero-filled allocation, its page faults and the garbage collection of a 1 MiB buffer a chunk.
 * Only buffers this module made are pooled, each once, and a bounded number of bytes.
 *
 * It wraps `Parser.prototype.parse` of `@nats-io/nats-core` (exported as its `internal` API) for
 * every connection of the process; what is parsed is unchanged, which the unit tests check by
 * splitting streams at every boundary. `@nats-io/nats-core` is pinned to the version that
 * `@nats-io/transport-node` depends on, so both use this one `Parser` (a unit test checks).
 */
import { DenoBuffer, Parser, State } from '@nats-io/nats-core/internal';

const PRESIZED = Symbol.for('polytune.natsPresizedParse');

type Parse = Parser['parse'] & { [PRESIZED]?: true };

/** Installs the presizing parse (once; later calls do nothing). */
export function presizeNatsMessageBuffers(): void {
  const original = Parser.prototype.parse as Parse;
  if (original[PRESIZED]) return;
  const parse: Parse = function (this: Parser, buf: Uint8Array): void {
    original.call(this, buf);
    const mb = this.msgBuf;
    if (this.state !== State.MSG_PAYLOAD || mb === undefined || mb.capacity >= this.ma.size) return;
    // A DenoBuffer made from an ArrayBuffer views it (no copy); reset() empties it for writing.
    const sized = new DenoBuffer(takeBuffer(this.ma.size));
    sized.reset();
    sized.write(mb.bytes({ copy: false }));
    this.msgBuf = sized;
  };
  parse[PRESIZED] = true;
  Parser.prototype.parse = parse;
}

/** Bytes of released buffers kept for reuse, at most. */
export const RECEIVE_POOL_BYTES = 64 * 1024 * 1024;

/** Buffers made here (the only ones `releaseReceived` takes), and those now in the pool. */
const made = new WeakSet<ArrayBuffer>();
const pooled = new WeakSet<ArrayBuffer>();
const pool = new Map<number, ArrayBuffer[]>();
let poolBytes = 0;
let reused = 0;

function takeBuffer(size: number): ArrayBuffer {
  const b = pool.get(size)?.pop();
  if (b !== undefined) {
    pooled.delete(b);
    poolBytes -= size;
    reused++;
    return b;
  }
  const fresh = new ArrayBuffer(size);
  made.add(fresh);
  return fresh;
}

/**
 * Gives a received message's buffer back for a later message, once nothing reads `data` or any
 * other view of its buffer any more. Does nothing for a buffer this module did not make (a message
 * within one socket read, a copy), one already given back, or beyond RECEIVE_POOL_BYTES.
 */
export function releaseReceived(data: Uint8Array): void {
  const b = data.buffer;
  if (!(b instanceof ArrayBuffer) || !made.has(b) || pooled.has(b) || poolBytes + b.byteLength > RECEIVE_POOL_BYTES)
    return;
  let free = pool.get(b.byteLength);
  if (free === undefined) pool.set(b.byteLength, (free = []));
  free.push(b);
  pooled.add(b);
  poolBytes += b.byteLength;
}

/** Buffers handed out again from the pool since the process started (for tests and benchmarks). */
export function receiveBuffersReused(): number {
  return reused;
}
