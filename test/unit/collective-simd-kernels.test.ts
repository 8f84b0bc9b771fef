import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { ChunkDtype } from '../../worker/collective/chunk-header.js';
import {
  BLOCK,
  hash32,
  narrowInto,
  sumF32Into,
  sumWidenedInto,
  widenInto,
  type Dtype16,
} from '../../worker/collective/simd-kernels.js';
import { f32BitsToBf16, f32BitsToF16, widenTable } from '../../worker/collective/wire-codec.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

// --- plain scalar references, element by element ------------------------------------------------

const narrowRef = (d: Dtype16, bits: number): number =>
  d === ChunkDtype.Float16 ? f32BitsToF16(bits >>> 0) : f32BitsToBf16(bits >>> 0);
/** The exact float32 add (Math.fround of the float64 sum of two float32 values is float32's add). */
const add32 = (a: number, b: number): number => Math.fround(a + b);

function bitsOf(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** Random float32 bit patterns, with the boundaries and specials of both 16-bit formats mixed in. */
function specialBits(): number[] {
  const out: number[] = [];
  const around = (b: number): void => {
    for (let d = -3; d <= 3; d++) out.push((b + d) >>> 0, ((b + d) | 0x80000000) >>> 0);
  };
  for (const b of [
    0,
    0x00000001,
    0x007fffff,
    0x00800000, // zero, float32 subnormals, smallest normal
    0x33000000,
    0x33800000,
    0x33c00000,
    0x337fffff, // around half the smallest binary16 subnormal (2^-25) and 2^-24
    0x38800000,
    0x387fe000,
    0x387ff000,
    0x387fffff,
    0x38000000, // binary16 smallest normal 2^-14 and the subnormal edge
    0x3f800000,
    0x3f801000,
    0x3f802000,
    0x3f803000, // 1 and ties at binary16's ulp
    0x3f808000,
    0x3f818000,
    0x3f828000, // ties at bfloat16's ulp
    0x477fe000,
    0x477fefff,
    0x477ff000,
    0x477fffff,
    0x47800000, // 65504, the rounding to Inf at 65520, 65536
    0x7f7fffff,
    0x7f7f8000,
    0x7f800000,
    0x7f800001,
    0x7fc00000,
    0x7fffffff,
    0x7fbfffff,
    0x7f802000, // max, Inf, NaNs
  ])
    around(b);
  return out;
}

function randomBits(n: number, seed: number): Uint32Array {
  const out = new Uint32Array(n);
  let s = seed >>> 0;
  const next = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  const specials = specialBits();
  for (let i = 0; i < n; i++) {
    const r = next();
    // A third random patterns, a third values near 1 (normals, which sum without overflow), a
    // third specials and boundaries.
    out[i] =
      r % 3 === 0
        ? next()
        : r % 3 === 1
          ? (0x3c000000 + (next() % 0x07000000)) ^ (next() & 0x80000000)
          : specials[next() % specials.length]!;
  }
  return out;
}

const DTYPES: Array<[string, Dtype16]> = [
  ['binary16', ChunkDtype.Float16],
  ['bfloat16', ChunkDtype.BFloat16],
];
/** Lengths: 1 element, odd ones, the 8-lane edges, and more than a block with a ragged tail. */
const LENGTHS = [1, 3, 7, 8, 9, 17, 1000, BLOCK - 1, BLOCK, BLOCK + 5, 2 * BLOCK + 13];

describe.each(DTYPES)('SIMD kernels: %s', (_name, dtype) => {
  it('narrow: bit for bit the scalar rounding (random, boundary and special patterns, all lengths)', () => {
    for (const n of LENGTHS) {
      const bits = randomBits(n, n * 7 + dtype);
      const src = new Float32Array(bits.buffer);
      const dst = new Uint16Array(n).fill(0xdead);
      narrowInto(dtype, src, dst);
      for (let i = 0; i < n; i++)
        if (dst[i] !== narrowRef(dtype, bits[i]!))
          expect.fail(
            `n=${n} i=${i} bits 0x${bits[i]!.toString(16)}: ` +
              `0x${dst[i]!.toString(16)} ≠ 0x${narrowRef(dtype, bits[i]!).toString(16)}`,
          );
    }
  });

  it('narrow: every 4099th float32 bit pattern', () => {
    const n = Math.ceil(2 ** 32 / 4099);
    const bits = new Uint32Array(n);
    for (let i = 0; i < n; i++) bits[i] = (i * 4099) >>> 0;
    const dst = new Uint16Array(n);
    narrowInto(dtype, new Float32Array(bits.buffer), dst);
    let bad = 0;
    for (let i = 0; i < n; i++) if (dst[i] !== narrowRef(dtype, bits[i]!)) bad++;
    expect(bad).toBe(0);
  });

  it('widen: every 16-bit pattern, as the widening table (NaN included)', () => {
    const src = new Uint16Array(65536).map((_, i) => i);
    const dst = new Float32Array(65536);
    widenInto(dtype, src, dst);
    expect(bitsOf(dst)).toEqual(bitsOf(widenTable(dtype)));
  });

  it('narrow with widened and error feedback: as the scalar loop, outputs aliasing inputs', () => {
    const t = widenTable(dtype);
    for (const n of [1, 9, BLOCK + 3]) {
      const src = new Float32Array(randomBits(n, 11 + n).buffer);
      const resIn = new Float32Array(n).map((_, i) => ((i % 5) - 2) * 2 ** -12);
      // The scalar reference: v = src + resIn (float32), q = narrow(v), w = widen(q), resOut = v − w.
      const q = new Uint16Array(n);
      const w = new Float32Array(n);
      const ro = new Float32Array(n);
      const tmp = new Float32Array(1);
      for (let i = 0; i < n; i++) {
        tmp[0] = add32(src[i]!, resIn[i]!);
        q[i] = narrowRef(dtype, bitsOf(tmp)[0]!);
        w[i] = t[q[i]!]!;
        ro[i] = tmp[0] - w[i]!;
      }
      const dst = new Uint16Array(n);
      const a = Float32Array.from(src);
      const r = Float32Array.from(resIn);
      narrowInto(dtype, a, dst, r, r, a); // residual out over residual in, widened over the input
      expect(dst).toEqual(q);
      expect(bitsOf(a)).toEqual(bitsOf(w));
      for (let i = 0; i < n; i++) {
        if (Number.isNaN(ro[i]!)) expect(r[i]).toBeNaN();
        else if (bitsOf(r)[i] !== bitsOf(ro)[i]) expect.fail(`residual ${i}: ${r[i]} ≠ ${ro[i]}`);
      }
    }
  });

  it('sum of widened inputs in the order given, own input narrowed inside the sum', () => {
    const t = widenTable(dtype);
    for (const n of LENGTHS) {
      for (const k of [1, 2, 3, 5]) {
        // Values near 1 and specials, narrowed: the sums meet Inf and NaN too.
        const xs = Array.from({ length: k }, (_, r) => {
          const q = new Uint16Array(n);
          const b = randomBits(n, 1000 * r + n);
          for (let i = 0; i < n; i++) q[i] = narrowRef(dtype, b[i]!);
          return q;
        });
        const ownF32 = new Float32Array(randomBits(n, 77 + n).buffer);
        const own = Uint16Array.from(ownF32, (_, i) => narrowRef(dtype, bitsOf(ownF32)[i]!));
        const at = k > 1 ? 1 : 0;
        const ref = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          let s = 0;
          for (let r = 0; r < k; r++) {
            const v = t[(r === at ? own : xs[r]!)[i]!]!;
            s = r === 0 ? v : add32(s, v);
          }
          ref[i] = s;
        }
        const acc = new Float32Array(n).fill(123);
        sumWidenedInto(
          dtype,
          acc,
          xs.map((x, r) => (r === at ? { narrow: ownF32 } : x)),
        );
        for (let i = 0; i < n; i++) {
          if (Number.isNaN(ref[i]!)) {
            if (!Number.isNaN(acc[i]!)) expect.fail(`n=${n} k=${k} i=${i}: ${acc[i]} is not NaN`);
          } else if (bitsOf(acc)[i] !== bitsOf(ref)[i]) expect.fail(`n=${n} k=${k} i=${i}: ${acc[i]} ≠ ${ref[i]}`);
        }
      }
    }
  });
});

