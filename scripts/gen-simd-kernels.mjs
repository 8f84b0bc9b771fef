#!/usr/bin/env node
/**
 * Generates `worker/collective/simd-kernels-wasm.ts`: the collective's element-wise kernels as a
 * WebAssembly SIMD module (base64), from the WAT text below, assembled with wabt (a devDependency).
 * Run by `npm run build` (it rewrites the file only when its content changes), and
 * `test/unit/collective-simd-kernels.test.ts` checks that the committed file is what this script
 * makes. `--check` exits 1 when the file is stale instead of writing it.
 *
 * Every element kernel processes `n` rounded up to a multiple of 8 elements: the caller's regions
 * are sized in whole blocks of 8, so a tail reads and writes a few elements past `n` in its own
 * scratch memory, and only the first `n` are copied out. The checksum kernel (`hash`) takes bytes,
 * a multiple of its 128-byte stripe (the caller zero-pads).
 *
 * Exactness (checked bit for bit against the scalar JavaScript in the unit tests):
 *  - f32x4.add/sub are IEEE binary32 with round-to-nearest-even and subnormals, the same as
 *    Math.fround of the exact float64 sum or difference of two float32 values;
 *  - binary16 narrowing: normals by integer rebias and one rounding add (as wire-codec's
 *    narrowF16; overflow clamped to 65536 first, which that add takes to Inf), subnormals and
 *    zero by the float add 0.5 + |x| whose rounding is binary16's round-to-nearest-even at 2^-24,
 *    overflow to Inf, NaN as sign | 0x7e00 | top mantissa bits;
 *  - binary16 widening: exact, subnormals as an exact int → float conversion scaled by 2^-24, NaN
 *    as the widening table's 0x7fc00000;
 *  - bfloat16: a rounding add and shift, NaN quieted with its sign and top bits kept;
 *  - quantize (widen∘narrow on float32 lanes, for the owner's own contribution): the two composed,
 *    bit for bit.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import wabtInit from 'wabt';

const OUT = join(dirname(fileURLToPath(import.meta.url)), '..', 'worker', 'collective', 'simd-kernels-wasm.ts');

const splat = (v) => `(v128.const i32x4 ${v} ${v} ${v} ${v})`;

/**
 * binary16 bits but the sign (in i32 lanes, on the stack) of the float32 lanes in local $f; uses
 * $a, $o, $h. Magnitudes from 65536 (0x47800000) up are clamped to it first, which the normal
 * path's rounding add turns into Inf (0x7c00); NaN is selected last. The sign goes on 8 lanes at a
 * time once two halves are packed (`narrowFn`).
 */
const narrowF16 = `
      (local.set $a (v128.and (local.get $f) ${splat('0x7fffffff')}))
      (local.set $o (i32x4.shr_u (local.get $a) (i32.const 13)))
      (local.set $h (i32x4.shr_u
        (i32x4.add (i32x4.sub (i32x4.min_s (local.get $a) ${splat('0x47800000')}) ${splat('0x37fff001')})
                   (v128.and (local.get $o) ${splat('1')}))
        (i32.const 13)))
      (local.set $h (v128.bitselect
        (i32x4.sub (f32x4.add (local.get $a) (v128.const f32x4 0.5 0.5 0.5 0.5)) ${splat('0x3f000000')})
        (local.get $h)
        (i32x4.lt_s (local.get $a) ${splat('0x38800000')})))
      (v128.bitselect
        (v128.or ${splat('0x7e00')} (v128.and (local.get $o) ${splat('0x3ff')}))
        (local.get $h)
        (i32x4.gt_s (local.get $a) ${splat('0x7f800000')}))`;

/** bfloat16 bits (in i32 lanes, on the stack) of the float32 lanes in local $f; uses $a. */
const narrowBf16 = `
      (local.set $a (v128.and (local.get $f) ${splat('0x7fffffff')}))
      (v128.bitselect
        (v128.or (i32x4.shr_u (local.get $f) (i32.const 16)) ${splat('0x40')})
        (i32x4.shr_u
          (i32x4.add (i32x4.add (local.get $f) ${splat('0x7fff')})
                     (v128.and (i32x4.shr_u (local.get $f) (i32.const 16)) ${splat('1')}))
          (i32.const 16))
        (i32x4.gt_s (local.get $a) ${splat('0x7f800000')}))`;

/**
 * float32 lanes (on the stack) of the binary16 bits in the i32 lanes of local $h; uses $o, $e.
 * Normals rebias by an integer add; subnormals and zero are m·2^-24 (an exact int → float
 * conversion and scaling); exponent 31 becomes 255; NaN is the widening table's 0x7fc00000.
 */
