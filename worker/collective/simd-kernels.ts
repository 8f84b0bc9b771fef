/**
 * The collective's hot loops as WebAssembly SIMD kernels (generated from the WAT in
 * `scripts/gen-simd-kernels.mjs`): narrowing float32 to binary16/bfloat16, widening back, float32
 * sums in a given order, and the chunks' checksum (`hash32`, defined here). Bit-for-bit the same
 * as the scalar JavaScript in `wire-codec.ts` (round to nearest even, subnormals, overflow, NaN;
 * each add rounded to float32), which the unit tests check.
 *
 * The data live outside the module's memory (message buffers, the caller's arrays), so each call
 * works in blocks of BLOCK elements: copy in (memcpy, tens of GB/s), run the kernel 4 or 8 lanes at
 * a time, copy out. The module's memory is fixed (never grown), so the views below stay valid, and
 * a block stays in the core's L1/L2 cache from copy-in to copy-out. Reads of a block all happen
 * before its writes, so outputs may alias inputs element for element.
 */
import { ChunkDtype, type Dtype16 } from './dtype.js';
import { SIMD_KERNELS_WASM_BASE64 } from './simd-kernels-wasm.js';

export type { Dtype16 };

interface Exports {
  memory: { readonly buffer: ArrayBuffer };
  narrowF16(src: number, dst: number, n: number): void;
  narrowBf16(src: number, dst: number, n: number): void;
  widenF16(src: number, dst: number, n: number): void;
  widenBf16(src: number, dst: number, n: number): void;
  addWidenedF16(acc: number, src: number, n: number): void;
  addWidenedBf16(acc: number, src: number, n: number): void;
  quantizeF16(src: number, dst: number, n: number): void;
  quantizeBf16(src: number, dst: number, n: number): void;
  addQuantizedF16(acc: number, src: number, n: number): void;
  addQuantizedBf16(acc: number, src: number, n: number): void;
  addF32(out: number, a: number, b: number, n: number): void;
  subF32(out: number, a: number, b: number, n: number): void;
  hash(state: number, p: number, n: number): void;
}

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { readonly exports: unknown };
}

/** Elements a block (a multiple of 8: kernels round n up to 8 within their region). */
export const BLOCK = 16384;
/** Byte offsets of the regions: two float32 blocks, a 16-bit block, the checksum state. */
const ACC = 0;
const IN = ACC + BLOCK * 4;
const Q = IN + BLOCK * 4;
/** The checksum's 32 u32 lane accumulators. */
const HASH_STATE = Q + BLOCK * 2;
const END = HASH_STATE + 128;

const k = ((): Exports => {
  const bytes = Buffer.from(SIMD_KERNELS_WASM_BASE64, 'base64');
  // The WebAssembly global of Node (the project's lib settings do not declare it).
  const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
  const instance = new wasm.Instance(new wasm.Module(bytes), {});
  const e = instance.exports as unknown as Exports;
  if (e.memory.buffer.byteLength < END) throw new Error('internal: SIMD kernel memory smaller than its regions');
  return e;
})();
const mem = k.memory.buffer;
const accF32 = new Float32Array(mem, ACC, BLOCK);
const inF32 = new Float32Array(mem, IN, BLOCK);
const qU16 = new Uint16Array(mem, Q, BLOCK);
const memU8 = new Uint8Array(mem);
const hashLanes = new Uint32Array(mem, HASH_STATE, 32);

const narrowK = (d: Dtype16): Exports['narrowF16'] => (d === ChunkDtype.Float16 ? k.narrowF16 : k.narrowBf16);
const widenK = (d: Dtype16): Exports['widenF16'] => (d === ChunkDtype.Float16 ? k.widenF16 : k.widenBf16);
const addWidenedK = (d: Dtype16): Exports['addWidenedF16'] =>
  d === ChunkDtype.Float16 ? k.addWidenedF16 : k.addWidenedBf16;
const quantizeK = (d: Dtype16): Exports['quantizeF16'] => (d === ChunkDtype.Float16 ? k.quantizeF16 : k.quantizeBf16);
const addQuantizedK = (d: Dtype16): Exports['addQuantizedF16'] =>
  d === ChunkDtype.Float16 ? k.addQuantizedF16 : k.addQuantizedBf16;

/**
 * `dst = narrow(src (+ residualIn))`; with `residualOut`, what narrowing lost (`v − widen(q)`); with
 * `widened`, `widen(q)`. Float32 arguments may alias each other element for element.
 */
export function narrowInto(
  dtype: Dtype16,
  src: Float32Array,
  dst: Uint16Array,
  residualIn?: Float32Array,
  residualOut?: Float32Array,
  widened?: Float32Array,
): void {
  const n = src.length;
  const narrow = narrowK(dtype);
  const widen = widenK(dtype);
  for (let i = 0; i < n; i += BLOCK) {
    const m = Math.min(BLOCK, n - i);
    accF32.set(src.subarray(i, i + m));
    if (residualIn !== undefined) {
      inF32.set(residualIn.subarray(i, i + m));
      k.addF32(ACC, ACC, IN, m);
    }
    narrow(ACC, Q, m);
    if (residualOut !== undefined || widened !== undefined) {
      widen(Q, IN, m);
      if (widened !== undefined) widened.set(m === BLOCK ? inF32 : inF32.subarray(0, m), i);
      if (residualOut !== undefined) {
        k.subF32(ACC, ACC, IN, m);
        residualOut.set(m === BLOCK ? accF32 : accF32.subarray(0, m), i);
      }
    }
    dst.set(m === BLOCK ? qU16 : qU16.subarray(0, m), i);
  }
}

