/**
 * All-reduce (sum) of a Float32Array over core NATS: reduce-scatter, then all-gather, pipelined
 * chunk by chunk, with credit-based flow control.
 *
 * ## Algorithm
 * The vector of length L is split into N contiguous shards, shard k = [⌊kL/N⌋, ⌊(k+1)L/N⌋), owned
 * by rank k, and every shard into chunks of `chunkElements` (sized to the server's `max_payload`,
 * read from its INFO; every rank uses the same size, agreed in `ready()`). Each rank
 *   1. sends its piece of every chunk of every other shard k to `grad.rs.<k>` (reduce-scatter);
 *   2. as the owner of its shard, as soon as the N-1 pieces of one of its chunks are in (and its
 *      own input for it), sums all N in rank order (acc = x0; acc += x1; …, each add rounded to
 *      float32), narrows the sum once when compressing and keeps the narrowed value itself, and
 *      publishes the chunk once for all to `grad.ag.<rank>` (all-gather);
 *   3. writes the other owners' reduced chunks into the result as they arrive.
 * Every element is summed once, by one owner, in a fixed order from the same numbers, so every rank
 * holds bit-identical results whatever the message timing, with or without compression.
 *
 * ## Bytes (L elements of b bytes on the wire, 4 for float32, 2 compressed; + 96 B a chunk)
 *   per rank, sent:      (N-1)/N·L·b (its pieces) + L/N·b (its reduced shard, published once) = L·b
 *   per rank, received:  (N-1)/N·L·b (pieces of its shard) + (N-1)/N·L·b (others' shards) = 2(N-1)/N·L·b
 *   the broker:          receives N·L·b, sends 2(N-1)·L·b per all-reduce (on one server; a cluster
 *                        adds the route hops of the traffic between ranks on different servers)
 * A ring all-reduce sends and receives 2(N-1)/N·L·b per rank, in 2(N-1) latency-bound rounds. Here
 * the all-gather fan-out is done by the server, so a rank uploads about half of what a ring does
 * and downloads the same, in two hops whatever N; but all traffic crosses the broker, whose egress
 * of 2(N-1)·L·b (N times a ring link's) is what bounds throughput. nccl-tests' bus bandwidth,
 * L·b·2(N-1)/N / time, is therefore at most the broker's egress bandwidth / N.
 *
 * ## Flow control
 * Core NATS drops messages for a subscriber whose server-side buffer overflows (a slow consumer,
 * whose connection the server then closes). So each rank bounds what it has in flight to each
 * peer: at most `window` chunks to each owner that the owner has not reduced yet, and at most
 * `window` reduced chunks that some peer has not received yet. Receivers grant credit with small
 * cumulative acks on `ctl.ack.<rank>`. A receiver therefore never has more than
 * 2(N-1)·window chunks coming at it: the window is sized so that is `inflightBytes` (32 MiB by
 * default), half the server's default `max_pending` of 64 MiB a client. Holding a piece until its
 * chunk is reduced also bounds the owner's memory to that window.
 *
 * ## Work on the ranks
 * The element-wise loops (narrowing, widening, the rank-order sums) run as WebAssembly SIMD kernels
 * (`simd-kernels.ts`), bit for bit the scalar rounding of `wire-codec.ts`. A chunk message's buffer
 * is reused for a later message once a peer's ack shows it went through the server (the client
 * copies a payload into its outbound frame and keeps no reference), or once the step's final
 * flush has returned; at most what a step can have in flight is kept for reuse. A caller may pass
 * the array to write the result into (`CallOptions.output`): writing a fresh vector costs a page
 * fault a 4 KiB page, more than the reduction's arithmetic. A received chunk longer than one
 * socket read is gathered in one buffer of its size (`nats-receive.ts`), not one grown by doubling,
 * and that buffer goes back to a pool once its numbers are summed or copied.
 *
 * ## Losses and checks
 * A (step, phase, sender, shard) stream is sent in chunk order, and NATS keeps the order of one
 * publisher's messages, also across routes: a chunk index that skips ahead means a lost chunk,
 * reported at once (CollectiveError naming the sender), never summed as zero; a peer that goes
 * quiet turns into a CollectiveError naming the missing ranks at the deadline
 * (`timeout-diagnosis.ts`). Every message carries a MAC under the generation's key
 * (`chunk-mac.ts`); what fails it, or whose header is not what this rank expects, is dropped and
 * counted by reason (`chunk-validation.ts`), never applied and never a reason to fail the step, so
 * what a publisher without the key sends can neither change a result nor fail a step (flooding
 * the server is for NATS credentials to stop). Two different authentic chunks at one position fail
 * the step (ChunkConflictError); the same one twice is ignored. Control messages (hellos, acks)
 * carry an HMAC too.
 *
 * ## Steps
 * No barrier is needed between steps. A rank can start step s+1 only once it has the result of
 * step s, and that needs every rank's step-s pieces; so while a rank has started at most step s,
 * no peer can have started beyond s+1. Messages of a step not started yet are therefore buffered
 * for one future step only (at most a window a peer); messages of finished or abandoned steps are
 * dropped. The caller's input is never written (unless it asks for in-place) and the result is a
 * new array (or the array the caller gave for it), so a failed step leaves the caller's parameters
 * and other buffers as they were; error feedback residuals are committed only when a step succeeds
 * (`error-feedback.ts`).
 *
 * ## Files
 * This engine (a step's state machine: send, reduce, publish, receive, ack) uses: `allreduce-options.ts`
 * (options, defaults, validation, chunk size and window), `start-barrier.ts` (`ready()`),
 * `buffer-pool.ts` (message buffers), `chunk-header.ts` and `dtype.ts` (the wire layout),
 * `chunk-mac.ts` (MACs), `chunk-validation.ts` (which chunks are used), `timeout-diagnosis.ts`,
 * `error-feedback.ts`, `simd-kernels.ts` and `wire-codec.ts` (the numbers), `nats-receive.ts`.
 */
