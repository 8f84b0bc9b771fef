/**
 * One rank of `bench/allreduce.ts` (and of the collective's kill test), a child process driven over
 * IPC (`child_process.fork`), so that ranks run in parallel on their own cores.
 *
 * parent → rank: `setup` (a collective, or plain pub/sub subscriptions), `run` (one timed
 * iteration), `exit`. rank → parent: `ready`, `done` (start/end in epoch milliseconds, a CRC of the
 * result so the parent can check that ranks agree, sampled checks against the exact expectation).
 */
import { crc32 } from 'node:zlib';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';

import { errorMessage } from '../common/errors.js';
import { ChunkDtype } from '../worker/collective/chunk-header.js';
import { GradientAllReduce } from '../worker/collective/gradient-allreduce.js';
import { presizeNatsMessageBuffers, releaseReceived } from '../worker/collective/nats-receive.js';
import { dequantize, quantize, type Compression } from '../worker/collective/wire-codec.js';
import { benchValue, type FromRank, type RankSetup, type ToRank } from './allreduce-protocol.js';

function fill(buf: Float32Array, rank: number): void {
  for (let i = 0; i < buf.length; i++) buf[i] = benchValue(i, rank);
}

function expected(i: number, n: number, compression: Compression): number {
  let s = 0;
  for (let r = 0; r < n; r++) s = Math.fround(s + benchValue(i, r)); // exact anyway
  if (compression === 'none') return s;
  const dtype = compression === 'fp16' ? ChunkDtype.Float16 : ChunkDtype.BFloat16;
  const q = new Uint16Array(1);
  const w = new Float32Array(1);
  quantize(dtype, Float32Array.of(s), q);
  dequantize(dtype, q, w);
  return w[0]!;
}

const now = (): number => performance.timeOrigin + performance.now();
/** CPU seconds (user + system) of this process since `since`. */
const cpuSince = (since: NodeJS.CpuUsage): number => {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
};
const send = (m: FromRank): void => {
  process.send?.(m);
};

let nc: NatsConnection | undefined;
let setup: RankSetup | undefined;
let ar: GradientAllReduce | undefined;
let input: Float32Array | undefined;
let output: Float32Array | undefined;
/** The last all-reduce result, until the parent asks for its check. */
let last: Float32Array | undefined;
let subs: Subscription[] = [];
let received = 0;
let receivedTarget = 0;
let onReceived: (() => void) | undefined;

async function doSetup(s: RankSetup): Promise<void> {
  setup = s;
  // The ceiling's plain subscribers receive through the same client as the collective's.
  presizeNatsMessageBuffers();
  nc ??= await connect({ servers: s.url, name: `bench-rank-${s.rank}`, reconnect: false });
  await ar?.close();
  ar = undefined;
  for (const sub of subs) sub.unsubscribe();
  subs = [];
  received = 0;
  receivedTarget = 0;
  if (s.mode === 'allreduce') {
    ar = await GradientAllReduce.create({
      nc,
      key: Buffer.from(s.keyHex, 'hex'),
      job: s.job,
      generation: 1,
      rank: s.rank,
      worldSize: s.worldSize,
      timeoutMs: s.timeoutMs,
      compression: s.compression,
      maxChunkBytes: s.maxChunkBytes,
      windowChunks: s.windowChunks,
    });
    await ar.ready({ timeoutMs: 30_000 });
    if (input?.length !== s.elements) {
      input = undefined;
      input = new Float32Array(s.elements);
    }
    fill(input, s.rank);
    send({ type: 'ready', rank: s.rank, chunkElements: ar.chunkElements, windowChunks: ar.windowChunks });
  } else {
    const cb = (_e: Error | null, m: { data: Uint8Array }): void => {
      received += m.data.byteLength;
      releaseReceived(m.data); // as the collective does once it has used a chunk
      onReceived?.();
    };
    subs.push(nc.subscribe(`bench.${s.job}.rs.${s.rank}`, { callback: cb }));
    for (let r = 0; r < s.worldSize; r++)
      if (r !== s.rank) subs.push(nc.subscribe(`bench.${s.job}.ag.${r}`, { callback: cb }));
    await nc.flush();
    send({ type: 'ready', rank: s.rank, chunkElements: 0, windowChunks: 0 });
  }
}

