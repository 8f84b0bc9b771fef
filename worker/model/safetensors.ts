/**
 * safetensors reading and writing (https://github.com/huggingface/safetensors): an 8-byte
 * little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]},
 * "__metadata__"?: {string: string}}`, then the tensor bytes; offsets are relative to the end of
 * the header. TensorFlow.js computes in float32, so F32, F16 and BF16 are widened to Float32Array on
 * read and narrowed on write. Reading streams tensor by tensor through a file handle: each tensor's
 * byte range is read straight into the buffer that becomes (or is widened into) its Float32Array.
 * Typed arrays are little-endian on every platform Node supports in practice (x86-64, arm64).
 */
import { open, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelLoadError } from '../../common/errors.js';
import {
  openForRead,
  prod,
  readExactly,
  readHeaderFrom,
  readSafetensorsHeader,
  type TensorInfo,
} from '../../common/safetensors-header.js';
import { f16ToF32Table, f32BitsToBf16, f32BitsToF16 } from '../float16.js';

export { readSafetensorsHeader, type SafetensorsHeader, type TensorInfo } from '../../common/safetensors-header.js';

export const FloatDtype = { F32: 'F32', F16: 'F16', BF16: 'BF16' } as const;
export type FloatDtype = keyof typeof FloatDtype;

export interface NamedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

// ---------------------------------------------------------------------------------------------
// Float conversions.

/** Widens IEEE half-precision bit patterns to float32. */
export function f16ToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const t = f16ToF32Table();
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]!]!;
  return out;
}

/** Widens bfloat16 bit patterns to float32: bf16 is the top half of a float32. */
export function bf16ToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const o = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) o[i] = src[i]! << 16;
  return out;
}

/** Narrows float32 to bfloat16 with round-to-nearest-even; NaN stays a (quiet) NaN. */
export function f32ToBf16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) out[i] = f32BitsToBf16(s[i]!);
  return out;
}

/** Narrows float32 to IEEE half-precision with round-to-nearest-even, subnormals and infinities. */
export function f32ToF16(src: Float32Array, out = new Uint16Array(src.length)): Uint16Array {
  const s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) out[i] = f32BitsToF16(s[i]!);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading.

/** Reads one tensor's data from an open handle, widened to float32. */
async function readTensorFrom(fh: FileHandle, info: TensorInfo): Promise<Float32Array> {
  const n = prod(info.shape);
  switch (info.dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      await readExactly(fh, info.file, new Uint8Array(out.buffer), info.begin, info.name);
      return out;
    }
    case 'F16':
    case 'BF16': {
      const raw = new Uint16Array(n);
      await readExactly(fh, info.file, new Uint8Array(raw.buffer), info.begin, info.name);
      return info.dtype === 'F16' ? f16ToF32(raw) : bf16ToF32(raw);
    }
    default:
      throw new ModelLoadError(info.file, `dtype ${info.dtype} is not supported (supported: F32, F16, BF16)`, {
        tensor: info.name,
      });
  }
}

/** Reads every tensor of one safetensors file (convenience for small files and tests). */
export async function readSafetensors(
  file: string,
): Promise<{ tensors: NamedTensor[]; metadata: Record<string, string> }> {
  const fh = await openForRead(file);
  try {
    const header = await readHeaderFrom(fh, file);
    const tensors: NamedTensor[] = [];
    for (const info of header.tensors)
      tensors.push({ name: info.name, shape: [...info.shape], data: await readTensorFrom(fh, info) });
    return { tensors, metadata: header.metadata };
  } finally {
    await fh.close();
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Lists the tensors of a model directory without reading their data: `model.safetensors`, or the
 * shards named by `model.safetensors.index.json`. With an index, its `weight_map` is authoritative:
 * each tensor must be in the shard it names.
 */
export async function listModelTensors(dir: string): Promise<Map<string, TensorInfo>> {
  const indexPath = join(dir, INDEX_FILE);
  const out = new Map<string, TensorInfo>();
  if (await exists(indexPath)) {
    let index: unknown;
    try {
      index = JSON.parse(await readFile(indexPath, 'utf8'));
    } catch (e) {
      throw new ModelLoadError(indexPath, `invalid JSON: ${(e as Error).message}`, { cause: e });
    }
    const wm = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof wm !== 'object' || wm === null || Array.isArray(wm))
      throw new ModelLoadError(indexPath, 'weight_map missing or not an object');
    const byShard = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
        throw new ModelLoadError(indexPath, `weight_map entry is not a shard file name: ${JSON.stringify(shard)}`, {
          tensor: name,
        });
      }
      const names = byShard.get(shard) ?? [];
      names.push(name);
      byShard.set(shard, names);
    }
    for (const [shard, names] of byShard) {
      const file = join(dir, shard);
      const header = await readSafetensorsHeader(file);
      const inShard = new Map(header.tensors.map((t) => [t.name, t]));
      for (const name of names) {
        const info = inShard.get(name);
        if (!info)
          throw new ModelLoadError(file, `tensor listed in ${INDEX_FILE} is missing from this shard`, { tensor: name });
        out.set(name, info);
      }
    }
    return out;
  }
  const single = join(dir, SINGLE_FILE);
  if (!(await exists(single))) throw new ModelLoadError(dir, `neither ${SINGLE_FILE} nor ${INDEX_FILE} found`);
  for (const t of (await readSafetensorsHeader(single)).tensors) out.set(t.name, t);
  return out;
}

