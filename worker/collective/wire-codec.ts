/**
 * Numbers on the wire: float32 as is, or narrowed to 16 bits (IEEE binary16 or bfloat16) with
 * round-to-nearest-even, and widened back exactly. Accumulation always happens in float32.
 *
 * Narrowing is a pure function of the float32 input, the same on every rank; widening is exact, and
 * narrowing a widened value gives the same bits back (`quantize(dequantize(q)) === q` for every
 * non-NaN q), which is what lets the owner of a shard quantize its float32 sum once, keep the
 * widened value itself, and have every rank hold the identical numbers.
 *
 * Error feedback (optional): what narrowing lost, `v − widen(narrow(v))`, is carried to the next
 * step and added before narrowing there, so nothing is lost for good, only delayed (Seide et al.
 * 2014; Karimireddy et al. 2019).
 */
import { bf16ToF32Table, f16ToF32Table, f32BitsToBf16, f32BitsToF16 } from '../float16.js';
import { ChunkDtype } from './dtype.js';

/** The scalar roundings, defined once in `worker/float16.ts` (the safetensors codec needs them too). */
export { f32BitsToBf16, f32BitsToF16 };

/** How gradients travel: `none` is float32. As `spec.collective.compression`. */
export const Compression = {
  none: 'none',
  fp16: 'fp16',
  bf16: 'bf16',
} as const;
export type Compression = (typeof Compression)[keyof typeof Compression];

export function wireDtype(c: Compression): ChunkDtype {
  return c === 'fp16' ? ChunkDtype.Float16 : c === 'bf16' ? ChunkDtype.BFloat16 : ChunkDtype.Float32;
}

/**
 * Narrows `src` (+ `residualIn`, when given) into `dst`. With `residualOut`, writes what narrowing
 * lost there; with `widened`, writes the widened value (what the receiver will see). Any of the
 * Float32Array arguments may alias each other element-for-element (same index, same array).
 */
export function quantize(
  dtype: ChunkDtype.Float16 | ChunkDtype.BFloat16,
  src: Float32Array,
  dst: Uint16Array,
  residualIn?: Float32Array,
  residualOut?: Float32Array,
  widened?: Float32Array,
): void {
  if (residualIn === undefined && residualOut === undefined) {
    // The hot paths without error feedback: monomorphic loops over the bits.
    const bits = new Int32Array(src.buffer, src.byteOffset, src.length);
    if (dtype === ChunkDtype.Float16) narrowF16(bits, dst);
    else narrowBf16(bits, dst);
    if (widened !== undefined) dequantize(dtype, dst, widened);
    return;
  }
  const n = src.length;
  const tmp = new Float32Array(1);
  const tmpBits = new Int32Array(tmp.buffer);
  const table = dtype === ChunkDtype.Float16 ? f16ToF32Table() : undefined;
  for (let i = 0; i < n; i++) {
    tmp[0] = residualIn === undefined ? src[i]! : src[i]! + residualIn[i]!; // rounded to float32
    const v = tmp[0];
    const q = table !== undefined ? f32BitsToF16(tmpBits[0]! >>> 0) : f32BitsToBf16(tmpBits[0]! >>> 0);
    dst[i] = q;
    let w: number;
    if (table !== undefined) w = table[q]!;
    else {
      tmpBits[0] = q << 16;
      w = tmp[0];
    }
    if (residualOut !== undefined) residualOut[i] = v - w;
    if (widened !== undefined) widened[i] = w;
  }
}

/**
 * Tables by the top 9 bits of a float32 (sign and exponent): the binary16 sign/exponent to add,
 * the implicit bit, and the shift that brings the mantissa to binary16's; rounding to nearest even
 * is an add of (half − 1 + the kept lowest bit) before the shift, whose carry runs into the exponent
 * as it should (up to Inf). Overflow and underflow shift everything out. No branch but NaN's.
 */
