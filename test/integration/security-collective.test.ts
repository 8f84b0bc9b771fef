/**
 * Issue 20, authenticated chunks, against a real nats-server with a real rogue client on the job's
 * subjects (test/helpers/rogue-nats.ts): forged chunks (step + 1, values × -100, re-sealed without
 * the key, as the version-3 checksum could be), forged heads, replays of genuine chunks from an
 * earlier step or generation and duplicates leave every result bit-identical to a clean run's, and
 * are counted by reason; two different authentic chunks at one position fail the step.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';

import { ChunkConflictError } from '../../common/errors.js';
import { PromMeter } from '../../common/metrics.js';
import { ackSubject, helloSubject, reduceScatterSubject } from '../../common/subjects.js';
import { ChunkDtype, ChunkKind } from '../../worker/collective/chunk-header.js';
import { ChunkMac, encodeFloat32Chunk } from '../../worker/collective/chunk-mac.js';
import { GradientAllReduce, RejectReason, type AllReduceOptions } from '../../worker/collective/index.js';
import { createWorkerMetrics } from '../../worker/worker-metrics.js';
import {
  bytes,
  collectiveSuite,
  collectiveWorld,
  sumInRankOrder,
  TEST_COLLECTIVE_KEY,
  vector,
} from '../helpers/collective.js';
import { uniqueJobName } from '../helpers/nats-server.js';
import { rogueClient } from '../helpers/rogue-nats.js';

const suite = collectiveSuite();
const { scope } = suite;

const N = 3;
const LENGTH = 50_003; // several 64 KiB chunks a shard
const STEPS = 5;
const inputsOf = (step: number): Float32Array[] =>
  Array.from({ length: N }, (_, r) => vector(1000 * step + r + 1, LENGTH));

/** Runs STEPS all-reduces on every rank; the results of each step (rank 0's, after checking all ranks agree). */
async function runSteps(
  ranks: readonly GradientAllReduce[],
  between?: (step: number) => Promise<void>,
): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let step = 0; step < STEPS; step++) {
    await between?.(step);
    const inputs = inputsOf(step);
    const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(step, inputs[r]!)));
    for (const res of results) expect(bytes(res).equals(bytes(results[0]!))).toBe(true);
    out.push(results[0]!);
  }
  return out;
}

/** Counts `onRejected` calls by reason, per rank. */
function counting(): {
  counts: Array<Partial<Record<RejectReason, number>>>;
  opts: (r: number) => Partial<AllReduceOptions>;
} {
  const counts: Array<Partial<Record<RejectReason, number>>> = Array.from({ length: N }, () => ({}));
  return {
    counts,
    opts: (r) => ({
      onRejected: (reason) => {
        counts[r]![reason] = (counts[r]![reason] ?? 0) + 1;
      },
    }),
  };
}

async function world(
  extra: Partial<AllReduceOptions> & { jobPrefix?: string; job?: string; generation?: number } = {},
  perRank?: (r: number) => Partial<AllReduceOptions>,
) {
  if (!perRank) return collectiveWorld(scope, suite.server, N, { ready: true, ...extra });
  const { jobPrefix = 'sec', ...opts } = extra;
  const job = opts.job ?? uniqueJobName(jobPrefix);
  const ncs = await Promise.all(Array.from({ length: N }, () => scope.connect(suite.server)));
  const ranks = await Promise.all(
    ncs.map((nc, rank) =>
      GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: 1,
        rank,
        worldSize: N,
        timeoutMs: 20_000,
        ...opts,
        ...perRank(rank),
      }),
    ),
  );
  await Promise.all(ranks.map((ar) => ar.ready({ timeoutMs: 5000 })));
  return { job, ncs, ranks };
}