const widenF16 =
  `
      (local.set $e (v128.and (local.get $h) ${splat('0x7fff')}))
      (local.set $o (i32x4.add (i32x4.shl (local.get $e) (i32.const 13)) ${splat('0x38000000')}))
      (local.set $o (v128.bitselect
        (f32x4.mul (f32x4.convert_i32x4_s (local.get $e)) ${splat('0x33800000')})
        (local.get $o)
        (i32x4.lt_s (local.get $e) ${splat('0x400')})))
      (local.set $o (v128.or (local.get $o) (v128.and (i32x4.gt_s ` +
  `(local.get $e) ${splat('0x7bff')}) ${splat('0x7f800000')})))
      (local.set $o (v128.or (local.get $o) (i32x4.shl (v128.xor (local.get $h) (local.get $e)) (i32.const 16))))
      (v128.bitselect ${splat('0x7fc00000')} (local.get $o) (i32x4.gt_s (local.get $e) ${splat('0x7c00')}))`;

/** float32 lanes (on the stack) of the bfloat16 bits in the i32 lanes of local $h. */
const widenBf16 = `
      (i32x4.shl (local.get $h) (i32.const 16))`;

/**
 * widen(narrow(x)) of the float32 lanes in local $f, to float32 lanes (on the stack), without the
 * 16-bit value in between (for the owner's own contribution to a sum); uses $a, $o. Bit for bit
 * the two kernels composed: |x| from 65520 (which rounds to 2^16) up is Inf; normals round their
 * mantissa to 10 bits (one add and a mask, the carry running into the exponent); below 2^-14,
 * (|x| + 0.5) − 0.5 rounds to a multiple of 2^-24 as binary16's subnormals do; the sign goes back
 * on; NaN is the widening table's 0x7fc00000.
 */
const quantizeF16 =
  `
      (local.set $a (v128.and (local.get $f) ${splat('0x7fffffff')}))
      (local.set $o (v128.and
        (i32x4.add (i32x4.add (local.get $a) ${splat('0xfff')}) (v128.and ` +
  `(i32x4.shr_u (local.get $a) (i32.const 13)) ${splat('1')}))
        ${splat('0xffffe000')}))
      (local.set $o (v128.bitselect
        (f32x4.sub (f32x4.add (local.get $a) (v128.const f32x4 0.5 0.5 0.5 0.5)) (v128.const f32x4 0.5 0.5 0.5 0.5))
        (local.get $o)
        (i32x4.lt_s (local.get $a) ${splat('0x38800000')})))
      (local.set $o (v128.bitselect ${splat('0x7f800000')} (local.get ` +
  `$o) (i32x4.gt_s (local.get $a) ${splat('0x477fefff')})))
      (local.set $o (v128.or (local.get $o) (v128.and (local.get $f) ${splat('0x80000000')})))
      (v128.bitselect ${splat('0x7fc00000')} (local.get $o) (i32x4.gt_s (local.get $a) ${splat('0x7f800000')}))`;

/**
 * widen(narrow(x)) for bfloat16, as quantizeF16: the rounding add and a mask; NaN quieted with its sign and top bits
 * kept.
 */
const quantizeBf16 =
  `
      (v128.bitselect
        (v128.or (v128.and (local.get $f) ${splat('0xffff0000')}) ${splat('0x400000')})
        (v128.and
          (i32x4.add (i32x4.add (local.get $f) ${splat('0x7fff')}) (v128.and ` +
  `(i32x4.shr_u (local.get $f) (i32.const 16)) ${splat('1')}))
          ${splat('0xffff0000')})
        (i32x4.gt_s (v128.and (local.get $f) ${splat('0x7fffffff')}) ${splat('0x7f800000')}))`;

const LOCALS =
  '(local $end i32) (local $f v128) (local $a v128) (local $h v128) (local $o v128) (local $e v128) (local $lo v128)';

/**
 * Moves a function's v128 constants into locals set once before its loop: V8 builds a v128.const
 * from immediates each time it is used (several instructions), which made the narrowing and
 * widening kernels about a fifth slower. `fn` is a whole (func …) whose locals end with LOCALS.
 */
