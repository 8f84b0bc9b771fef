/**
 * The collective's flow control, compression, overlap API, loss and corruption detection and start
 * barrier, against a real nats-server.
 */
import { describe, expect, it } from 'vitest';

import { CollectiveError } from '../../common/errors.js';
import { reduceScatterSubject } from '../../common/subjects.js';
import { GradientAllReduce, type AllReduceOptions } from '../../worker/collective/index.js';
import { CHUNK_HEADER_BYTES, ChunkDtype, ChunkKind } from '../../worker/collective/chunk-header.js';
import { encodeFloat32Chunk } from '../../worker/collective/chunk-mac.js';
import {
  BIG,
  bytes,
  CHUNK_ELEMENTS,
  chunkStartOf,
  collectiveSuite,
  collectiveWorld,
  compressedReference,
  MAX_PAYLOAD,
  sumInRankOrder,
  vector,
  TEST_COLLECTIVE_KEY,
  testMac,
} from '../helpers/collective.js';
import { uniqueJobName } from '../helpers/nats-server.js';

const suite = collectiveSuite();
const { scope } = suite;

const world = (n: number, extra: Partial<AllReduceOptions> = {}) =>
  collectiveWorld(scope, suite.server, n, { jobPrefix: 'flow', ready: true, ...extra });

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('compression on the wire', () => {
  describe.each(['fp16', 'bf16'] as const)('%s', (compression) => {
    it.each([
      [2, 1],
      [3, 7],
      [4, BIG],
      [3, 2 * 65_000 + 5],
    ])('%i ranks, %i elements: the narrowed rank-order sum, bit-identical on every rank', async (n, length) => {
      const { ranks } = await world(n, { compression });
      const inputs = ranks.map((_, r) => vector(r + 11 + length, length));
      const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!)));
      const expected = compressedReference(inputs, compression);
      for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
      // half the bytes of float32 on the wire
      if (length === BIG) expect(ranks[0]!.stats.bytesSent).toBeLessThan(length * 2 * 1.1);
    });
  });

  it('exactPrefix keeps counts exact (chunks that hold them travel as float32)', async () => {
    const n = 3;
    const length = BIG;
    const { ranks } = await world(n, { compression: 'fp16', exactPrefix: 3 });
    const inputs = ranks.map((_, r) => {
      const v = vector(r + 5, length);
      v.set([123456.5 + r, 70001 + r, 99999 + r], 0); // not representable in binary16
      return v;
    });
    const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!)));
    const ce = ranks[0]!.chunkElements;
    const expected = compressedReference(inputs, 'fp16', (i) => chunkStartOf(i, length, n, ce) < 3);
    for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
    expect(Array.from(results[0]!.subarray(0, 3))).toEqual([
      Math.fround(3 * 123456.5 + 3),
      3 * 70001 + 3,
      3 * 99999 + 3,
    ]);
  });

  it('exact calls travel as float32 whatever the compression (a state broadcast stays exact)', async () => {
    const n = 3;
    const { ranks } = await world(n, { compression: 'fp16' });
    const inputs = ranks.map((_, r) => (r === 1 ? vector(7, BIG) : new Float32Array(BIG)));
    const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!, undefined, { exact: true })));
    for (const res of results) expect(bytes(res).equals(bytes(inputs[1]!))).toBe(true);
    // and the next step is compressed again
    const next = await Promise.all(ranks.map((ar, r) => ar.allReduce(1, inputs[r]!)));
    expect(bytes(next[0]!).equals(bytes(compressedReference(inputs, 'fp16')))).toBe(true);
  });

  it('error feedback carries the residual to the next step, and only after a step that completed', async () => {
    const n = 3;
    const length = 50_001;
    const { ranks } = await world(n, { compression: 'bf16', errorFeedback: true });
    const residuals = { senders: ranks.map(() => new Float32Array(length)), owner: new Float32Array(length) };
    for (let step = 0; step < 3; step++) {
      const inputs = ranks.map((_, r) => vector(100 * step + r, length));
      const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(step, inputs[r]!)));
      const expected = compressedReference(inputs, 'bf16', undefined, residuals);
      for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
    }
    // the residuals make a difference: without them, step 2 differs
    const inputs = ranks.map((_, r) => vector(200 + r, length));
    expect(
      bytes(compressedReference(inputs, 'bf16')).equals(
        bytes(compressedReference(inputs, 'bf16', undefined, residuals)),
      ),
    ).toBe(false);
  });
});