const F16_BASE = new Uint16Array(512);
const F16_SHIFT = new Uint8Array(512);
const F16_IMPLICIT = new Int32Array(512);
const F16_BIAS = new Int32Array(512);
for (let idx = 0; idx < 512; idx++) {
  const sign = idx & 0x100 ? 0x8000 : 0;
  const e = idx & 0xff;
  const he = e - 112;
  let base = sign;
  let shift = 25;
  let implicit = 0;
  if (e === 0xff || he >= 0x1f)
    base = sign | 0x7c00; // Inf (NaN is handled apart)
  else if (he > 0) {
    base = sign | (he << 10);
    shift = 13;
  } else if (he >= -10) {
    shift = 14 - he;
    implicit = 0x800000;
  }
  F16_BASE[idx] = base;
  F16_SHIFT[idx] = shift;
  F16_IMPLICIT[idx] = implicit;
  F16_BIAS[idx] = (1 << (shift - 1)) - 1;
}

function narrowF16(bits: Int32Array, dst: Uint16Array): void {
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const f = bits[i]!;
    const a = f & 0x7fffffff;
    // The common case, a binary16 normal (float32 exponent 113..142): rebias, then round to nearest
    // even with one add whose carry runs into the exponent (up to Inf) as it should. Integer ops
    // only, no table; everything else (subnormals, zero, overflow, NaN) goes the table way.
    if ((a - 0x38800000) >>> 0 < 0x0f000000)
      dst[i] = ((f >>> 16) & 0x8000) | ((a - 0x37fff001 + ((a >>> 13) & 1)) >>> 13);
    else dst[i] = narrowF16Slow(f);
  }
}

function narrowF16Slow(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return f32BitsToF16(f >>> 0);
  const idx = f >>> 23;
  const sh = F16_SHIFT[idx]!;
  const m = (f & 0x7fffff) | F16_IMPLICIT[idx]!;
  return F16_BASE[idx]! + ((m + F16_BIAS[idx]! + ((m >>> sh) & 1)) >>> sh);
}

function narrowBf16(bits: Int32Array, dst: Uint16Array): void {
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const f = bits[i]!;
    if ((f & 0x7fffffff) > 0x7f800000) dst[i] = (f >>> 16) | 0x40;
    else dst[i] = (f + 0x7fff + ((f >>> 16) & 1)) >>> 16;
  }
}

/** Widens `src` into `dst` (exact). */
export function dequantize(dtype: ChunkDtype.Float16 | ChunkDtype.BFloat16, src: Uint16Array, dst: Float32Array): void {
  if (dtype === ChunkDtype.Float16) widenF16(src, dst, f16ToF32Table());
  else widenBf16(src, new Int32Array(dst.buffer, dst.byteOffset, src.length));
}

function widenF16(src: Uint16Array, dst: Float32Array, t: Float32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = t[src[i]!]!;
}

function widenBf16(src: Uint16Array, dst: Int32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
}

/** Widens and adds: `acc[i] += widen(src[i])`, each add rounded to float32. */
export function dequantizeAdd(
  dtype: ChunkDtype.Float16 | ChunkDtype.BFloat16,
  src: Uint16Array,
  acc: Float32Array,
): void {
  if (dtype === ChunkDtype.Float16) widenAddF16(src, acc, f16ToF32Table());
  else widenAddBf16(src, acc, scratchF32(src.length));
}

function widenAddF16(src: Uint16Array, acc: Float32Array, t: Float32Array): void {
  const n = src.length;
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + t[src[i]!]!;
}

function widenAddBf16(src: Uint16Array, acc: Float32Array, tmp: Float32Array): void {
  widenBf16(src, new Int32Array(tmp.buffer, 0, src.length));
  addInto(acc, tmp.subarray(0, src.length));
}

/** The widening table of a 16-bit dtype: `table[q]` is the float32 value of `q`. */
export function widenTable(dtype: ChunkDtype.Float16 | ChunkDtype.BFloat16): Float32Array {
  return dtype === ChunkDtype.Float16 ? f16ToF32Table() : bf16ToF32Table();
}

