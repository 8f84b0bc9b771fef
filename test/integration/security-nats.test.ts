/**
 * NATS in operator (JWT) mode against a real nats-server: the coordinator's credentials reach
 * JetStream KV; a worker's per-job credentials reach only that job's subjects; a client without
 * credentials cannot connect; one with another job's credentials cannot publish on this job's
 * subjects (the server reports a permissions violation and a subscriber with rights never sees
 * the message).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reduceScatterSubject } from '../../common/subjects.js';
import { JobClient } from '../../coordinator/client.js';
import { JobStore } from '../../coordinator/job-store.js';
import { serveSecurity } from '../../coordinator/cli-security.js';
import {
  createNatsOperatorSetup,
  DEFAULT_NATS_CREDS_TTL_SECONDS,
  NatsCredentialIssuer,
  type NatsOperatorSetup,
} from '../../coordinator/nats-credentials.js';
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

  it("lets a worker with the job's credentials publish on the job's subjects and refuses another job's", async () => {
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
    const sub = receiver.subscribe(subject, {
      callback: (_e, m) => {
        got.push(new TextDecoder().decode(m.data));
      },
    });
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
    receiver.subscribe(`polytune.${job}.1.ctl.ping`, {
      callback: (_e, m) => {
        m.respond('pong');
      },
    });
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

  it('a worker credential expires: the server closes the connection, and a new one is refused', async () => {
    const shortLived = new NatsCredentialIssuer({
      signingKeySeed: setup.signingKeySeed,
      account: setup.account,
      ttlSeconds: 2,
    });
    const { creds: text } = await shortLived.issueWorker('job-ttl-22222', 'w-ttl');
    const nc = await nats.connect(server, { authenticator: creds(text) });
    const closed = nc.closed();
    const started = Date.now();
    const error = await Promise.race([closed, new Promise((r) => setTimeout(() => r('still open'), 8_000))]);
    expect(String(error)).toMatch(/expired/i);
    expect(Date.now() - started).toBeLessThan(8_000);
    // Expiry is in whole seconds: a second later the server refuses the credential at connect too.
    await new Promise((r) => setTimeout(r, 1_500));
    await expect(nats.connect(server, { authenticator: creds(text) })).rejects.toThrow(/expired|authoriz/i);
  });

  it('serve reads the credential lifetime, a day by default, and refuses a bad one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-ttl-'));
    try {
      const key = join(dir, 'account-signing-key.nk');
      writeFileSync(key, setup.signingKeySeed + '\n');
      const base = { 'nats-account-signing-key': key, 'nats-account': setup.account };
      const expiry = async (v: Record<string, string>): Promise<number | undefined> => {
        const { creds: text } = await serveSecurity(v).natsIssuer!.issueWorker('job-x-33333', 'w');
        const jwt = /-----BEGIN NATS USER JWT-----\n(.+)\n/.exec(text)![1]!;
        const claims = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as {
          exp?: number;
          iat: number;
        };
        // exp is set before the library stamps iat, possibly in the next second.
        return claims.exp === undefined ? undefined : claims.exp - claims.iat;
      };
      const near = (ttl: number): unknown => expect.toSatisfy((v: number) => v === ttl || v === ttl - 1);
      expect(await expiry(base)).toEqual(near(DEFAULT_NATS_CREDS_TTL_SECONDS));
      expect(await expiry({ ...base, 'nats-creds-ttl': '600' })).toEqual(near(600));
      expect(await expiry({ ...base, 'nats-creds-ttl': '0' })).toBeUndefined();
      expect(() => serveSecurity({ ...base, 'nats-creds-ttl': '1.5h' })).toThrow(
        /--nats-creds-ttl: "1.5h" is not a whole number/,
      );
      expect(() => serveSecurity({ 'nats-creds-ttl': '60' })).toThrow(
        /--nats-creds-ttl needs --nats-account-signing-key/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    'a coordinator with only its own credentials runs; ' + 'its workers get per-job credentials in the assignment',
    async () => {
      const fixture = makeSpecFixture();
      const coordinator = await startCoordinator({
        listen: '127.0.0.1:0',
        natsUrl: server.url,
        progressFlushMs: 50,
        natsConnect: { authenticator: creds(setup.coordinatorCreds) },
        natsIssuer: issuer,
      });
      const client = new JobClient({ address: coordinator.address });
      const session = await CoordinatorSession.connect({
        address: coordinator.address,
        hello: { workerId: 'nats-w0', backend: 'cpu' },
        connectTimeoutMs: 5_000,
      });
      try {
        const jobId = await client.submitText(fixture.yaml({ name: 'creds-job', workers: 1 }));
        const it = session.events()[Symbol.asyncIterator]();
        const ev = (await it.next()).value as Awaited<ReturnType<typeof it.next>>['value'];
        expect(ev?.type).toBe('assignment');
        if (ev?.type !== 'assignment') return;
        expect(ev.natsCreds).toMatch(/BEGIN NATS USER JWT/);
        expect(ev.natsInboxPrefix).toBe(`_INBOX_${jobId}`);
        const jn = await jobNatsConnection(ev, {
          natsFlag: undefined,
          workerId: 'nats-w0',
          shared: () => Promise.reject(new Error('unused')),
        });
        const got: string[] = [];
        jn.nc.subscribe(reduceScatterSubject(jobId, ev.generation, 0), {
          callback: (_e, m) => {
            got.push(m.string());
          },
        });
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
        await eventually(
          async () => ((await client.get(jobId)).state === 'SUCCEEDED' ? true : undefined),
          5_000,
          'job succeeded',
        );
      } finally {
        await session.close();
        client.close();
        await coordinator.stop();
        fixture.cleanup();
      }
    },
  );
});