describe('overlap: input in pieces', () => {
  it('begin/append: chunks go out while the rest is produced; same bits as allReduce', async () => {
    const n = 4;
    const length = BIG;
    const { ranks } = await world(n);
    const inputs = ranks.map((_, r) => vector(r + 900, length));
    const results = await Promise.all(
      ranks.map(async (ar, r) => {
        if (r === 0) return ar.allReduce(0, inputs[r]!); // mixing both APIs is fine
        const h = ar.begin(0, length);
        let sentBeforeEnd = 0;
        for (let at = 0; at < length;) {
          const piece = Math.min(length - at, 1 + ((at * 7919 + r) % 40_000));
          h.append(inputs[r]!.subarray(at, at + piece));
          at += piece;
          if (at < length) {
            await sleep(2);
            sentBeforeEnd = ar.stats.messagesSent;
          }
        }
        expect(h.appended).toBe(length);
        expect(() => h.append(new Float32Array(1))).toThrow(RangeError);
        expect(sentBeforeEnd).toBeGreaterThan(0);
        return h.result;
      }),
    );
    const expected = sumInRankOrder(inputs);
    for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
  });

  it.each(['none', 'fp16'] as const)(
    '%s: many steps into the last result (output), message buffers reused, same bits as fresh arrays',
    async (compression) => {
      const n = 3;
      const length = 5 * CHUNK_ELEMENTS + 17;
      const { ranks } = await world(n, { compression, windowChunks: 2 });
      const outputs = ranks.map(() => new Float32Array(length).fill(Number.NaN));
      for (let s = 0; s < 6; s++) {
        const inputs = ranks.map((_, r) => vector(100 * s + r, length));
        const expected = compression === 'none' ? sumInRankOrder(inputs) : compressedReference(inputs, compression);
        // Odd steps through begin/append (its own input buffer, reused), even ones through allReduce.
        const results = await Promise.all(
          ranks.map(async (ar, r) => {
            if (s % 2 === 0) return ar.allReduce(s, inputs[r]!, undefined, { output: outputs[r]! });
            const h = ar.begin(s, length, undefined, { output: outputs[r]! });
            h.append(inputs[r]!.subarray(0, 1000));
            h.append(inputs[r]!.subarray(1000));
            return h.result;
          }),
        );
        results.forEach((res, r) => {
          expect(res).toBe(outputs[r]);
          expect(bytes(res).equals(bytes(expected))).toBe(true);
        });
      }
      for (const ar of ranks) {
        // Every step after the first builds its messages in released buffers.
        expect(ar.stats.messageBuffersReused).toBeGreaterThan(ar.stats.messagesSent / 2);
        expect(ar.stats.droppedInvalid + ar.stats.corrupted + ar.stats.lostChunks).toBe(0);
      }
    },
  );

  it('checks the output option', async () => {
    const { ranks } = await world(1);
    const ar = ranks[0]!;
    const data = new Float32Array(8);
    await expect(ar.allReduce(0, data, undefined, { output: new Float32Array(7) })).rejects.toThrow(
      /output: has 7 elements/,
    );
    await expect(ar.allReduce(0, data, undefined, { output: data.subarray(0, 8) })).rejects.toThrow(
      /overlaps the input/,
    );
    const shared = new Float32Array(12);
    await expect(ar.allReduce(0, shared.subarray(0, 8), undefined, { output: shared.subarray(4, 12) })).rejects.toThrow(
      /overlaps the input/,
    );
    await expect(ar.allReduceInPlace(0, data, undefined, { output: new Float32Array(8) })).rejects.toThrow(
      /not with allReduceInPlace/,
    );
    expect(() => ar.begin(0, 8, undefined, { output: new Float32Array(9) })).toThrow(/output: has 9 elements/);
    // Adjacent, not overlapping: fine.
    data.fill(3);
    const out = shared.subarray(8, 12);
    await expect(ar.allReduce(0, shared.subarray(0, 4).fill(2), undefined, { output: out })).resolves.toBe(out);
    expect([...out]).toEqual([2, 2, 2, 2]);
  });

  it('a step whose input never completes fails at the deadline, saying so', async () => {
    const { ranks } = await world(1, { timeoutMs: 300 });
    const h = ranks[0]!.begin(0, 10);
    h.append(new Float32Array(4));
    await expect(h.result).rejects.toThrow(/only 4 of 10 input elements/);
  });

  it('in place: the sum replaces the input', async () => {
    const n = 3;
    const { ranks } = await world(n);
    const inputs = ranks.map((_, r) => vector(r + 1, BIG));
    const expected = sumInRankOrder(inputs);
    const copies = inputs.map((x) => Float32Array.from(x));
    const results = await Promise.all(ranks.map((ar, r) => ar.allReduceInPlace(0, copies[r]!)));
    results.forEach((res, r) => {
      expect(res).toBe(copies[r]);
      expect(bytes(res).equals(bytes(expected))).toBe(true);
    });
  });
});

