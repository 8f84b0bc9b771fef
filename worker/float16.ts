/**
 * float32 ↔ binary16 and bfloat16 for one number, defined once: the gradients' wire codec
 * (`collective/wire-codec.ts`, whose SIMD kernels are checked against these bit for bit) and the
 * safetensors reader and writer need the same rounding. A leaf module: it imports nothing.
 *
 * Narrowing rounds to nearest even, keeps subnormals, overflows to ±Inf and keeps a NaN a quiet NaN
 * (its sign and top payload bits kept). Widening is exact.
 */

/** float32 bits → binary16 bits, round to nearest even; overflow → ±Inf, NaN stays NaN. */
export function f32BitsToF16(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const e = (f >>> 23) & 0xff;
  let m = f & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m !== 0 ? 0x200 | (m >>> 13) : 0);
  const he = e - 112; // rebias 127 → 15
  if (he >= 0x1f) return sign | 0x7c00;
  if (he <= 0) {
    if (he < -10) return sign; // below half the smallest subnormal: ±0
    m |= 0x800000;
    const shift = 14 - he; // 14..24
    let hm = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (hm & 1) !== 0)) hm++;
    return sign | hm; // a carry into bit 10 is the smallest normal, as it should be
  }
  let h = sign | (he << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // may carry into the exponent, up to Inf: correct
  return h;
}

/** float32 bits → bfloat16 bits, round to nearest even; NaN stays NaN. */
export function f32BitsToBf16(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

let f16Table: Float32Array | undefined;
/** binary16 bits → float32 value, for all 65536 patterns (256 KiB, built on first use). */
export function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m !== 0 ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  f16Table = t;
  return t;
}

let bf16Table: Float32Array | undefined;
/** bfloat16 bits → float32 value (the bits shifted up), for all 65536 patterns. */
export function bf16ToF32Table(): Float32Array {
  if (bf16Table) return bf16Table;
  const t = new Float32Array(65536);
  const bits = new Int32Array(t.buffer);
  for (let h = 0; h < 65536; h++) bits[h] = h << 16;
  bf16Table = t;
  return t;
}