describe('a rogue NATS client without the key', () => {
  it(
    'forged chunks (step + 1, values × -100, re-sealed), ' + 'forged heads, replays and duplicates change no result',
    async () => {
      // The clean run: the same inputs, no rogue.
      const clean = await runSteps((await world({ jobPrefix: 'clean' })).ranks);
      for (let s = 0; s < STEPS; s++) expect(bytes(clean[s]!).equals(bytes(sumInRankOrder(inputsOf(s))))).toBe(true);

      const { counts, opts } = counting();
      const job = uniqueJobName('rogue');
      const rogue = rogueClient(await scope.connect(suite.server), job, {
        forge: true,
        forgeHead: true,
        replayAfter: 1,
        duplicate: true,
      });
      const attacked = await world({ job }, opts);
      const results = await runSteps(attacked.ranks);
      await rogue.stop();

      for (let s = 0; s < STEPS; s++) expect(bytes(results[s]!).equals(bytes(clean[s]!)), `step ${s}`).toBe(true);
      expect(rogue.forged).toBeGreaterThan(50);
      expect(rogue.replayed).toBeGreaterThan(10);
      expect(rogue.duplicated).toBeGreaterThan(10);
      const total = (reason: RejectReason): number =>
        attacked.ranks.reduce((n, ar) => n + (ar.stats.rejected[reason] ?? 0), 0);
      expect(total(RejectReason.mac)).toBeGreaterThan(50); // every forgery, on every rank it was meant for
      expect(total(RejectReason.stale)).toBeGreaterThan(5); // replays of the step before
      expect(total(RejectReason.duplicate)).toBeGreaterThan(5);
      attacked.ranks.forEach((ar, r) => {
        expect(ar.stats.rejected, `rank ${r}`).toEqual(counts[r]);
        expect(ar.stats.lostChunks).toBe(0);
        expect(ar.stats.completedSteps).toBe(STEPS);
      });
    },
  );

  it(
    'a replay of a genuine chunk from an earlier generation ' +
      'changes nothing, as it is or with its generation rewritten',
    async () => {
      const job = uniqueJobName('regen');
      // Generation 1 runs while two recorders keep every chunk, to replay onto generation 2's subjects.
      const asIs = rogueClient(await scope.connect(suite.server), job, { toGeneration: 2 });
      const rewritten = rogueClient(await scope.connect(suite.server), job, {
        toGeneration: 2,
        rewriteGeneration: true,
      });
      const gen1 = await world({ job, generation: 1 });
      await runSteps(gen1.ranks);
      await Promise.all(gen1.ranks.map((ar) => ar.close()));

      // Generation 2: a new key; before each step, every recorded chunk of generation 1 arrives again.
      const { counts, opts } = counting();
      const gen2 = await world({ job, generation: 2, key: randomBytes(32) }, opts);
      let replayed = 0;
      const results = await runSteps(gen2.ranks, async () => {
        replayed += asIs.replayAll() + rewritten.replayAll();
      });
      await asIs.stop();
      await rewritten.stop();

      for (let s = 0; s < STEPS; s++)
        expect(bytes(results[s]!).equals(bytes(sumInRankOrder(inputsOf(s)))), `step ${s}`).toBe(true);
      expect(replayed).toBeGreaterThan(100);
      const total = (reason: RejectReason): number =>
        gen2.ranks.reduce((n, ar) => n + (ar.stats.rejected[reason] ?? 0), 0);
      expect(total(RejectReason.stale)).toBeGreaterThan(20); // generation 1 in the header
      // generation 2 in the header: generation 1's key does not verify
      expect(total(RejectReason.mac)).toBeGreaterThan(20);
      gen2.ranks.forEach((ar, r) => expect(ar.stats.rejected).toEqual(counts[r]));
    },
  );

  it('the rejected chunks are counted by reason in polytune_collective_rejected_chunks_total', async () => {
    const meter = new PromMeter();
    const metrics = createWorkerMetrics(meter);
    const job = uniqueJobName('metric');
    const rogue = rogueClient(await scope.connect(suite.server), job, { forge: true });
    const w = await world({ job }, () => ({ onRejected: (reason) => metrics.rejectedChunk(job, reason) }));
    await runSteps(w.ranks);
    await rogue.stop();
    const text = await meter.registry.metrics();
    const line = text
      .split('\n')
      .find((l) => l.startsWith(`polytune_collective_rejected_chunks_total{job_id="${job}",reason="mac"}`));
    const total = w.ranks.reduce((n, ar) => n + (ar.stats.rejected.mac ?? 0), 0);
    expect(total).toBeGreaterThan(0);
    expect(line).toBe(`polytune_collective_rejected_chunks_total{job_id="${job}",reason="mac"} ${total}`);
  });
});

