/**
 * Writing a whole model back in the HF layout: `model.safetensors`, or shards with
 * `model.safetensors.index.json` (`{"metadata": {"total_size": N}, "weight_map": {name: shard}}`,
 * as transformers' `save_pretrained` writes them), each tensor in the dtype it came in.
 *
 * Layout: when the input was sharded, the same shard files hold the same tensors (the input's
 * `weight_map` is kept); when it was a single file but the export is larger than `maxShardBytes`,
 * it is split in HF order into `model-0000k-of-0000n.safetensors` like `save_pretrained` does.
 * Tensors are written one at a time, so exporting needs one tensor's memory beyond the model.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expectedTensorShapes } from '../../common/model-config.js';
import type { LlamaModel } from './llama.js';
import {
  FloatDtype,
  INDEX_FILE,
  SINGLE_FILE,
  listModelTensors,
  tensorBytes,
  writeSafetensorsStreaming,
  type TensorInfo,
  type TensorToWrite,
} from './safetensors.js';

/** transformers' default `max_shard_size` ("5GB", decimal). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

export interface ExportModelOptions {
  /** The input model directory: its dtypes and shard layout are kept. @default none: F32, by size */
  inputDir?: string;
  /** Its tensors, if already listed (saves reading the headers again). */
  inputListing?: ReadonlyMap<string, TensorInfo>;
  /** One dtype for every tensor instead of each input tensor's own. */
  dtype?: FloatDtype;
  /** Each input tensor's dtype (name -> safetensors dtype), if already known; others F32. */
  dtypes?: ReadonlyMap<string, string>;
  /** Values to write instead of the model's (e.g. the trainer's float32 master copies). */
  values?: ReadonlyMap<string, Float32Array>;
  /** Split a model exported from a single file above this size. @default DEFAULT_MAX_SHARD_BYTES */
  maxShardBytes?: number;
}

export interface ExportedModel {
  /** The safetensors files written, in order. */
  files: string[];
  /** Sum of the tensors' data bytes (the index's `metadata.total_size`). */
  totalSize: number;
  /** Whether `model.safetensors.index.json` was written. */
  sharded: boolean;
}

/** Shard file names the way transformers names them. */
export function shardName(k: number, n: number): string {
  return `model-${String(k).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
}

/** The input's weight_map (tensor -> shard file), or undefined for a single-file model. */
async function inputWeightMap(dir: string): Promise<Map<string, string> | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, INDEX_FILE), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  // listModelTensors has validated it when the model was loaded.
  const wm = (JSON.parse(text) as { weight_map: Record<string, string> }).weight_map;
  return new Map(Object.entries(wm));
}

/** Writes every parameter of `model` into `outDir` (which must exist). */
export async function exportModel(
  outDir: string,
  model: LlamaModel,
  options: ExportModelOptions = {},
): Promise<ExportedModel> {
  const names = model.parameterNames;
  const needListing = !options.dtype && !options.dtypes && options.inputDir !== undefined;
  const listing = options.inputListing ?? (needListing ? await listModelTensors(options.inputDir!) : undefined);
  const dtypeOf = (name: string): FloatDtype => {
    if (options.dtype) return options.dtype;
    const d = options.dtypes ? options.dtypes.get(name) : listing?.get(name)?.dtype;
    return d !== undefined && d in FloatDtype ? (d as FloatDtype) : 'F32';
  };
  const shapes = expectedTensorShapes(model.config);
  const entries: TensorToWrite[] = names.map((name) => ({ name, shape: shapes.get(name)!, dtype: dtypeOf(name) }));
  const totalSize = entries.reduce((n, e) => n + tensorBytes(e), 0);

  // Which file each tensor goes to.
  const fileOf = new Map<string, string>();
  const inputMap = options.inputDir !== undefined ? await inputWeightMap(options.inputDir) : undefined;
  if (inputMap) {
    const shards = [...new Set(inputMap.values())].sort();
    const last = shards[shards.length - 1]!;
    for (const e of entries) fileOf.set(e.name, inputMap.get(e.name) ?? last);
  } else {
    const max = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
    const groups: TensorToWrite[][] = [[]];
    let size = 0;
    for (const e of entries) {
      const b = tensorBytes(e);
      if (size > 0 && size + b > max) {
        groups.push([]);
        size = 0;
      }
      groups[groups.length - 1]!.push(e);
      size += b;
    }
    groups.forEach((g, k) =>
      g.forEach((e) => fileOf.set(e.name, groups.length === 1 ? SINGLE_FILE : shardName(k + 1, groups.length))),
    );
  }

  const files = [...new Set(entries.map((e) => fileOf.get(e.name)!))].sort();
  const data = (name: string): Float32Array => options.values?.get(name) ?? model.exportTensor(name).data;
  for (const f of files) {
    await writeSafetensorsStreaming(
      join(outDir, f),
      entries.filter((e) => fileOf.get(e.name) === f),
      data,
      { format: 'pt' },
    );
  }
  const sharded = files.length > 1 || files[0] !== SINGLE_FILE;
  if (sharded) {
    const weightMap = Object.fromEntries([...fileOf].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    await writeFile(
      join(outDir, INDEX_FILE),
      JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) + '\n',
    );
  }
  return { files, totalSize, sharded };
}
