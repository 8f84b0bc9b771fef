/** Shared helpers for the collective's tests: deterministic inputs and reference sums. */
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { CHUNK_HEADER_BYTES, ChunkDtype } from '../../worker/collective/chunk-header.js';
import { ChunkMac } from '../../worker/collective/chunk-mac.js';
import { GradientAllReduce, type AllReduceOptions } from '../../worker/collective/index.js';
import { natsScope, uniqueJobName, type NatsScope, type NatsServer } from './nats-server.js';
import { dequantize, quantize, type Compression } from '../../worker/collective/wire-codec.js';

/** The collective key of the test worlds (a generation's key, as the coordinator hands out). */
export const TEST_COLLECTIVE_KEY = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
/** Seals chunks as the test worlds' ranks do (for hand-made peers). */
export const testMac = new ChunkMac(TEST_COLLECTIVE_KEY);

/** The collective suites' server's max_payload: small, so that test vectors span many chunks. */
export const MAX_PAYLOAD = 64 * 1024;
/** float32 elements in one chunk at MAX_PAYLOAD. */
export const CHUNK_ELEMENTS = Math.floor((MAX_PAYLOAD - CHUNK_HEADER_BYTES) / 4);
/** More than 3 x max_payload (in bytes and in elements), and not a multiple of the chunk size. */
export const BIG = 200_003;

/**
 * A suite's nats-server (max_payload MAX_PAYLOAD), started before its tests and stopped after them,
 * and a scope for each test's connections, closed after each test.
 */
export function collectiveSuite(): { readonly scope: NatsScope; readonly server: NatsServer } {
  const servers = natsScope();
  const scope = natsScope();
  let server: NatsServer | undefined;
  beforeAll(async () => {
    server = await servers.start({ maxPayload: MAX_PAYLOAD });
  });
  afterAll(() => servers.cleanup());
  afterEach(() => scope.cleanup());
  return {
    scope,
    get server(): NatsServer {
      if (!server) throw new Error('collectiveSuite: the server starts in beforeAll');
      return server;
    },
  };
}

/** Deterministic pseudo-random floats over many magnitudes, so that summation order shows. */
export function vector(seed: number, length: number): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = (next() - 0.5) * 10 ** (next() * 8 - 4);
  return out;
}

export function sumInRankOrder(inputs: readonly Float32Array[]): Float32Array {
  const acc = Float32Array.from(inputs[0]!);
  for (let r = 1; r < inputs.length; r++) {
    const x = inputs[r]!;
    for (let i = 0; i < acc.length; i++) acc[i]! += x[i]!;
  }
  return acc;
}

export function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function narrowWiden(
  dtype: ChunkDtype.Float16 | ChunkDtype.BFloat16,
  x: Float32Array,
  resIn?: Float32Array,
  resOut?: Float32Array,
): Float32Array {
  const q = new Uint16Array(x.length);
  const w = new Float32Array(x.length);
  quantize(dtype, x, q, resIn, resOut);
  dequantize(dtype, q, w);
  return w;
}

/**
 * What a compressed all-reduce must give: each rank's input narrowed (with its residual), summed
 * in rank order in float32, the sum narrowed once (with the owner's residual). `exact[i]` marks
 * elements that travel as float32. Updates the residuals when given (error feedback).
 */
export function compressedReference(
  inputs: readonly Float32Array[],
  compression: Exclude<Compression, 'none'>,
  exact?: (i: number) => boolean,
  residuals?: { senders: Float32Array[]; owner: Float32Array },
): Float32Array {
  const dtype = compression === 'fp16' ? ChunkDtype.Float16 : ChunkDtype.BFloat16;
  const n = inputs[0]!.length;
  const contributions = inputs.map((x, r) => {
    const res = residuals?.senders[r];
    const out = res ? new Float32Array(n) : undefined;
    const w = narrowWiden(dtype, x, res, out);
    if (res && out) for (let i = 0; i < n; i++) if (!exact?.(i)) res[i] = out[i]!;
    return w;
  });
  const sum = sumInRankOrder(contributions);
  const ores = residuals?.owner;
  const oout = ores ? new Float32Array(n) : undefined;
  const result = narrowWiden(dtype, sum, ores, oout);
  if (ores && oout) for (let i = 0; i < n; i++) if (!exact?.(i)) ores[i] = oout[i]!;
  if (exact) {
    const plain = sumInRankOrder(inputs);
    for (let i = 0; i < n; i++) if (exact(i)) result[i] = plain[i]!;
  }
  return result;
}

/** Owner rank and chunk start of element i, as the collective splits the vector. */
export function chunkStartOf(i: number, length: number, worldSize: number, chunkElements: number): number {
  let k = 0;
  while (Math.floor(((k + 1) * length) / worldSize) <= i) k++;
  const start = Math.floor((k * length) / worldSize);
  return start + Math.floor((i - start) / chunkElements) * chunkElements;
}

/**
 * `n` ranks of one job on `server`, each with its own connection from `scope`, generation 1;
 * `ready` waits for every rank's hello (what a worker does before its first call).
 */
export async function collectiveWorld(
  scope: NatsScope,
  server: NatsServer,
  n: number,
  extra: Partial<AllReduceOptions> & { jobPrefix?: string; ready?: boolean } = {},
): Promise<{ job: string; ncs: NatsConnection[]; ranks: GradientAllReduce[] }> {
  const { jobPrefix = 'ar', ready = false, key = TEST_COLLECTIVE_KEY, ...opts } = extra;
  const job = opts.job ?? uniqueJobName(jobPrefix);
  const ncs = await Promise.all(Array.from({ length: n }, () => scope.connect(server)));
  const ranks = await Promise.all(
    ncs.map((nc, rank) =>
      GradientAllReduce.create({ nc, key, job, generation: 1, rank, worldSize: n, timeoutMs: 20_000, ...opts }),
    ),
  );
  if (ready) await Promise.all(ranks.map((ar) => ar.ready({ timeoutMs: 5000 })));
  return { job, ncs, ranks };
}
