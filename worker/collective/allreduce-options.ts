/**
 * The collective's options: what a caller may set (`AllReduceOptions`, `CallOptions`), their
 * defaults (`DEFAULT_*`), and `compileOptions`, which validates them once (each error names the
 * option) and derives what the engine runs with: the chunk size from the server's `max_payload`
 * and the credit window from the in-flight byte budget (see `gradient-allreduce.ts`, Flow control).
 */
import type { NatsConnection } from '@nats-io/transport-node';

import { assertJobName } from '../../common/subjects.js';
import type { Logger } from '../../common/logging.js';
import { CHUNK_HEADER_BYTES } from './chunk-header.js';
import { checkCollectiveKey } from './chunk-mac.js';
import type { RejectReason } from './chunk-validation.js';
import { Compression } from './wire-codec.js';

export const DEFAULT_ALLREDUCE_TIMEOUT_MS = 60_000;
export const DEFAULT_READY_TIMEOUT_MS = 60_000;
/** Bound on the chunk bytes that may be on their way to one rank at any time. */
export const DEFAULT_ALLREDUCE_INFLIGHT_BYTES = 32 * 1024 * 1024;
/** Used when the connection does not report the server's max_payload. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
const MAX_WINDOW_CHUNKS = 256;

export interface AllReduceOptions {
  nc: NatsConnection;
  /**
   * The generation's collective key (32 random bytes from the coordinator, `Assignment.collective_key`):
   * every chunk is sealed and checked with it (`chunk-mac.ts`). Every rank of a generation has the
   * same one. Secret: never log it.
   */
  key: Uint8Array;
  /** Job name, a DNS-1123 label. */
  job: string;
  /** The world's generation; only this generation's messages are received. */
  generation: number;
  rank: number;
  worldSize: number;
  /** The deadline of each all-reduce, from its start. @default DEFAULT_ALLREDUCE_TIMEOUT_MS (60 s) */
  timeoutMs?: number;
  /** @default silentLogger */
  logger?: Logger;
  /**
   * Upper bound on a chunk message (header + payload), in bytes; the server's `max_payload`
   * (from `nc.info`) bounds it too. For tests and tuning.
   * @default the server's max_payload
   */
  maxChunkBytes?: number;
  /** Numbers on the wire (`spec.collective.compression`); sums are float32 either way. @default 'none' */
  compression?: Compression;
  /**
   * With compression: carry what narrowing lost to the next step (on the sender for its pieces,
   * on the owner for its reduced shard). @default false
   */
  errorFeedback?: boolean;
  /**
   * The first `exactPrefix` elements always travel as float32 (the chunks that hold them), e.g.
   * counts such as [nll sum, supervised tokens, tokens] that 16 bits cannot hold. With a non-zero
   * prefix, chunks are sized for float32. @default 0
   */
  exactPrefix?: number;
  /** Chunk bytes that may be on their way to one rank (sets the window). @default DEFAULT_ALLREDUCE_INFLIGHT_BYTES */
  inflightBytes?: number;
  /** Chunks in flight a peer and phase; overrides `inflightBytes`. @default from inflightBytes, 2..256 */
  windowChunks?: number;
  /**
   * Called for every chunk dropped unused, with why (`polytune_collective_rejected_chunks_total`).
   * @default none
   */
  onRejected?: (reason: RejectReason) => void;
}

/** Counters since `create`, for metrics (`polytune_allreduce_bytes_total`) and tests. */
export interface AllReduceStats {
  readonly steps: number;
  readonly completedSteps: number;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  readonly messagesSent: number;
  readonly messagesReceived: number;
  readonly acksSent: number;
  /** Chunk messages built in a buffer of an earlier message (acknowledged or flushed) rather than a new one. */
  readonly messageBuffersReused: number;
  /** Times sending stopped for want of credit (a full window). */
  readonly windowStalls: number;
  /** Messages of a finished or abandoned step (late duplicates, or after a timeout), or another generation. */
  readonly droppedStale: number;
  /** Messages of the next step that arrived before this rank started it (buffered, then used). */
  readonly bufferedAhead: number;
  /** Messages more than one step ahead. */
  readonly droppedAhead: number;
  /** Malformed or inconsistent messages, and duplicates. */
  readonly droppedInvalid: number;
  /** Messages whose MAC did not verify (forged, altered, or sealed with another key): dropped. */
  readonly corrupted: number;
  /** Control messages (hellos, acks) dropped for want of a valid MAC. */
  readonly rejectedControl: number;
  /** Dropped chunks by reason (`RejectReason`), all of the above that were chunks. */
  readonly rejected: Readonly<Partial<Record<RejectReason, number>>>;
  /** Chunks known lost (a gap in a sender's sequence). */
  readonly lostChunks: number;
}

/**
 * An all-reduce whose input arrives in pieces: chunks are sent (and reduced) as soon as the
 * elements they cover have been appended, so the reduction overlaps with producing the input.
 */
export interface AllReduceHandle {
  readonly step: number;
  readonly length: number;
  /** Elements appended so far. */
  readonly appended: number;
  /**
   * Copies `data` to the input after what was appended before. Once the step has failed, does
   * nothing (the failure comes from `result`).
   * @throws RangeError when it would go beyond `length`
   */
  append(data: Float32Array): void;
  /** Settles like `allReduce`; never an unhandled rejection. */
  readonly result: Promise<Float32Array>;
}

