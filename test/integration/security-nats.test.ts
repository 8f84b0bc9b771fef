/**
 * NATS in operator (JWT) mode against a real nats-server: the coordinator's credentials reach
 * JetStream KV; a worker's per-job credentials reach only that job's subjects; a client without
 * credentials cannot connect; one with another job's credentials cannot publish on this job's
 * subjects (the server reports a permissions violation and a subscriber with rights never sees
 * the message).
 */
import { credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reduceScatterSubject } from '../../common/subjects.js';
import { JobClient } from '../../coordinator/client.js';
import { JobStore } from '../../coordinator/job-store.js';
import { createNatsOperatorSetup, NatsCredentialIssuer, type NatsOperatorSetup } from '../../coordinator/nats-credentials.js';
import { startCoordinator } from '../../coordinator/server.js';
import { CoordinatorSession } from '../../worker/session.js';
import { jobNatsConnection } from '../../worker/job-nats.js';
import { natsScope, type NatsServer } from '../helpers/nats-server.js';
import { eventually, makeSpecFixture } from './coordinator-fixtures.js';

const nats = natsScope();
let server: NatsServer;
let setup: NatsOperatorSetup;
let issuer: NatsCredentialIssuer;

const creds = (text: string) => credsAuthenticator(new TextEncoder().encode(text));

/** Resolves with the first async permissions error the connection reports (or undefined after `ms`). */
async function permissionError(nc: NatsConnection, ms = 2_000): Promise<string | undefined> {
  const timer = new Promise<undefined>((r) => setTimeout(() => r(undefined), ms));
  const seen = (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'error' && /permission/i.test(String(s.error))) return String(s.error);
    }
    return undefined;
  })();
  return Promise.race([seen, timer]);
}

beforeAll(async () => {
  setup = await createNatsOperatorSetup();
  issuer = new NatsCredentialIssuer({ signingKeySeed: setup.signingKeySeed, account: setup.account });
  server = await nats.start({ jetstream: true, config: setup.serverConfig });
});
afterAll(() => nats.cleanup());

describe('NATS operator mode', () => {
  it('refuses a client without credentials', async () => {
    await expect(nats.connect(server)).rejects.toThrow(/authoriz|authentic/i);
  });

  it('gives the coordinator its KV bucket', async () => {
    const nc = await nats.connect(server, { authenticator: creds(setup.coordinatorCreds) });
    const store = await JobStore.open(nc);
    expect(await store.list()).toEqual([]);
  });

  it('lets a worker with the job\'s credentials publish on the job\'s subjects and refuses another job\'s', async () => {
    const job = 'job-a-12345';
    const other = 'job-b-67890';
    const a = await issuer.issueWorker(job, 'w0');
    const b = await issuer.issueWorker(other, 'w1');
    expect(a.inboxPrefix).toBe(`_INBOX_${job}`);
    const receiver = await nats.connect(server, { authenticator: creds(a.creds), inboxPrefix: a.inboxPrefix });
    const sender = await nats.connect(server, { authenticator: creds(a.creds), inboxPrefix: a.inboxPrefix });
    const intruder = await nats.connect(server, { authenticator: creds(b.creds), inboxPrefix: b.inboxPrefix });
    const subject = reduceScatterSubject(job, 1, 0);
    const got: string[] = [];
    const sub = receiver.subscribe(subject, { callback: (_e, m) => { got.push(new TextDecoder().decode(m.data)); } });
    await receiver.flush();

    const violation = permissionError(intruder);
    intruder.publish(subject, 'forged');
    await intruder.flush();
    expect(await violation).toMatch(/Permissions Violation for Publish to "polytune\.job-a-12345\.1\.grad\.rs\.0"/);
    // A subscription outside the job is refused too.
    const subViolation = permissionError(intruder);
    intruder.subscribe(`polytune.${job}.>`);
    await intruder.flush();
    expect(await subViolation).toMatch(/Permissions Violation for Subscription to "polytune\.job-a-12345\.>"/);

    sender.publish(subject, 'genuine');
    await sender.flush();
    await receiver.flush();
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toEqual(['genuine']);

    // Request/reply between peers of the job works through the job's inbox prefix.
    receiver.subscribe(`polytune.${job}.1.ctl.ping`, { callback: (_e, m) => { m.respond('pong'); } });
    await receiver.flush();
    const reply = await sender.request(`polytune.${job}.1.ctl.ping`, 'ping', { timeout: 2_000 });
    expect(reply.string()).toBe('pong');
    sub.unsubscribe();
  });

  it('keeps a worker out of the KV buckets and the shared inboxes', async () => {
    const a = await issuer.issueWorker('job-c-11111', 'w2');
    const nc = await nats.connect(server, { authenticator: creds(a.creds), inboxPrefix: a.inboxPrefix });
    const violation = permissionError(nc);
    nc.publish('$KV.polytune_jobs.job-c-11111', '{"state":"Succeeded"}');
    await nc.flush();
    expect(await violation).toMatch(/Permissions Violation for Publish to "\$KV\.polytune_jobs\.job-c-11111"/);
  });

  it('a coordinator with only its own credentials runs; its workers get per-job credentials in the assignment', async () => {
    const fixture = makeSpecFixture();
    const coordinator = await startCoordinator({
      listen: '127.0.0.1:0', natsUrl: server.url, progressFlushMs: 50,
      natsConnect: { authenticator: creds(setup.coordinatorCreds) }, natsIssuer: issuer,
    });
    const client = new JobClient({ address: coordinator.address });
    const session = await CoordinatorSession.connect({ address: coordinator.address, hello: { workerId: 'nats-w0', backend: 'cpu' }, connectTimeoutMs: 5_000 });
    try {
      const jobId = await client.submitText(fixture.yaml({ name: 'creds-job', workers: 1 }));
      const it = session.events()[Symbol.asyncIterator]();
      const ev = (await it.next()).value as Awaited<ReturnType<typeof it.next>>['value'];
      expect(ev?.type).toBe('assignment');
      if (ev?.type !== 'assignment') return;
      expect(ev.natsCreds).toMatch(/BEGIN NATS USER JWT/);
      expect(ev.natsInboxPrefix).toBe(`_INBOX_${jobId}`);
      const jn = await jobNatsConnection(ev, { natsFlag: undefined, workerId: 'nats-w0', shared: () => Promise.reject(new Error('unused')) });
      const got: string[] = [];
      jn.nc.subscribe(reduceScatterSubject(jobId, ev.generation, 0), { callback: (_e, m) => { got.push(m.string()); } });
      jn.nc.publish(reduceScatterSubject(jobId, ev.generation, 0), 'chunk');
      await jn.nc.flush();
      await eventually(() => (got.length === 1 ? true : undefined), 2_000, 'own message');
      // The same credentials cannot reach another job.
      const violation = permissionError(jn.nc);
      jn.nc.publish(reduceScatterSubject('someone-else-aaaaa', 1, 0), 'x');
      await jn.nc.flush();
      expect(await violation).toMatch(/Permissions Violation for Publish/);
      await jn.release();
      session.result({ jobId, generation: ev.generation, ok: true, steps: 1, outputDir: '/tmp/x' });
      await eventually(async () => ((await client.get(jobId)).state === 'SUCCEEDED' ? true : undefined), 5_000, 'job succeeded');
    } finally {
      await session.close();
      client.close();
      await coordinator.stop();
      fixture.cleanup();
    }
  });
});
