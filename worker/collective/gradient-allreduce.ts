/**
 * All-reduce (sum) of a Float32Array over core NATS: reduce-scatter, then all-gather.
 *
 * The vector of length L is split into N contiguous shards, shard k = [⌊kL/N⌋, ⌊(k+1)L/N⌋), owned
 * by rank k. Each rank
 *   1. sends its piece of every other shard k to `grad.rs.<k>` (reduce-scatter);
 *   2. as the owner of its shard, waits for the N-1 other pieces, sums all N in rank order
 *      (acc = x0; acc += x1; …; acc += x(N-1), each add rounded to float32, exactly what a
 *      Float32Array accumulated in rank order gives), and publishes the reduced shard once to
 *      `grad.ag.<rank>` (all-gather);
 *   3. assembles the result from its own reduced shard and the N-1 others.
 * Every element is summed once, by one owner, in a fixed order, so every rank gets a bit-identical
 * result whatever the message timing.
 *
 * Bytes per rank, for L float32 elements (×4 bytes, plus a 56-byte header per chunk):
 *   sent to the server:      (N-1)/N·L (reduce-scatter) + L/N (reduced shard, published once) = L
 *   received from the server: (N-1)/N·L (pieces of its shard) + (N-1)/N·L (other reduced shards) = 2(N-1)/N·L
 * A ring all-reduce sends and receives 2(N-1)/N·L per rank, in 2(N-1) latency-bound rounds. Here
 * the all-gather fan-out is done by the server, so a rank uploads about half of what a ring does and
 * downloads the same, in 2 hops whatever N. The price is that all traffic goes through NATS: the
 * server(s) receive N·L and send 2(N-1)·L per all-reduce, so it is the server's bandwidth (or the
 * cluster's routes) that bounds throughput, not the slowest link of a ring.
 *
 * No barrier is needed between steps. A rank can start step s+1 only once it has the result of
 * step s, and that needs every rank's step-s pieces; so while a rank has started at most step s,
 * no peer can have started beyond s+1. Messages of a step not started yet are therefore buffered
 * for one future step only; messages of finished (or abandoned) steps are dropped.
 *
 * Every message is checked: generation and phase from the subject; magic, version, kind, dtype,
 * generation, sender, shard, chunk index/count/offset/length from the header, all consistent with
 * the vector length. Chunks are counted per sender: a missing chunk is never summed as zero, the
 * step times out naming the ranks whose pieces are missing.
 */
import type { NatsConnection, Msg, Subscription } from '@nats-io/transport-node';

import { CollectiveError, errorMessage } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import {
  allGatherSubject,
  assertJobName,
  GradPhase,
  parseGradSubject,
  reduceScatterSubject,
} from '../../common/subjects.js';
import {
  CHUNK_HEADER_BYTES,
  ChunkDtype,
  ChunkKind,
  decodeChunkHeader,
  encodeChunkHeader,
  readFloat32LE,
  writeFloat32LE,
  type ChunkHeader,
} from './chunk-header.js';

export const DEFAULT_ALLREDUCE_TIMEOUT_MS = 60_000;
/** Publish this many bytes, then `await nc.flush()`. */
export const DEFAULT_ALLREDUCE_FLUSH_BYTES = 8 * 1024 * 1024;
/** Used when the connection does not report the server's max_payload. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

export interface AllReduceOptions {
  nc: NatsConnection;
  /** Job name, a DNS-1123 label. */
  job: string;
  /** The world's generation; only this generation's messages are received. */
  generation: number;
  rank: number;
  worldSize: number;
  /** Per `allReduce` call. @default DEFAULT_ALLREDUCE_TIMEOUT_MS (60 s) */
  timeoutMs?: number;
  /** @default silentLogger */
  logger?: Logger;
  /**
   * Upper bound on a chunk message (header + payload), in bytes; the server's `max_payload`
   * (from `nc.info`) bounds it too. For tests and tuning.
   * @default the server's max_payload
   */
  maxChunkBytes?: number;
  /** @default DEFAULT_ALLREDUCE_FLUSH_BYTES */
  flushEveryBytes?: number;
}