describe('flow control', () => {
  it('8 ranks through a window of 2 chunks: nothing dropped, no slow consumer, sends wait for credit', async () => {
    const n = 8;
    const length = 1_000_003; // 4 MB, 123 chunks of 64 KiB, 15-16 per shard
    const before = Number((await suite.server.monitor('varz'))['slow_consumers']);
    const { ranks } = await world(n, { windowChunks: 2 });
    expect(ranks[0]!.windowChunks).toBe(2);
    const inputs = ranks.map((_, r) => vector(r + 3, length));
    const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!)));
    const expected = sumInRankOrder(inputs);
    for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
    expect(ranks.reduce((k, ar) => k + ar.stats.windowStalls, 0)).toBeGreaterThan(0);
    for (const ar of ranks) {
      expect(ar.stats.lostChunks).toBe(0);
      expect(ar.stats.droppedInvalid).toBe(0);
      expect(ar.stats.acksSent).toBeGreaterThan(0);
    }
    expect(Number((await suite.server.monitor('varz'))['slow_consumers'])).toBe(before);
  });

  it('the default window keeps 2(N-1) windows within the in-flight budget', async () => {
    const { ranks } = await world(4, { inflightBytes: 2 * 1024 * 1024 });
    const w = ranks[0]!.windowChunks;
    expect(2 * 3 * w * MAX_PAYLOAD).toBeLessThanOrEqual(2 * 1024 * 1024);
    expect(w).toBeGreaterThanOrEqual(2);
  });
});

