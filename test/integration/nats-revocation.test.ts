/**
 * Per-generation worker NATS credentials and their revocation, against a real nats-server in
 * operator mode (the setup of `coordinator nats-auth init`): a revoked credential's open
 * connection is closed by the server and a new one is refused, others are untouched; through the
 * coordinator, a worker's credential stops working when its generation is cancelled or it leaves.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from '@nats-io/jwt';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reduceScatterSubject } from '../../common/subjects.js';
import { serveSecurity } from '../../coordinator/cli-security.js';
import { JobClient } from '../../coordinator/client.js';
import {
  createNatsOperatorSetup,
  NatsCredentialIssuer,
  writeNatsOperatorSetup,
  type NatsOperatorSetup,
} from '../../coordinator/nats-credentials.js';
import { NatsRevoker } from '../../coordinator/nats-revocation.js';
import { startCoordinator } from '../../coordinator/server.js';
import { CoordinatorSession, type AssignmentEvent } from '../../worker/session.js';
import { natsScope, startNatsServer, type NatsServer } from '../helpers/nats-server.js';
import { eventually, makeSpecFixture } from './coordinator-fixtures.js';

const nats = natsScope();
let server: NatsServer;
let setup: NatsOperatorSetup;
let issuer: NatsCredentialIssuer;

const creds = (text: string) => credsAuthenticator(new TextEncoder().encode(text));
const revocation = () => ({
  systemCreds: setup.systemCreds,
  accountJwt: setup.accountJwt,
  operatorSigningKeySeed: setup.operatorSigningKeySeed,
});

/** Resolves with the reason the connection closed, or 'still open' after `ms`. */
async function closedWithin(nc: NatsConnection, ms: number): Promise<string> {
  const r = await Promise.race([
    nc.closed().then((e) => String(e ?? 'closed')),
    new Promise<string>((res) => setTimeout(() => res('still open'), ms)),
  ]);
  return r;
}

beforeAll(async () => {
  setup = await createNatsOperatorSetup();
  issuer = new NatsCredentialIssuer({ signingKeySeed: setup.signingKeySeed, account: setup.account });
  server = await nats.start({ jetstream: true, config: setup.serverConfig });
  // The account is loaded on the server once a user of it connects (the coordinator does first).
  await nats.connect(server, { authenticator: creds(setup.coordinatorCreds) });
});
afterAll(() => nats.cleanup());

