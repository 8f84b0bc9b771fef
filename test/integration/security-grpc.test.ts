/**
 * gRPC security against a real coordinator (real NATS behind it): TLS with certificates made by
 * openssl, mutual TLS for workers, bearer tokens for JobService and for Join.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { Coordinator } from '../../coordinator/server.js';
import { CoordinatorSession, type SessionOptions } from '../../worker/session.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';
import { makeTestPki, type TestPki } from './security-fixtures.js';

const CLIENT_TOKEN = 'client-token-0123456789abcdef';
const WORKER_TOKEN = 'worker-token-0123456789abcdef';

let pki: TestPki;
let nats: NatsServer;
let coordinator: Coordinator;
let fixture: SpecFixture;
let address: string;
const clients: JobClient[] = [];
const sessions: CoordinatorSession[] = [];

function client(options: ConstructorParameters<typeof JobClient>[0] = {}): JobClient {
  const c = new JobClient({ address, callTimeoutMs: 5_000, ...options });
  clients.push(c);
  return c;
}

async function codeOf(p: Promise<unknown>): Promise<{ code: grpc.status; message: string }> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CoordinatorCallError);
    return { code: (e as CoordinatorCallError).code, message: (e as Error).message };
  }
  throw new Error('expected the call to fail');
}

async function join(id: string, options: Partial<SessionOptions>): Promise<CoordinatorSession> {
  const s = await CoordinatorSession.connect({
    address,
    hello: { workerId: id, backend: 'cpu' },
    connectTimeoutMs: 3_000,
    ...options,
  });
  sessions.push(s);
  return s;
}

beforeAll(async () => {
  pki = makeTestPki();
  fixture = makeSpecFixture();
  nats = await startNats();
  coordinator = await startTestCoordinator(nats, {
    tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca },
    // Worker ids other than the certificate's name join here (--no-worker-id-from-cert); the
    // default under mutual TLS is tested below.
    auth: { clientToken: CLIENT_TOKEN, workerToken: WORKER_TOKEN, workerIdFromCertificate: false },
  });
  address = `localhost:${coordinator.port}`;
});

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all(sessions.map((s) => s.close()));
  await coordinator?.stop();
  await nats?.stop();
  fixture?.cleanup();
  pki?.cleanup();
});

describe('JobService over TLS with a bearer token', () => {
  const tls = (): { ca: Buffer } => ({ ca: pki.ca });

  it('refuses Submit and Cancel without the token (UNAUTHENTICATED), and with a wrong one', async () => {
    const anonymous = client({ tls: tls() });
    const submit = await codeOf(anonymous.submitText(fixture.yaml({ name: 'no-token' })));
    expect(submit.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(submit.message).toMatch(/missing bearer token/);
    const cancel = await codeOf(anonymous.cancel('no-such-job-abcde'));
    expect(cancel.code).toBe(grpc.status.UNAUTHENTICATED);
    const wrong = client({ tls: tls(), token: 'not-the-token-0123456789' });
    const w = await codeOf(wrong.submitText(fixture.yaml({ name: 'wrong-token' })));
    expect(w.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(w.message).toMatch(/invalid bearer token/);
    // The worker token is not a client token.
    expect((await codeOf(client({ tls: tls(), token: WORKER_TOKEN }).submitText(fixture.yaml()))).code).toBe(
      grpc.status.UNAUTHENTICATED,
    );
    // Read-only calls need it too (documented in README "Security").
    expect((await codeOf(anonymous.list())).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await codeOf(anonymous.get('no-such-job-abcde'))).code).toBe(grpc.status.UNAUTHENTICATED);
    const watch = async (): Promise<void> => {
      for await (const ev of anonymous.watch('no-such-job-abcde')) void ev;
    };
    expect((await codeOf(watch())).code).toBe(grpc.status.UNAUTHENTICATED);
    expect(await coordinator.store.list()).toEqual([]);
  });

  it('submits, lists and cancels with the token', async () => {
    const c = client({ tls: tls(), token: CLIENT_TOKEN });
    const id = await c.submitText(fixture.yaml({ name: 'with-token' }));
    expect((await c.list()).map((j) => j.id)).toContain(id);
    const job = await c.cancel(id, 'test');
    expect(job.state).toBe('CANCELLED');
  });

  it('refuses a plaintext client on the TLS port', async () => {
    const plain = client({ token: CLIENT_TOKEN, callTimeoutMs: 2_000 });
    const r = await codeOf(plain.list());
    expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]).toContain(r.code);
  });

  it("refuses a client that does not trust the server's CA", async () => {
    const c = client({ tls: { ca: pki.rogueCa }, token: CLIENT_TOKEN, callTimeoutMs: 2_000 });
    const r = await codeOf(c.list());
    expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]).toContain(r.code);
  });
});

describe('WorkerService.Join with mutual TLS and the worker token', () => {
  it('refuses a worker without a client certificate', async () => {
    await expect(join('no-cert', { tls: { ca: pki.ca }, token: WORKER_TOKEN })).rejects.toThrow(
      /client certificate signed by the coordinator's --tls-client-ca is required/,
    );
  });

  it('refuses a worker whose certificate another CA signed', async () => {
    await expect(join('rogue-cert', { tls: { ca: pki.ca, ...roguePair() }, token: WORKER_TOKEN })).rejects.toThrow(
      /client certificate .* is required/,
    );
  });

  it('refuses a worker with a certificate but without the worker token, or with the client token', async () => {
    await expect(join('no-token', { tls: { ca: pki.ca, cert: pki.worker.cert, key: pki.worker.key } })).rejects.toThrow(
      /missing worker bearer token/,
    );
    await expect(
      join('client-token', { tls: { ca: pki.ca, cert: pki.worker.cert, key: pki.worker.key }, token: CLIENT_TOKEN }),
    ).rejects.toThrow(/invalid worker bearer token/);
  });

  it('lets a worker with its certificate and token join', async () => {
    const s = await join('good-worker', {
      tls: { ca: pki.ca, cert: pki.worker.cert, key: pki.worker.key },
      token: WORKER_TOKEN,
    });
    expect(s.workerId).toBe('good-worker');
    expect(coordinator.registry.get('good-worker')).toBeDefined();
    expect(coordinator.registry.get('no-cert')).toBeUndefined();
    expect(coordinator.registry.get('rogue-cert')).toBeUndefined();
  });
});

describe("--worker-id-from-cert: a worker's id is a name of its certificate", () => {
  let strict: Coordinator;
  beforeAll(async () => {
    strict = await startTestCoordinator(nats, {
      tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca },
      auth: { workerToken: WORKER_TOKEN, workerIdFromCertificate: true },
    });
  });
  afterAll(() => strict?.stop());
  const joinStrict = async (id: string): Promise<CoordinatorSession> => {
    const s = await CoordinatorSession.connect({
      address: `localhost:${strict.port}`,
      hello: { workerId: id, backend: 'cpu' },
      connectTimeoutMs: 3_000,
      tls: { ca: pki.ca, cert: pki.worker.cert, key: pki.worker.key },
      token: WORKER_TOKEN,
    });
    sessions.push(s);
    return s;
  };

  it("lets the certificate's own name join and refuses another, naming both", async () => {
    // The test PKI's worker certificate has CN=worker.
    await expect(joinStrict('impostor')).rejects.toThrow(
      /Hello.worker_id "impostor" is not a name of the worker's client certificate \(worker\)/,
    );
    expect(strict.registry.get('impostor')).toBeUndefined();
    const s = await joinStrict('worker');
    expect(s.workerId).toBe('worker');
    expect(strict.registry.get('worker')).toBeDefined();
  });

  it('is on by default under mutual TLS', async () => {
    const byDefault = await startTestCoordinator(nats, {
      tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca },
      auth: { workerToken: WORKER_TOKEN },
    });
    try {
      const connect = (id: string): Promise<CoordinatorSession> =>
        CoordinatorSession.connect({
          address: `localhost:${byDefault.port}`,
          hello: { workerId: id, backend: 'cpu' },
          connectTimeoutMs: 3_000,
          tls: { ca: pki.ca, cert: pki.worker.cert, key: pki.worker.key },
          token: WORKER_TOKEN,
        });
      await expect(connect('impostor')).rejects.toThrow(/is not a name of the worker's client certificate/);
      const s = await connect('worker');
      sessions.push(s);
      expect(byDefault.registry.get('worker')).toBeDefined();
    } finally {
      await byDefault.stop();
    }
  });

  it('refuses to start without mutual TLS', async () => {
    await expect(startTestCoordinator(nats, { auth: { workerIdFromCertificate: true } })).rejects.toThrow(
      /--worker-id-from-cert needs mutual TLS/,
    );
  });
});

function roguePair(): { cert: Buffer; key: Buffer } {
  return { cert: pki.rogue.cert, key: pki.rogue.key };
}