/** `dst = widen(src)`, exact. */
export function widenInto(dtype: Dtype16, src: Uint16Array, dst: Float32Array): void {
  const n = src.length;
  const widen = widenK(dtype);
  for (let i = 0; i < n; i += BLOCK) {
    const m = Math.min(BLOCK, n - i);
    qU16.set(src.subarray(i, i + m));
    widen(Q, ACC, m);
    dst.set(m === BLOCK ? accF32 : accF32.subarray(0, m), i);
  }
}

/**
 * `acc = x0 + x1 + …` in the order given, each add rounded to float32. `acc` may be any input
 * (same elements): each block of every input is read before the block of `acc` is written.
 */
export function sumF32Into(acc: Float32Array, xs: readonly Float32Array[]): void {
  const n = acc.length;
  if (xs.length === 0) {
    acc.fill(0);
    return;
  }
  for (let i = 0; i < n; i += BLOCK) {
    const m = Math.min(BLOCK, n - i);
    accF32.set(xs[0]!.subarray(i, i + m));
    for (let r = 1; r < xs.length; r++) {
      inF32.set(xs[r]!.subarray(i, i + m));
      k.addF32(ACC, ACC, IN, m);
    }
    acc.set(m === BLOCK ? accF32 : accF32.subarray(0, m), i);
  }
}

/**
 * As `sumF32Into`, of 16-bit inputs widened exactly: `acc = widen(x0) + widen(x1) + …`. An input
 * may instead be given as float32 (`{ narrow: values }`): it joins as widen(narrow(values)), in
 * one kernel without the 16-bit values (as `narrowInto` without feedback, then widening), which
 * is how the owner's own contribution joins the sum.
 */
export function sumWidenedInto(
  dtype: Dtype16,
  acc: Float32Array,
  xs: ReadonlyArray<Uint16Array | { narrow: Float32Array }>,
): void {
  const n = acc.length;
  if (xs.length === 0) {
    acc.fill(0);
    return;
  }
  const widen = widenK(dtype);
  const addWidened = addWidenedK(dtype);
  const quantize = quantizeK(dtype);
  const addQuantized = addQuantizedK(dtype);
  for (let i = 0; i < n; i += BLOCK) {
    const m = Math.min(BLOCK, n - i);
    for (let r = 0; r < xs.length; r++) {
      const x = xs[r]!;
      if (x instanceof Uint16Array) {
        qU16.set(x.subarray(i, i + m));
        if (r === 0) widen(Q, ACC, m);
        else addWidened(ACC, Q, m);
      } else {
        inF32.set(x.narrow.subarray(i, i + m));
        if (r === 0) quantize(IN, ACC, m);
        else addQuantized(ACC, IN, m);
      }
    }
    acc.set(m === BLOCK ? accF32 : accF32.subarray(0, m), i);
  }
}

/** xxHash32's primes. */
const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
/** Bytes the checksum reads a block: the ACC and IN regions (a multiple of its 128-byte stripe). */
const HASH_BLOCK = BLOCK * 8;

const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r));

/**
 * A 32-bit checksum of `bytes`, with the bytes in [zeroFrom, zeroTo) read as zeros (where a
 * message keeps its own checksum). xxHash32's round and avalanche on 32 interleaved u32 lanes, at
 * about 3x zlib's crc32 here (20+ GB/s):
 *   - the bytes, zero-padded to a multiple of 128, are little-endian u32 words; word w goes to
 *     lane w mod 32, whose accumulator starts at (lane + 1)·P1 and takes each of its words as
 *     acc = rotl(acc + word·P2, 13)·P1;
 *   - then h = the length in bytes; for each lane in order, h = rotl(h + acc·P3, 17)·P4; and
 *     xxHash32's avalanche of h (all arithmetic mod 2^32).
 * Lengths must be below 2^32. Off the wire since chunk version 4 (a keyed MAC, `chunk-mac.ts`,
 * replaced this unkeyed checksum); kept, with its kernel, as a tested fast hash.
 */
export function hash32(bytes: Uint8Array, zeroFrom = 0, zeroTo = 0): number {
  const n = bytes.length;
  for (let j = 0; j < 32; j++) hashLanes[j] = Math.imul(j + 1, P1);
  for (let i = 0; i < n; i += HASH_BLOCK) {
    const m = Math.min(HASH_BLOCK, n - i);
    memU8.set(bytes.subarray(i, i + m), ACC);
    const zs = Math.max(zeroFrom, i);
    const ze = Math.min(zeroTo, i + m);
    if (zs < ze) memU8.fill(0, ACC + zs - i, ACC + ze - i);
    const padded = (m + 127) & ~127;
    if (padded > m) memU8.fill(0, ACC + m, ACC + padded);
    k.hash(HASH_STATE, ACC, padded);
  }
  let h = n >>> 0;
  for (let j = 0; j < 32; j++) h = Math.imul(rotl((h + Math.imul(hashLanes[j]!, P3)) | 0, 17), P4);
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}
