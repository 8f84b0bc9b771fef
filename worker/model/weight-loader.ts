/**
 * Loading a model's weights from HF safetensors (single or sharded) into backend tensors, tensor
 * by tensor: each tensor's byte range is read from its file in chunks of whole rows (no shard is
 * read whole), widened from bf16/f16 chunk by chunk, and written into the tensor's memory. Frozen
 * product operands are written transposed on the way (see llama.ts's header on layouts).
 *
 * Where a tensor's memory is, by what the backend offers (not by its name):
 * - wasm: straight into the tensor's place in the wasm heap; no host copy at all.
 * - a backend with tfjs-node's upload step (`getInputTensorIds`, NodeJSKernelBackend): into one
 *   host Float32Array, made a tensor, and uploaded at once. tfjs-node keeps a tensor written from
 *   JS values in JS until its first use as an op's input; `getInputTensorIds` is that first-use
 *   step (binding.createTensor: a TensorFlow tensor over the array, copied to the GPU, the host
 *   handle deleted, which drops TensorFlow's reference to the array; the backend's `values` set to
 *   null), so the array is garbage as soon as the sink lets it go. The load's host peak is one
 *   tensor (two while the collector catches up) and the chunk scratch, not the whole model.
 * - otherwise (cpu): a host Float32Array that is the tensor's memory.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ModelLoadError } from '../../common/errors.js';
import { transposeRowsInto } from './ops.js';
import { FloatDtype, listModelTensors, readModelTensorChunks, type TensorInfo } from './safetensors.js';

/** Where one tensor's data goes while it is loaded, chunk by chunk. */
export interface TensorSink {
  /** Elements of the tensor. */
  readonly size: number;
  /** Copies `data`, whole rows of the HF layout starting at element `start`. */
  write(start: number, data: Float32Array): void;
  /** Hands the finished tensor to the model. */
  finish(): void;
  /** Frees what was allocated (after an error). */
  abort(): void;
}

/** What the loader uses of the wasm backend: allocate a tensor, and view its heap memory. */
interface HeapBackend {
  makeOutput(shape: number[], dtype: 'float32'): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}

/** tfjs-node's step that moves JS-written values into TensorFlow (a private method of its backend). */
interface UploadingBackend {
  getInputTensorIds(tensors: tf.TensorInfo[]): unknown;
}

function uploadingBackend(): UploadingBackend | undefined {
  const b = tf.backend() as unknown as Partial<UploadingBackend>;
  return typeof b.getInputTensorIds === 'function' ? (b as UploadingBackend) : undefined;
}

function heapBackend(): HeapBackend | undefined {
  if (tf.getBackend() !== 'wasm') return undefined;
  const b = tf.backend() as unknown as Partial<HeapBackend>;
  return typeof b.makeOutput === 'function' && typeof b.typedArrayFromHeap === 'function'
    ? (b as HeapBackend)
    : undefined;
}

/**
 * The model files' tensors, checked against config.json's: every expected tensor present, with
 * the expected shape and a float dtype. Throws `ModelLoadError` naming the file and tensor.
 */
export async function checkedModelListing(
  dir: string,
  expected: ReadonlyMap<string, readonly number[]>,
): Promise<Map<string, TensorInfo>> {
  const listing = await listModelTensors(dir);
  for (const [name, shape] of expected) {
    const info = listing.get(name);
    if (!info) throw new ModelLoadError(dir, 'tensor missing from the model files', { tensor: name });
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(
        info.file,
        `shape [${info.shape.join(', ')}] does not match config.json's [${shape.join(', ')}]`,
        { tensor: name },
      );
    }
    if (!(info.dtype in FloatDtype)) {
      throw new ModelLoadError(info.file, `dtype ${info.dtype} is not supported (supported: F32, F16, BF16)`, {
        tensor: name,
      });
    }
  }
  return listing;
}

/**
 * Starts loading tensor `name` (HF shape), stored transposed ([cols, rows]) when `transpose`; on
 * wasm the data goes straight into the tensor's heap memory, re-viewed at every write since the
 * heap may grow (and its buffer change) between chunks; elsewhere into a host array, uploaded to
 * the device as soon as the tensor is made when the backend can (see the module header). `adopt`
 * receives the finished tensor.
 */
export function tensorSink(shape: number[], transpose: boolean, adopt: (t: tf.Tensor) => void): TensorSink {
  const size = shape.reduce((a, b) => a * b, 1);
  const [rows, cols] = shape as [number, number];
  const stored = transpose ? [cols, rows] : shape;
  const heap = heapBackend();
  const info = heap ? heap.makeOutput(stored, 'float32') : undefined;
  let host = info ? undefined : new Float32Array(size);
  let tensor: tf.Tensor | undefined = info ? tf.engine().makeTensorFromTensorInfo(info) : undefined;
  return {
    size,
    write: (start, data) => {
      const dst = host ?? heap!.typedArrayFromHeap(info!);
      if (transpose) transposeRowsInto(data, start / cols, rows, cols, dst);
      else dst.set(data, start);
    },
    finish: () => {
      const t = tensor ?? tf.tensor(host!, stored, 'float32');
      tensor = undefined;
      host = undefined;
      uploadingBackend()?.getInputTensorIds([t]);
      adopt(t);
    },
    abort: () => tensor?.dispose(),
  };
}

/**
 * Streams the `names` tensors of `dir` into the sinks `begin` opens, one tensor at a time; on an
 * error the tensor being loaded is freed (the caller frees the finished ones).
 */
export async function loadWeights(
  dir: string,
  names: Iterable<string>,
  listing: ReadonlyMap<string, TensorInfo>,
  chunkElems: number | undefined,
  begin: (name: string, shape: number[]) => TensorSink,
): Promise<void> {
  let pending: TensorSink | undefined;
  try {
    for await (const ch of readModelTensorChunks(dir, names, { listing, chunkElems })) {
      if (ch.start === 0) pending = begin(ch.info.name, [...ch.info.shape]);
      pending!.write(ch.start, ch.data);
      if (ch.start + ch.data.length === pending!.size) {
        pending!.finish();
        pending = undefined;
      }
    }
  } catch (e) {
    pending?.abort();
    throw e;
  }
}