function hoistConstants(fn) {
  const names = new Map();
  const body = fn.replace(/\(v128\.const [^()]*\)/g, (c) => {
    if (!names.has(c)) names.set(c, `$k${names.size}`);
    return `(local.get ${names.get(c)})`;
  });
  const i = body.indexOf(LOCALS);
  if (i < 0) throw new Error('hoistConstants: a kernel without the LOCALS declarations');
  const at = i + LOCALS.length;
  const decls = [...names.values()].map((k) => `(local ${k} v128)`).join(' ');
  const inits = [...names].map(([c, k]) => `(local.set ${k} ${c})`).join('\n    ');
  return `${body.slice(0, at)} ${decls}\n    ${inits}${body.slice(at)}`;
}

/**
 * A loop while `$p` is below `$end`: `body`, then each pointer of `strides` (`$p` first) advances by
 * its byte count. Element kernels do 8 elements a pass: `$p` 32 bytes (float32), a 16-bit side 16.
 */
function loop(body, strides) {
  const advance = Object.entries(strides).map(
    ([r, bytes]) => `(local.set ${r} (i32.add (local.get ${r}) (i32.const ${bytes})))`,
  );
  return `
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      ${body}
      ${advance.join('\n      ')}
      (br $next)))`;
}

const endOf =
  `(local.set $end (i32.add (local.get $p) (i32.shl (i32.and (i32.add ` +
  `(local.get $n) (i32.const 7)) (i32.const -8)) (i32.const 2))))`;

/**
 * narrow(src f32 at $p, dst u16 at $q, n). With `signApart`, `lanes` leaves out the sign, which is
 * put on the 8 packed 16-bit lanes at once (bit 31 of each input, shifted down and packed).
 */