describe('SIMD kernels: a float32 input to a 16-bit sum', () => {
  it('joins as widen(narrow(x)), bit for bit, first or after others (every 4099th pattern, specials)', () => {
    const bits: number[] = specialBits();
    for (let b = 0; b < 2 ** 32; b += 4099) bits.push(b);
    const x = new Float32Array(Uint32Array.from(bits).buffer);
    const n = x.length;
    for (const dtype of [ChunkDtype.Float16, ChunkDtype.BFloat16] as const) {
      const q = new Uint16Array(n);
      const want = new Float32Array(n);
      narrowInto(dtype, x, q);
      widenInto(dtype, q, want);
      const first = new Float32Array(n);
      sumWidenedInto(dtype, first, [{ narrow: x }]);
      const zero = new Uint16Array(n); // +0: x + 0 is x but for -0 (+0) and NaN (kept)
      const later = new Float32Array(n);
      sumWidenedInto(dtype, later, [zero, { narrow: x }]);
      for (let i = 0; i < n; i++) {
        if (bitsOf(first)[i] !== bitsOf(want)[i])
          expect.fail(
            `${ChunkDtype[dtype]} 0x${bits[i]!.toString(16)}: ` +
              `0x${bitsOf(first)[i]!.toString(16)} ≠ 0x${bitsOf(want)[i]!.toString(16)}`,
          );
        const w = add32(0, want[i]!);
        if (!(Object.is(later[i], w) || (Number.isNaN(w) && bitsOf(later)[i] === bitsOf(want)[i]))) {
          expect.fail(`${ChunkDtype[dtype]} 0x${bits[i]!.toString(16)} after +0: ${later[i]} ≠ ${w}`);
        }
      }
    }
  });
});

