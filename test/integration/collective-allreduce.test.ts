import { describe, expect, it } from 'vitest';

import { CollectiveError } from '../../common/errors.js';
import { allGatherSubject, reduceScatterSubject } from '../../common/subjects.js';
import { GradientAllReduce, type AllReduceOptions } from '../../worker/collective/index.js';
import { receiveBuffersReused } from '../../worker/collective/nats-receive.js';
import { CHUNK_HEADER_BYTES, ChunkDtype, ChunkKind, encodeChunkHeader } from '../../worker/collective/chunk-header.js';
import { encodeFloat32Chunk } from '../../worker/collective/chunk-mac.js';
import {
  BIG,
  bytes,
  CHUNK_ELEMENTS,
  collectiveSuite,
  collectiveWorld,
  MAX_PAYLOAD,
  sumInRankOrder,
  vector,
  TEST_COLLECTIVE_KEY,
  testMac,
} from '../helpers/collective.js';
import { uniqueJobName } from '../helpers/nats-server.js';

const suite = collectiveSuite();
const { scope } = suite;

const world = (n: number, extra: Partial<AllReduceOptions> = {}) => collectiveWorld(scope, suite.server, n, extra);

describe('GradientAllReduce over a real nats-server', () => {
  it('reads max_payload from the server and chunks to fit', async () => {
    const { ranks } = await world(1);
    expect(ranks[0]!.chunkElements).toBe(CHUNK_ELEMENTS);
    expect(BIG % CHUNK_ELEMENTS).not.toBe(0);
    expect(BIG * 4).toBeGreaterThan(3 * MAX_PAYLOAD);
  });

  describe.each([1, 2, 3, 4, 8])('%i ranks', (n) => {
    it.each([1, 7, 1000, BIG])('%i elements: bit-identical rank-order sum on every rank', async (length) => {
      const { ranks } = await world(n);
      const inputs = ranks.map((_, r) => vector(r + 1 + length, length));
      const expected = sumInRankOrder(inputs);
      const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!)));
      for (const res of results) {
        expect(res).toBeInstanceOf(Float32Array);
        expect(res.length).toBe(length);
        expect(bytes(res).equals(bytes(expected))).toBe(true);
      }
      // inputs are left alone
      expect(bytes(inputs[0]!).equals(bytes(vector(1 + length, length)))).toBe(true);
      if (n > 1 && length === BIG) {
        // the chunked path ran: more than one chunk per shard for every world size here
        const sent = ranks[0]!.stats.messagesSent;
        expect(sent).toBeGreaterThan(n);
      }
      await Promise.all(ranks.map((ar) => ar.close()));
    });
  });

  it('is order-sensitive in float32, so the test above means something', () => {
    const inputs = [0, 1, 2, 3].map((r) => vector(r + 77, 1000));
    const fwd = sumInRankOrder(inputs);
    const rev = sumInRankOrder([...inputs].reverse());
    expect(bytes(fwd).equals(bytes(rev))).toBe(false);
  });

  it('runs many steps with ranks racing ahead, no barrier (receive buffers reused all along)', async () => {
    const n = 4;
    const { ranks } = await world(n);
    const reusedBefore = receiveBuffersReused();
    const steps = 25;
    const length = 3 * CHUNK_ELEMENTS + 11;
    const results = await Promise.all(
      ranks.map(async (ar, r) => {
        const out: Float32Array[] = [];
        for (let s = 0; s < steps; s++) {
          // Uneven pacing: some ranks start the next step immediately, others later.
          if ((r + s) % 3 === 0) await new Promise((res) => setTimeout(res, (r * 7 + s) % 13));
          out.push(await ar.allReduce(s, vector(1000 * s + r, length)));
        }
        return out;
      }),
    );
    for (let s = 0; s < steps; s++) {
      const expected = sumInRankOrder(Array.from({ length: n }, (_, r) => vector(1000 * s + r, length)));
      for (let r = 0; r < n; r++) expect(bytes(results[r]![s]!).equals(bytes(expected))).toBe(true);
    }
    expect(ranks.reduce((k, ar) => k + ar.stats.bufferedAhead, 0)).toBeGreaterThan(0);
    // Chunks longer than a socket read came in buffers given back by earlier chunks, and every
    // result above is still exact: none was given back while its numbers were still needed.
    expect(receiveBuffersReused() - reusedBefore).toBeGreaterThan(100);
    for (const ar of ranks) {
      expect(ar.stats.droppedInvalid).toBe(0);
      expect(ar.stats.droppedAhead).toBe(0);
    }
  });

  it('a rank that never sends: CollectiveError naming it, within the timeout', async () => {
    const n = 4;
    const silent = 2;
    const timeoutMs = 1500;
    const { ranks } = await world(n, { timeoutMs });
    const started = Date.now();
    const outcomes = await Promise.allSettled(
      ranks.filter((_, r) => r !== silent).map((ar) => ar.allReduce(0, vector(ar.rank, 1000))),
    );
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(elapsed).toBeLessThan(timeoutMs + 2000);
    for (const o of outcomes) {
      expect(o.status).toBe('rejected');
      const err = (o as PromiseRejectedResult).reason as unknown;
      expect(err).toBeInstanceOf(CollectiveError);
      const ce = err as CollectiveError;
      expect(ce.missingRanks).toEqual([silent]);
      expect(ce.step).toBe(0);
      expect(ce.retryable).toBe(true);
      expect(ce.message).toMatch(/ranks 2 \(0\/1 chunks\)/);
    }
  });

  it('a missing chunk is reported, never summed as zero', async () => {
    // rank 0 is real; rank 1 is played by hand and sends only the first of its two chunks.
    const job = uniqueJobName('ar');
    const timeoutMs = 1000;
    const [nc0, nc1] = [await scope.connect(suite.server), await scope.connect(suite.server)];
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: nc0,
      job,
      generation: 1,
      rank: 0,
      worldSize: 2,
      timeoutMs,
    });
    const length = 4 * CHUNK_ELEMENTS; // shard 0 = 2 chunks
    const pending = ar.allReduce(0, vector(5, length));
    const piece = vector(6, CHUNK_ELEMENTS);
    nc1.publish(
      reduceScatterSubject(job, 1, 0),
      encodeFloat32Chunk(
        {
          kind: ChunkKind.ReduceScatter,
          dtype: ChunkDtype.Float32,
          generation: 1,
          step: 0,
          rank: 1,
          shard: 0,
          chunk: 0,
          chunks: 2,
          offset: 0,
          count: CHUNK_ELEMENTS,
          chunkElements: CHUNK_ELEMENTS,
          totalLength: length,
        },
        piece,
        testMac,
      ),
    );
    await nc1.flush();
    const err = await pending.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CollectiveError);
    expect((err as CollectiveError).missingRanks).toEqual([1]);
    expect((err as CollectiveError).message).toContain('1 (1/2 chunks)');
  });

  it('ignores messages of an older generation and malformed or forged messages', async () => {
    const n = 3;
    const job = uniqueJobName('gen');
    const length = 1000;
    const ncs = await Promise.all(Array.from({ length: n }, () => scope.connect(suite.server)));
    const current = await Promise.all(
      ncs.map((nc, rank) =>
        GradientAllReduce.create({
          key: TEST_COLLECTIVE_KEY,
          nc,
          job,
          generation: 5,
          rank,
          worldSize: n,
          timeoutMs: 20_000,
        }),
      ),
    );
    // A zombie world of generation 4 on the same job, reducing garbage at the same step.
    const zombies = await Promise.all(
      [0, 1, 2].map(async (rank) =>
        GradientAllReduce.create({
          key: TEST_COLLECTIVE_KEY,
          nc: await scope.connect(suite.server),
          job,
          generation: 4,
          rank,
          worldSize: n,
          timeoutMs: 20_000,
        }),
      ),
    );
    const zombieRuns = zombies.map((z) => z.allReduce(0, new Float32Array(length).fill(1e6)));

    // Forged traffic on the current generation's subjects, before and during the step.
    const forger = await scope.connect(suite.server);
    const stale = encodeFloat32Chunk(
      {
        kind: ChunkKind.ReduceScatter,
        dtype: ChunkDtype.Float32,
        generation: 4,
        step: 0,
        rank: 1,
        shard: 0,
        chunk: 0,
        chunks: 1,
        offset: 0,
        count: 333,
        chunkElements: 333,
        totalLength: length,
      },
      new Float32Array(333).fill(1e6),
      testMac,
    );
    forger.publish(reduceScatterSubject(job, 5, 0), stale);
    forger.publish(reduceScatterSubject(job, 5, 0), new Uint8Array([1, 2, 3]));
    const badKind = new Uint8Array(CHUNK_HEADER_BYTES + 4);
    encodeChunkHeader(
      {
        kind: ChunkKind.AllGather,
        dtype: ChunkDtype.Float32,
        generation: 5,
        step: 0,
        rank: 2,
        shard: 1,
        chunk: 0,
        chunks: 1,
        offset: 333,
        count: 1,
        chunkElements: 333,
        totalLength: length,
      },
      badKind,
    );
    forger.publish(allGatherSubject(job, 5, 2), badKind);
    await forger.flush();

    const inputs = current.map((_, r) => vector(r + 40, length));
    const results = await Promise.all(current.map((ar, r) => ar.allReduce(0, inputs[r]!)));
    const expected = sumInRankOrder(inputs);
    for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
    expect(current[0]!.stats.droppedStale).toBeGreaterThanOrEqual(1);
    expect(current[0]!.stats.droppedInvalid).toBeGreaterThanOrEqual(1);
    expect(current[1]!.stats.droppedInvalid + current[2]!.stats.droppedInvalid).toBeGreaterThanOrEqual(1);

    // The zombies only ever talked among themselves (and finish with their own sum).
    const zres = await Promise.all(zombieRuns);
    for (const z of zres) expect(z[0]).toBe(3e6);
  });

  it('rejects a peer whose vector length differs', async () => {
    const { ranks } = await world(2, { timeoutMs: 5000 });
    const outcomes = await Promise.allSettled([
      ranks[0]!.allReduce(0, new Float32Array(10)),
      ranks[1]!.allReduce(0, new Float32Array(12)),
    ]);
    for (const o of outcomes) {
      expect(o.status).toBe('rejected');
      expect((o as PromiseRejectedResult).reason).toBeInstanceOf(CollectiveError);
      expect(String((o as PromiseRejectedResult).reason.message)).toMatch(/vector of 1[02] elements/);
    }
  });

  it('recovers after a failed step: the next step works', async () => {
    const { ranks } = await world(2, { timeoutMs: 500 });
    await expect(ranks[0]!.allReduce(0, new Float32Array(10))).rejects.toBeInstanceOf(CollectiveError);
    // rank 1 is late for step 0 and sends it anyway; rank 0 has moved on to step 1.
    const late = ranks[1]!.allReduce(0, new Float32Array(10)).catch((e: unknown) => e);
    await expect(late).resolves.toBeInstanceOf(CollectiveError);
    const a = vector(1, 100);
    const b = vector(2, 100);
    const [r0, r1] = await Promise.all([ranks[0]!.allReduce(1, a), ranks[1]!.allReduce(1, b)]);
    expect(bytes(r0).equals(bytes(sumInRankOrder([a, b])))).toBe(true);
    expect(bytes(r1).equals(bytes(r0))).toBe(true);
  });

  it('abort, step order and close', async () => {
    const { ranks } = await world(2, { timeoutMs: 10_000 });
    const ac = new AbortController();
    const p = ranks[0]!.allReduce(3, new Float32Array(5), ac.signal);
    await expect(ranks[0]!.allReduce(4, new Float32Array(5))).rejects.toThrow(/still running/);
    ac.abort(new Error('stop'));
    await expect(p).rejects.toThrow(/aborted/);
    await expect(ranks[0]!.allReduce(3, new Float32Array(5))).rejects.toBeInstanceOf(RangeError);
    const q = expect(ranks[0]!.allReduce(4, new Float32Array(5))).rejects.toThrow(/closed/);
    await Promise.all([ranks[0]!.close(), ranks[0]!.close()]);
    await q;
    await expect(ranks[0]!.allReduce(5, new Float32Array(5))).rejects.toBeInstanceOf(CollectiveError);
  });

  it('validates its options', async () => {
    const nc = await scope.connect(suite.server);
    await expect(
      GradientAllReduce.create({ key: TEST_COLLECTIVE_KEY, nc, job: 'Bad_Name', generation: 0, rank: 0, worldSize: 1 }),
    ).rejects.toThrow(/DNS-1123/);
    await expect(
      GradientAllReduce.create({ key: TEST_COLLECTIVE_KEY, nc, job: 'ok', generation: 0, rank: 2, worldSize: 2 }),
    ).rejects.toBeInstanceOf(RangeError);
    await expect(
      GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job: 'ok',
        generation: 0,
        rank: 0,
        worldSize: 1,
        maxChunkBytes: 10,
      }),
    ).rejects.toBeInstanceOf(RangeError);
  });
});
