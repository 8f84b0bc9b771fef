/**
 * Large messages in nats.js without the growing copies. The client reads the socket 64 KiB at a
 * time; a message longer than a read is gathered in a `DenoBuffer`, made from the first read's bytes
 * and grown by doubling as the next reads arrive: for a 1 MiB chunk, four allocations (2.6 MiB,
 * zero-filled) and 1.6 MiB of copies besides the payload's own, the largest single cost of a rank
 * in the collective. Once the parser has read a message's size, this swaps that buffer for one of
 * exactly the message's size holding the bytes so far: one allocation, and each read is copied
 * once more only.
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
    const sized = new DenoBuffer(new ArrayBuffer(this.ma.size));
    sized.reset();
    sized.write(mb.bytes({ copy: false }));
    this.msgBuf = sized;
  };
  parse[PRESIZED] = true;
  Parser.prototype.parse = parse;
}
