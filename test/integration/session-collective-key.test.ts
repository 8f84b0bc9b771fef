/**
 * The worker's session checks an assignment's collective key on receipt (worker/session.ts): one
 * without a 32-byte key is never started; the coordinator gets a Result naming the field. Against a
 * minimal WorkerService on 127.0.0.1:0 that answers Hello and sends the assignments under test.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';

import { loadCoordinatorProto, type WorkerMessage__Output, type WorkerServiceHandlers } from '../../proto/index.js';
import { CoordinatorSession, type SessionEvent } from '../../worker/session.js';

/** A valid TrainJob (the session re-parses every assignment's spec before it looks at the key). */
const SPEC_JSON = JSON.stringify({
  apiVersion: 'polytune/v1',
  kind: 'TrainJob',
  metadata: { name: 'key-test' },
  spec: {
    model: { path: '/models/tiny' },
    method: { name: 'slam', layers: [0] },
    data: { train: [{ path: '/data/train.jsonl', format: 'alpaca' }] },
    training: { maxSteps: 1, globalBatchSize: 1, optimizer: { name: 'sgd', lr: 0.1 } },
    workers: { count: 1 },
    output: { dir: '/runs/key-test' },
  },
});

let server: grpc.Server | undefined;
afterEach(() => {
  server?.forceShutdown();
  server = undefined;
});

async function fakeCoordinator(keys: Uint8Array[]): Promise<{ address: string; received: WorkerMessage__Output[] }> {
  const received: WorkerMessage__Output[] = [];
  const handlers: WorkerServiceHandlers = {
    Join: (call) => {
      call.on('data', (m: WorkerMessage__Output) => {
        received.push(m);
        if (m.msg !== 'hello') return;
        call.write({ ack: { workerId: 'w-key' } });
        keys.forEach((collectiveKey, i) =>
          call.write({
            assignment: {
              jobId: `job-${i}`,
              generation: 1,
              rank: 0,
              worldSize: 1,
              totalSteps: 1,
              natsUrl: 'nats://127.0.0.1:1',
              specJson: SPEC_JSON,
              collectiveKey,
            },
          }),
        );
      });
      call.on('error', () => undefined);
    },
  };
  server = new grpc.Server();
  server.addService(loadCoordinatorProto().WorkerService.service, handlers);
  const port = await new Promise<number>((resolve, reject) => {
    server!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p)));
  });
  return { address: `127.0.0.1:${port}`, received };
}

describe("an assignment's collective key", () => {
  it('is checked on receipt: without 32 bytes the job is refused with a Result naming the field', async () => {
    const good = Uint8Array.from({ length: 32 }, (_, i) => i + 7);
    const fake = await fakeCoordinator([new Uint8Array(0), new Uint8Array(16), good]);
    const session = await CoordinatorSession.connect({
      address: fake.address,
      hello: { workerId: 'w-key', backend: 'wasm' },
    });
    try {
      const events: SessionEvent[] = [];
      for await (const e of session.events()) {
        events.push(e);
        if (e.type === 'assignment') break;
      }
      // Only the third assignment reaches the worker, with its key.
      expect(events.map((e) => e.type)).toEqual(['assignment']);
      const a = events[0] as Extract<SessionEvent, { type: 'assignment' }>;
      expect(a.jobId).toBe('job-2');
      expect(Buffer.from(a.collectiveKey).equals(Buffer.from(good))).toBe(true);
      const deadline = Date.now() + 5000;
      while (fake.received.filter((m) => m.msg === 'result').length < 2 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      const results = fake.received.filter((m) => m.msg === 'result').map((m) => m.result!);
      expect(results.map((r) => [r.jobId, r.ok, r.error])).toEqual([
        ['job-0', false, 'assignment.collective_key: must be 32 bytes, got 0'],
        ['job-1', false, 'assignment.collective_key: must be 32 bytes, got 16'],
      ]);
    } finally {
      await session.close();
    }
  });
});