describe('NatsRevoker', () => {
  it(
    'revokes a worker credential: its connection is ' + 'closed, a new one refused; another credential works on',
    async () => {
      const sys = await nats.connect(server, { authenticator: creds(setup.systemCreds) });
      const revoker = new NatsRevoker({ nc: sys, ...revocation() });
      const gone = await issuer.issueWorker('job-r-11111', 'w0', 1);
      const kept = await issuer.issueWorker('job-r-11111', 'w1', 1);
      const ncGone = await nats.connect(server, {
        authenticator: creds(gone.creds),
        inboxPrefix: gone.inboxPrefix,
        reconnect: false,
      });
      const ncKept = await nats.connect(server, {
        authenticator: creds(kept.creds),
        inboxPrefix: kept.inboxPrefix,
        reconnect: false,
      });
      await revoker.revoke([gone]);
      expect(revoker.list()).toEqual([gone.userPublicKey]);
      expect(await closedWithin(ncGone, 5_000)).toMatch(/revoked/i);
      await expect(nats.connect(server, { authenticator: creds(gone.creds), reconnect: false })).rejects.toThrow(
        /authoriz|revoked/i,
      );
      // The other worker still publishes and receives on its job.
      const got: string[] = [];
      ncKept.subscribe(reduceScatterSubject('job-r-11111', 1, 0), {
        callback: (_e, m) => {
          got.push(m.string());
        },
      });
      ncKept.publish(reduceScatterSubject('job-r-11111', 1, 0), 'still here');
      await ncKept.flush();
      await eventually(() => (got.length === 1 ? true : undefined), 2_000, "the unrevoked worker's message");
      // A second revocation keeps the first on the list (each update carries the whole list).
      await revoker.revoke([kept]);
      expect(revoker.list().sort()).toEqual([gone.userPublicKey, kept.userPublicKey].sort());
      await expect(nats.connect(server, { authenticator: creds(gone.creds), reconnect: false })).rejects.toThrow(
        /authoriz|revoked/i,
      );
      expect(await closedWithin(ncKept, 5_000)).toMatch(/revoked/i);
    },
  );

  it('sends the list again when a restarted server (memory resolver: updates forgotten) comes back', async () => {
    const own = await startNatsServer({ config: setup.serverConfig });
    let restarted: NatsServer | undefined;
    const conns: NatsConnection[] = [];
    try {
      const again = { reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 100 };
      conns.push(await connect({ servers: own.url, authenticator: creds(setup.coordinatorCreds), ...again }));
      const sys = await connect({ servers: own.url, authenticator: creds(setup.systemCreds), ...again });
      conns.push(sys);
      const revoker = new NatsRevoker({ nc: sys, ...revocation() });
      const gone = await issuer.issueWorker('job-r-22222', 'w0', 3);
      await revoker.revoke([gone]);
      await own.stop();
      restarted = await startNatsServer({ config: setup.serverConfig, port: own.port });
      // Until the list is back, the restarted server would take the credential: it must end refused.
      await eventually(
        async () => {
          try {
            const nc = await connect({ servers: restarted!.url, authenticator: creds(gone.creds), reconnect: false });
            await nc.close();
            return undefined;
          } catch (e) {
            return /authoriz|revoked/i.test(String(e)) ? true : undefined;
          }
        },
        10_000,
        'the revoked credential refused by the restarted server',
      );
      // And it stays refused (the list was applied, not a transient failure).
      await expect(
        connect({ servers: restarted.url, authenticator: creds(gone.creds), reconnect: false }),
      ).rejects.toThrow(/authoriz|revoked/i);
    } finally {
      for (const c of conns) await c.close();
      await own.stop();
      await restarted?.stop();
    }
  });

  it('leaves expired credentials off the list', async () => {
    const sys = await nats.connect(server, { authenticator: creds(setup.systemCreds) });
    const revoker = new NatsRevoker({ nc: sys, ...revocation() });
    await revoker.revoke([{ userPublicKey: 'UEXPIRED', expiresAt: Math.floor(Date.now() / 1000) - 5 }]);
    expect(revoker.list()).toEqual([]);
  });

  it('the system user may send account updates and nothing else', async () => {
    const sys = await nats.connect(server, { authenticator: creds(setup.systemCreds) });
    const errors: string[] = [];
    void (async () => {
      for await (const s of sys.status()) if (s.type === 'error') errors.push(String(s.error));
    })();
    sys.publish('$SYS.REQ.SERVER.PING', '');
    await sys.flush();
    await eventually(
      () =>
        errors.some((e) => /Permissions Violation for Publish to "\$SYS\.REQ\.SERVER\.PING"/.test(e))
          ? true
          : undefined,
      2_000,
      'a permissions violation',
    );
  });
});