import type { NatsConnection, Msg, Subscription } from '@nats-io/transport-node';

import { ChunkConflictError, CollectiveError, errorMessage } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { settleWithin } from '../../common/nats-bounded.js';
import {
  ackSubject,
  allGatherSubject,
  GradPhase,
  helloSubject,
  reduceScatterSubject,
  type AckMessage,
  type HelloMessage,
} from '../../common/subjects.js';
import {
  badOutput,
  compileOptions,
  DEFAULT_READY_TIMEOUT_MS,
  type AllReduceHandle,
  type AllReduceOptions,
  type AllReduceStats,
  type CallOptions,
} from './allreduce-options.js';
import { MessagePool } from './buffer-pool.js';
import { CHUNK_HEADER_BYTES, encodeChunkHeader, type ChunkHeader } from './chunk-header.js';
import { ChunkMac, ControlMac } from './chunk-mac.js';
import {
  duplicateVerdict,
  placeChunk,
  positionKey,
  RejectReason,
  screenChunk,
  shardBounds,
  tagOf,
} from './chunk-validation.js';
import { bytesPerElement, ChunkDtype, ChunkKind } from './dtype.js';
import { ErrorFeedback } from './error-feedback.js';
import { presizeNatsMessageBuffers, releaseReceived } from './nats-receive.js';
import { narrowInto, sumF32Into, sumWidenedInto, widenInto } from './simd-kernels.js';
import { StartBarrier } from './start-barrier.js';
import { diagnoseTimeout } from './timeout-diagnosis.js';
import { wireDtype, type Compression } from './wire-codec.js';

export {
  DEFAULT_ALLREDUCE_INFLIGHT_BYTES,
  DEFAULT_ALLREDUCE_TIMEOUT_MS,
  DEFAULT_MAX_PAYLOAD,
  DEFAULT_READY_TIMEOUT_MS,
} from './allreduce-options.js';
export type { AllReduceHandle, AllReduceOptions, AllReduceStats, CallOptions } from './allreduce-options.js';

type State = 'OPEN' | 'CLOSED';

interface Op {
  readonly step: number;
  /** Elements a chunk in this step. */
  readonly ce: number;
  /** Every chunk as float32, whatever the compression. */
  readonly exact: boolean;
  readonly length: number;
  readonly input: Float32Array;
  /** Elements of `input` available. */
  ready: number;
  readonly output: Float32Array;
  readonly inPlace: boolean;
  settled: boolean;
  resolve: (r: Float32Array) => void;
  reject: (e: unknown) => void;
  /** By destination: next chunk of its shard to send; chunks of it the destination has reduced. */
  readonly rsNext: number[];
  readonly rsAcked: number[];
  /** By sender: chunks of this rank's shard received (the next expected chunk index). */
  readonly rsRecv: number[];
  /** By chunk of this rank's shard, by sender: the piece's bytes (own aligned copy). */
  readonly pieces: Map<number, Array<Uint8Array | undefined>>;
  reduced: number;
  /** Reduced chunks ready to publish, in order. */
  readonly agQueue: Uint8Array[];
  /**
   * Published messages not known to be out of the client yet, to reuse once they are: by
   * destination, the pieces from chunk `rsReleased[dest]` on; the reduced chunks from `agReleased` on.
   */
  readonly rsOut: Uint8Array[][];
  readonly rsReleased: number[];
  readonly agOut: Uint8Array[];
  agReleased: number;
  agSent: number;
  /** By peer: chunks of this rank's reduced shard it has received. */
  readonly agAcked: number[];
  /** By owner: chunks of its reduced shard received. */
  readonly agRecv: number[];
  /** Counts last acked: reduced, and received by owner. */
  ackedReduced: number;
  readonly ackedRecv: number[];
  flushing: boolean;
  flushed: boolean;
  /** The tags of the chunks received, by position (`positionKey`), to tell a copy from a conflicting chunk. */
  readonly tags: Map<string, string>;
}

interface Buffered {
  readonly phase: GradPhase;
  readonly header: ChunkHeader;
  readonly data: Uint8Array;
  readonly tag: string;
}

/** Authentic messages of the one step ahead, kept until this rank starts it. */
interface Future {
  readonly step: number;
  readonly messages: Map<string, Buffered>;
  /** Two different authentic chunks at one position: the step fails as soon as it starts. */
  conflict: ChunkConflictError | undefined;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function rejectNow<T>(e: unknown): Promise<T> {
  return Promise.reject(e instanceof Error ? e : new Error(String(e)));
}

export class GradientAllReduce {
  readonly job: string;
  readonly generation: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly timeoutMs: number;
  readonly compression: Compression;
  readonly errorFeedback: boolean;
  readonly exactPrefix: number;
  /** Elements per chunk message; the smallest of all ranks' after `ready()`. */
  chunkElements: number;
  /** Chunks in flight a peer and phase. */
  readonly windowChunks: number;

  readonly #nc: NatsConnection;
  readonly #log: Logger;
  readonly #wire: ChunkDtype;
  readonly #mac: ChunkMac;
  readonly #ctl: ControlMac;
  readonly #onRejected: ((reason: RejectReason) => void) | undefined;
  readonly #subs: Subscription[] = [];
  readonly #ackEvery: number;
  #state: State = 'OPEN';
  #closing: Promise<void> | undefined;
  /** The highest step started (-1: none). */
  #lastStep = -1;
  #op: Op | undefined;
  #future: Future | undefined;
  /** Error feedback residuals (with compression and `errorFeedback`). */
  #res: ErrorFeedback | undefined;
  readonly #barrier: StartBarrier;
  #pumping = false;
  #scratch16 = new Uint16Array(0);
  /** `begin()`'s input buffer, kept for the next step of the same length. */
  #beginInput: Float32Array | undefined;
  /** Released message buffers for reuse. */
  readonly #pool: MessagePool;
  #stats = {
    steps: 0,
    completedSteps: 0,
    bytesSent: 0,
    bytesReceived: 0,
    messagesSent: 0,
    messagesReceived: 0,
    acksSent: 0,
    windowStalls: 0,
    droppedStale: 0,
    bufferedAhead: 0,
    droppedAhead: 0,
    droppedInvalid: 0,
    corrupted: 0,
    lostChunks: 0,
    rejectedControl: 0,
  };
  readonly #rejected: Partial<Record<RejectReason, number>> = {};

