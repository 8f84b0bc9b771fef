/**
 * The fixed 96-byte binary prefix of every gradient chunk message, followed by the payload as raw
 * little-endian numbers. Field names follow `ChunkHeader` in `proto/polytune/v1/collective.proto`
 * (step, rank, shard, chunk, chunks, offset, count, dtype); a fixed layout rather than protobuf so
 * that it costs nothing to decode and keeps the payload 32-byte aligned.
 *
 * ```
 * off size field
 *   0  u8  magic 0x50 ('P')
 *   1  u8  version (4)
 *   2  u8  kind       ChunkKind: 1 reduce-scatter piece, 2 all-gather reduced shard
 *   3  u8  dtype      ChunkDtype: 1 float32, 2 float16 (IEEE binary16), 3 bfloat16
 *   4  u32 generation
 *   8  u64 step
 *  16  u32 rank       sender
 *  20  u32 shard      the shard (owner rank) the chunk belongs to
 *  24  u32 chunk      index of this chunk within the shard: the sequence number of the
 *                     (step, kind, sender, shard) stream, sent in increasing order
 *  28  u32 chunks     number of chunks of the shard
 *  32  u64 offset     element offset of the chunk in the whole vector
 *  40  u32 count      elements in this chunk
 *  44  u32 chunkElements  the sender's nominal chunk size (every chunk but the last has it)
 *  48  u64 totalLength    elements in the whole vector
 *  56  u64 reserved   0
 *  64  12B nonce      the MAC's nonce, random for every message (`chunk-mac.ts`)
 *  76  u32 reserved   0
 *  80  16B tag        the MAC of bytes 0..80 and the payload (`chunk-mac.ts`)
 * ```
 * All integers little-endian; u64 fields hold safe integers (< 2^53); reserved bytes must be zero
 * (they are under the MAC, so they cannot carry anything unseen). Every field a receiver acts on
 * is under the MAC. Version 3 carried an unkeyed checksum (`hash32`) where the reserved u64 is
 * now: anyone could re-compute it, so it proved nothing; the MAC also catches what it caught.
 */
import { bytesPerElement, ChunkDtype, ChunkKind } from './dtype.js';

export { bytesPerElement, ChunkDtype, ChunkKind };

export const CHUNK_MAGIC = 0x50;
export const CHUNK_VERSION = 4;
export const CHUNK_HEADER_BYTES = 96;
/** Where the MAC's nonce and tag sit, and their sizes. */
export const CHUNK_NONCE_AT = 64;
export const CHUNK_NONCE_BYTES = 12;
export const CHUNK_TAG_AT = 80;
export const CHUNK_TAG_BYTES = 16;

export interface ChunkHeader {
  readonly kind: ChunkKind;
  readonly dtype: ChunkDtype;
  readonly generation: number;
  readonly step: number;
  readonly rank: number;
  readonly shard: number;
  readonly chunk: number;
  readonly chunks: number;
  readonly offset: number;
  readonly count: number;
  readonly chunkElements: number;
  readonly totalLength: number;
}

/** A message that is not a well-formed chunk; the reason says which field. */
export class ChunkDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChunkDecodeError';
  }
}

const U32_MAX = 0xffffffff;
const TWO32 = 0x1_0000_0000;

function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value % TWO32, true);
  view.setUint32(at + 4, Math.floor(value / TWO32), true);
}

function getU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * TWO32 + view.getUint32(at, true);
}

function checkU32(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX)
    throw new RangeError(`chunk header ${name}: must be a u32, got ${v}`);
}

function checkU64(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0)
    throw new RangeError(`chunk header ${name}: must be a non-negative safe integer, got ${v}`);
}

/** Writes `h` into the first CHUNK_HEADER_BYTES of `buf`. */
export function encodeChunkHeader(h: ChunkHeader, buf: Uint8Array): void {
  if (buf.byteLength < CHUNK_HEADER_BYTES)
    throw new RangeError(`chunk header: buffer of ${buf.byteLength} bytes is too small`);
  for (const k of ['generation', 'rank', 'shard', 'chunk', 'chunks', 'count', 'chunkElements'] as const)
    checkU32(k, h[k]);
  for (const k of ['step', 'offset', 'totalLength'] as const) checkU64(k, h[k]);
  const v = new DataView(buf.buffer, buf.byteOffset, CHUNK_HEADER_BYTES);
  v.setUint8(0, CHUNK_MAGIC);
  v.setUint8(1, CHUNK_VERSION);
  v.setUint8(2, h.kind);
  v.setUint8(3, h.dtype);
  v.setUint32(4, h.generation, true);
  setU64(v, 8, h.step);
  v.setUint32(16, h.rank, true);
  v.setUint32(20, h.shard, true);
  v.setUint32(24, h.chunk, true);
  v.setUint32(28, h.chunks, true);
  setU64(v, 32, h.offset);
  v.setUint32(40, h.count, true);
  v.setUint32(44, h.chunkElements, true);
  setU64(v, 48, h.totalLength);
  // Reserved, nonce and tag: zero until `sealChunk` writes the nonce and the tag.
  buf.fill(0, 56, CHUNK_HEADER_BYTES);
}