/**
 * Streams the named tensors of a model directory (all when `names` is absent), widened to float32,
 * in file order, each whole: `readModelTensorChunks` put together. A name that the model does not
 * have is a ModelLoadError naming it.
 */
export async function* readModelTensors(dir: string, names?: Iterable<string>): AsyncGenerator<NamedTensor> {
  let cur: NamedTensor | undefined;
  for await (const c of readModelTensorChunks(dir, names)) {
    if (c.start === 0) {
      // A tensor's first chunk: the one before is complete.
      if (cur) yield cur;
      cur = { name: c.info.name, shape: [...c.info.shape], data: new Float32Array(prod(c.info.shape)) };
    }
    cur!.data.set(c.data, c.start);
  }
  if (cur) yield cur;
}

/** A piece of one tensor's data, widened to float32: whole rows of its last axis. */
export interface TensorChunk {
  readonly info: TensorInfo;
  /** Index of the chunk's first element in the tensor (row-major). */
  readonly start: number;
  /** The values; a view of a scratch buffer, valid only until the next chunk is requested. */
  readonly data: Float32Array;
}

/** @default 1M elements (4 MB of float32) per chunk: scratch memory, not model memory */
export const DEFAULT_CHUNK_ELEMS = 1024 * 1024;

/** Elements in one chunk of `info`: whole rows of the last axis, about `chunkElems` of them. */
function chunkSizeOf(info: TensorInfo, chunkElems: number): number {
  const n = prod(info.shape);
  const row = info.shape.length >= 2 ? info.shape[info.shape.length - 1]! : Math.max(1, n);
  return Math.min(Math.max(1, n), Math.max(1, Math.floor(chunkElems / Math.max(1, row))) * Math.max(1, row));
}

/**
 * Streams the named tensors of a model directory (all when `names` is absent) as chunks of whole
 * rows, widened to float32, in file order. Only two scratch buffers of about `chunkElems`
 * elements are allocated, whatever the model's size: this is the loader's path, so that peak
 * memory is the model's float32 size plus a few megabytes. `listing` (from `listModelTensors`)
 * saves reading the headers again.
 */
export async function* readModelTensorChunks(
  dir: string,
  names?: Iterable<string>,
  options: { chunkElems?: number; listing?: ReadonlyMap<string, TensorInfo> } = {},
): AsyncGenerator<TensorChunk> {
  const all = options.listing ?? (await listModelTensors(dir));
  const wanted = await selectTensors(dir, all, names);
  const chunkElems = options.chunkElems ?? DEFAULT_CHUNK_ELEMS;
  for (const info of wanted) {
    if (!(info.dtype in FloatDtype)) {
      throw new ModelLoadError(info.file, `dtype ${info.dtype} is not supported (supported: F32, F16, BF16)`, {
        tensor: info.name,
      });
    }
  }
  const maxChunk = wanted.reduce((m, info) => Math.max(m, chunkSizeOf(info, chunkElems)), 1);
  const f32 = new Float32Array(maxChunk);
  const u16 = new Uint16Array(maxChunk);
  let fh: FileHandle | undefined;
  let openFile = '';
  try {
    for (const info of wanted) {
      if (info.file !== openFile) {
        await fh?.close();
        fh = undefined;
        fh = await openForRead(info.file);
        openFile = info.file;
      }
      const n = prod(info.shape);
      const size = chunkSizeOf(info, chunkElems);
      const bytes = info.dtype === 'F32' ? 4 : 2;
      for (let start = 0; start < n || (n === 0 && start === 0); start += size) {
        const count = Math.min(size, n - start);
        const out = f32.subarray(0, count);
        const pos = info.begin + start * bytes;
        if (info.dtype === 'F32')
          await readExactly(fh!, info.file, new Uint8Array(out.buffer, 0, count * 4), pos, info.name);
        else {
          const raw = u16.subarray(0, count);
          await readExactly(fh!, info.file, new Uint8Array(raw.buffer, 0, count * 2), pos, info.name);
          if (info.dtype === 'F16') f16ToF32(raw, out);
          else bf16ToF32(raw, out);
        }
        yield { info, start, data: out };
        if (n === 0) break;
      }
    }
  } finally {
    await fh?.close();
  }
}

