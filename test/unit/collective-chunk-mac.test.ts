/**
 * The chunks' MAC (worker/collective/chunk-mac.ts) and the pure chunk validation
 * (worker/collective/chunk-validation.ts), without NATS.
 */
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';

import { GradPhase, allGatherSubject, reduceScatterSubject } from '../../common/subjects.js';
import {
  CHUNK_HEADER_BYTES,
  CHUNK_TAG_AT,
  ChunkDtype,
  ChunkKind,
  encodeChunkHeader,
  type ChunkHeader,
} from '../../worker/collective/chunk-header.js';
import { checkCollectiveKey, ChunkMac, ControlMac, encodeFloat32Chunk } from '../../worker/collective/chunk-mac.js';
import {
  duplicateVerdict,
  placeChunk,
  RejectReason,
  screenChunk,
  tagOf,
  type Receiver,
  type StepLayout,
} from '../../worker/collective/chunk-validation.js';
import { TEST_COLLECTIVE_KEY, testMac } from '../helpers/collective.js';

const otherKey = Uint8Array.from({ length: 32 }, (_, i) => 200 - i);
const base: ChunkHeader = {
  kind: ChunkKind.ReduceScatter,
  dtype: ChunkDtype.Float32,
  generation: 7,
  step: 3,
  rank: 1,
  shard: 0,
  chunk: 0,
  chunks: 2,
  offset: 0,
  count: 4,
  chunkElements: 4,
  totalLength: 16,
};
const values = new Float32Array([1, -2, 3.5, 1e-3]);

describe('collective key', () => {
  it('must be 32 bytes, not all zeros; the error names the field', () => {
    expect(checkCollectiveKey(TEST_COLLECTIVE_KEY)).toBe(TEST_COLLECTIVE_KEY);
    expect(() => checkCollectiveKey(new Uint8Array(16), 'assignment.collective_key')).toThrow(
      /^assignment\.collective_key: must be 32 bytes, got 16/,
    );
    expect(() => checkCollectiveKey(new Uint8Array(0), 'assignment.collective_key')).toThrow(/got 0/);
    expect(() => checkCollectiveKey(new Uint8Array(32))).toThrow(/all zeros/);
    expect(() => checkCollectiveKey('k'.repeat(32))).toThrow(RangeError);
    expect(() => new ChunkMac(new Uint8Array(31))).toThrow(RangeError);
  });

  it('is never shown by the objects that hold it', () => {
    const mac = new ChunkMac(TEST_COLLECTIVE_KEY);
    const ctl = new ControlMac(TEST_COLLECTIVE_KEY);
    for (const o of [mac, ctl]) {
      const shown = `${String(o)} ${JSON.stringify({ o })} ${inspect(o, { showHidden: true, depth: 5 })}`;
      expect(shown).not.toMatch(/0102030405/);
      expect(shown).not.toContain(Buffer.from(TEST_COLLECTIVE_KEY).toString('base64'));
    }
  });
});