/**
 * Reads and checks the header of a chunk message: magic, version, known kind and dtype, and that
 * the payload is exactly `count` elements with the chunk inside the vector.
 * @throws ChunkDecodeError
 */
export function decodeChunkHeader(msg: Uint8Array): ChunkHeader {
  if (msg.byteLength < CHUNK_HEADER_BYTES)
    throw new ChunkDecodeError(`message of ${msg.byteLength} bytes is shorter than the chunk header`);
  const v = new DataView(msg.buffer, msg.byteOffset, CHUNK_HEADER_BYTES);
  if (v.getUint8(0) !== CHUNK_MAGIC) throw new ChunkDecodeError(`bad magic 0x${v.getUint8(0).toString(16)}`);
  if (v.getUint8(1) !== CHUNK_VERSION) throw new ChunkDecodeError(`unsupported version ${v.getUint8(1)}`);
  const kind = v.getUint8(2);
  if (kind !== ChunkKind.ReduceScatter && kind !== ChunkKind.AllGather)
    throw new ChunkDecodeError(`unknown kind ${kind}`);
  const dtype = v.getUint8(3);
  if (dtype !== ChunkDtype.Float32 && dtype !== ChunkDtype.Float16 && dtype !== ChunkDtype.BFloat16) {
    throw new ChunkDecodeError(`unknown dtype ${dtype}`);
  }
  if (v.getUint32(56, true) !== 0 || v.getUint32(60, true) !== 0 || v.getUint32(76, true) !== 0) {
    throw new ChunkDecodeError('reserved bytes are not zero');
  }
  const h: ChunkHeader = {
    kind,
    dtype,
    generation: v.getUint32(4, true),
    step: getU64(v, 8),
    rank: v.getUint32(16, true),
    shard: v.getUint32(20, true),
    chunk: v.getUint32(24, true),
    chunks: v.getUint32(28, true),
    offset: getU64(v, 32),
    count: v.getUint32(40, true),
    chunkElements: v.getUint32(44, true),
    totalLength: getU64(v, 48),
  };
  if (!Number.isSafeInteger(h.step) || !Number.isSafeInteger(h.offset) || !Number.isSafeInteger(h.totalLength)) {
    throw new ChunkDecodeError('u64 field out of the safe integer range');
  }
  const payload = msg.byteLength - CHUNK_HEADER_BYTES;
  if (payload !== h.count * bytesPerElement(h.dtype)) {
    throw new ChunkDecodeError(`payload of ${payload} bytes does not hold count=${h.count} elements`);
  }
  if (h.chunk >= h.chunks) throw new ChunkDecodeError(`chunk ${h.chunk} out of range (chunks=${h.chunks})`);
  if (h.count === 0 || h.count > h.chunkElements)
    throw new ChunkDecodeError(`count ${h.count} not in 1..chunkElements=${h.chunkElements}`);
  if (h.offset + h.count > h.totalLength) {
    throw new ChunkDecodeError(`elements ${h.offset}..${h.offset + h.count} beyond the vector length ${h.totalLength}`);
  }
  return h;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Writes float32 `src` as little-endian bytes into `dst` (at its start). */
export function writeFloat32LE(src: Float32Array, dst: Uint8Array): void {
  if (dst.byteLength < src.length * 4) throw new RangeError('writeFloat32LE: destination too small');
  if (LITTLE_ENDIAN) {
    dst.set(new Uint8Array(src.buffer, src.byteOffset, src.length * 4));
    return;
  }
  const v = new DataView(dst.buffer, dst.byteOffset, src.length * 4);
  for (let i = 0; i < src.length; i++) v.setFloat32(i * 4, src[i]!, true);
}

/** Reads `count` little-endian float32 from `src` (at its start) into `dst` at `dstOffset`. */
export function readFloat32LE(src: Uint8Array, dst: Float32Array, dstOffset: number, count: number): void {
  if (src.byteLength < count * 4) throw new RangeError('readFloat32LE: source too small');
  if (dstOffset < 0 || dstOffset + count > dst.length)
    throw new RangeError('readFloat32LE: destination range out of bounds');
  if (LITTLE_ENDIAN) {
    // Copy bytes: the source may not be 4-byte aligned.
    new Uint8Array(dst.buffer, dst.byteOffset + dstOffset * 4, count * 4).set(src.subarray(0, count * 4));
    return;
  }
  const v = new DataView(src.buffer, src.byteOffset, count * 4);
  for (let i = 0; i < count; i++) dst[dstOffset + i] = v.getFloat32(i * 4, true);
}
