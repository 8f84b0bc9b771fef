import { describe, expect, it } from 'vitest';

import {
  CHUNK_HEADER_BYTES,
  ChunkDecodeError,
  ChunkDtype,
  ChunkKind,
  decodeChunkHeader,
  encodeChunkHeader,
  readFloat32LE,
  type ChunkHeader,
} from '../../worker/collective/chunk-header.js';
import { encodeFloat32Chunk } from '../../worker/collective/chunk-mac.js';
import { testMac } from '../helpers/collective.js';

const base: ChunkHeader = {
  kind: ChunkKind.ReduceScatter,
  dtype: ChunkDtype.Float32,
  generation: 7,
  step: 123,
  rank: 3,
  shard: 5,
  chunk: 1,
  chunks: 4,
  offset: 1000,
  count: 3,
  chunkElements: 10,
  totalLength: 5000,
};

function message(h: ChunkHeader, payloadBytes = h.count * 4): Uint8Array {
  const buf = new Uint8Array(CHUNK_HEADER_BYTES + payloadBytes);
  encodeChunkHeader(h, buf);
  return buf;
}

describe('chunk header', () => {
  it('is 96 bytes, 32-aligned', () => {
    expect(CHUNK_HEADER_BYTES).toBe(96);
    expect(CHUNK_HEADER_BYTES % 32).toBe(0);
  });

  it('round-trips every field, including u64 values above 2^32', () => {
    const h: ChunkHeader = {
      ...base,
      kind: ChunkKind.AllGather,
      step: 2 ** 40 + 17,
      offset: 2 ** 33 + 5,
      totalLength: 2 ** 33 + 100,
      generation: 0xffffffff,
    };
    expect(decodeChunkHeader(message(h))).toEqual(h);
    expect(decodeChunkHeader(message(base))).toEqual(base);
  });

  it('has a fixed little-endian layout', () => {
    const b = message(base);
    expect([b[0], b[1], b[2], b[3]]).toEqual([0x50, 4, ChunkKind.ReduceScatter, ChunkDtype.Float32]);
    const v = new DataView(b.buffer);
    expect(v.getUint32(4, true)).toBe(7);
    expect(v.getUint32(8, true)).toBe(123);
    expect(v.getUint32(12, true)).toBe(0);
    expect(v.getUint32(16, true)).toBe(3);
    expect(v.getUint32(20, true)).toBe(5);
    expect(v.getUint32(24, true)).toBe(1);
    expect(v.getUint32(28, true)).toBe(4);
    expect(v.getUint32(32, true)).toBe(1000);
    expect(v.getUint32(40, true)).toBe(3);
    expect(v.getUint32(44, true)).toBe(10);
    expect(v.getUint32(48, true)).toBe(5000);
    // Reserved, nonce and tag: zeros until sealed.
    expect(b.subarray(56, 96).every((x) => x === 0)).toBe(true);
  });

  it('decodes from an unaligned view into a larger buffer', () => {
    const data = new Float32Array([1.5, -2.25, 3e-30]);
    const msg = encodeFloat32Chunk(base, data, testMac);
    const big = new Uint8Array(msg.byteLength + 3);
    big.set(msg, 3);
    const view = big.subarray(3);
    expect(decodeChunkHeader(view)).toEqual(base);
    const out = new Float32Array(5);
    readFloat32LE(view.subarray(CHUNK_HEADER_BYTES), out, 1, 3);
    expect(Array.from(out)).toEqual([0, 1.5, -2.25, Math.fround(3e-30), 0]);
  });

  it('rejects malformed messages, saying why', () => {
    const bad = (mutate: (b: Uint8Array) => void, h: ChunkHeader = base, payload?: number): void => {
      const b = message(h, payload);
      mutate(b);
      expect(() => decodeChunkHeader(b)).toThrow(ChunkDecodeError);
    };
    expect(() => decodeChunkHeader(new Uint8Array(10))).toThrow(/shorter/);
    bad((b) => {
      b[0] = 0x51;
    });
    bad((b) => {
      b[1] = 1;
    });
    bad((b) => {
      b[2] = 9;
    });
    bad((b) => {
      b[3] = 0;
    });
    bad(() => {}, base, 8); // payload shorter than count
    bad(() => {}, base, 16); // longer
    bad(() => {}, { ...base, chunk: 4 }); // chunk >= chunks
    bad(() => {}, { ...base, count: 11 }); // count > chunkElements
    bad(() => {}, { ...base, count: 0 }, 0);
    bad(() => {}, { ...base, offset: 4998 }); // beyond the vector
    bad((b) => {
      new DataView(b.buffer).setUint32(12, 0x00400000, true);
    }); // step >= 2^54
    bad((b) => {
      b[57] = 1;
    }); // reserved
    bad((b) => {
      b[63] = 1;
    });
    bad((b) => {
      b[78] = 1;
    });
    expect(() => decodeChunkHeader(message(base))).not.toThrow();
  });

  it('refuses to encode out-of-range fields', () => {
    expect(() => message({ ...base, rank: -1 })).toThrow(RangeError);
    expect(() => message({ ...base, chunk: 2 ** 32 })).toThrow(RangeError);
    expect(() => message({ ...base, step: 1.5 })).toThrow(RangeError);
    expect(() => encodeChunkHeader(base, new Uint8Array(20))).toThrow(RangeError);
    expect(() => encodeFloat32Chunk(base, new Float32Array(2), testMac)).toThrow(RangeError);
  });
});