/** Per call. */
export interface CallOptions {
  /**
   * Every element travels as float32, whatever `compression`: for what must stay exact, such as a
   * state broadcast (one rank's parameters, zeros elsewhere) or step counts. Every rank must pass
   * the same value for a step. @default false
   */
  exact?: boolean;
  /**
   * `allReduce` and `begin` only: the array to write the result into (and resolve with), instead of
   * a new one, e.g. the previous step's result once it has been used. A fresh array of a vector's
   * size costs more than the reduction's arithmetic: the kernel zero-fills each of its pages on
   * first write. Its length must be the vector's, it must not overlap the input, and it must not
   * be read until the promise settles; after a failure it holds a mix of old values and sums.
   * @default a new Float32Array
   */
  output?: Float32Array;
}

/** Checks `CallOptions.output`; undefined when it is usable. */
export function badOutput(
  output: Float32Array | undefined,
  length: number,
  input: Float32Array | undefined,
): Error | undefined {
  if (output === undefined) return undefined;
  if (!(output instanceof Float32Array)) return new TypeError('output: must be a Float32Array');
  if (output.length !== length) return new RangeError(`output: has ${output.length} elements, the vector ${length}`);
  if (
    input !== undefined &&
    input.buffer === output.buffer &&
    input.byteOffset < output.byteOffset + output.byteLength &&
    output.byteOffset < input.byteOffset + input.byteLength
  ) {
    return new RangeError('output: overlaps the input (use allReduceInPlace to reduce in place)');
  }
  return undefined;
}

/** Options validated, defaults applied, chunk size and window derived. */
export interface CompiledOptions {
  readonly key: Uint8Array;
  readonly timeoutMs: number;
  readonly compression: Compression;
  readonly errorFeedback: boolean;
  readonly exactPrefix: number;
  /** Elements a chunk message, before `ready()` adopts the smallest of all ranks'. */
  readonly chunkElements: number;
  readonly windowChunks: number;
}

/**
 * Validates `opts` (each error names the option) and derives the chunk size (from the server's
 * `max_payload` and `maxChunkBytes`) and the window (from `inflightBytes`).
 * @throws RangeError
 */
export function compileOptions(opts: AllReduceOptions): CompiledOptions {
  assertJobName(opts.job);
  const key = checkCollectiveKey(opts.key, 'key');
  if (!Number.isSafeInteger(opts.generation) || opts.generation < 0 || opts.generation > 0xffffffff) {
    throw new RangeError(`generation: must be an integer 0..2^32-1, got ${opts.generation}`);
  }
  if (!Number.isInteger(opts.worldSize) || opts.worldSize < 1 || opts.worldSize > 0xffff) {
    throw new RangeError(`worldSize: must be an integer 1..65535, got ${opts.worldSize}`);
  }
  if (!Number.isInteger(opts.rank) || opts.rank < 0 || opts.rank >= opts.worldSize) {
    throw new RangeError(`rank: must be an integer 0..${opts.worldSize - 1}, got ${opts.rank}`);
  }
  if (opts.timeoutMs !== undefined && !(opts.timeoutMs > 0))
    throw new RangeError(`timeoutMs: must be > 0, got ${opts.timeoutMs}`);
  const compression = opts.compression ?? 'none';
  if (!Object.values(Compression).includes(compression)) {
    throw new RangeError(
      `compression: must be one of ${Object.values(Compression).join(', ')}, got ${String(compression)}`,
    );
  }
  if (opts.exactPrefix !== undefined && !(Number.isSafeInteger(opts.exactPrefix) && opts.exactPrefix >= 0)) {
    throw new RangeError(`exactPrefix: must be a non-negative integer, got ${opts.exactPrefix}`);
  }
  if (opts.inflightBytes !== undefined && !(opts.inflightBytes > 0)) {
    throw new RangeError(`inflightBytes: must be > 0, got ${opts.inflightBytes}`);
  }
  if (opts.windowChunks !== undefined && !(Number.isInteger(opts.windowChunks) && opts.windowChunks >= 1)) {
    throw new RangeError(`windowChunks: must be an integer >= 1, got ${opts.windowChunks}`);
  }
  const serverMax = opts.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  const maxBytes = Math.min(serverMax, opts.maxChunkBytes ?? Number.POSITIVE_INFINITY);
  const elemBytes = compression === 'none' || (opts.exactPrefix ?? 0) > 0 ? 4 : 2;
  const chunkElements = Math.min(Math.floor((maxBytes - CHUNK_HEADER_BYTES) / elemBytes), 0xffffffff);
  if (chunkElements < 1) {
    throw new RangeError(
      `max chunk size ${maxBytes} bytes leaves no room for data after the ${CHUNK_HEADER_BYTES}-byte header`,
    );
  }
  const chunkBytes = CHUNK_HEADER_BYTES + chunkElements * (compression === 'none' ? 4 : 2);
  const peers = Math.max(1, opts.worldSize - 1);
  const windowChunks =
    opts.windowChunks ??
    Math.min(
      MAX_WINDOW_CHUNKS,
      Math.max(2, Math.floor((opts.inflightBytes ?? DEFAULT_ALLREDUCE_INFLIGHT_BYTES) / (2 * peers * chunkBytes))),
    );
  return {
    key,
    timeoutMs: opts.timeoutMs ?? DEFAULT_ALLREDUCE_TIMEOUT_MS,
    compression,
    errorFeedback: (opts.errorFeedback ?? false) && compression !== 'none',
    exactPrefix: opts.exactPrefix ?? 0,
    chunkElements,
    windowChunks,
  };
}