describe('forged control messages', () => {
  it("hellos and acks without the key are dropped: the barrier and the credit are the ranks' own", async () => {
    const job = uniqueJobName('ctl');
    const rogue = await scope.connect(suite.server);
    const forge = (): void => {
      rogue.publish(
        helloSubject(job, 1),
        JSON.stringify({
          type: 'hello',
          from: 1,
          heard: [0, 1, 2],
          ready: true,
          worldSize: N,
          compression: 'fp16',
          exactPrefix: 0,
          chunkElements: 1,
        }),
      );
      rogue.publish(
        helloSubject(job, 1),
        JSON.stringify({
          type: 'hello',
          from: 2,
          heard: [0, 1, 2],
          ready: true,
          worldSize: N,
          compression: 'none',
          exactPrefix: 0,
          chunkElements: 1,
        }),
      );
      for (let r = 0; r < N; r++) {
        for (let step = 0; step < STEPS; step++) {
          rogue.publish(
            ackSubject(job, 1, r),
            JSON.stringify({ type: 'ack', from: r, step, reduced: 1e9, received: [1e9, 1e9, 1e9] }),
          );
        }
      }
    };
    const timer = setInterval(forge, 5);
    try {
      const ncs = await Promise.all(Array.from({ length: N }, () => scope.connect(suite.server)));
      const ranks = await Promise.all(
        ncs.map((nc, rank) =>
          GradientAllReduce.create({
            key: TEST_COLLECTIVE_KEY,
            nc,
            job,
            generation: 1,
            rank,
            worldSize: N,
            timeoutMs: 20_000,
            windowChunks: 1,
          }),
        ),
      );
      forge();
      await Promise.all(ranks.map((ar) => ar.ready({ timeoutMs: 5000 })));
      for (const ar of ranks) expect(ar.chunkElements).toBe(16_360);
      const results = await runSteps(ranks);
      for (let s = 0; s < STEPS; s++)
        expect(bytes(results[s]!).equals(bytes(sumInRankOrder(inputsOf(s)))), `step ${s}`).toBe(true);
      for (const ar of ranks) {
        expect(ar.stats.rejectedControl).toBeGreaterThan(0);
        expect(ar.stats.windowStalls).toBeGreaterThan(0); // credit came only from the peers' real acks
      }
    } finally {
      clearInterval(timer);
    }
  });
});

describe('two different authentic chunks at one position', () => {
  const piece = (step: number, fill: number): Uint8Array =>
    encodeFloat32Chunk(
      {
        kind: ChunkKind.ReduceScatter,
        dtype: ChunkDtype.Float32,
        generation: 1,
        step,
        rank: 1,
        shard: 0,
        chunk: 0,
        chunks: 1,
        offset: 0,
        count: 50,
        chunkElements: 16_360,
        totalLength: 100,
      },
      new Float32Array(50).fill(fill),
      new ChunkMac(TEST_COLLECTIVE_KEY),
    );

  it('fail the running step with a ChunkConflictError naming the sender; the same one twice is ignored', async () => {
    const job = uniqueJobName('conflict');
    const [nc0, nc1] = [await scope.connect(suite.server), await scope.connect(suite.server)];
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: nc0,
      job,
      generation: 1,
      rank: 0,
      worldSize: 2,
      timeoutMs: 10_000,
    });
    expect(ar.chunkElements).toBe(16_360);
    const pending = ar.allReduce(0, new Float32Array(100)).then(
      () => undefined,
      (e: unknown) => e,
    );
    const first = piece(0, 1);
    nc1.publish(reduceScatterSubject(job, 1, 0), first);
    nc1.publish(reduceScatterSubject(job, 1, 0), first); // a copy: ignored
    await nc1.flush();
    await new Promise((r) => setTimeout(r, 100));
    expect(ar.stats.rejected).toEqual({ duplicate: 1 });
    nc1.publish(reduceScatterSubject(job, 1, 0), piece(0, 2)); // another chunk 0, authentic
    await nc1.flush();
    const err = await pending;
    expect(err).toBeInstanceOf(ChunkConflictError);
    expect((err as ChunkConflictError).sender).toBe(1);
    expect((err as ChunkConflictError).missingRanks).toEqual([1]);
    expect((err as ChunkConflictError).retryable).toBe(true);
  });

  it('fail a step that has not started here yet as soon as it starts', async () => {
    const job = uniqueJobName('conflict');
    const [nc0, nc1] = [await scope.connect(suite.server), await scope.connect(suite.server)];
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: nc0,
      job,
      generation: 1,
      rank: 0,
      worldSize: 2,
      timeoutMs: 10_000,
    });
    nc1.publish(reduceScatterSubject(job, 1, 0), piece(0, 1));
    nc1.publish(reduceScatterSubject(job, 1, 0), piece(0, 3));
    await nc1.flush();
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    const err = await ar.allReduce(0, new Float32Array(100)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ChunkConflictError);
    expect(Date.now() - started).toBeLessThan(1000);
  });
});