async function runAllReduce(s: RankSetup, step: number): Promise<void> {
  if (s.inPlace && step > 0) fill(input!, s.rank);
  send({ type: 'started', rank: s.rank, step });
  const start = now();
  const cpu0 = process.cpuUsage();
  try {
    // As the trainer: the previous step's result (checked and done with) takes this step's, unless
    // --fresh-output asks for a new array each step.
    if (!s.inPlace && !s.freshOutput && output?.length !== input!.length) output = new Float32Array(input!.length);
    const out = s.inPlace
      ? await ar!.allReduceInPlace(step, input!)
      : await ar!.allReduce(step, input!, undefined, s.freshOutput ? {} : { output });
    const end = now();
    const cpuSeconds = cpuSince(cpu0);
    last = out;
    send({ type: 'done', rank: s.rank, step, ok: true, start, end, cpuSeconds, windowStalls: ar!.stats.windowStalls });
  } catch (e) {
    const missing = (e as { missingRanks?: number[] }).missingRanks;
    send({
      type: 'done',
      rank: s.rank,
      step,
      ok: false,
      error: errorMessage(e),
      missingRanks: missing ? [...missing] : undefined,
      start,
      end: now(),
    });
  }
}

/** Sampled checks of the last result against the exact expectation, and its CRC (ranks must agree). */
function verify(s: RankSetup, step: number): void {
  const out = last!;
  let mismatches = 0;
  let checked = 0;
  const stride = Math.max(1, Math.floor(out.length / 4096));
  for (let i = 0; i < out.length; i += stride, checked++)
    if (out[i] !== expected(i, s.worldSize, s.compression)) mismatches++;
  const crc = crc32(new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
  send({ type: 'verified', rank: s.rank, step, crc, checked, mismatches });
}

/** The same traffic as the all-reduce, as plain pub/sub: (N-1)/N·S to the owners, S/N fanned out to all. */
async function runPubSub(s: RankSetup, step: number): Promise<void> {
  const n = s.worldSize;
  const bytes = s.elements * (s.compression === 'none' ? 4 : 2);
  const chunk = s.chunkBytes!;
  const payload = new Uint8Array(chunk);
  const shard = Math.floor(bytes / n);
  const expect = 2 * (n - 1) * Math.ceil(shard / chunk) * chunk; // every message full-size
  // Cumulative over runs: a peer that starts the next run first may already be sending to this
  // rank before it gets here, and those bytes must count for the next run, not be reset away.
  const target = (receivedTarget += expect);
  const got = new Promise<void>((resolve) => {
    onReceived = () => {
      if (received >= target) {
        onReceived = undefined;
        resolve();
      }
    };
    onReceived();
  });
  const start = now();
  const cpu0 = process.cpuUsage();
  const client = nc!;
  let unflushed = 0;
  const pub = async (subject: string): Promise<void> => {
    for (let sent = 0; sent < shard; sent += chunk) {
      client.publish(subject, payload);
      unflushed += chunk;
      if (unflushed >= 4 * 1024 * 1024) {
        unflushed = 0;
        await client.flush();
      }
    }
  };
  for (let i = 1; i < n; i++) await pub(`bench.${s.job}.rs.${(s.rank + i) % n}`);
  await pub(`bench.${s.job}.ag.${s.rank}`);
  await client.flush();
  const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), s.timeoutMs).unref());
  const res = await Promise.race([got.then(() => 'ok' as const), timeout]);
  const end = now();
  if (res === 'ok') send({ type: 'done', rank: s.rank, step, ok: true, start, end, cpuSeconds: cpuSince(cpu0) });
  else
    send({
      type: 'done',
      rank: s.rank,
      step,
      ok: false,
      error: `received ${received - (target - expect)} of ${expect} bytes`,
      start,
      end,
    });
}

process.on('message', (m: ToRank) => {
  const handle = async (): Promise<void> => {
    if (m.type === 'setup') await doSetup(m);
    else if (m.type === 'verify') {
      if (setup) verify(setup, m.step);
    } else if (m.type === 'run') {
      if (setup?.mode === 'allreduce') await runAllReduce(setup, m.step);
      else if (setup) await runPubSub(setup, m.step);
    } else {
      await ar?.close();
      await nc?.close();
      process.exit(0);
    }
  };
  handle().catch((e: unknown) => {
    process.stderr.write(`rank: ${errorMessage(e)}\n`);
    process.exit(1);
  });
});
process.on('disconnect', () => process.exit(0));