describe('through the coordinator', () => {
  it(
    'a worker gets credentials for its generation; cancelling ' +
      'the job revokes them; a worker that leaves loses its own',
    async () => {
      const fixture = makeSpecFixture();
      const coordinator = await startCoordinator({
        listen: '127.0.0.1:0',
        natsUrl: server.url,
        progressFlushMs: 50,
        natsConnect: { authenticator: creds(setup.coordinatorCreds) },
        natsIssuer: issuer,
        natsRevocation: revocation(),
      });
      const client = new JobClient({ address: coordinator.address });
      const sessions: CoordinatorSession[] = [];
      const join = async (
        id: string,
      ): Promise<{ session: CoordinatorSession; next: () => Promise<AssignmentEvent> }> => {
        const session = await CoordinatorSession.connect({
          address: coordinator.address,
          hello: { workerId: id, backend: 'cpu' },
          connectTimeoutMs: 5_000,
        });
        sessions.push(session);
        const it = session.events()[Symbol.asyncIterator]();
        const next = async (): Promise<AssignmentEvent> => {
          for (;;) {
            const r = await it.next();
            if (r.done) throw new Error(`the session of ${id} ended without an assignment`);
            const ev = r.value as { type: string };
            if (ev.type === 'assignment') return ev as AssignmentEvent;
          }
        };
        return { session, next };
      };
      try {
        const a = await join('rev-w0');
        const jobId = await client.submitText(fixture.yaml({ name: 'revoke-job', workers: 1 }));
        const ev = await a.next();
        const jwt = /-----BEGIN NATS USER JWT-----\n(.+)\n/.exec(ev.natsCreds)![1]!;
        const claims = decode(jwt);
        expect(claims.name).toBe(`worker rev-w0 job ${jobId} generation ${ev.generation}`);
        expect(claims.exp! - claims.iat).toBeLessThanOrEqual(3_600);
        const nc = await nats.connect(server, {
          authenticator: creds(ev.natsCreds),
          inboxPrefix: ev.natsInboxPrefix,
          reconnect: false,
        });
        await client.cancel(jobId, 'test: end the generation');
        expect(await closedWithin(nc, 5_000)).toMatch(/revoked/i);
        await expect(nats.connect(server, { authenticator: creds(ev.natsCreds), reconnect: false })).rejects.toThrow(
          /authoriz|revoked/i,
        );

        // A second job: its worker leaves (the stream closes) while it runs; its credential is revoked.
        const b = await join('rev-w1');
        const job2 = await client.submitText(fixture.yaml({ name: 'revoke-job-2', workers: 1 }));
        // rev-w0 may still be draining the cancelled job; whichever is assigned, follow it.
        const ev2 = await Promise.race([
          a.next().then(
            (e) => ({ e, s: a.session }),
            () => new Promise<never>(() => undefined),
          ),
          b.next().then(
            (e) => ({ e, s: b.session }),
            () => new Promise<never>(() => undefined),
          ),
        ]);
        expect(ev2.e.jobId).toBe(job2);
        const nc2 = await nats.connect(server, {
          authenticator: creds(ev2.e.natsCreds),
          inboxPrefix: ev2.e.natsInboxPrefix,
          reconnect: false,
        });
        await ev2.s.close();
        expect(await closedWithin(nc2, 5_000)).toMatch(/revoked/i);
      } finally {
        await Promise.all(sessions.map((s) => s.close()));
        client.close();
        await coordinator.stop();
        fixture.cleanup();
      }
    },
  );

  it('serve reads the three revocation files written by nats-auth init, all or none', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-revoke-'));
    try {
      const files = writeNatsOperatorSetup(setup, dir);
      const base = { 'nats-account-signing-key': files['account-signing-key.nk']!, 'nats-account': setup.account };
      const all = {
        ...base,
        'nats-system-creds': files['system.creds']!,
        'nats-account-jwt': files['account.jwt']!,
        'nats-operator-signing-key': files['operator-signing-key.nk']!,
      };
      const s = serveSecurity(all);
      expect(s.natsRevocation?.accountJwt).toBe(setup.accountJwt);
      expect(serveSecurity(base).natsRevocation).toBeUndefined();
      expect(() => serveSecurity({ ...base, 'nats-system-creds': files['system.creds']! })).toThrow(/go together/);
      expect(() => serveSecurity({ ...all, 'nats-operator-signing-key': files['account-signing-key.nk']! })).toThrow(
        /must be an operator key/,
      );
      const other = await createNatsOperatorSetup();
      writeFileSync(join(dir, 'other.jwt'), other.accountJwt);
      expect(() => serveSecurity({ ...all, 'nats-account-jwt': join(dir, 'other.jwt') })).toThrow(
        /--nats-account-jwt: the JWT is for account/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