describe('SIMD kernels: float32 sums', () => {
  it('in rank order, each add rounded to float32, bit for bit; acc may be an input', () => {
    for (const n of LENGTHS) {
      for (const k of [1, 2, 3, 4, 5, 8]) {
        const xs = Array.from({ length: k }, (_, r) => new Float32Array(randomBits(n, 31 * r + n).buffer));
        const ref = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          let s = xs[0]![i]!;
          for (let r = 1; r < k; r++) s = add32(s, xs[r]![i]!);
          ref[i] = s;
        }
        const acc = new Float32Array(n);
        sumF32Into(acc, xs);
        // In place: acc is the last input (the owner's own input at any rank).
        const last = xs[k - 1]!;
        sumF32Into(last, xs);
        for (const got of [acc, last]) {
          for (let i = 0; i < n; i++) {
            if (Number.isNaN(ref[i]!)) {
              if (!Number.isNaN(got[i]!)) expect.fail(`n=${n} k=${k} i=${i}: not NaN`);
            } else if (bitsOf(got)[i] !== bitsOf(ref)[i]) expect.fail(`n=${n} k=${k} i=${i}: ${got[i]} ≠ ${ref[i]}`);
          }
        }
      }
    }
  });

  it('rounds every add: a sum that float64 would keep exact is rounded at each step', () => {
    const acc = new Float32Array(1);
    sumF32Into(acc, [Float32Array.of(1), Float32Array.of(2 ** -24), Float32Array.of(2 ** -24)]);
    expect(acc[0]).toBe(1); // (1 + 2^-24) ties to even: 1, twice
    sumF32Into(acc, [Float32Array.of(2 ** -24), Float32Array.of(2 ** -24), Float32Array.of(1)]);
    expect(acc[0]).toBe(1 + 2 ** -23);
  });
});

