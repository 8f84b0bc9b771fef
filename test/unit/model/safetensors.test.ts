/** safetensors reading, writing, dtype conversions, and refusal of malformed files. */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../../../common/errors.js';
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  listModelTensors,
  readModelTensors,
  readSafetensors,
  writeSafetensors,
  type FloatDtype,
  type NamedTensor,
} from '../../../worker/model/safetensors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const bits16 = (x: number, f: (a: Float32Array) => Uint16Array): number => f(Float32Array.of(x))[0]!;

describe('float conversions', () => {
  it('narrows to F16 with round-to-nearest-even, subnormals and infinities', () => {
    const h = (x: number): number => bits16(x, (a) => f32ToF16(a));
    expect(h(1)).toBe(0x3c00);
    expect(h(-2)).toBe(0xc000);
    expect(h(65504)).toBe(0x7bff);
    expect(h(65519)).toBe(0x7bff); // below the midpoint to 65536
    expect(h(65520)).toBe(0x7c00); // the midpoint rounds to even: infinity
    expect(h(Infinity)).toBe(0x7c00);
    expect(h(-Infinity)).toBe(0xfc00);
    expect(h(NaN) & 0x7c00).toBe(0x7c00);
    expect(h(NaN) & 0x3ff).not.toBe(0);
    expect(h(-0)).toBe(0x8000);
    expect(h(1 + 2 ** -11)).toBe(0x3c00); // tie, even stays
    expect(h(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, odd rounds up
    expect(h(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(h(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(h(2 ** -25)).toBe(0x0000); // tie with zero: even
    expect(h(3 * 2 ** -26)).toBe(0x0001);
    expect(h(1.5 * 2 ** -24)).toBe(0x0002); // subnormal tie, odd rounds up
    expect(h(2.5 * 2 ** -24)).toBe(0x0002); // subnormal tie, even stays
    expect(h(2 ** -14)).toBe(0x0400); // smallest normal
    expect(h(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up from the subnormal range into the normals
    expect(h(1e-10)).toBe(0);
  });

  it('widens every F16 value and round-trips them', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const wide = f16ToF32(all);
    expect(wide[0x3c00]).toBe(1);
    expect(wide[0x0001]).toBe(2 ** -24);
    expect(wide[0x7bff]).toBe(65504);
    expect(wide[0xfc00]).toBe(-Infinity);
    const back = f32ToF16(wide);
    for (let i = 0; i < 65536; i++) {
      const isNaN16 = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (isNaN16) expect(Number.isNaN(wide[i])).toBe(true);
      else if (back[i] !== i) throw new Error(`f16 ${i.toString(16)} -> ${wide[i]} -> ${back[i]!.toString(16)}`);
    }
  });

  it('narrows to BF16 with round-to-nearest-even', () => {
    const b = (x: number): number => bits16(x, (a) => f32ToBf16(a));
    expect(b(1)).toBe(0x3f80);
    expect(b(1 + 2 ** -8)).toBe(0x3f80); // tie, even stays
    expect(b(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie, odd rounds up
    expect(b(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(b(3.4028234663852886e38)).toBe(0x7f80); // max float rounds to infinity
    expect(b(-Infinity)).toBe(0xff80);
    expect(b(NaN) & 0x7f80).toBe(0x7f80);
    expect(b(NaN) & 0x7f).not.toBe(0);
    expect(bf16ToF32(Uint16Array.of(0x3f80, 0xc040))).toEqual(Float32Array.of(1, -3));
  });
});

describe('writeSafetensors / readSafetensors', () => {
  const tensors: NamedTensor[] = [
    { name: 'z.weight', shape: [2, 3], data: Float32Array.of(1, -2, 3.5, 0.1, 1e-3, 65504) },
    { name: 'a.bias', shape: [3], data: Float32Array.of(0, -0.25, 7) },
    { name: 'scalar', shape: [], data: Float32Array.of(42) },
  ];

  it.each<FloatDtype>(['F32', 'F16', 'BF16'])('round-trips %s', async (dtype) => {
    const file = join(dir, `rt-${dtype}.safetensors`);
    await writeSafetensors(file, tensors, { dtype, metadata: { format: 'pt' } });
    expect((await readdir(dir)).some((f) => f.endsWith('.tmp'))).toBe(false);
    const raw = await readFile(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets: number[] }>;
    expect(Object.keys(header)).toEqual(['__metadata__', 'a.bias', 'scalar', 'z.weight']);
    expect(header['a.bias']!.data_offsets[0]).toBe(0);
    const got = await readSafetensors(file);
    expect(got.metadata).toEqual({ format: 'pt' });
    for (const t of tensors) {
      const r = got.tensors.find((x) => x.name === t.name)!;
      expect(r.shape).toEqual(t.shape);
      const want =
        dtype === 'F32' ? t.data : dtype === 'F16' ? f16ToF32(f32ToF16(t.data)) : bf16ToF32(f32ToBf16(t.data));
      expect(r.data).toEqual(want);
    }
  });

  it('reads a sharded model through its index and lists tensors without data', async () => {
    const m = join(dir, 'sharded');
    await rm(m, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(m));
    await writeSafetensors(join(m, 'model-00001-of-00002.safetensors'), [tensors[0]!], { dtype: 'BF16' });
    await writeSafetensors(join(m, 'model-00002-of-00002.safetensors'), [tensors[1]!, tensors[2]!]);
    const weightMap = {
      'z.weight': 'model-00001-of-00002.safetensors',
      'a.bias': 'model-00002-of-00002.safetensors',
      scalar: 'model-00002-of-00002.safetensors',
    };
    await writeFile(join(m, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const list = await listModelTensors(m);
    expect([...list.keys()].sort()).toEqual(['a.bias', 'scalar', 'z.weight']);
    expect(list.get('z.weight')).toMatchObject({ dtype: 'BF16', shape: [2, 3] });
    const names: string[] = [];
    for await (const t of readModelTensors(m, ['a.bias', 'z.weight'])) names.push(t.name);
    expect(names.sort()).toEqual(['a.bias', 'z.weight']);
    await expect(async () => {
      for await (const t of readModelTensors(m, ['nope'])) void t;
    }).rejects.toThrow(/model\.safetensors\.index\.json \(tensor nope\): tensor not found/);
  });
});

/** A safetensors file from a header (object or raw text), data bytes and an optional length field. */
async function craft(name: string, header: unknown, dataBytes: number, lengthField?: bigint): Promise<string> {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthField ?? BigInt(h.length));
  const file = join(dir, name);
  await writeFile(file, Buffer.concat([len, h, Buffer.alloc(dataBytes)]));
  return file;
}

describe('malformed files are refused with a ModelLoadError naming the file', () => {
  const t = (offsets: [number, number], shape = [2], dtype = 'F32'): Record<string, unknown> => ({
    dtype,
    shape,
    data_offsets: offsets,
  });
  const cases: Array<[string, () => Promise<string>, RegExp]> = [
    [
      'shorter than the length field',
      async () => {
        const f = join(dir, 'short.safetensors');
        await writeFile(f, Buffer.alloc(5));
        return f;
      },
      /truncated/,
    ],
    [
      'header length beyond the file',
      () => craft('hlen.safetensors', { a: t([0, 8]) }, 8, 10_000n),
      /header length 10000 exceeds file size/,
    ],
    ['absurd header length', () => craft('hbig.safetensors', {}, 0, 1n << 40n), /invalid header length/],
    ['header not JSON', () => craft('json.safetensors', '{"a": [', 0), /not valid JSON/],
    ['header not an object', () => craft('array.safetensors', '[1, 2, 3]', 0), /not a JSON object/],
    [
      'unknown dtype',
      () => craft('dtype.safetensors', { a: t([0, 8], [2], 'F33') }, 8),
      /tensor a.*unknown dtype "F33"/,
    ],
    [
      'byte size not matching the shape',
      () => craft('size.safetensors', { a: t([0, 12], [2]) }, 12),
      /tensor a.*byte size 12 does not match shape \[2\]/,
    ],
    ['data truncated', () => craft('trunc.safetensors', { a: t([0, 8]), b: t([8, 16]) }, 12), /tensor b.*truncated/],
    ['overlapping tensors', () => craft('overlap.safetensors', { a: t([0, 8]), b: t([4, 12]) }, 12), /overlaps/],
    ['a gap between tensors', () => craft('gap.safetensors', { a: t([0, 8]), b: t([12, 20]) }, 20), /gap/],
    ['trailing bytes', () => craft('trail.safetensors', { a: t([0, 8]) }, 16), /8 bytes after the last tensor/],
    [
      'bad shape',
      () => craft('shape.safetensors', { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, 0),
      /shape must be/,
    ],
  ];

  it.each(cases)('%s', async (_what, make, message) => {
    const file = await make();
    const err = await readSafetensors(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as ModelLoadError).file).toBe(file);
    expect((err as Error).message).toContain(file);
    expect((err as Error).message).toMatch(message);
  });

  it('an unsupported dtype names the tensor when its data is read', async () => {
    const file = await craft('i64.safetensors', { ids: t([0, 16], [2], 'I64') }, 16);
    const err = await readSafetensors(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(/i64\.safetensors \(tensor ids\): dtype I64 is not supported/);
  });

  it('a tensor missing from its shard, per the index', async () => {
    const m = join(dir, 'badindex');
    await import('node:fs/promises').then((fs) => fs.mkdir(m, { recursive: true }));
    await writeSafetensors(join(m, 'model-1.safetensors'), [{ name: 'a', shape: [1], data: Float32Array.of(1) }]);
    await writeFile(
      join(m, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: { a: 'model-1.safetensors', b: 'model-1.safetensors' } }),
    );
    const err = await listModelTensors(m).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(
      /model-1\.safetensors \(tensor b\): tensor listed in model\.safetensors\.index\.json is missing/,
    );
  });

  it('a shard the index names that does not exist', async () => {
    const m = join(dir, 'noshard');
    await import('node:fs/promises').then((fs) => fs.mkdir(m, { recursive: true }));
    await writeFile(
      join(m, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: { a: 'model-9.safetensors' } }),
    );
    const err = await listModelTensors(m).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(/model-9\.safetensors: no such file/);
  });
});