describe('chunk MAC', () => {
  it('verifies what was sealed with the key, and nothing altered', () => {
    const msg = encodeFloat32Chunk(base, values, testMac);
    expect(testMac.verify(msg)).toBe(true);
    expect(new ChunkMac(TEST_COLLECTIVE_KEY).verify(msg)).toBe(true);
    // Every byte is covered: header fields, reserved, nonce, tag, payload.
    for (let at = 0; at < msg.byteLength; at++) {
      const bad = Uint8Array.from(msg);
      bad[at]! ^= 0x01;
      expect(testMac.verify(bad), `byte ${at}`).toBe(false);
    }
    expect(testMac.verify(msg.subarray(0, msg.byteLength - 4))).toBe(false);
    expect(testMac.verify(new Uint8Array(10))).toBe(false);
  });

  it('fails under another key, and a new seal draws a new nonce', () => {
    const msg = encodeFloat32Chunk(base, values, testMac);
    expect(new ChunkMac(otherKey).verify(msg)).toBe(false);
    const again = encodeFloat32Chunk(base, values, testMac);
    expect(Buffer.from(again.subarray(64, 76)).equals(Buffer.from(msg.subarray(64, 76)))).toBe(false);
    expect(tagOf(again)).not.toBe(tagOf(msg));
  });

  it('cannot be re-computed without the key: the old checksum trick (re-seal after editing) fails', () => {
    const msg = encodeFloat32Chunk(base, values, testMac);
    const forged = Uint8Array.from(msg);
    new DataView(forged.buffer).setUint32(8, base.step + 1, true); // step + 1
    new Float32Array(forged.buffer, CHUNK_HEADER_BYTES, 4).forEach((v, i, a) => {
      a[i] = v * -100;
    });
    new ChunkMac(otherKey).seal(forged); // sealed, but not with the generation's key
    expect(testMac.verify(forged)).toBe(false);
  });

  it('control messages: the body under the tag, bound to the subject', () => {
    const ctl = new ControlMac(TEST_COLLECTIVE_KEY);
    const text = ctl.seal('polytune.j.1.ctl.hello', '{"type":"hello"}');
    expect(ctl.open('polytune.j.1.ctl.hello', text)).toBe('{"type":"hello"}');
    expect(ctl.open('polytune.j.1.ctl.ack.0', text)).toBeUndefined();
    expect(ctl.open('polytune.j.1.ctl.hello', text.slice(0, -1) + '!')).toBeUndefined();
    expect(ctl.open('polytune.j.1.ctl.hello', '{"type":"hello"}')).toBeUndefined();
    expect(new ControlMac(otherKey).open('polytune.j.1.ctl.hello', text)).toBeUndefined();
  });
});

describe('screenChunk', () => {
  const me: Receiver = { job: 'j', generation: 7, rank: 0, worldSize: 3 };
  const rs = reduceScatterSubject('j', 7, 0);

  it('passes an authentic chunk meant for this rank, with its phase and header', () => {
    const r = screenChunk(rs, encodeFloat32Chunk(base, values, testMac), me, testMac);
    expect(r).toEqual({ ok: true, phase: GradPhase.reduceScatter, header: base });
    const ag = { ...base, kind: ChunkKind.AllGather, rank: 2, shard: 2 };
    expect(screenChunk(allGatherSubject('j', 7, 2), encodeFloat32Chunk(ag, values, testMac), me, testMac).ok).toBe(
      true,
    );
  });

  it('drops everything else, by reason, before any hashing where it can', () => {
    const reason = (subject: string, msg: Uint8Array): RejectReason | undefined => {
      const r = screenChunk(subject, msg, me, testMac);
      return r.ok ? undefined : r.reason;
    };
    const good = encodeFloat32Chunk(base, values, testMac);
    expect(reason(reduceScatterSubject('j', 6, 0), good)).toBe(RejectReason.malformed); // another generation's subject
    expect(reason(reduceScatterSubject('k', 7, 0), good)).toBe(RejectReason.malformed);
    expect(reason(rs, new Uint8Array([1, 2, 3]))).toBe(RejectReason.malformed);
    // a replay from generation 6
    expect(reason(rs, encodeFloat32Chunk({ ...base, generation: 6 }, values, testMac))).toBe(RejectReason.stale);
    // "from" this rank
    expect(reason(rs, encodeFloat32Chunk({ ...base, rank: 0 }, values, testMac))).toBe(RejectReason.header);
    // not a rank
    expect(reason(rs, encodeFloat32Chunk({ ...base, rank: 3 }, values, testMac))).toBe(RejectReason.header);
    // another shard
    expect(reason(rs, encodeFloat32Chunk({ ...base, shard: 1 }, values, testMac))).toBe(RejectReason.header);
    expect(reason(rs, encodeFloat32Chunk({ ...base, kind: ChunkKind.AllGather }, values, testMac))).toBe(
      RejectReason.header,
    );
    expect(reason(reduceScatterSubject('j', 7, 1), good)).toBe(RejectReason.header); // someone else's subject
    expect(reason(rs, encodeFloat32Chunk(base, values, new ChunkMac(otherKey)))).toBe(RejectReason.mac);
    const unsealed = new Uint8Array(CHUNK_HEADER_BYTES + 16);
    encodeChunkHeader(base, unsealed);
    expect(reason(rs, unsealed)).toBe(RejectReason.mac);
    const flipped = Uint8Array.from(good);
    flipped[CHUNK_HEADER_BYTES + 5]! ^= 4;
    expect(reason(rs, flipped)).toBe(RejectReason.mac);
    expect(reason(rs, good)).toBeUndefined();
    expect(CHUNK_TAG_AT).toBe(80);
  });
});