  private constructor(opts: AllReduceOptions) {
    const c = compileOptions(opts);
    this.#nc = opts.nc;
    this.job = opts.job;
    this.generation = opts.generation;
    this.rank = opts.rank;
    this.worldSize = opts.worldSize;
    this.timeoutMs = c.timeoutMs;
    this.compression = c.compression;
    this.errorFeedback = c.errorFeedback;
    this.exactPrefix = c.exactPrefix;
    this.#wire = wireDtype(this.compression);
    this.chunkElements = c.chunkElements;
    this.windowChunks = c.windowChunks;
    this.#mac = new ChunkMac(c.key);
    this.#ctl = new ControlMac(c.key);
    this.#onRejected = opts.onRejected;
    this.#ackEvery = Math.max(1, Math.floor(c.windowChunks / 2));
    // What a step can have out at once: a window of pieces a peer, a window of reduced chunks
    // published and one queued, at float32's chunk size.
    this.#pool = new MessagePool((opts.worldSize + 1) * c.windowChunks * (CHUNK_HEADER_BYTES + c.chunkElements * 4));
    this.#log = (opts.logger ?? silentLogger).child('allreduce');
    this.#barrier = new StartBarrier(
      { rank: this.rank, worldSize: this.worldSize, compression: this.compression, exactPrefix: this.exactPrefix },
      (msg) => {
        if (this.#state !== 'OPEN' || this.#nc.isClosed()) return;
        const subject = helloSubject(this.job, this.generation);
        this.#nc.publish(subject, this.#ctl.seal(subject, JSON.stringify(msg)));
      },
      () => this.chunkElements,
    );
  }