/** Counters since `create`, for metrics (`polytune_allreduce_bytes_total`) and tests. */
export interface AllReduceStats {
  readonly steps: number;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  readonly messagesSent: number;
  readonly messagesReceived: number;
  /** Messages of a finished or abandoned step (late duplicates, or after a timeout). */
  readonly droppedStale: number;
  /** Messages of the next step that arrived before this rank started it (buffered, then used). */
  readonly bufferedAhead: number;
  /** Messages more than one step ahead. */
  readonly droppedAhead: number;
  /** Malformed or inconsistent messages, and duplicates. */
  readonly droppedInvalid: number;
}

/** Progress of one sender's chunks for one shard in one step. */
interface Incoming {
  /** Chunks expected; known from the first chunk (0 for an empty shard). */
  chunks: number | undefined;
  chunkElements: number | undefined;
  got: Set<number>;
  complete: boolean;
  /** Reduce-scatter only: the sender's piece of this rank's shard. */
  piece: Float32Array | undefined;
}

interface StepOp {
  readonly step: number;
  readonly length: number;
  readonly input: Float32Array;
  readonly result: Float32Array;
  /** By sender rank; undefined at this rank's index. */
  readonly rs: Array<Incoming | undefined>;
  /** By owner rank; undefined at this rank's index. */
  readonly ag: Array<Incoming | undefined>;
  rsPending: number;
  agPending: number;
  reduced: boolean;
  published: boolean;
  settled: boolean;
  resolve: (r: Float32Array) => void;
  reject: (e: unknown) => void;
}

interface Buffered {
  readonly phase: GradPhase;
  readonly header: ChunkHeader;
  readonly data: Uint8Array;
}

type State = 'OPEN' | 'CLOSED';

function shardBounds(length: number, worldSize: number, shard: number): [number, number] {
  return [Math.floor((shard * length) / worldSize), Math.floor(((shard + 1) * length) / worldSize)];
}

function newIncoming(withPiece: number | undefined): Incoming {
  return {
    chunks: undefined,
    chunkElements: undefined,
    got: new Set(),
    complete: false,
    piece: withPiece === undefined ? undefined : new Float32Array(withPiece),
  };
}

export class GradientAllReduce {
  readonly job: string;
  readonly generation: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly timeoutMs: number;
  /** Elements per chunk message. */
  readonly chunkElements: number;

