/**
 * Reading and validating a safetensors header (https://github.com/huggingface/safetensors): an
 * 8-byte little-endian header length N, then N bytes of JSON `{name: {dtype, shape, data_offsets:
 * [begin, end]}, "__metadata__"?: {string: string}}`. Shared by the worker's tensor reading
 * (worker/model/safetensors.ts) and the coordinator's checks of a file's shapes before it accepts
 * a job (LinguaLIFT's `alignment.from`).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { ModelLoadError } from './errors.js';

/** Bytes per element of every dtype the format defines (used to validate sizes of any tensor). */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/** A tensor's place in a file, without its data. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** The file holding it. */
  readonly file: string;
  /** Absolute byte offsets in `file`, [begin, end). */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
}

/** Refuse headers above this size (the reference implementation's limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** The number of elements of a shape. */
export function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Reads exactly `length` bytes at `position` into `into`, looping over short reads. */
export async function readExactly(
  fh: FileHandle,
  file: string,
  into: Uint8Array,
  position: number,
  tensor?: string,
): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const { bytesRead } = await fh.read(into, done, into.byteLength - done, position + done);
    if (bytesRead === 0) throw new ModelLoadError(file, 'file is truncated', tensor === undefined ? {} : { tensor });
    done += bytesRead;
  }
}

/** Parses and validates the header of an open safetensors file. */
export async function readHeaderFrom(fh: FileHandle, file: string): Promise<SafetensorsHeader> {
  const size = (await fh.stat()).size;
  if (size < 8) throw new ModelLoadError(file, `file is truncated: ${size} bytes, no header length`);
  const lenBuf = new Uint8Array(8);
  await readExactly(fh, file, lenBuf, 0);
  const n = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
  if (n < 2 || n > MAX_HEADER_BYTES) throw new ModelLoadError(file, `invalid header length ${n}`);
  if (8 + n > size) throw new ModelLoadError(file, `file is truncated: header length ${n} exceeds file size ${size}`);
  const headerBytes = new Uint8Array(n);
  await readExactly(fh, file, headerBytes, 8);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new ModelLoadError(file, `header is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new ModelLoadError(file, 'header is not a JSON object');

  const dataStart = 8 + n;
  const dataLen = size - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v))
        throw new ModelLoadError(file, '__metadata__ must be an object');
      for (const [k, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== 'string') throw new ModelLoadError(file, `__metadata__.${k} must be a string`);
        metadata[k] = mv;
      }
      continue;
    }
    const bad = (msg: string): never => {
      throw new ModelLoadError(file, msg, { tensor: name });
    };
    if (typeof v !== 'object' || v === null) bad('entry is not an object');
    const e = v as Record<string, unknown>;
    const dtype = e['dtype'];
    const shape = e['shape'];
    const offsets = e['data_offsets'];
    if (typeof dtype !== 'string') bad('dtype missing');
    const elBytes = DTYPE_BYTES[dtype as string];
    if (elBytes === undefined) bad(`unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      bad('shape must be a list of non-negative integers');
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      bad('data_offsets must be [begin, end]');
    }
    const [b, en] = offsets as [number, number];
    if (en < b) bad(`data_offsets [${b}, ${en}] end before begin`);
    const want = prod(shape as number[]) * elBytes!;
    if (en - b !== want)
      bad(
        `byte size ${en - b} does not match shape ` +
          `[${(shape as number[]).join(', ')}] x ${dtype as string} (${want} bytes)`,
      );
    if (en > dataLen) {
      throw new ModelLoadError(file, `file is truncated: data_offsets end ${en} beyond data size ${dataLen}`, {
        tensor: name,
      });
    }
    tensors.push({
      name,
      dtype: dtype as string,
      shape: shape as number[],
      file,
      begin: dataStart + b,
      end: dataStart + en,
    });
  }
  // The data must be covered exactly: sorted by offset, each tensor starts where the last ended.
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = dataStart;
  for (const t of sorted) {
    if (t.begin !== cursor) {
      const what = t.begin < cursor ? 'overlaps the previous tensor' : 'leaves a gap after the previous tensor';
      throw new ModelLoadError(file, `data_offsets ${what}`, { tensor: t.name });
    }
    cursor = t.end;
  }
  if (cursor !== size)
    throw new ModelLoadError(file, `${size - cursor} bytes after the last tensor are not covered by the header`);
  return { tensors: sorted, metadata };
}

export async function openForRead(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ModelLoadError(file, code === 'ENOENT' ? 'no such file' : String(e), { cause: e });
  }
}

/** Reads and validates the header of one safetensors file. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await openForRead(file);
  try {
    return await readHeaderFrom(fh, file);
  } finally {
    await fh.close();
  }
}