/**
 * `acc[i] = x0[i] + x1[i] + …` in the order given, each add rounded to float32 (a JS add of two
 * float32 values is exact in float64, so rounding its result to float32 is float32's add), in as
 * few passes over `acc` as possible (4 inputs in the first, 3 more in each next). `acc` may be one
 * of the first four inputs (same elements), never a later one.
 */
export function sumF32(acc: Float32Array, xs: readonly Float32Array[]): void {
  const k = xs.length;
  const n = acc.length;
  const fr = Math.fround;
  if (k === 0) {
    acc.fill(0);
    return;
  }
  const a = xs[0]!;
  if (k === 1) {
    if (a !== acc) acc.set(a);
    return;
  }
  const b = xs[1]!;
  if (k === 2) {
    for (let i = 0; i < n; i++) acc[i] = a[i]! + b[i]!;
    return;
  }
  const c = xs[2]!;
  if (k === 3) {
    for (let i = 0; i < n; i++) acc[i] = fr(a[i]! + b[i]!) + c[i]!;
    return;
  }
  const d = xs[3]!;
  for (let i = 0; i < n; i++) acc[i] = fr(fr(a[i]! + b[i]!) + c[i]!) + d[i]!;
  for (let r = 4; r < k; r += 3) {
    const x = xs[r]!;
    if (r + 1 === k) {
      for (let i = 0; i < n; i++) acc[i] = acc[i]! + x[i]!;
      continue;
    }
    const y = xs[r + 1]!;
    if (r + 2 === k) {
      for (let i = 0; i < n; i++) acc[i] = fr(acc[i]! + x[i]!) + y[i]!;
      continue;
    }
    const z = xs[r + 2]!;
    for (let i = 0; i < n; i++) acc[i] = fr(fr(acc[i]! + x[i]!) + y[i]!) + z[i]!;
  }
}

/** As `sumF32`, of 16-bit inputs widened by `table` (`widenTable`), fused: one pass for up to 4 inputs. */
export function sumWidened(acc: Float32Array, xs: readonly Uint16Array[], t: Float32Array): void {
  const k = xs.length;
  const n = acc.length;
  const fr = Math.fround;
  if (k === 0) {
    acc.fill(0);
    return;
  }
  const a = xs[0]!;
  if (k === 1) {
    for (let i = 0; i < n; i++) acc[i] = t[a[i]!]!;
    return;
  }
  const b = xs[1]!;
  if (k === 2) {
    for (let i = 0; i < n; i++) acc[i] = t[a[i]!]! + t[b[i]!]!;
    return;
  }
  const c = xs[2]!;
  if (k === 3) {
    for (let i = 0; i < n; i++) acc[i] = fr(t[a[i]!]! + t[b[i]!]!) + t[c[i]!]!;
    return;
  }
  const d = xs[3]!;
  for (let i = 0; i < n; i++) acc[i] = fr(fr(t[a[i]!]! + t[b[i]!]!) + t[c[i]!]!) + t[d[i]!]!;
  for (let r = 4; r < k; r += 3) {
    const x = xs[r]!;
    if (r + 1 === k) {
      for (let i = 0; i < n; i++) acc[i] = acc[i]! + t[x[i]!]!;
      continue;
    }
    const y = xs[r + 1]!;
    if (r + 2 === k) {
      for (let i = 0; i < n; i++) acc[i] = fr(acc[i]! + t[x[i]!]!) + t[y[i]!]!;
      continue;
    }
    const z = xs[r + 2]!;
    for (let i = 0; i < n; i++) acc[i] = fr(fr(acc[i]! + t[x[i]!]!) + t[y[i]!]!) + t[z[i]!]!;
  }
}

let scratch = new Float32Array(0);
function scratchF32(n: number): Float32Array {
  if (scratch.length < n) scratch = new Float32Array(n);
  return scratch;
}

/** `acc[i] += x[i]`, each add rounded to float32. */
export function addInto(acc: Float32Array, x: Float32Array): void {
  const n = acc.length;
  for (let i = 0; i < n; i++) acc[i] = acc[i]! + x[i]!;
}
