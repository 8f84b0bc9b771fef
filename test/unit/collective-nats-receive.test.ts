import { createRequire } from 'node:module';

import { describe, expect, it } from 'vitest';
import { Kind, Parser, type ParserEvent } from '@nats-io/nats-core/internal';

import {
  presizeNatsMessageBuffers,
  receiveBuffersReused,
  RECEIVE_POOL_BYTES,
  releaseReceived,
} from '../../worker/collective/nats-receive.js';

interface Parsed {
  kind: Kind;
  subject?: string;
  sid?: number;
  reply?: string;
  size?: number;
  data: number[];
  aligned: boolean;
  capacity: number;
}

const dec = new TextDecoder();

/** Parses `stream` fed in the frames that `cuts` make, with the hook installed or not. */
function parse(stream: Uint8Array, cuts: number[], presized: boolean): Parsed[] {
  const original = Parser.prototype.parse;
  if (presized) presizeNatsMessageBuffers();
  const events: Parsed[] = [];
  try {
    const p = new Parser({
      push(e: ParserEvent): void {
        events.push({
          kind: e.kind,
          subject: e.msg ? dec.decode(e.msg.subject) : undefined,
          sid: e.msg?.sid,
          reply: e.msg?.reply ? dec.decode(e.msg.reply) : undefined,
          size: e.msg?.size,
          data: Array.from(e.data ?? []),
          aligned: (e.data?.byteOffset ?? 0) % 8 === 0,
          capacity: e.data?.buffer.byteLength ?? 0,
        });
      },
    });
    let at = 0;
    for (const cut of [...cuts, stream.length]) {
      p.parse(stream.subarray(at, cut));
      at = cut;
    }
  } finally {
    Parser.prototype.parse = original;
  }
  return events;
}

function message(subject: string, sid: number, payload: Uint8Array, reply?: string): Uint8Array {
  const head = new TextEncoder().encode(`MSG ${subject} ${sid}${reply ? ` ${reply}` : ''} ${payload.length}\r\n`);
  const out = new Uint8Array(head.length + payload.length + 2);
  out.set(head);
  out.set(payload, head.length);
  out.set([13, 10], head.length + payload.length);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const payload = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

describe('presizeNatsMessageBuffers', () => {
  it('parses every split of a stream as the client does', () => {
    const stream = concat([
      new TextEncoder().encode('PING\r\n'),
      message('grad.rs.1', 3, payload(37, 1)),
      message('a.b', 12, payload(0, 2), 'reply.x'),
      new TextEncoder().encode('+OK\r\n'),
      message('grad.ag.0', 4, payload(300, 3)),
    ]);
    const want = parse(stream, [], false).map(({ capacity: _c, aligned: _a, ...e }) => e);
    expect(want.filter((e) => e.kind === Kind.MSG)).toHaveLength(3);
    for (let a = 1; a < stream.length; a += 3) {
      for (const b of [a + 1, a + 17, a + 150]) {
        const cuts = b < stream.length ? [a, b] : [a];
        const got = parse(stream, cuts, true).map(({ capacity: _c, aligned: _a, ...e }) => e);
        expect(got, `cut at ${cuts.join(', ')}`).toEqual(want);
      }
    }
  });

  it('parses messages with headers (HMSG) and empty payloads the same, at every split', () => {
    const enc = new TextEncoder();
    const hdr = 'NATS/1.0\r\nX-Step: 7\r\n\r\n';
    const body = payload(5000, 8);
    const stream = concat([
      enc.encode(`HMSG grad.ag.1 5 ${hdr.length} ${hdr.length + body.length}\r\n${hdr}`),
      body,
      enc.encode('\r\n'),
      enc.encode(`HMSG a.b 6 ${hdr.length} ${hdr.length}\r\n${hdr}\r\n`),
      message('x', 7, payload(0, 0)),
    ]);
    const want = parse(stream, [], false).map(({ capacity: _c, aligned: _a, ...e }) => e);
    expect(want.filter((e) => e.kind === Kind.MSG)).toHaveLength(3);
    for (let a = 1; a < stream.length; a += 7) {
      const got = parse(stream, [a, Math.min(a + 1000, stream.length - 1)], true).map(
        ({ capacity: _c, aligned: _a, ...e }) => e,
      );
      expect(got, `cut at ${a}`).toEqual(want);
    }
  });

  it('uses the same Parser as the transport (nats-core pinned to its version)', () => {
    const require = createRequire(import.meta.url);
    const fromTransport = createRequire(require.resolve('@nats-io/transport-node')).resolve(
      '@nats-io/nats-core/internal',
    );
    expect(require.resolve('@nats-io/nats-core/internal')).toBe(fromTransport);
  });

  it('gathers a long message in one buffer of its size instead of doubling', () => {
    const body = payload(1 << 20, 5);
    const stream = concat([message('grad.rs.2', 9, body), message('grad.rs.2', 9, payload(70_000, 6))]);
    const frames = Array.from({ length: Math.floor(stream.length / 65536) }, (_, i) => (i + 1) * 65536 - 11);
    const plain = parse(stream, frames, false);
    const presized = parse(stream, frames, true);
    expect(presized.map((e) => e.data)).toEqual(plain.map((e) => e.data));
    expect(plain[0]!.capacity).toBeGreaterThan(1.3 * body.length); // the behaviour this works around
    for (const e of presized) {
      expect(e.capacity).toBe(e.size);
      expect(e.aligned).toBe(true);
    }
  });

  it('hands a released buffer to a later message of its size, once, and only its own buffers', () => {
    const original = Parser.prototype.parse;
    presizeNatsMessageBuffers();
    try {
      const got: Uint8Array[] = [];
      const p = new Parser({
        push(e: ParserEvent): void {
          if (e.data) got.push(e.data);
        },
      });
      const feed = (stream: Uint8Array): void => {
        for (let at = 0; at < stream.length; at += 65536) p.parse(stream.subarray(at, at + 65536));
      };
      const size = 300_000;
      feed(message('a', 1, payload(size, 1)));
      const first = got[0]!;
      expect(first.buffer.byteLength).toBe(size);
      const before = receiveBuffersReused();
      releaseReceived(first.subarray(64)); // a view of the message, as a kept piece is
      releaseReceived(first); // given back twice: pooled once
      releaseReceived(new Uint8Array(size)); // not a buffer of the parser's: ignored
      feed(message('a', 1, payload(size, 2)));
      feed(message('a', 1, payload(size, 3)));
      expect(receiveBuffersReused() - before).toBe(1);
      expect(got[1]!.buffer).toBe(first.buffer); // the pooled one, refilled
      expect(got[2]!.buffer).not.toBe(first.buffer); // not handed out twice
      expect(Array.from(got[1]!)).toEqual(Array.from(payload(size, 2)));
      expect(Array.from(got[2]!)).toEqual(Array.from(payload(size, 3)));
      expect(RECEIVE_POOL_BYTES).toBeGreaterThanOrEqual(32 * 1024 * 1024);
    } finally {
      Parser.prototype.parse = original;
    }
  });

  it('installs once', () => {
    const original = Parser.prototype.parse;
    try {
      presizeNatsMessageBuffers();
      const once = Parser.prototype.parse;
      presizeNatsMessageBuffers();
      expect(Parser.prototype.parse).toBe(once);
      expect(once).not.toBe(original);
    } finally {
      Parser.prototype.parse = original;
    }
  });
});