describe('losses and corruption', () => {
  const piece = (job: string, chunk: number, length: number, mutate?: (m: Uint8Array) => void): Uint8Array => {
    const m = encodeFloat32Chunk(
      {
        kind: ChunkKind.ReduceScatter,
        dtype: ChunkDtype.Float32,
        generation: 1,
        step: 0,
        rank: 1,
        shard: 0,
        chunk,
        chunks: 3,
        offset: chunk * CHUNK_ELEMENTS,
        count: CHUNK_ELEMENTS,
        chunkElements: CHUNK_ELEMENTS,
        totalLength: length,
      },
      vector(chunk, CHUNK_ELEMENTS),
      testMac,
    );
    mutate?.(m);
    void job;
    return m;
  };

  it("a gap in a sender's sequence is a lost chunk: an error at once, never a sum with zeros", async () => {
    const job = uniqueJobName('lost');
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
    const length = 6 * CHUNK_ELEMENTS; // shard 0 = 3 chunks
    const started = Date.now();
    const pending = ar.allReduce(0, vector(5, length)).then(
      () => undefined,
      (e: unknown) => e,
    );
    nc1.publish(reduceScatterSubject(job, 1, 0), piece(job, 0, length));
    nc1.publish(reduceScatterSubject(job, 1, 0), piece(job, 2, length)); // chunk 1 "lost"
    await nc1.flush();
    const err = await pending;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toBeInstanceOf(CollectiveError);
    expect((err as CollectiveError).missingRanks).toEqual([1]);
    expect((err as CollectiveError).message).toMatch(/lost 1 chunk\(s\) from rank 1 .*got chunk 2, expected 1/);
    expect(ar.stats.lostChunks).toBe(1);
  });

  it(
    'a chunk whose MAC does not verify is dropped and ' + 'counted, never applied, and does not fail the step',
    async () => {
      const job = uniqueJobName('mac');
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
      const length = 6 * CHUNK_ELEMENTS;
      const input = vector(5, length);
      const pending = ar.allReduce(0, input).then(
        () => undefined,
        (e: unknown) => e,
      );
      // A flipped bit (corruption on the way, or a forger's edit): dropped. The genuine chunk 0 after it
      // is taken as chunk 0, so the gap at chunk 2 is what fails the step.
      nc1.publish(
        reduceScatterSubject(job, 1, 0),
        piece(job, 0, length, (m) => {
          m[CHUNK_HEADER_BYTES + 100]! ^= 0x04;
        }),
      );
      nc1.publish(reduceScatterSubject(job, 1, 0), piece(job, 0, length));
      nc1.publish(reduceScatterSubject(job, 1, 0), piece(job, 2, length));
      await nc1.flush();
      const err = await pending;
      expect(err).toBeInstanceOf(CollectiveError);
      expect((err as CollectiveError).message).toMatch(/lost 1 chunk\(s\) from rank 1 .*got chunk 2, expected 1/);
      expect((err as CollectiveError).missingRanks).toEqual([1]);
      expect(ar.stats.corrupted).toBe(1);
      expect(ar.stats.rejected).toEqual({ mac: 1 });
      expect(bytes(input).equals(bytes(vector(5, length)))).toBe(true);
    },
  );
});

describe('ready(): the start barrier', () => {
  it('names the ranks not heard from at its deadline', async () => {
    const job = uniqueJobName('ready');
    const ncs = await Promise.all([0, 1, 2].map(() => scope.connect(suite.server)));
    const present = await Promise.all(
      [0, 1].map((rank) =>
        GradientAllReduce.create({ key: TEST_COLLECTIVE_KEY, nc: ncs[rank]!, job, generation: 1, rank, worldSize: 4 }),
      ),
    );
    const err = await present[0]!.ready({ timeoutMs: 400 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CollectiveError);
    expect((err as CollectiveError).missingRanks).toEqual([2, 3]);
  });

  it('refuses a peer with other settings', async () => {
    const job = uniqueJobName('ready');
    const ncs = await Promise.all([0, 1].map(() => scope.connect(suite.server)));
    const a = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: ncs[0]!,
      job,
      generation: 1,
      rank: 0,
      worldSize: 2,
      compression: 'fp16',
    });
    const b = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: ncs[1]!,
      job,
      generation: 1,
      rank: 1,
      worldSize: 2,
    });
    const outcomes = await Promise.allSettled([a.ready({ timeoutMs: 2000 }), b.ready({ timeoutMs: 2000 })]);
    for (const o of outcomes) {
      expect(o.status).toBe('rejected');
      expect(String((o as PromiseRejectedResult).reason)).toMatch(/compression/);
    }
  });
});
