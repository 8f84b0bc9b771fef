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
import { JobStore } from '../../coordinator/job-store.js';
import { createNatsOperatorSetup, NatsCredentialIssuer, type NatsOperatorSetup } from '../../coordinator/nats-credentials.js';
import { natsScope, type NatsServer } from '../helpers/nats-server.js';

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
    const sub = receiver.subscribe(subject, { callback: (_e, m) => got.push(new TextDecoder().decode(m.data)) });
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
    receiver.subscribe(`polytune.${job}.1.ctl.ping`, { callback: (_e, m) => m.respond('pong') });
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
});
