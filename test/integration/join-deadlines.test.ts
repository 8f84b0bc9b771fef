/**
 * Join stream deadlines and worker identity against a real coordinator (real gRPC, real NATS):
 * a raw HTTP/2 client that never sends Hello, or sends half a message and stalls, sees its stream
 * ended (DEADLINE_EXCEEDED) and reset; one that stalls after Hello is ended by the heartbeat
 * timeout; a second Join under a live worker's id is refused (ALREADY_EXISTS), and accepted once
 * the first stream is dead.
 */
import * as http2 from 'node:http2';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import type { Coordinator } from '../../coordinator/server.js';
import { CoordinatorSession } from '../../worker/session.js';
import { eventually, startNats, startTestCoordinator } from './coordinator-fixtures.js';

let nats: NatsServer;
let coordinator: Coordinator;
const sessions: CoordinatorSession[] = [];
const clients: http2.ClientHttp2Session[] = [];

const HELLO_TIMEOUT_MS = 600;
const HEARTBEAT_TIMEOUT_MS = 1_500;

beforeAll(async () => {
  nats = await startNats();
  coordinator = await startTestCoordinator(nats, {
    helloTimeoutMs: HELLO_TIMEOUT_MS,
    heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
  });
});
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.close()));
  for (const c of clients.splice(0)) c.destroy();
});
afterAll(async () => {
  await coordinator?.stop();
  await nats?.stop();
});

/** A gRPC length-prefixed frame. */
function frame(body: Buffer, declaredLength = body.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(declaredLength, 1);
  return Buffer.concat([head, body]);
}

/** WorkerMessage { hello: Hello { worker_id } } in protobuf wire format. */
function helloMessage(workerId: string): Buffer {
  const id = Buffer.from(workerId, 'utf8');
  const hello = Buffer.concat([Buffer.from([0x0a, id.length]), id]);
  return Buffer.concat([Buffer.from([0x0a, hello.length]), hello]);
}

interface RawJoin {
  stream: http2.ClientHttp2Stream;
  /** Resolves when the stream is closed (trailers and/or reset), with the grpc-status seen and the time. */
  closed: Promise<{ grpcStatus: string | undefined; afterMs: number; rstCode: number }>;
  data: Buffer[];
}

/** Opens a Join stream with a raw HTTP/2 client and never ends its side. */
function rawJoin(): RawJoin {
  const session = http2.connect(`http://${coordinator.address}`);
  session.on('error', () => undefined);
  clients.push(session);
  const started = Date.now();
  const stream = session.request(
    {
      ':method': 'POST',
      ':path': '/polytune.v1.WorkerService/Join',
      'content-type': 'application/grpc',
      te: 'trailers',
    },
    { endStream: false },
  );
  stream.on('error', () => undefined);
  const data: Buffer[] = [];
  stream.on('data', (d: Buffer) => data.push(d));
  let grpcStatus: string | undefined;
  stream.on('response', (h) => {
    grpcStatus ??= h['grpc-status'] as string | undefined;
  });
  stream.on('trailers', (h) => {
    grpcStatus = h['grpc-status'] as string | undefined;
  });
  const closed = new Promise<{ grpcStatus: string | undefined; afterMs: number; rstCode: number }>((resolve) => {
    stream.on('close', () => resolve({ grpcStatus, afterMs: Date.now() - started, rstCode: stream.rstCode ?? -1 }));
  });
  return { stream, closed, data };
}

const within = <T>(p: Promise<T>, ms: number): Promise<T | 'still open'> =>
  Promise.race([p, new Promise<'still open'>((r) => setTimeout(() => r('still open'), ms))]);

describe('Join stream deadlines', () => {
  it('a stream that sends nothing is ended with DEADLINE_EXCEEDED and reset after the Hello deadline', async () => {
    const j = rawJoin();
    const r = await within(j.closed, 8_000);
    expect(r).not.toBe('still open');
    if (r === 'still open') return;
    expect(r.grpcStatus).toBe('4'); // DEADLINE_EXCEEDED
    // Reset by the coordinator (the client never ended its side): the stream's slot is free.
    expect(r.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
    expect(r.afterMs).toBeGreaterThanOrEqual(HELLO_TIMEOUT_MS - 50);
    expect(r.afterMs).toBeLessThan(HELLO_TIMEOUT_MS + 5_000);
  });

  it('a stream that sends half a message and stalls is closed the same way', async () => {
    const j = rawJoin();
    j.stream.write(frame(Buffer.from('partial'), 200));
    const r = await within(j.closed, 8_000);
    expect(r).not.toBe('still open');
    if (r === 'still open') return;
    expect(r.grpcStatus).toBe('4');
  });

  it('a stream that stalls mid-message after Hello is ended by the heartbeat timeout', async () => {
    const j = rawJoin();
    j.stream.write(frame(helloMessage('stall-after-hello')));
    await eventually(() => coordinator.registry.get('stall-after-hello'), 3_000, 'the raw worker registered');
    j.stream.write(frame(Buffer.from([0x12]), 50)); // a Heartbeat that never completes
    const r = await within(j.closed, HEARTBEAT_TIMEOUT_MS + 6_000);
    expect(r).not.toBe('still open');
    expect(coordinator.registry.get('stall-after-hello')).toBeUndefined();
  });

  it('a well-behaved worker is not affected by the Hello deadline', async () => {
    const s = await CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'prompt-worker', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 3_000,
    });
    sessions.push(s);
    await new Promise((r) => setTimeout(r, HELLO_TIMEOUT_MS * 2));
    expect(coordinator.registry.get('prompt-worker')).toBeDefined();
  });
});

describe('a worker id already connected', () => {
  it('is refused (ALREADY_EXISTS) while the first stream is alive; the first keeps its place', async () => {
    const first = await CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'dup-alive', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 3_000,
    });
    sessions.push(first);
    const joinedAt = coordinator.registry.get('dup-alive')?.joinedAt;
    const second = CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'dup-alive', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 1_500,
    });
    await expect(second).rejects.toThrow(/worker id "dup-alive" is already connected/);
    expect(coordinator.registry.get('dup-alive')?.joinedAt).toBe(joinedAt);
  });

  it('is accepted once the first stream is dead: silent past the heartbeat timeout', async () => {
    // A raw stream that says Hello and then nothing (no heartbeats): dead after the timeout.
    const j = rawJoin();
    j.stream.write(frame(helloMessage('dup-dead')));
    await eventually(() => coordinator.registry.get('dup-dead'), 3_000, 'the raw worker registered');
    const before = coordinator.registry.get('dup-dead')!.joinedAt;
    // Retries (ALREADY_EXISTS is retryable) until the old stream is found dead.
    const s = await CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'dup-dead', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 10_000,
    });
    sessions.push(s);
    expect(coordinator.registry.get('dup-dead')!.joinedAt).toBeGreaterThan(before);
  });

  it('is accepted at once when the first stream was closed', async () => {
    const first = await CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'dup-closed', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 3_000,
    });
    await first.close();
    await eventually(() => (coordinator.registry.get('dup-closed') ? undefined : true), 3_000, 'the first stream gone');
    const s = await CoordinatorSession.connect({
      address: coordinator.address,
      hello: { workerId: 'dup-closed', backend: 'cpu' },
      heartbeatIntervalMs: 250,
      connectTimeoutMs: 1_000,
    });
    sessions.push(s);
    expect(coordinator.registry.get('dup-closed')).toBeDefined();
  });
});