describe('placeChunk', () => {
  // 16 elements, 3 ranks: shards [0,5) [5,10) [10,16); chunks of 4.
  const layout: StepLayout = {
    step: 3,
    length: 16,
    chunkElements: 4,
    worldSize: 3,
    rank: 0,
    dtypeAt: (offset) => (offset < 4 ? ChunkDtype.Float32 : ChunkDtype.Float16),
  };
  const h = (over: Partial<ChunkHeader>): ChunkHeader => ({ ...base, totalLength: 16, chunks: 2, ...over });

  it('accepts the next chunk of a stream, with where it goes', () => {
    expect(placeChunk(h({}), GradPhase.reduceScatter, layout, 0)).toEqual({ action: 'accept', offset: 0, count: 4 });
    const last = h({ chunk: 1, offset: 4, count: 1, dtype: ChunkDtype.Float16 });
    expect(placeChunk(last, GradPhase.reduceScatter, layout, 1)).toEqual({ action: 'accept', offset: 4, count: 1 });
  });

  it('a gap is a lost chunk, a repeat a duplicate, a wrong layout a drop, another vector a failure', () => {
    const last = h({ chunk: 1, offset: 4, count: 1, dtype: ChunkDtype.Float16 });
    expect(placeChunk(last, GradPhase.reduceScatter, layout, 0)).toMatchObject({ action: 'fail', lost: 1 });
    expect(placeChunk(h({}), GradPhase.reduceScatter, layout, 1)).toEqual({ action: 'duplicate' });
    expect(placeChunk(h({ chunks: 3 }), GradPhase.reduceScatter, layout, 0)).toMatchObject({
      action: 'drop',
      reason: RejectReason.position,
    });
    expect(placeChunk(h({ offset: 1 }), GradPhase.reduceScatter, layout, 0)).toMatchObject({
      action: 'drop',
      reason: RejectReason.position,
    });
    expect(placeChunk(h({ dtype: ChunkDtype.Float16 }), GradPhase.reduceScatter, layout, 0)).toMatchObject({
      action: 'drop',
    });
    expect(placeChunk(h({ totalLength: 17 }), GradPhase.reduceScatter, layout, 0)).toMatchObject({
      action: 'fail',
      lost: 0,
    });
    expect(placeChunk(h({ chunkElements: 8 }), GradPhase.reduceScatter, layout, 0)).toMatchObject({
      action: 'fail',
      lost: 0,
    });
  });

  it('tells a copy from a conflicting chunk by its tag', () => {
    const a = encodeFloat32Chunk(base, values, testMac);
    const b = encodeFloat32Chunk(base, new Float32Array([9, 9, 9, 9]), testMac);
    expect(duplicateVerdict(tagOf(a), tagOf(Uint8Array.from(a)))).toBe('identical');
    expect(duplicateVerdict(tagOf(a), tagOf(b))).toBe('conflicting');
    // The same numbers sealed again (a new nonce) are a second message, not a copy.
    expect(duplicateVerdict(tagOf(a), tagOf(encodeFloat32Chunk(base, values, testMac)))).toBe('conflicting');
  });
});
