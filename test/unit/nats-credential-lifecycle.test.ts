/** Which worker credentials are revoked when (coordinator/nats-revocation.ts), without NATS. */
import { describe, expect, it } from 'vitest';
import { createAccount } from '@nats-io/nkeys';
import {
  GenerationStarts,
  MAX_START_ALLOWANCE_TTLS,
  NatsCredentialIssuer,
} from '../../coordinator/nats-credentials.js';
import { isCredentialFailure } from '../../worker/job-nats.js';
import {
  IssuedCredentials,
  WorkerCredentialLifecycle,
  type IssuedCredential,
} from '../../coordinator/nats-revocation.js';

function fixture(): { lifecycle: WorkerCredentialLifecycle; revoked: string[][] } {
  let n = 0;
  const issuer = {
    issueWorker: (jobId: string, workerId: string, generation?: number) =>
      Promise.resolve({
        creds: `creds ${workerId} ${jobId} ${generation}`,
        inboxPrefix: `_INBOX_${jobId}`,
        userPublicKey: `U${++n}`,
        expiresAt: 0,
      }),
  };
  const revoked: string[][] = [];
  const revoker = {
    revoke: (c: readonly IssuedCredential[]) => (revoked.push(c.map((x) => x.userPublicKey)), Promise.resolve()),
  };
  return { lifecycle: new WorkerCredentialLifecycle(issuer, revoker), revoked };
}

describe('WorkerCredentialLifecycle', () => {
  it(
    "a new generation revokes the worker's previous " + 'credential; a cancel of its job revokes the current one',
    async () => {
      const { lifecycle, revoked } = fixture();
      await lifecycle.forAssignment('w0', 'job-a', 1); // U1
      await lifecycle.forAssignment('w1', 'job-a', 1); // U2
      expect(revoked).toEqual([]);
      await lifecycle.forAssignment('w0', 'job-a', 2); // U3
      expect(revoked).toEqual([['U1']]);
      lifecycle.end('w0', 'job-other', 'cancel of another job');
      expect(revoked).toEqual([['U1']]);
      lifecycle.end('w0', 'job-a', 'cancel');
      expect(revoked).toEqual([['U1'], ['U3']]);
      expect(lifecycle.outstanding).toBe(1);
      lifecycle.end('w1', undefined, 'lost');
      expect(revoked).toEqual([['U1'], ['U3'], ['U2']]);
      expect(lifecycle.outstanding).toBe(0);
      lifecycle.end('w1', undefined, 'idle again');
      expect(revoked).toHaveLength(3);
    },
  );

  it('without a revoker, credentials are forgotten (they expire)', async () => {
    const lifecycle = new WorkerCredentialLifecycle(
      {
        issueWorker: () => Promise.resolve({ creds: 'c', inboxPrefix: 'i', userPublicKey: 'U', expiresAt: 1 }),
      },
      undefined,
    );
    await lifecycle.forAssignment('w', 'j', 1);
    lifecycle.end('w', undefined, 'idle');
    expect(lifecycle.outstanding).toBe(0);
  });
});

describe('IssuedCredentials', () => {
  it("takes a worker's credentials, of one job or all", () => {
    const c = new IssuedCredentials();
    c.add('w', 'a', 1, { userPublicKey: 'U1', expiresAt: 0 });
    c.add('w', 'b', 1, { userPublicKey: 'U2', expiresAt: 0 });
    expect(c.take('w', 'b').map((x) => x.userPublicKey)).toEqual(['U2']);
    expect(c.size).toBe(1);
    expect(c.take('w').map((x) => x.userPublicKey)).toEqual(['U1']);
    expect(c.take('w')).toEqual([]);
  });
});

describe('isCredentialFailure (worker/job-nats.ts)', () => {
  it('knows an expired, revoked or refused credential from other errors', () => {
    expect(
      isCredentialFailure(
        Object.assign(new Error('User Authentication Expired'), { name: 'UserAuthenticationExpiredError' }),
      ),
    ).toBe(true);
    expect(isCredentialFailure(new Error('User Authentication Revoked'))).toBe(true);
    expect(isCredentialFailure(new Error("'Authorization Violation'"))).toBe(true);
    expect(isCredentialFailure(new Error('Permissions Violation for Publish to "x"'))).toBe(false);
    expect(isCredentialFailure(new Error('connection refused'))).toBe(false);
  });
});

describe('GenerationStarts (credentials live their lifetime past the start)', () => {
  const s = 1000;
  it('allows twice the longest measured start; a generation cut by expiry before a step doubles it', () => {
    const starts = new GenerationStarts();
    expect(starts.allowance('j', 1, 0)).toBe(0); // nothing measured yet
    starts.issued('j', 1, 3); // expires at 3 s
    expect(starts.allowance('j', 2, 5 * s)).toBe(6); // no step, expired: the start took >= 3 s
    starts.issued('j', 2, 5 + 2 + 6);
    starts.started('j', 2, 9 * s); // started 4 s after the issue
    expect(starts.allowance('j', 3, 20 * s)).toBe(8);
    starts.started('j', 3, 21 * s); // a fast start does not shrink the allowance
    expect(starts.allowance('j', 4, 30 * s)).toBe(8);
    expect(starts.allowance('other', 1, 30 * s)).toBe(0); // per job
  });

  it('the start allowance is capped at MAX_START_ALLOWANCE_TTLS lifetimes, however often starts are cut', async () => {
    const ttl = 60;
    const seed = new TextDecoder().decode(createAccount().getSeed());
    const issuer = new NatsCredentialIssuer({ signingKeySeed: seed, ttlSeconds: ttl });
    const starts = new GenerationStarts();
    // Every generation expires before its first step: its allowance doubles until the cap.
    let now = 0;
    let last = 0;
    for (let g = 1; g <= 12; g++) {
      const allowance = starts.allowance('j', g, now * s);
      const before = Math.floor(Date.now() / 1000);
      const c = await issuer.issueWorker('j', 'w', g, allowance);
      const lived = c.expiresAt - before;
      expect(lived).toBeLessThanOrEqual(ttl + MAX_START_ALLOWANCE_TTLS * ttl + 1);
      last = lived;
      // As GenerationStarts sees it: issued at `now`, expired `lived` seconds later, no step.
      starts.issued('j', g, now + lived);
      now += lived + 1;
    }
    expect(last).toBeGreaterThanOrEqual(ttl + MAX_START_ALLOWANCE_TTLS * ttl);
  });

  it('a generation that ended before its credentials expired does not count (a lost worker)', () => {
    const starts = new GenerationStarts();
    starts.allowance('j', 1, 0);
    starts.issued('j', 1, 100);
    expect(starts.allowance('j', 2, 10 * s)).toBe(0);
  });
});