/** The `TensorInfo`s of `names` (all when absent) in file order; an unknown name is an error. */
async function selectTensors(
  dir: string,
  all: ReadonlyMap<string, TensorInfo>,
  names: Iterable<string> | undefined,
): Promise<TensorInfo[]> {
  let wanted: TensorInfo[];
  if (names === undefined) wanted = [...all.values()];
  else {
    wanted = [];
    for (const name of names) {
      const info = all.get(name);
      if (!info) {
        const where = (await exists(join(dir, INDEX_FILE))) ? join(dir, INDEX_FILE) : join(dir, SINGLE_FILE);
        throw new ModelLoadError(where, 'tensor not found', { tensor: name });
      }
      wanted.push(info);
    }
  }
  return wanted.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.begin - b.begin));
}

// ---------------------------------------------------------------------------------------------
// Writing.

export interface WriteSafetensorsOptions {
  /** @default 'F32' */
  dtype?: FloatDtype;
  /** String key/values stored under `__metadata__` (HF writes `{"format": "pt"}`). */
  metadata?: Record<string, string>;
}

const DTYPE_SIZE: Record<FloatDtype, number> = { F32: 4, F16: 2, BF16: 2 };

/** Writes all of `bytes`, looping over short writes. */
async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.byteLength - done);
    done += bytesWritten;
  }
}

function encodeTensor(data: Float32Array, dtype: FloatDtype): Uint8Array {
  switch (dtype) {
    case 'F32':
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    case 'F16': {
      const h = f32ToF16(data);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
    case 'BF16': {
      const h = f32ToBf16(data);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
  }
}

/**
 * Writes tensors to a safetensors file, sorted by name as HF's serializer does, the header padded
 * with spaces to a multiple of 8 bytes. Writes `path + '.tmp'`, syncs, then renames, so a reader
 * never sees a partial file.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly NamedTensor[],
  options: WriteSafetensorsOptions = {},
): Promise<void> {
  const dtype = options.dtype ?? 'F32';
  const byName = new Map<string, Float32Array>();
  for (const t of tensors) {
    if (byName.has(t.name)) throw new Error(`writeSafetensors: duplicate tensor ${t.name}`);
    if (prod(t.shape) !== t.data.length) {
      throw new Error(
        `writeSafetensors: tensor ${t.name} has ${t.data.length} values for shape [${t.shape.join(', ')}]`,
      );
    }
    byName.set(t.name, t.data);
  }
  await writeSafetensorsStreaming(
    path,
    tensors.map((t) => ({ name: t.name, shape: t.shape, dtype })),
    (name) => byName.get(name)!,
    options.metadata,
  );
}

/** One tensor of a file written by `writeSafetensorsStreaming`: its data is asked for when written. */
export interface TensorToWrite {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: FloatDtype;
}

/** Bytes a tensor takes in the file. */
export function tensorBytes(t: Pick<TensorToWrite, 'shape' | 'dtype'>): number {
  return prod(t.shape) * DTYPE_SIZE[t.dtype];
}

/**
 * Writes a safetensors file tensor by tensor: the header comes from names, shapes and dtypes
 * alone, then `data(name)` is called for one tensor at a time and narrowed to its own dtype, so
 * only one tensor's values need to be in memory. Sorted by name, header padded to 8 bytes,
 * written to `path + '.tmp'`, synced and renamed, like `writeSafetensors`.
 */
export async function writeSafetensorsStreaming(
  path: string,
  tensors: readonly TensorToWrite[],
  data: (name: string) => Float32Array | Promise<Float32Array>,
  metadata?: Record<string, string>,
): Promise<void> {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header['__metadata__'] = metadata;
  let offset = 0;
  for (const t of sorted) {
    if (t.name in header) throw new Error(`writeSafetensors: duplicate tensor ${t.name}`);
    const bytes = tensorBytes(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(headerBytes.length / 8) * 8;
  if (padded !== headerBytes.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(headerBytes);
    headerBytes = p;
  }
  const lenBuf = new Uint8Array(8);
  new DataView(lenBuf.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  const tmp = path + '.tmp';
  const fh = await open(tmp, 'w');
  try {
    await writeAll(fh, lenBuf);
    await writeAll(fh, headerBytes);
    for (const t of sorted) {
      const values = await data(t.name);
      if (values.length !== prod(t.shape)) {
        throw new Error(
          `writeSafetensors: tensor ${t.name} has ${values.length} values for shape [${t.shape.join(', ')}]`,
        );
      }
      await writeAll(fh, encodeTensor(values, t.dtype));
    }
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await rename(tmp, path);
}
