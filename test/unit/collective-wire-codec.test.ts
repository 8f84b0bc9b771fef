import { describe, expect, it } from 'vitest';

import { ChunkDtype } from '../../worker/collective/chunk-header.js';
import {
  dequantize,
  dequantizeAdd,
  f32BitsToBf16,
  f32BitsToF16,
  quantize,
} from '../../worker/collective/wire-codec.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number): number => {
  f32[0] = x;
  return u32[0]!;
};

/** Reference binary16 rounding, by exhaustive search of the nearest representable value (ties to even). */
function refF16(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(Math.fround(x));
  if (a >= 65520) return sign | 0x7c00; // 65504 + half an ulp (16) rounds to Inf
  let best = 0;
  let bestErr = Infinity;
  for (let h = 0; h < 0x7c00; h++) {
    const e = h >> 10;
    const m = h & 0x3ff;
    const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
    const err = Math.abs(v - a);
    if (err < bestErr || (err === bestErr && (h & 1) === 0)) {
      best = h;
      bestErr = err;
    }
  }
  return sign | best;
}

describe('wire codec', () => {
  it('binary16: round to nearest even, subnormals, overflow, signed zero', () => {
    const cases = [
      0,
      -0,
      1,
      -1,
      0.1,
      1 / 3,
      65504,
      65519,
      65520,
      1e6,
      -1e6,
      6e-8,
      3e-8,
      2.98e-8,
      5.96e-8,
      1e-10,
      6.1e-5,
      6.103515625e-5,
      1.0009765625,
      1.00048828125,
      1.00146484375,
      2049,
      2051,
      1e-5,
      -3.3e-6,
    ];
    for (const x of cases) expect(f32BitsToF16(bitsOf(x)), String(x)).toBe(refF16(x));
    let s = 12345;
    for (let i = 0; i < 300; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      const x = (s / 2 ** 32 - 0.5) * 10 ** ((i % 14) - 9);
      expect(f32BitsToF16(bitsOf(x)), String(x)).toBe(refF16(x));
    }
    expect(f32BitsToF16(bitsOf(Infinity))).toBe(0x7c00);
    expect(f32BitsToF16(bitsOf(NaN)) & 0x7c00).toBe(0x7c00);
    expect(f32BitsToF16(bitsOf(NaN)) & 0x3ff).not.toBe(0);
  });

  it('bfloat16: round to nearest even, NaN stays NaN', () => {
    expect(f32BitsToBf16(0x3f808000)).toBe(0x3f80); // tie, even stays
    expect(f32BitsToBf16(0x3f818000)).toBe(0x3f82); // tie, odd rounds up
    expect(f32BitsToBf16(0x3f808001)).toBe(0x3f81);
    expect(f32BitsToBf16(0x7f7fffff)).toBe(0x7f80); // max float rounds to Inf
    expect(f32BitsToBf16(0x7fc00001) & 0x7f80).toBe(0x7f80);
    expect(f32BitsToBf16(0x7f800001) & 0x7f).not.toBe(0);
  });

  it.each([ChunkDtype.Float16, ChunkDtype.BFloat16] as const)(
    'dtype %i: narrowing a widened value gives the same bits; feedback keeps the lost part',
    (dtype) => {
      const n = 5000;
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = Math.sin(i * 0.37) * 10 ** ((i % 9) - 6);
      const q = new Uint16Array(n);
      const w = new Float32Array(n);
      const r = new Float32Array(n);
      quantize(dtype, x, q, undefined, r, w);
      const plain = new Uint16Array(n);
      quantize(dtype, x, plain);
      expect(Array.from(plain)).toEqual(Array.from(q));
      const back = new Float32Array(n);
      dequantize(dtype, q, back);
      expect(Array.from(back)).toEqual(Array.from(w));
      const q2 = new Uint16Array(n);
      quantize(dtype, back, q2);
      expect(Array.from(q2)).toEqual(Array.from(q));
      for (let i = 0; i < n; i++) expect(w[i]! + r[i]!).toBe(x[i]!); // v = widened + residual, exactly
      const acc = Float32Array.from(x);
      dequantizeAdd(dtype, q, acc);
      for (let i = 0; i < n; i++) expect(acc[i]).toBe(Math.fround(x[i]! + w[i]!));
    },
  );
});