function narrowFn(name, lanes, signApart = false) {
  const pack = signApart
    ? `(v128.or (i16x8.narrow_i32x4_u (local.get $lo) ${lanes})
          (v128.and (i16x8.narrow_i32x4_u (i32x4.shr_u (local.get $e) ` +
      `(i32.const 16)) (i32x4.shr_u (local.get $f) (i32.const 16)))
                    (v128.const i16x8 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000 0x8000)))`
    : `(i16x8.narrow_i32x4_u (local.get $lo) ${lanes})`;
  return `
  (func (export "${name}") (param $p i32) (param $q i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (local.set $f (local.tee $e (v128.load (local.get $p))))
      (local.set $lo ${lanes})
      (local.set $f (v128.load offset=16 (local.get $p)))
      (v128.store (local.get $q) ${pack})`,
      { $p: 32, $q: 16 },
    )})`;
}

/** widen(src u16 at $q, dst f32 at $p, n). */
function widenFn(name, lanes) {
  return `
  (func (export "${name}") (param $q i32) (param $p i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (local.set $h (v128.load16x4_u (local.get $q)))
      (v128.store (local.get $p) ${lanes})
      (local.set $h (v128.load16x4_u offset=8 (local.get $q)))
      (v128.store offset=16 (local.get $p) ${lanes})`,
      { $p: 32, $q: 16 },
    )})`;
}

/** addWidened(acc f32 at $p, src u16 at $q, n): acc += widen(src), float32 adds. */
function addWidenedFn(name, lanes) {
  return `
  (func (export "${name}") (param $p i32) (param $q i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (local.set $h (v128.load16x4_u (local.get $q)))
      (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p)) ${lanes}))
      (local.set $h (v128.load16x4_u offset=8 (local.get $q)))
      (v128.store offset=16 (local.get $p) (f32x4.add (v128.load offset=16 (local.get $p)) ${lanes}))`,
      { $p: 32, $q: 16 },
    )})`;
}

/** quantize(src f32 at $q, dst f32 at $p, n): dst = widen(narrow(src)). */
function quantizeFn(name, lanes) {
  return `
  (func (export "${name}") (param $q i32) (param $p i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (local.set $f (v128.load (local.get $q)))
      (v128.store (local.get $p) ${lanes})
      (local.set $f (v128.load offset=16 (local.get $q)))
      (v128.store offset=16 (local.get $p) ${lanes})`,
      { $p: 32, $q: 32 },
    )})`;
}

/** addQuantized(acc f32 at $p, src f32 at $q, n): acc += widen(narrow(src)), float32 adds. */
function addQuantizedFn(name, lanes) {
  return `
  (func (export "${name}") (param $p i32) (param $q i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (local.set $f (v128.load (local.get $q)))
      (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p)) ${lanes}))
      (local.set $f (v128.load offset=16 (local.get $q)))
      (v128.store offset=16 (local.get $p) (f32x4.add (v128.load offset=16 (local.get $p)) ${lanes}))`,
      { $p: 32, $q: 32 },
    )})`;
}

/** A float32 binary op: out = a op b, 8 at a time ($p: out, $q: a, $r: b). */
function binaryF32Fn(name, op) {
  return `
  (func (export "${name}") (param $p i32) (param $q i32) (param $r i32) (param $n i32) ${LOCALS}
    ${endOf}
    ${loop(
      `
      (v128.store (local.get $p) (${op} (v128.load (local.get $q)) (v128.load (local.get $r))))
      (v128.store offset=16 (local.get $p) (${op} (v128.load offset=16 ` +
        `(local.get $q)) (v128.load offset=16 (local.get $r))))`,
      { $p: 32, $q: 32, $r: 32 },
    )})`;
}

/**
 * hash(state, p, n): the checksum's rounds (see `hash32` in simd-kernels.ts) over `n` bytes at `p`
 * (a multiple of 128), continuing the 32 u32 lane accumulators at `state` (128 bytes). Each 128-byte
 * stripe is 32 little-endian u32 words, word j going to lane j: acc = rotl(acc + word·P2, 13)·P1,
 * xxHash32's round. Eight v128 accumulators are independent chains, so the multiplies' latency
 * overlaps (four run at about two thirds of the speed).
 */
const HASH_P1 = '0x9E3779B1';
const HASH_P2 = '0x85EBCA77';
const ACCS = ['$a0', '$a1', '$a2', '$a3', '$a4', '$a5', '$a6', '$a7'];
const hashRound = (acc, off) =>
  `
      (local.set $t (i32x4.add (local.get ${acc}) (i32x4.mul ` +
  `(v128.load offset=${off} (local.get $p)) ${splat(HASH_P2)})))
      (local.set ${acc} (i32x4.mul (v128.or (i32x4.shl (local.get $t) (i32.const ` +
  `13)) (i32x4.shr_u (local.get $t) (i32.const 19))) ${splat(HASH_P1)}))`;
const hashFn =
  `
  (func (export "hash") (param $s i32) (param $p i32) (param $n i32) (local ` +
  `$t v128) ${ACCS.map((a) => `(local ${a} v128)`).join(' ')} ${LOCALS}
    ${ACCS.map((a, i) => `(local.set ${a} (v128.load offset=${i * 16} (local.get $s)))`).join('\n    ')}
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    ${loop(ACCS.map((a, i) => hashRound(a, i * 16)).join(''), { $p: 128 })}
    ${ACCS.map((a, i) => `(v128.store offset=${i * 16} (local.get $s) (local.get ${a}))`).join('\n    ')})`;

export const WAT = `(module
  (memory (export "memory") 4)
  ${[
    narrowFn('narrowF16', narrowF16, true),
    narrowFn('narrowBf16', narrowBf16),
    widenFn('widenF16', widenF16),
    widenFn('widenBf16', widenBf16),
    addWidenedFn('addWidenedF16', widenF16),
    addWidenedFn('addWidenedBf16', widenBf16),
    quantizeFn('quantizeF16', quantizeF16),
    quantizeFn('quantizeBf16', quantizeBf16),
    addQuantizedFn('addQuantizedF16', quantizeF16),
    addQuantizedFn('addQuantizedBf16', quantizeBf16),
    binaryF32Fn('addF32', 'f32x4.add'),
    binaryF32Fn('subF32', 'f32x4.sub'),
    hashFn,
  ]
    .map(hoistConstants)
    .join('\n')}
)
`;

export async function buildModuleSource() {
  const wabt = await wabtInit();
  const mod = wabt.parseWat('simd-kernels.wat', WAT, { simd: true });
  mod.validate();
  const { buffer } = mod.toBinary({ log: false, write_debug_names: false });
  mod.destroy();
  const b64 = Buffer.from(buffer).toString('base64');
  const lines = b64.match(/.{1,100}/g) ?? [];
  return `// Generated by scripts/gen-simd-kernels.mjs from the WAT text in it; do not edit.
// Regenerate with \`node scripts/gen-simd-kernels.mjs\` (run by \`npm run build\`).
/** The collective's WebAssembly SIMD kernels (${buffer.length} bytes), base64. */
export const SIMD_KERNELS_WASM_BASE64 =
${lines.map((l) => `  '${l}'`).join(' +\n')};
`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const src = await buildModuleSource();
  let old = '';
  try {
    old = readFileSync(OUT, 'utf8');
  } catch {
    /* first run */
  }
  if (process.argv.includes('--check')) {
    if (old !== src) {
      process.stderr.write(`${OUT} is stale: run node scripts/gen-simd-kernels.mjs\n`);
      process.exit(1);
    }
  } else if (old !== src) {
    writeFileSync(OUT, src);
    process.stdout.write(`wrote ${OUT}\n`);
  }
}