  /** Validates the options (`compileOptions`) and subscribes (flushed to the server) before resolving. */
  static async create(opts: AllReduceOptions): Promise<GradientAllReduce> {
    if (!LITTLE_ENDIAN) throw new Error('the collective supports little-endian hosts only');
    presizeNatsMessageBuffers();
    const ar = new GradientAllReduce(opts);
    ar.#subscribe();
    // Bounded (as the start barrier): a connection that lost its server at once (its credential
    // expired) may never answer.
    const flushed = opts.nc.flush();
    if (!(await settleWithin(flushed, opts.nc, DEFAULT_READY_TIMEOUT_MS)) || opts.nc.isClosed()) {
      await ar.close();
      throw new CollectiveError(
        `create: the NATS server did not confirm the subscriptions within ${DEFAULT_READY_TIMEOUT_MS} ms`,
        { step: -1 },
      );
    }
    await flushed.catch(async (e: unknown) => {
      await ar.close();
      throw e;
    });
    ar.#log.debug('created', {
      job: ar.job,
      generation: ar.generation,
      rank: ar.rank,
      worldSize: ar.worldSize,
      chunkElements: ar.chunkElements,
      windowChunks: ar.windowChunks,
    });
    return ar;
  }

  get stats(): AllReduceStats {
    return { ...this.#stats, messageBuffersReused: this.#pool.reused, rejected: { ...this.#rejected } };
  }

  /**
   * The start barrier: resolves once every peer has heard this rank's hello and this rank has
   * heard every peer's, which proves that the subscriptions of every rank are known on every
   * server (interest crosses a NATS cluster's routes asynchronously; on one server it is there
   * as soon as `create` resolves). Also checks that all ranks share compression, prefix and world
   * size, and adopts the smallest chunk size among them. Call it once, after `create`, before the
   * first all-reduce; idempotent.
   * @throws CollectiveError naming the ranks not heard from at the deadline, or on a mismatch
   */
  async ready(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    if (this.#barrier.done) return;
    if (this.#state !== 'OPEN') throw new CollectiveError('ready: closed', { step: -1 });
    const ce = await this.#barrier.wait(
      options.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS,
      options.signal,
      () => this.#state === 'OPEN',
    );
    this.chunkElements = Math.min(this.chunkElements, ce);
    this.#barrier.say(); // tell the peers we are through
    this.#log.debug('ready', { rank: this.rank, chunkElements: this.chunkElements });
  }

  /**
   * Sum of `data` over all ranks, in rank order. `step` tags the messages: it must grow from call
   * to call (the same sequence on every rank) and one call runs at a time. `data` must not change
   * until the promise settles and is never written. Resolves with a new Float32Array, or with `options.output` filled.
   * @throws CollectiveError naming the missing ranks at the deadline, on a lost or corrupted chunk,
   *   on abort or close, or for a peer whose vector length differs.
   */
  allReduce(step: number, data: Float32Array, signal?: AbortSignal, options: CallOptions = {}): Promise<Float32Array> {
    if (!(data instanceof Float32Array)) return rejectNow(new TypeError('data: must be a Float32Array'));
    const bad = badOutput(options.output, data.length, data);
    if (bad) return rejectNow(bad);
    const output = options.output ?? new Float32Array(data.length);
    const started = this.#start(step, data.length, data, data.length, output, false, signal, options.exact ?? false);
    return started instanceof Error ? rejectNow(started) : started.promise;
  }

  /**
   * As `allReduce`, but the sum replaces `data` (no second buffer: for vectors near the memory
   * limit). On failure `data` holds a mix of input and sums: keep a copy if you need to retry.
   */
  allReduceInPlace(
    step: number,
    data: Float32Array,
    signal?: AbortSignal,
    options: CallOptions = {},
  ): Promise<Float32Array> {
    if (!(data instanceof Float32Array)) return rejectNow(new TypeError('data: must be a Float32Array'));
    if (options.output !== undefined)
      return rejectNow(new RangeError('output: not with allReduceInPlace (the result is data)'));
    const started = this.#start(step, data.length, data, data.length, data, true, signal, options.exact ?? false);
    return started instanceof Error ? rejectNow(started) : started.promise;
  }

  /**
   * Starts an all-reduce of `length` elements whose input is given in pieces with
   * `handle.append()`, in order: the first chunks are on the wire while the rest is still being
   * produced (e.g. copied off the device tensor by tensor).
   * @throws RangeError or CollectiveError when the step cannot start (see `allReduce`)
   */
  begin(step: number, length: number, signal?: AbortSignal, options: CallOptions = {}): AllReduceHandle {
    if (!Number.isSafeInteger(length) || length < 0)
      throw new RangeError(`length: must be a non-negative integer, got ${length}`);
    const bad = badOutput(options.output, length, undefined);
    if (bad) throw bad;
    // The input is this collective's own: the last one is reused when the length is the same (no
    // step is running, so nothing reads it any more).
    if (this.#beginInput?.length !== length) this.#beginInput = new Float32Array(length);
    const input = this.#beginInput;
    const output = options.output ?? new Float32Array(length);
    const started = this.#start(step, length, input, 0, output, false, signal, options.exact ?? false);
    if (started instanceof Error) throw started;
    const { op, promise: result } = started;
    result.catch(() => undefined); // the caller sees the rejection when it awaits `result`
    let appended = 0;
    const pump = (): void => this.#pump(op);
    return {
      step,
      length,
      result,
      get appended() {
        return appended;
      },
      append(data: Float32Array): void {
        if (!(data instanceof Float32Array)) throw new TypeError('data: must be a Float32Array');
        if (appended + data.length > length) {
          throw new RangeError(`append: ${appended} + ${data.length} elements exceed the length ${length}`);
        }
        if (op.settled) return;
        input.set(data, appended);
        appended += data.length;
        op.ready = appended;
        pump();
      },
    };
  }

  /**
   * Unsubscribes; a running `allReduce` rejects with a CollectiveError. Idempotent. Ends within
   * `DEFAULT_NATS_SETTLE_MS` even when the connection lost its server (its last flush is bounded).
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#state = 'CLOSED';
      const op = this.#op;
      if (op !== undefined)
        this.#fail(op, new CollectiveError(`all-reduce step ${op.step}: closed`, { step: op.step }));
      this.#future = undefined;
      this.#barrier.wake();
      for (const sub of this.#subs) {
        try {
          sub.unsubscribe();
        } catch {
          /* connection already closed */
        }
      }
      this.#subs.length = 0;
      this.#pool.clear();
      // What was published goes out, if the server answers in time: on a connection that lost its
      // server a flush may never end, and closing must (common/nats-bounded.ts).
      if (!this.#nc.isClosed() && !(await settleWithin(this.#nc.flush(), this.#nc)))
        this.#log.debug('closed without a flush: the server did not answer', { rank: this.rank });
    })();
    return this.#closing;
  }

  // --- lifecycle of one step ---------------------------------------------------------------------

  #start(
    step: number,
    length: number,
    input: Float32Array,
    ready: number,
    output: Float32Array,
    inPlace: boolean,
    signal: AbortSignal | undefined,
    exact: boolean,
  ): { op: Op; promise: Promise<Float32Array> } | Error {
    if (this.#state !== 'OPEN') return new CollectiveError(`all-reduce step ${step}: closed`, { step });
    if (!Number.isSafeInteger(step) || step < 0)
      return new RangeError(`step: must be a non-negative integer, got ${step}`);
    if (this.#op !== undefined)
      return new CollectiveError(`all-reduce step ${step}: step ${this.#op.step} is still running`, { step });
    if (step <= this.#lastStep)
      return new RangeError(`step: must be greater than the previous step ${this.#lastStep}, got ${step}`);
    if (signal?.aborted) return new CollectiveError(`all-reduce step ${step}: aborted`, { step, cause: signal.reason });

    const n = this.worldSize;
    let resolve!: (r: Float32Array) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<Float32Array>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const op: Op = {
      step,
      length,
      input,
      ready,
      output,
      inPlace,
      settled: false,
      resolve,
      reject,
      exact,
      ce:
        exact && this.compression !== 'none' && this.exactPrefix === 0
          ? Math.max(1, Math.floor(this.chunkElements / 2))
          : this.chunkElements,
      rsNext: new Array<number>(n).fill(0),
      rsAcked: new Array<number>(n).fill(0),
      rsRecv: new Array<number>(n).fill(0),
      pieces: new Map(),
      reduced: 0,
      agQueue: [],
      agSent: 0,
      rsOut: Array.from({ length: n }, () => []),
      rsReleased: new Array<number>(n).fill(0),
      agOut: [],
      agReleased: 0,
      agAcked: new Array<number>(n).fill(0),
      agRecv: new Array<number>(n).fill(0),
      ackedReduced: 0,
      ackedRecv: new Array<number>(n).fill(0),
      flushing: false,
      flushed: false,
      tags: new Map(),
    };
    this.#lastStep = step;
    this.#op = op;
    this.#stats.steps++;
    if (this.errorFeedback && this.#res?.length !== length) this.#res = new ErrorFeedback(length, n, this.rank);

    const timer = setTimeout(
      () =>
        this.#fail(
          op,
          diagnoseTimeout({
            step: op.step,
            rank: this.rank,
            worldSize: n,
            timeoutMs: this.timeoutMs,
            windowChunks: this.windowChunks,
            ready: op.ready,
            length: op.length,
            rsRecv: op.rsRecv,
            agRecv: op.agRecv,
            rsNext: op.rsNext,
            rsAcked: op.rsAcked,
            chunksOf: (r) => this.#chunksOf(op, r),
          }),
        ),
      this.timeoutMs,
    );
    const onAbort = (): void =>
      this.#fail(op, new CollectiveError(`all-reduce step ${step}: aborted`, { step, cause: signal?.reason }));
    signal?.addEventListener('abort', onAbort, { once: true });
    const settled = promise.finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (this.#op === op) this.#op = undefined;
    });

    // Messages that arrived before this call.
    const future = this.#future;
    if (future !== undefined && future.step <= step) {
      this.#future = undefined;
      if (future.step === step) {
        if (future.conflict !== undefined) {
          this.#fail(op, future.conflict);
          return { op, promise: settled };
        }
        for (const b of future.messages.values()) {
          this.#apply(op, b.phase, b.header, b.data, b.tag);
          if (op.settled) break;
        }
      } else {
        this.#stats.droppedStale += future.messages.size;
      }
    }
    this.#pump(op);
    return { op, promise: settled };
  }

  /** Makes every move the state allows: publish reduced chunks, reduce, send pieces; until stuck. */
  #pump(op: Op): void {
    if (this.#pumping) return; // re-entered from a publish error: the outer loop goes on
    this.#pumping = true;
    try {
      let progressed = true;
      while (progressed && !op.settled) {
        progressed = false;
        if (this.#publishReduced(op)) progressed = true;
        if (this.#reduceReady(op)) progressed = true;
        if (this.#sendPieces(op)) progressed = true;
      }
      if (!op.settled) {
        this.#sendAcks(op, false);
        this.#maybeFinish(op);
      }
    } catch (e) {
      this.#fail(
        op,
        new CollectiveError(`all-reduce step ${op.step}: ${errorMessage(e)}`, { step: op.step, cause: e }),
      );
    } finally {
      this.#pumping = false;
    }
  }

  #chunksOf(op: Op, shard: number): number {
    const [s, e] = shardBounds(op.length, this.worldSize, shard);
    return Math.ceil((e - s) / op.ce);
  }

  /** Dtype of the chunk starting at element `offset`. */
  #dtypeAt(op: Op, offset: number): ChunkDtype {
    return op.exact || offset < this.exactPrefix ? ChunkDtype.Float32 : this.#wire;
  }

  /** One piece to each destination with credit and input, round-robin, until none can go. */
  #sendPieces(op: Op): boolean {
    const n = this.worldSize;
    const W = this.windowChunks;
    let any = false;
    for (;;) {
      let sent = false;
      for (let i = 1; i < n; i++) {
        const dest = (this.rank + i) % n;
        const c = op.rsNext[dest]!;
        const [start, end] = shardBounds(op.length, n, dest);
        const chunks = Math.ceil((end - start) / op.ce);
        if (c >= chunks) continue;
        const offset = start + c * op.ce;
        const count = Math.min(op.ce, end - offset);
        if (op.ready < offset + count) continue;
        if (c - op.rsAcked[dest]! >= W) {
          this.#stats.windowStalls++;
          continue;
        }
        const msg = this.#encode(op, ChunkKind.ReduceScatter, dest, c, chunks, offset, count, op.input, true);
        this.#publish(reduceScatterSubject(this.job, this.generation, dest), msg);
        op.rsOut[dest]!.push(msg);
        op.rsNext[dest] = c + 1;
        sent = true;
        if (op.settled) return true;
      }
      if (!sent) return any;
      any = true;
    }
  }

  /**
   * Builds a sealed chunk message from `src[offset, offset+count)`; narrows (with error feedback) if its dtype says so.
   */
  #encode(
    op: Op,
    kind: ChunkKind,
    shard: number,
    chunk: number,
    chunks: number,
    offset: number,
    count: number,
    src: Float32Array,
    feedback: boolean,
  ): Uint8Array {
    const dtype = this.#dtypeAt(op, offset);
    const buf = this.#allocMessage(CHUNK_HEADER_BYTES + count * bytesPerElement(dtype));
    encodeChunkHeader(
      {
        kind,
        dtype,
        generation: this.generation,
        step: op.step,
        rank: this.rank,
        shard,
        chunk,
        chunks,
        offset,
        count,
        chunkElements: op.ce,
        totalLength: op.length,
      },
      buf,
    );
    const values = src.subarray(offset, offset + count);
    if (dtype === ChunkDtype.Float32) {
      new Float32Array(buf.buffer, buf.byteOffset + CHUNK_HEADER_BYTES, count).set(values);
    } else {
      const dst = new Uint16Array(buf.buffer, buf.byteOffset + CHUNK_HEADER_BYTES, count);
      const res = feedback ? this.#res : undefined;
      if (res) narrowInto(dtype, values, dst, ...res.sender(offset, count));
      else narrowInto(dtype, values, dst);
    }
    this.#mac.seal(buf);
    return buf;
  }

  /** A message buffer of `bytes` (`MessagePool.alloc`). */
  #allocMessage(bytes: number): Uint8Array {
    return this.#pool.alloc(bytes);
  }

  #release(buf: Uint8Array): void {
    this.#pool.release(buf);
  }

  /**
   * Reuses the messages that a peer has acknowledged: a peer that has reduced chunk c, or
   * received reduced chunk c, got its message through the server, so the client has written it
   * (nats.js copies a payload into its outbound frame when it flushes and keeps no reference).
   */
  #releaseAcked(op: Op): void {
    if (op.settled) return;
    let minAcked = Infinity;
    for (let r = 0; r < this.worldSize; r++) {
      if (r === this.rank) continue;
      const out = op.rsOut[r]!;
      let k = 0;
      while (k < out.length && op.rsReleased[r]! + k < op.rsAcked[r]!) this.#release(out[k++]!);
      if (k > 0) {
        out.splice(0, k);
        op.rsReleased[r]! += k;
      }
      minAcked = Math.min(minAcked, op.agAcked[r]!);
    }
    let k = 0;
    while (k < op.agOut.length && op.agReleased + k < minAcked) this.#release(op.agOut[k++]!);
    if (k > 0) {
      op.agOut.splice(0, k);
      op.agReleased += k;
    }
  }

  #releaseAll(op: Op): void {
    for (const out of op.rsOut) {
      for (const b of out) this.#release(b);
      out.length = 0;
    }
    for (const b of op.agOut) this.#release(b);
    op.agOut.length = 0;
  }

  #publish(subject: string, msg: Uint8Array): void {
    this.#nc.publish(subject, msg);
    this.#stats.messagesSent++;
    this.#stats.bytesSent += msg.byteLength;
  }

  /** Reduces the next chunks of the own shard whose pieces and input are all in. */
  #reduceReady(op: Op): boolean {
    const n = this.worldSize;
    const me = this.rank;
    const [start, end] = shardBounds(op.length, n, me);
    const chunks = Math.ceil((end - start) / op.ce);
    let any = false;
    while (op.reduced < chunks && op.agQueue.length < this.windowChunks && !op.settled) {
      const c = op.reduced;
      const offset = start + c * op.ce;
      const count = Math.min(op.ce, end - offset);
      if (op.ready < offset + count) break;
      let complete = true;
      for (let r = 0; r < n; r++)
        if (r !== me && op.rsRecv[r]! <= c) {
          complete = false;
          break;
        }
      if (!complete) break;
      this.#reduceChunk(op, c, chunks, offset, count);
      for (const piece of op.pieces.get(c) ?? []) if (piece !== undefined) releaseReceived(piece);
      op.pieces.delete(c);
      op.reduced++;
      any = true;
    }
    return any;
  }

  /**
   * acc = x0 + x1 + … in rank order, float32 adds, fused into one pass; then narrowed once, widened back in place.
   */
  #reduceChunk(op: Op, c: number, chunks: number, offset: number, count: number): void {
    const n = this.worldSize;
    const me = this.rank;
    const dtype = this.#dtypeAt(op, offset);
    const res = this.#res;
    const acc = op.output.subarray(offset, offset + count);
    const pieces = op.pieces.get(c);
    const piece = (r: number): Uint8Array => {
      const bytes = pieces?.[r];
      if (bytes === undefined) throw new Error(`internal: piece of chunk ${c} from rank ${r} missing at reduce`);
      return bytes;
    };
    if (dtype === ChunkDtype.Float32) {
      // In place, acc is the own input: fine, every block of every input is read before acc's.
      const own = op.input.subarray(offset, offset + count);
      const xs: Float32Array[] = [];
      for (let r = 0; r < n; r++) {
        if (r === me) {
          xs.push(own);
          continue;
        }
        const bytes = piece(r);
        xs.push(new Float32Array(bytes.buffer, bytes.byteOffset, count));
      }
      sumF32Into(acc, xs);
    } else {
      // The own contribution, as the peers' are: narrowed (with feedback) when compressing, then
      // widened exactly, as theirs. Without feedback it is narrowed block by block inside the sum.
      const src = op.input.subarray(offset, offset + count);
      let own: Uint16Array | { narrow: Float32Array } = { narrow: src };
      if (res) {
        own = this.#scratchU16(count);
        narrowInto(dtype, src, own, ...res.sender(offset, count));
      }
      const xs: Array<Uint16Array | { narrow: Float32Array }> = [];
      for (let r = 0; r < n; r++) {
        if (r === me) {
          xs.push(own);
          continue;
        }
        const bytes = piece(r);
        xs.push(new Uint16Array(bytes.buffer, bytes.byteOffset, count));
      }
      sumWidenedInto(dtype, acc, xs);
    }
    if (n === 1) return; // the sum of one widened value is itself: nothing more to narrow
    // The reduced chunk as it goes out; when narrowed, everyone (this rank too) keeps the narrowed value.
    const buf = this.#allocMessage(CHUNK_HEADER_BYTES + count * bytesPerElement(dtype));
    encodeChunkHeader(
      {
        kind: ChunkKind.AllGather,
        dtype,
        generation: this.generation,
        step: op.step,
        rank: me,
        shard: me,
        chunk: c,
        chunks,
        offset,
        count,
        chunkElements: op.ce,
        totalLength: op.length,
      },
      buf,
    );
    if (dtype === ChunkDtype.Float32) {
      new Float32Array(buf.buffer, buf.byteOffset + CHUNK_HEADER_BYTES, count).set(acc);
    } else {
      const dst = new Uint16Array(buf.buffer, buf.byteOffset + CHUNK_HEADER_BYTES, count);
      if (res) narrowInto(dtype, acc, dst, ...res.owner(offset, count), acc);
      else narrowInto(dtype, acc, dst, undefined, undefined, acc);
    }
    this.#mac.seal(buf);
    op.agQueue.push(buf);
  }

  /** A reusable array for a chunk's narrowed own input, valid until the next call. */
  #scratchU16(count: number): Uint16Array {
    if (this.#scratch16.length < count) this.#scratch16 = new Uint16Array(count);
    return this.#scratch16.subarray(0, count);
  }

  /** Publishes queued reduced chunks while every peer has room for them. */
  #publishReduced(op: Op): boolean {
    if (op.agQueue.length === 0) return false;
    let minAcked = Infinity;
    for (let r = 0; r < this.worldSize; r++) if (r !== this.rank) minAcked = Math.min(minAcked, op.agAcked[r]!);
    const subject = allGatherSubject(this.job, this.generation, this.rank);
    let any = false;
    while (op.agQueue.length > 0 && op.agSent - minAcked < this.windowChunks) {
      const msg = op.agQueue.shift()!;
      this.#publish(subject, msg);
      op.agOut.push(msg);
      op.agSent++;
      any = true;
    }
    if (op.agQueue.length > 0) this.#stats.windowStalls++;
    return any;
  }

  /** Publishes this rank's progress when a count moved by half a window, or a stream completed. */
  #sendAcks(op: Op, force: boolean): void {
    const n = this.worldSize;
    if (n === 1) return;
    const myChunks = this.#chunksOf(op, this.rank);
    let due = force;
    if (op.reduced - op.ackedReduced >= this.#ackEvery || (op.reduced === myChunks && op.ackedReduced < myChunks))
      due = true;
    for (let r = 0; r < n && !due; r++) {
      if (r === this.rank) continue;
      const got = op.agRecv[r]!;
      const last = op.ackedRecv[r]!;
      if (got - last >= this.#ackEvery || (got > last && got === this.#chunksOf(op, r))) due = true;
    }
    if (!due) return;
    const msg: AckMessage = { type: 'ack', from: this.rank, step: op.step, reduced: op.reduced, received: op.agRecv };
    const subject = ackSubject(this.job, this.generation, this.rank);
    this.#nc.publish(subject, this.#ctl.seal(subject, JSON.stringify(msg)));
    this.#stats.acksSent++;
    op.ackedReduced = op.reduced;
    for (let r = 0; r < n; r++) op.ackedRecv[r] = op.agRecv[r]!;
  }

  #maybeFinish(op: Op): void {
    if (op.settled) return;
    const n = this.worldSize;
    if (op.reduced < this.#chunksOf(op, this.rank) || op.agQueue.length > 0) return;
    for (let r = 0; r < n; r++) if (r !== this.rank && op.agRecv[r]! < this.#chunksOf(op, r)) return;
    if (n > 1 && !op.flushed) {
      // Flush before resolving, so that a caller closing the connection right after does not
      // strand the reduced shard in the outbound buffer.
      if (!op.flushing) {
        op.flushing = true;
        this.#nc.flush().then(
          () => {
            op.flushed = true;
            this.#maybeFinish(op);
          },
          (e: unknown) =>
            this.#fail(
              op,
              new CollectiveError(`all-reduce step ${op.step}: flush failed: ${errorMessage(e)}`, {
                step: op.step,
                cause: e,
              }),
            ),
        );
      }
      return;
    }
    op.settled = true;
    // Flushed: the server has every message of the step, so the client holds none of them.
    this.#releaseAll(op);
    this.#res?.commit();
    this.#stats.completedSteps++;
    op.resolve(op.output);
  }

  #fail(op: Op, err: CollectiveError): void {
    if (op.settled) return;
    op.settled = true;
    op.pieces.clear();
    op.agQueue.length = 0;
    if (err.missingRanks.length > 0 || this.#state === 'OPEN') this.#log.warn(err.message, { step: op.step });
    op.reject(err);
  }

  // --- receiving ----------------------------------------------------------------------------------

  #subscribe(): void {
    const cb = (err: Error | null, msg: Msg): void => this.#onMessage(err, msg);
    // Order matters for ready(): the grad and ack subscriptions go before the hello subscription.
    this.#subs.push(this.#nc.subscribe(reduceScatterSubject(this.job, this.generation, this.rank), { callback: cb }));
    for (let r = 0; r < this.worldSize; r++) {
      if (r === this.rank) continue;
      this.#subs.push(this.#nc.subscribe(allGatherSubject(this.job, this.generation, r), { callback: cb }));
      this.#subs.push(
        this.#nc.subscribe(ackSubject(this.job, this.generation, r), { callback: (e, m) => this.#onAck(e, m) }),
      );
    }
    this.#subs.push(
      this.#nc.subscribe(helloSubject(this.job, this.generation), { callback: (e, m) => this.#onHello(e, m) }),
    );
  }

  /** The body of an authenticated control message, parsed; undefined (and counted) when it is not one. */
  #control<T>(msg: Msg): T | undefined {
    let body: string | undefined;
    try {
      body = this.#ctl.open(msg.subject, msg.string());
      if (body !== undefined) return JSON.parse(body) as T;
    } catch {
      // not JSON: dropped below
    }
    this.#stats.droppedInvalid++;
    this.#stats.rejectedControl++;
    if (isPowerOfTwo(this.#stats.rejectedControl)) {
      this.#log.warn('dropped control messages without a valid MAC', {
        subject: msg.subject,
        count: this.#stats.rejectedControl,
      });
    }
    return undefined;
  }

  #onHello(err: Error | null, msg: Msg): void {
    if (err !== null || this.#state !== 'OPEN') return;
    const h = this.#control<HelloMessage>(msg);
    if (h === undefined || h === null || typeof h !== 'object') return;
    this.#barrier.onHello(h, this.#state === 'OPEN' && !this.#nc.isClosed());
  }

  #onAck(err: Error | null, msg: Msg): void {
    if (err !== null || this.#state !== 'OPEN') return;
    const op = this.#op;
    if (op === undefined || op.settled) return;
    const a = this.#control<AckMessage>(msg);
    if (a === undefined || a === null || typeof a !== 'object') return;
    if (
      a.type !== 'ack' ||
      a.step !== op.step ||
      !Number.isInteger(a.from) ||
      a.from < 0 ||
      a.from >= this.worldSize ||
      a.from === this.rank
    )
      return;
    if (Number.isInteger(a.reduced)) op.rsAcked[a.from] = Math.max(op.rsAcked[a.from]!, a.reduced);
    const got = Array.isArray(a.received) ? a.received[this.rank] : undefined;
    if (typeof got === 'number') op.agAcked[a.from] = Math.max(op.agAcked[a.from]!, got);
    this.#releaseAcked(op);
    this.#pump(op);
  }

  /** Drops a chunk: counted by reason (stats, `onRejected`), logged at the 1st, 2nd, 4th, 8th… of a reason. */
  #reject(reason: RejectReason, detail: string, subject: string, h?: ChunkHeader): void {
    const n = (this.#rejected[reason] ?? 0) + 1;
    this.#rejected[reason] = n;
    switch (reason) {
      case RejectReason.mac:
        this.#stats.corrupted++;
        break;
      case RejectReason.stale:
        this.#stats.droppedStale++;
        break;
      case RejectReason.ahead:
        this.#stats.droppedAhead++;
        break;
      default:
        this.#stats.droppedInvalid++;
    }
    this.#onRejected?.(reason);
    const level = reason === RejectReason.stale ? 'debug' : 'warn';
    if (isPowerOfTwo(n)) {
      this.#log[level]('dropped gradient chunk', {
        reason,
        detail,
        subject,
        count: n,
        ...(h ? { step: h.step, from: h.rank, shard: h.shard, chunk: h.chunk } : {}),
      });
    }
  }

  #onMessage(err: Error | null, msg: Msg): void {
    if (err !== null) {
      this.#log.error('subscription error', { error: err.message });
      const op = this.#op;
      if (op)
        this.#fail(
          op,
          new CollectiveError(`all-reduce step ${op.step}: subscription error: ${err.message}`, {
            step: op.step,
            cause: err,
          }),
        );
      return;
    }
    if (this.#state !== 'OPEN') return;
    this.#stats.messagesReceived++;
    this.#stats.bytesReceived += msg.data.byteLength;

    const screened = screenChunk(msg.subject, msg.data, this, this.#mac);
    if (!screened.ok) {
      this.#reject(screened.reason, screened.detail, msg.subject, screened.header);
      return;
    }
    const { phase, header: h } = screened;
    const tag = tagOf(msg.data);
    const op = this.#op;
    if (op !== undefined && h.step === op.step) {
      if (!op.settled) {
        this.#apply(op, phase, h, msg.data, tag);
        // A reduce-scatter piece is kept until its chunk is reduced; an all-gather chunk is used up.
        if (phase === GradPhase.allGather) releaseReceived(msg.data);
        this.#pump(op);
      } else {
        this.#reject(RejectReason.stale, `step ${h.step} is over`, msg.subject, h);
      }
      return;
    }
    if (h.step <= this.#lastStep) {
      this.#reject(RejectReason.stale, `step ${h.step} is over (at step ${this.#lastStep})`, msg.subject, h);
      return;
    }
    // A step not started here yet: peers may be one step ahead (at most a window each).
    this.#future ??= { step: h.step, messages: new Map(), conflict: undefined };
    if (this.#future.step !== h.step) {
      this.#reject(
        RejectReason.ahead,
        `step ${h.step} while step ${this.#future.step} is the one buffered`,
        msg.subject,
        h,
      );
      return;
    }
    const key = positionKey(phase, h);
    const kept = this.#future.messages.get(key);
    if (kept !== undefined) {
      if (duplicateVerdict(kept.tag, tag) === 'identical')
        this.#reject(RejectReason.duplicate, 'a copy of a buffered chunk', msg.subject, h);
      else this.#future.conflict ??= this.#conflict(h.step, h);
      return;
    }
    this.#future.messages.set(key, { phase, header: h, data: new Uint8Array(msg.data), tag });
    this.#stats.bufferedAhead++;
  }

  #conflict(step: number, h: ChunkHeader): ChunkConflictError {
    const e = new ChunkConflictError(
      `all-reduce step ${step}: rank ${h.rank} sent two different ` +
        `authentic chunks at chunk ${h.chunk} of shard ${h.shard}` +
        " (a holder of the generation's key is broken or hostile)",
      { step, sender: h.rank },
    );
    this.#log.error('conflicting authentic chunks', { step, from: h.rank, shard: h.shard, chunk: h.chunk });
    return e;
  }

  /** Checks a chunk against the step and its sender's sequence (`placeChunk`), and stores its numbers. */
  #apply(op: Op, phase: GradPhase, h: ChunkHeader, data: Uint8Array, tag: string): void {
    if (op.settled) return;
    const counts = phase === GradPhase.reduceScatter ? op.rsRecv : op.agRecv;
    const expected = counts[h.rank]!;
    const place = placeChunk(
      h,
      phase,
      {
        step: op.step,
        length: op.length,
        chunkElements: op.ce,
        worldSize: this.worldSize,
        rank: this.rank,
        dtypeAt: (offset) => this.#dtypeAt(op, offset),
      },
      expected,
    );
    switch (place.action) {
      case 'fail':
        this.#stats.lostChunks += place.lost;
        this.#fail(
          op,
          new CollectiveError(`all-reduce step ${op.step}: ${place.detail}`, { step: op.step, missingRanks: [h.rank] }),
        );
        return;
      case 'drop':
        this.#reject(place.reason, place.detail, '', h);
        return;
      case 'duplicate':
        if (duplicateVerdict(op.tags.get(positionKey(phase, h)), tag) === 'identical') {
          this.#reject(RejectReason.duplicate, 'duplicate chunk', '', h);
        } else {
          this.#fail(op, this.#conflict(op.step, h));
        }
        return;
      case 'accept':
        break;
    }
    const { offset, count } = place;
    op.tags.set(positionKey(phase, h), tag);
    const payload = data.subarray(CHUNK_HEADER_BYTES);
    if (phase === GradPhase.reduceScatter) {
      let slot = op.pieces.get(h.chunk);
      if (slot === undefined) {
        slot = new Array<Uint8Array | undefined>(this.worldSize);
        op.pieces.set(h.chunk, slot);
      }
      // Kept as it is when 4-byte aligned (no copy: msg.data is the message's own bytes, a view the
      // client never writes again); else copied to an aligned array of its own.
      slot[h.rank] = payload.byteOffset % 4 === 0 ? payload : new Uint8Array(payload);
    } else if (h.dtype === ChunkDtype.Float32) {
      new Uint8Array(op.output.buffer, op.output.byteOffset + offset * 4, count * 4).set(payload);
    } else {
      const aligned = payload.byteOffset % 2 === 0 ? payload : new Uint8Array(payload);
      widenInto(
        h.dtype,
        new Uint16Array(aligned.buffer, aligned.byteOffset, count),
        op.output.subarray(offset, offset + count),
      );
    }
    counts[h.rank] = expected + 1;
  }
}