  readonly #nc: NatsConnection;
  readonly #log: Logger;
  readonly #flushEveryBytes: number;
  readonly #subs: Subscription[] = [];
  #state: State = 'OPEN';
  #closing: Promise<void> | undefined;
  /** The highest step started (-1: none). */
  #lastStep = -1;
  #op: StepOp | undefined;
  #future: { step: number; messages: Map<string, Buffered> } | undefined;
  #stats = {
    steps: 0, bytesSent: 0, bytesReceived: 0, messagesSent: 0, messagesReceived: 0,
    droppedStale: 0, bufferedAhead: 0, droppedAhead: 0, droppedInvalid: 0,
  };

  private constructor(opts: AllReduceOptions, chunkElements: number) {
    this.#nc = opts.nc;
    this.job = opts.job;
    this.generation = opts.generation;
    this.rank = opts.rank;
    this.worldSize = opts.worldSize;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_ALLREDUCE_TIMEOUT_MS;
    this.chunkElements = chunkElements;
    this.#flushEveryBytes = opts.flushEveryBytes ?? DEFAULT_ALLREDUCE_FLUSH_BYTES;
    this.#log = (opts.logger ?? silentLogger).child('allreduce');
  }

  /** Validates the options and subscribes (flushed to the server) before resolving. */
  static async create(opts: AllReduceOptions): Promise<GradientAllReduce> {
    assertJobName(opts.job);
    if (!Number.isSafeInteger(opts.generation) || opts.generation < 0 || opts.generation > 0xffffffff) {
      throw new RangeError(`generation: must be an integer 0..2^32-1, got ${opts.generation}`);
    }
    if (!Number.isInteger(opts.worldSize) || opts.worldSize < 1 || opts.worldSize > 0xffff) {
      throw new RangeError(`worldSize: must be an integer 1..65535, got ${opts.worldSize}`);
    }
    if (!Number.isInteger(opts.rank) || opts.rank < 0 || opts.rank >= opts.worldSize) {
      throw new RangeError(`rank: must be an integer 0..${opts.worldSize - 1}, got ${opts.rank}`);
    }
    if (opts.timeoutMs !== undefined && !(opts.timeoutMs > 0)) throw new RangeError(`timeoutMs: must be > 0, got ${opts.timeoutMs}`);
    if (opts.flushEveryBytes !== undefined && !(opts.flushEveryBytes > 0)) {
      throw new RangeError(`flushEveryBytes: must be > 0, got ${opts.flushEveryBytes}`);
    }
    const serverMax = opts.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    const maxBytes = Math.min(serverMax, opts.maxChunkBytes ?? Number.POSITIVE_INFINITY);
    const chunkElements = Math.floor((maxBytes - CHUNK_HEADER_BYTES) / 4);
    if (chunkElements < 1) {
      throw new RangeError(`max chunk size ${maxBytes} bytes leaves no room for data after the ${CHUNK_HEADER_BYTES}-byte header`);
    }
    const ar = new GradientAllReduce(opts, Math.min(chunkElements, 0xffffffff));
    ar.#subscribe();
    await opts.nc.flush();
    ar.#log.debug('ready', { job: ar.job, generation: ar.generation, rank: ar.rank, worldSize: ar.worldSize, chunkElements });
    return ar;
  }

  get stats(): AllReduceStats {
    return { ...this.#stats };
  }

  /**
   * Sum of `data` over all ranks, in rank order. `step` tags the messages: it must grow from call
   * to call (the same sequence on every rank) and one call runs at a time. `data` must not change
   * until the promise settles. Resolves with a new Float32Array.
   * @throws CollectiveError naming the missing ranks on timeout; on abort, close, or a peer whose
   *   vector length differs.
   */
  allReduce(step: number, data: Float32Array, signal?: AbortSignal): Promise<Float32Array> {
    if (this.#state !== 'OPEN') return Promise.reject(new CollectiveError(`all-reduce step ${step}: closed`, { step }));
    if (!Number.isSafeInteger(step) || step < 0) return Promise.reject(new RangeError(`step: must be a non-negative integer, got ${step}`));
    if (!(data instanceof Float32Array)) return Promise.reject(new TypeError('data: must be a Float32Array'));
    if (this.#op !== undefined) {
      return Promise.reject(new CollectiveError(`all-reduce step ${step}: step ${this.#op.step} is still running`, { step }));
    }
    if (step <= this.#lastStep) {
      return Promise.reject(new RangeError(`step: must be greater than the previous step ${this.#lastStep}, got ${step}`));
    }
    if (signal?.aborted) {
      return Promise.reject(new CollectiveError(`all-reduce step ${step}: aborted`, { step, cause: signal.reason }));
    }

    const n = this.worldSize;
    const me = this.rank;
    const length = data.length;
    const [myStart, myEnd] = shardBounds(length, n, me);
    const myLen = myEnd - myStart;

    let resolve!: (r: Float32Array) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<Float32Array>((res, rej) => { resolve = res; reject = rej; });
    const op: StepOp = {
      step, length, input: data, result: new Float32Array(length),
      rs: [], ag: [], rsPending: 0, agPending: 0,
      reduced: false, published: false, settled: false, resolve, reject,
    };
    for (let r = 0; r < n; r++) {
      if (r === me) {
        op.rs.push(undefined);
        op.ag.push(undefined);
        continue;
      }
      const rsIn = newIncoming(myLen);
      if (myLen === 0) { rsIn.chunks = 0; rsIn.complete = true; } else op.rsPending++;
      op.rs.push(rsIn);
      const [s, e] = shardBounds(length, n, r);
      const agIn = newIncoming(undefined);
      if (e === s) { agIn.chunks = 0; agIn.complete = true; } else op.agPending++;
      op.ag.push(agIn);
    }
    this.#lastStep = step;
    this.#op = op;
    this.#stats.steps++;

    const timer = setTimeout(() => this.#fail(op, this.#timeoutError(op)), this.timeoutMs);
    const onAbort = (): void => this.#fail(op, new CollectiveError(`all-reduce step ${step}: aborted`, { step, cause: signal?.reason }));
    signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (this.#op === op) this.#op = undefined;
    };
    const settled = promise.then(
      (r) => { cleanup(); return r; },
      (e: unknown) => { cleanup(); throw e; },
    );

    // Messages that arrived before this call.
    const future = this.#future;
    if (future !== undefined && future.step <= step) {
      this.#future = undefined;
      if (future.step === step) {
        for (const b of future.messages.values()) this.#apply(op, b.phase, b.header, b.data);
      } else {
        this.#stats.droppedStale += future.messages.size;
      }
    }

    void this.#run(op);
    return settled;
  }

  /** Unsubscribes; a running `allReduce` rejects with a CollectiveError. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#state = 'CLOSED';
      const op = this.#op;
      if (op !== undefined) this.#fail(op, new CollectiveError(`all-reduce step ${op.step}: closed`, { step: op.step }));
      this.#future = undefined;
      for (const sub of this.#subs) {
        try { sub.unsubscribe(); } catch { /* connection already closed */ }
      }
      this.#subs.length = 0;
      if (!this.#nc.isClosed()) {
        try { await this.#nc.flush(); } catch { /* closing anyway */ }
      }
    })();
    return this.#closing;
  }

  // ---------------------------------------------------------------------------------------------

  #subscribe(): void {
    const rsSubject = reduceScatterSubject(this.job, this.generation, this.rank);
    this.#subs.push(this.#nc.subscribe(rsSubject, { callback: (err, msg) => this.#onMessage(err, msg) }));
    for (let r = 0; r < this.worldSize; r++) {
      if (r === this.rank) continue;
      const agSubject = allGatherSubject(this.job, this.generation, r);
      this.#subs.push(this.#nc.subscribe(agSubject, { callback: (err, msg) => this.#onMessage(err, msg) }));
    }
  }

  /** Sends this rank's pieces, then (once its shard is complete) reduces and publishes it. */
  async #run(op: StepOp): Promise<void> {
    try {
      await this.#sendPieces(op);
      this.#maybeReduce(op);
    } catch (e) {
      this.#fail(op, new CollectiveError(`all-reduce step ${op.step}: publish failed: ${errorMessage(e)}`, { step: op.step, cause: e }));
    }
  }

  async #sendPieces(op: StepOp): Promise<void> {
    const n = this.worldSize;
    let unflushed = 0;
    // Start with the next rank so that the owners are not all hit in the same order.
    for (let i = 1; i < n; i++) {
      const owner = (this.rank + i) % n;
      const [start, end] = shardBounds(op.length, n, owner);
      const subject = reduceScatterSubject(this.job, this.generation, owner);
      unflushed = await this.#publishRange(op, subject, ChunkKind.ReduceScatter, owner, start, end, op.input, start, unflushed);
      if (op.settled) return;
    }
    if (unflushed > 0) await this.#nc.flush();
  }

  /**
   * Publishes elements [start, end) of the vector (read from `src` at `srcStart`) in chunks.
   * Returns the bytes published since the last flush.
   */
  async #publishRange(
    op: StepOp, subject: string, kind: ChunkKind, shard: number,
    start: number, end: number, src: Float32Array, srcStart: number, unflushed: number,
  ): Promise<number> {
    const ce = this.chunkElements;
    const total = end - start;
    const chunks = Math.ceil(total / ce);
    for (let c = 0; c < chunks; c++) {
      if (op.settled) return unflushed;
      const offset = start + c * ce;
      const count = Math.min(ce, end - offset);
      const buf = new Uint8Array(CHUNK_HEADER_BYTES + count * 4);
      encodeChunkHeader({
        kind, dtype: ChunkDtype.Float32, generation: this.generation, step: op.step, rank: this.rank, shard,
        chunk: c, chunks, offset, count, chunkElements: ce, totalLength: op.length,
      }, buf);
      const from = srcStart + (offset - start);
      writeFloat32LE(src.subarray(from, from + count), buf.subarray(CHUNK_HEADER_BYTES));
      this.#nc.publish(subject, buf);
      this.#stats.messagesSent++;
      this.#stats.bytesSent += buf.byteLength;
      unflushed += buf.byteLength;
      if (unflushed >= this.#flushEveryBytes) {
        await this.#nc.flush();
        unflushed = 0;
      }
    }
    return unflushed;
  }

  #maybeReduce(op: StepOp): void {
    if (op.settled || op.reduced || op.rsPending > 0) return;
    op.reduced = true;
    const n = this.worldSize;
    const [start, end] = shardBounds(op.length, n, this.rank);
    // acc = x0; acc += x1; … in rank order, each add rounded to float32 by the Float32Array store.
    const acc = op.result.subarray(start, end);
    for (let r = 0; r < n; r++) {
      const src = r === this.rank ? op.input.subarray(start, end) : op.rs[r]!.piece!;
      if (r === 0) {
        acc.set(src);
      } else {
        for (let i = 0; i < acc.length; i++) acc[i]! += src[i]!;
      }
    }
    for (const inc of op.rs) if (inc) inc.piece = undefined;
    void this.#publishReduced(op, start, end);
  }

  async #publishReduced(op: StepOp, start: number, end: number): Promise<void> {
    try {
      if (this.worldSize === 1) {
        op.published = true;
        this.#maybeFinish(op);
        return;
      }
      const subject = allGatherSubject(this.job, this.generation, this.rank);
      await this.#publishRange(op, subject, ChunkKind.AllGather, this.rank, start, end, op.result, start, 0);
      // Flush before resolving, so that a caller closing the connection right after does not
      // strand the reduced shard in our outbound buffer.
      if (end > start && !op.settled) await this.#nc.flush();
      op.published = true;
      this.#maybeFinish(op);
    } catch (e) {
      this.#fail(op, new CollectiveError(`all-reduce step ${op.step}: publish failed: ${errorMessage(e)}`, { step: op.step, cause: e }));
    }
  }

  #maybeFinish(op: StepOp): void {
    if (op.settled || !op.published || op.agPending > 0) return;
    op.settled = true;
    op.resolve(op.result);
  }

  #fail(op: StepOp, err: CollectiveError): void {
    if (op.settled) return;
    op.settled = true;
    if (err.missingRanks.length > 0 || this.#state === 'OPEN') this.#log.warn(err.message, { step: op.step });
    op.reject(err);
  }

  #timeoutError(op: StepOp): CollectiveError {
    const describe = (list: Array<Incoming | undefined>): { ranks: number[]; detail: string[] } => {
      const ranks: number[] = [];
      const detail: string[] = [];
      list.forEach((inc, r) => {
        if (inc === undefined || inc.complete) return;
        ranks.push(r);
        detail.push(`${r} (${inc.got.size}/${inc.chunks ?? '?'} chunks)`);
      });
      return { ranks, detail };
    };
    const rs = describe(op.rs);
    if (rs.ranks.length > 0) {
      return new CollectiveError(
        `all-reduce step ${op.step} timed out after ${this.timeoutMs} ms: rank ${this.rank} is missing its shard's pieces from ranks ${rs.detail.join(', ')}`,
        { step: op.step, missingRanks: rs.ranks },
      );
    }
    const ag = describe(op.ag);
    if (ag.ranks.length > 0) {
      return new CollectiveError(
        `all-reduce step ${op.step} timed out after ${this.timeoutMs} ms: rank ${this.rank} is missing the reduced shards of ranks ${ag.detail.join(', ')}`,
        { step: op.step, missingRanks: ag.ranks },
      );
    }
    return new CollectiveError(`all-reduce step ${op.step} timed out after ${this.timeoutMs} ms while publishing`, { step: op.step });
  }

  #invalid(reason: string, msg: Msg): void {
    this.#stats.droppedInvalid++;
    this.#log.warn('dropped gradient message', { reason, subject: msg.subject, bytes: msg.data.byteLength });
  }

  #onMessage(err: Error | null, msg: Msg): void {
    if (err !== null) {
      this.#log.error('subscription error', { error: err.message });
      const op = this.#op;
      if (op) this.#fail(op, new CollectiveError(`all-reduce step ${op.step}: subscription error: ${err.message}`, { step: op.step, cause: err }));
      return;
    }
    if (this.#state !== 'OPEN') return;
    this.#stats.messagesReceived++;
    this.#stats.bytesReceived += msg.data.byteLength;

    const subj = parseGradSubject(msg.subject);
    if (subj === undefined || subj.job !== this.job || subj.generation !== this.generation) {
      this.#invalid('foreign subject', msg);
      return;
    }
    let h: ChunkHeader;
    try {
      h = decodeChunkHeader(msg.data);
    } catch (e) {
      this.#invalid(errorMessage(e), msg);
      return;
    }
    if (h.generation !== this.generation) {
      this.#stats.droppedStale++;
      this.#log.debug('dropped message of another generation', { generation: h.generation, from: h.rank });
      return;
    }
    if (h.dtype !== ChunkDtype.Float32) {
      this.#invalid(`dtype ${h.dtype} not supported`, msg);
      return;
    }
    if (h.rank >= this.worldSize || h.rank === this.rank) {
      this.#invalid(`sender rank ${h.rank} not a peer`, msg);
      return;
    }
    if (subj.phase === GradPhase.reduceScatter) {
      if (h.kind !== ChunkKind.ReduceScatter || h.shard !== this.rank || subj.rank !== this.rank) {
        this.#invalid('not a reduce-scatter chunk of this rank\'s shard', msg);
        return;
      }
    } else if (h.kind !== ChunkKind.AllGather || h.shard !== h.rank || subj.rank !== h.rank) {
      this.#invalid('not an all-gather chunk of the sender\'s shard', msg);
      return;
    }

    const op = this.#op;
    if (op !== undefined && h.step === op.step) {
      if (!op.settled) this.#apply(op, subj.phase, h, msg.data);
      else this.#stats.droppedStale++;
      return;
    }
    if (h.step <= this.#lastStep) {
      this.#stats.droppedStale++;
      return;
    }
    // A step not started here yet: peers may be one step ahead.
    this.#future ??= { step: h.step, messages: new Map() };
    if (this.#future.step !== h.step) {
      this.#stats.droppedAhead++;
      this.#log.warn('dropped message more than one step ahead', { step: h.step, buffered: this.#future.step, from: h.rank });
      return;
    }
    const key = `${h.kind}:${h.rank}:${h.chunk}`;
    if (this.#future.messages.has(key)) {
      this.#invalid('duplicate chunk', msg);
      return;
    }
    this.#future.messages.set(key, { phase: subj.phase, header: h, data: msg.data.slice() });
    this.#stats.bufferedAhead++;
  }

  /** Checks a chunk against the step and stores its numbers. */
  #apply(op: StepOp, phase: GradPhase, h: ChunkHeader, data: Uint8Array): void {
    if (op.settled) return;
    if (h.totalLength !== op.length) {
      this.#fail(op, new CollectiveError(
        `all-reduce step ${op.step}: rank ${h.rank} reduces a vector of ${h.totalLength} elements, rank ${this.rank} one of ${op.length}`,
        { step: op.step, missingRanks: [h.rank] },
      ));
      return;
    }
    const inc = phase === GradPhase.reduceScatter ? op.rs[h.rank] : op.ag[h.shard];
    const drop = (reason: string): void => {
      this.#stats.droppedInvalid++;
      this.#log.warn('dropped gradient chunk', { reason, step: h.step, from: h.rank, shard: h.shard, chunk: h.chunk });
    };
    if (inc === undefined) return drop('no such peer');
    if (inc.complete) return drop('duplicate chunk (shard complete)');
    const [start, end] = shardBounds(op.length, this.worldSize, h.shard);
    const shardLen = end - start;
    if (inc.chunkElements === undefined) {
      if (h.chunks !== Math.ceil(shardLen / h.chunkElements)) return drop(`chunks=${h.chunks} does not cover a shard of ${shardLen} in chunks of ${h.chunkElements}`);
      inc.chunkElements = h.chunkElements;
      inc.chunks = h.chunks;
    } else if (h.chunkElements !== inc.chunkElements || h.chunks !== inc.chunks) {
      return drop('chunking differs from the sender\'s earlier chunks');
    }
    const offset = start + h.chunk * h.chunkElements;
    const count = Math.min(h.chunkElements, end - offset);
    if (h.offset !== offset || h.count !== count) return drop(`chunk ${h.chunk} should hold elements ${offset}..${offset + count}`);
    if (inc.got.has(h.chunk)) return drop('duplicate chunk');
    const payload = data.subarray(CHUNK_HEADER_BYTES);
    if (phase === GradPhase.reduceScatter) readFloat32LE(payload, inc.piece!, offset - start, count);
    else readFloat32LE(payload, op.result, offset, count);
    inc.got.add(h.chunk);
    if (inc.got.size < inc.chunks!) return;
    inc.complete = true;
    if (phase === GradPhase.reduceScatter) {
      op.rsPending--;
      this.#maybeReduce(op);
    } else {
      op.agPending--;
      this.#maybeFinish(op);
    }
  }
}
