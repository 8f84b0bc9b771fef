/**
 * The pieces split out of gradient-allreduce.ts, without NATS: options, start barrier, buffer
 * pool, timeout diagnosis, error feedback.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';

import { CollectiveError } from '../../common/errors.js';
import type { HelloMessage } from '../../common/subjects.js';
import { compileOptions, DEFAULT_ALLREDUCE_TIMEOUT_MS } from '../../worker/collective/allreduce-options.js';
import { MessagePool } from '../../worker/collective/buffer-pool.js';
import { ErrorFeedback } from '../../worker/collective/error-feedback.js';
import { StartBarrier } from '../../worker/collective/start-barrier.js';
import { diagnoseTimeout, type StepProgress } from '../../worker/collective/timeout-diagnosis.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';

const nc = { info: { max_payload: 1024 * 1024 } } as unknown as NatsConnection;
const base = { nc, key: TEST_COLLECTIVE_KEY, job: 'j', generation: 1, rank: 0, worldSize: 4 };

describe('compileOptions', () => {
  it('applies the defaults and derives chunk size and window from max_payload and the in-flight budget', () => {
    const c = compileOptions(base);
    expect(c.timeoutMs).toBe(DEFAULT_ALLREDUCE_TIMEOUT_MS);
    expect(c.chunkElements).toBe((1024 * 1024 - 96) / 4);
    expect(c.windowChunks).toBe(5); // 32 MiB / (2 · 3 peers · 1 MiB)
    expect(compileOptions({ ...base, compression: 'fp16' }).chunkElements).toBe((1024 * 1024 - 96) / 2);
    expect(compileOptions({ ...base, compression: 'fp16', exactPrefix: 10 }).chunkElements).toBe(
      (1024 * 1024 - 96) / 4,
    );
    expect(compileOptions({ ...base, compression: 'none', errorFeedback: true }).errorFeedback).toBe(false);
  });

  it('names the option it refuses', () => {
    expect(() => compileOptions({ ...base, key: new Uint8Array(8) })).toThrow(/^key: must be 32 bytes/);
    expect(() => compileOptions({ ...base, rank: 4 })).toThrow(/^rank:/);
    expect(() => compileOptions({ ...base, timeoutMs: 0 })).toThrow(/^timeoutMs:/);
    expect(() => compileOptions({ ...base, compression: 'zip' as never })).toThrow(/^compression:/);
    expect(() => compileOptions({ ...base, windowChunks: 0.5 })).toThrow(/^windowChunks:/);
    expect(() => compileOptions({ ...base, maxChunkBytes: 96 })).toThrow(/no room for data after the 96-byte header/);
  });
});

describe('StartBarrier', () => {
  const hello = (from: number, heard: number[], over: Partial<HelloMessage> = {}): HelloMessage => ({
    type: 'hello',
    from,
    heard,
    ready: false,
    worldSize: 3,
    compression: 'none',
    exactPrefix: 0,
    chunkElements: 1000,
    ...over,
  });

  it('passes once every peer heard this rank and was heard; adopts the smallest chunk size', async () => {
    const sent: HelloMessage[] = [];
    const b = new StartBarrier(
      { rank: 0, worldSize: 3, compression: 'none', exactPrefix: 0 },
      (m) => sent.push(m),
      () => 4000,
    );
    const waiting = b.wait(5000, undefined, () => true);
    b.onHello(hello(1, []), true);
    b.onHello(hello(2, [0, 1], { chunkElements: 3000 }), true);
    expect(b.done).toBe(false);
    b.onHello(hello(1, [0, 2], { chunkElements: 2500 }), true);
    await expect(waiting).resolves.toBe(2500);
    expect(b.done).toBe(true);
    expect(sent[0]).toMatchObject({ type: 'hello', from: 0, ready: false, chunkElements: 4000 });
    b.say();
    expect(sent.at(-1)).toMatchObject({ ready: true, heard: [1, 2] });
  });

  it('fails on a peer with other settings, and at its deadline naming the ranks not heard', async () => {
    const b = new StartBarrier(
      { rank: 0, worldSize: 3, compression: 'none', exactPrefix: 0 },
      () => undefined,
      () => 1000,
    );
    const waiting = b.wait(5000, undefined, () => true);
    b.onHello(hello(2, [], { compression: 'fp16' }), true);
    await expect(waiting).rejects.toThrow(/rank 2 differs from rank 0: compression fp16 ≠ none/);
    const c = new StartBarrier(
      { rank: 1, worldSize: 3, compression: 'none', exactPrefix: 0 },
      () => undefined,
      () => 1000,
    );
    c.onHello(hello(0, [1]), true);
    const err = await c
      .wait(120, undefined, () => true)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(CollectiveError);
    expect((err as CollectiveError).missingRanks).toEqual([2]);
  });
});

describe('MessagePool', () => {
  it('hands back released buffers of the same size, up to its cap', () => {
    const pool = new MessagePool(250);
    const a = pool.alloc(100);
    const b = pool.alloc(100);
    const c = pool.alloc(100);
    pool.release(a);
    pool.release(b);
    pool.release(c); // over the cap: dropped
    expect(pool.alloc(100)).toBe(b);
    expect(pool.alloc(100)).toBe(a);
    expect(pool.alloc(100)).not.toBe(c);
    expect(pool.alloc(50).byteLength).toBe(50);
    expect(pool.reused).toBe(2);
  });
});

describe('diagnoseTimeout', () => {
  const p: StepProgress = {
    step: 9,
    rank: 0,
    worldSize: 3,
    timeoutMs: 1000,
    windowChunks: 2,
    ready: 30,
    length: 30,
    rsRecv: [0, 3, 1],
    agRecv: [0, 3, 3],
    rsNext: [0, 3, 3],
    rsAcked: [0, 3, 3],
    chunksOf: () => 3,
  };
  it('names what the step waited for, in order', () => {
    const a = diagnoseTimeout(p);
    expect(a.message).toBe(
      "all-reduce step 9 timed out after 1000 ms: rank 0 is missing its shard's pieces from ranks 2 (1/3 chunks)",
    );
    expect(a.missingRanks).toEqual([2]);
    const b = diagnoseTimeout({ ...p, rsRecv: [0, 3, 3], agRecv: [0, 2, 3] });
    expect(b.message).toMatch(/missing the reduced shards of ranks 1 \(2\/3 chunks\)/);
    const c = diagnoseTimeout({ ...p, rsRecv: [0, 3, 3], ready: 10 });
    expect(c.message).toMatch(/only 10 of 30 input elements were appended/);
    const d = diagnoseTimeout({ ...p, rsRecv: [0, 3, 3], rsAcked: [0, 0, 3] });
    expect(d.message).toMatch(/while sending \(no credit from ranks 1\)/);
    expect(d.retryable).toBe(true);
  });
});

describe('ErrorFeedback', () => {
  it('keeps residuals by element and by own-shard element, and commits only when told', () => {
    const f = new ErrorFeedback(10, 3, 1); // shard 1: [3, 6)
    expect(f.ownerIn.length).toBe(3);
    const [, out] = f.sender(2, 3);
    out.fill(1);
    const [, own] = f.owner(4, 2);
    own.fill(2);
    expect([...f.senderIn]).toEqual(new Array(10).fill(0));
    f.commit();
    expect([...f.senderIn]).toEqual([0, 0, 1, 1, 1, 0, 0, 0, 0, 0]);
    expect([...f.ownerIn]).toEqual([0, 2, 2]);
  });
});