/** The checksum as its comment defines it, word by word. */
function hash32Ref(bytes: Uint8Array, zeroFrom: number, zeroTo: number): number {
  const [P1, P2, P3, P4] = [0x9e3779b1, 0x85ebca77, 0xc2b2ae3d, 0x27d4eb2f];
  const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r));
  const padded = new Uint8Array(Math.ceil(bytes.length / 128) * 128);
  padded.set(bytes);
  padded.fill(0, zeroFrom, Math.min(zeroTo, bytes.length));
  const view = new DataView(padded.buffer);
  const lanes = Array.from({ length: 32 }, (_, j) => Math.imul(j + 1, P1));
  for (let w = 0; w < padded.length / 4; w++) {
    const j = w % 32;
    lanes[j] = Math.imul(rotl((lanes[j]! + Math.imul(view.getUint32(w * 4, true), P2)) | 0, 13), P1);
  }
  let h = bytes.length;
  for (const acc of lanes) h = Math.imul(rotl((h + Math.imul(acc, P3)) | 0, 17), P4);
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

describe('SIMD kernels: the checksum', () => {
  const bytesOf = (n: number, seed: number): Uint8Array =>
    new Uint8Array(randomBits(Math.ceil(n / 4), seed).buffer, 0, n);

  it('is its definition, for lengths around the stripe and the block, with and without a zeroed range', () => {
    const hashBlock = BLOCK * 8;
    for (const n of [
      0,
      1,
      3,
      56,
      60,
      64,
      127,
      128,
      129,
      1000,
      hashBlock - 1,
      hashBlock,
      hashBlock + 5,
      3 * hashBlock + 777,
    ]) {
      const b = bytesOf(n, n + 1);
      expect(hash32(b), `${n} bytes`).toBe(hash32Ref(b, 0, 0));
      expect(hash32(b, 56, 60), `${n} bytes, 56..60 zeroed`).toBe(hash32Ref(b, 56, 60));
      if (n > hashBlock + 4)
        expect(hash32(b, hashBlock - 2, hashBlock + 2)).toBe(hash32Ref(b, hashBlock - 2, hashBlock + 2));
    }
  });

  it('gives the known answers (the wire format: a change needs a new chunk version)', () => {
    const b = Uint8Array.from({ length: 300 }, (_, i) => (i * 7 + 3) & 0xff);
    expect([hash32(b), hash32(new Uint8Array(0)), hash32(b, 56, 60)]).toEqual([0x7e91415f, 0x569cf88a, 0x17ba6962]);
  });

  it('reads the zeroed range as zeros, and the bytes it is given in place', () => {
    const b = bytesOf(300, 9);
    const z = Uint8Array.from(b);
    z.fill(0, 56, 60);
    expect(hash32(b, 56, 60)).toBe(hash32(z));
    expect(b).not.toEqual(z); // the caller's bytes are not written
  });

  it('changes with any flipped bit, swapped words, the length, or a zero word moved', () => {
    const b = bytesOf(4096 + 12, 3);
    const h = hash32(b);
    const seen = new Set([h]);
    for (const at of [0, 1, 127, 128, 2000, b.length - 1]) {
      for (let bit = 0; bit < 8; bit++) {
        const c = Uint8Array.from(b);
        c[at]! ^= 1 << bit;
        seen.add(hash32(c));
      }
    }
    expect(seen.size).toBe(1 + 6 * 8);
    const swapped = Uint8Array.from(b);
    swapped.set(b.subarray(0, 4), 4);
    swapped.set(b.subarray(4, 8), 0);
    expect(hash32(swapped)).not.toBe(h);
    expect(hash32(new Uint8Array(5))).not.toBe(hash32(new Uint8Array(4))); // zero padding does not hide the length
  });
});

describe('SIMD kernels: the generated module', () => {
  it('is what scripts/gen-simd-kernels.mjs makes from its WAT', () => {
    const committed = readFileSync(join(ROOT, 'worker', 'collective', 'simd-kernels-wasm.ts'), 'utf8');
    expect(committed).toContain('SIMD_KERNELS_WASM_BASE64');
    // --check exits non-zero (and execFileSync throws) when the file is stale.
    execFileSync(process.execPath, [join(ROOT, 'scripts', 'gen-simd-kernels.mjs'), '--check'], {
      cwd: ROOT,
      stdio: 'pipe',
    });
  });
});
