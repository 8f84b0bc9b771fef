/**
 * Revoking worker NATS credentials (operator mode) when their generation ends or their worker
 * leaves, so that a credential stops working then and not at its expiry.
 *
 * NATS revokes a user through its account: the account JWT's `revocations` maps a user's public
 * key to a time, and a JWT of that user issued at or before it is refused; the server closes the
 * user's open connections when it learns of the new account JWT. So the coordinator re-signs the
 * polytune account's JWT with the revocations added and sends it to the servers on
 * `$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE` (the update subject of the memory resolver that
 * `nats-auth init` configures; every server of a cluster gets it through the system account).
 * That needs three things beyond the account signing key, all written by `nats-auth init`:
 * - the account JWT as preloaded (`account.jwt`): the claims kept and added to;
 * - an operator signing key (`operator-signing-key.nk`): an account JWT is valid only when the
 *   operator (or one of its signing keys) signed it;
 * - a system-account user (`system.creds`) allowed only to publish that update.
 *
 * Limits: with `resolver: MEMORY` the servers forget updates when they restart (they load the
 * preloaded JWT again); the revoker sends its list again when its connection comes back, which
 * covers a restarted server it reconnects to, but the list lives in the coordinator's memory: a
 * revoked credential that has not expired yet works again after a coordinator restart, or on a
 * restarted server before the list reaches it, until its expiry. So the lifetime stays short
 * (nats-credentials.ts). Entries leave the list once their credential
 * has expired (the server refuses it anyway), so the JWT does not grow with the job's history.
 */
import { decode, encodeAccount, type Account } from '@nats-io/jwt';
import { fromSeed, type KeyPair } from '@nats-io/nkeys';
import type { NatsConnection } from '@nats-io/transport-node';
import { errorMessage, PolytuneError, UserError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { GenerationStarts } from './nats-credentials.js';

/** The subject on which a server takes an account's new JWT (memory and URL resolvers). */
export function accountUpdateSubject(account: string): string {
  return `$SYS.REQ.ACCOUNT.${account}.CLAIMS.UPDATE`;
}

/** Attempts (500 ms apart) to send the list again after a reconnect. */
const RESEND_ATTEMPTS = 20;

/** @default 5 s for the servers to answer an account update. */
export const DEFAULT_REVOCATION_TIMEOUT_MS = 5_000;

/** The servers did not take an account update. Retryable (the next revocation sends the whole list again). */
export class NatsRevocationError extends PolytuneError {
  readonly account: string;
  constructor(account: string, message: string, options: { cause?: unknown } = {}) {
    super(`revoking NATS credentials in account ${account}: ${message}`, { ...options, retryable: true });
    this.name = 'NatsRevocationError';
    this.account = account;
  }
}

/** A credential that may need revoking. */
export interface IssuedCredential {
  readonly userPublicKey: string;
  /** Unix seconds; 0: never expires. */
  readonly expiresAt: number;
}

export interface NatsRevokerOptions {
  /** A connection as the system-account user (`system.creds`). */
  nc: NatsConnection;
  /** The account JWT as the servers preloaded it (`account.jwt`). */
  accountJwt: string;
  /** Seed (`SO…`) of an operator signing key (`operator-signing-key.nk`). */
  operatorSigningKeySeed: string;
  /** @default DEFAULT_REVOCATION_TIMEOUT_MS */
  timeoutMs?: number;
  logger?: Logger;
}

interface ServerReply {
  data?: { account?: string; code?: number; message?: string };
  error?: { account?: string; code?: number; description?: string };
}

/** Parses the account JWT and the operator key; throws `UserError` naming what is wrong. */
function parseInputs(
  accountJwt: string,
  seed: string,
): { account: string; name: string; claims: Partial<Account>; signer: KeyPair } {
  let claims;
  try {
    claims = decode<Account>(accountJwt.trim());
  } catch (e) {
    throw new UserError(`NATS account JWT: not a JWT (${errorMessage(e)})`, { cause: e });
  }
  if (!claims.sub?.startsWith('A'))
    throw new UserError('NATS account JWT: its subject is not an account public key (A…)');
  let signer: KeyPair;
  try {
    signer = fromSeed(new TextEncoder().encode(seed.trim()));
  } catch (e) {
    throw new UserError(`NATS operator signing key: not an nkey seed (${errorMessage(e)})`, { cause: e });
  }
  if (!signer.getPublicKey().startsWith('O'))
    throw new UserError('NATS operator signing key: the seed must be an operator key (SO…)');
  return { account: claims.sub, name: claims.name, claims: claims.nats, signer };
}

/**
 * Checks revocation settings before anything starts: the JWT parses and names `account` (the one
 * the credentials are issued in), the seed is an operator key, the creds file is one.
 */
export function checkNatsRevocationSettings(r: NatsRevocationSettings, account: string): void {
  const parsed = parseInputs(r.accountJwt, r.operatorSigningKeySeed);
  if (parsed.account !== account) {
    throw new UserError(
      `--nats-account-jwt: the JWT is for account ${parsed.account}, but credentials are issued in ${account}`,
    );
  }
  if (!r.systemCreds.includes('BEGIN NATS USER JWT'))
    throw new UserError('--nats-system-creds: not a NATS .creds file');
}

/** Keeps the account's revocation list and pushes it to the NATS servers. */
export class NatsRevoker {
  readonly account: string;
  private readonly nc: NatsConnection;
  private readonly name: string;
  private readonly base: Partial<Account>;
  private readonly signer: KeyPair;
  private readonly timeoutMs: number;
  private readonly logger: Logger;
  /** User public key -> { revoked at, expires at } (Unix seconds). */
  private readonly revoked = new Map<string, { at: number; expiresAt: number }>();
  private chain: Promise<void> = Promise.resolve();

  constructor(options: NatsRevokerOptions) {
    const parsed = parseInputs(options.accountJwt, options.operatorSigningKeySeed);
    this.account = parsed.account;
    this.name = parsed.name;
    this.base = parsed.claims;
    this.signer = parsed.signer;
    this.nc = options.nc;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_REVOCATION_TIMEOUT_MS;
    this.logger = options.logger ?? silentLogger;
    void this.resendOnReconnect();
  }

  /**
   * A server that restarted has forgotten the list (memory resolver): send it again, retrying
   * while the server has not loaded the account yet (it skips updates of accounts it has not).
   */
  private async resendOnReconnect(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type !== 'reconnect' || this.revoked.size === 0) continue;
      void (async () => {
        for (let attempt = 1; attempt <= RESEND_ATTEMPTS; attempt++) {
          try {
            await this.revoke([]);
            return;
          } catch (e) {
            if (attempt === RESEND_ATTEMPTS || this.nc.isClosed()) {
              this.logger.warn('cannot send the revocations again after a reconnect', { error: errorMessage(e) });
              return;
            }
            await new Promise((r) => setTimeout(r, 500));
          }
        }
      })();
    }
  }

  /** Public keys currently on the list (for tests and logs). */
  list(): string[] {
    return [...this.revoked.keys()];
  }

  /**
   * Revokes the credentials (from now on) and sends the account JWT. Calls are serialised; each
   * sends the whole list, so a failed one is made good by the next.
   */
  revoke(credentials: readonly IssuedCredential[]): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    for (const c of credentials) {
      if (c.expiresAt !== 0 && c.expiresAt <= now) continue; // expired already: the server refuses it
      // A JWT issued in this second must be covered too: revocation applies to iat <= at.
      this.revoked.set(c.userPublicKey, { at: now + 1, expiresAt: c.expiresAt });
    }
    const run = this.chain.then(() => this.push());
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async push(): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    for (const [key, r] of this.revoked) if (r.expiresAt !== 0 && r.expiresAt <= now) this.revoked.delete(key);
    const revocations = { ...(this.base.revocations ?? {}) };
    for (const [key, r] of this.revoked) revocations[key] = r.at;
    const jwt = await encodeAccount(this.name, this.account, { ...this.base, revocations }, { signer: this.signer });
    let reply: ServerReply;
    try {
      const m = await this.nc.request(accountUpdateSubject(this.account), jwt, { timeout: this.timeoutMs });
      reply = m.json<ServerReply>();
    } catch (e) {
      throw new NatsRevocationError(this.account, `no answer from the NATS servers (${errorMessage(e)})`, { cause: e });
    }
    if (reply.error)
      throw new NatsRevocationError(this.account, reply.error.description ?? `error ${reply.error.code ?? '?'}`);
    if (reply.data?.code !== undefined && reply.data.code !== 200) {
      throw new NatsRevocationError(this.account, reply.data.message ?? `code ${reply.data.code}`);
    }
    // "jwt update skipped": the server has not loaded the account (no user of it connected yet).
    if (/skipped/i.test(reply.data?.message ?? ''))
      throw new NatsRevocationError(this.account, `the server did not apply it (${reply.data?.message})`);
    this.logger.info('NATS credentials revoked', { account: this.account, revoked: this.revoked.size });
  }
}

/**
 * Which credentials each worker holds, so that they can be revoked when its generation ends or
 * it leaves. Knows nothing of NATS: `take` hands back what to revoke.
 */
export class IssuedCredentials {
  private readonly byWorker = new Map<string, Array<IssuedCredential & { jobId: string; generation: number }>>();

  add(workerId: string, jobId: string, generation: number, c: IssuedCredential): void {
    const list = this.byWorker.get(workerId) ?? [];
    list.push({ userPublicKey: c.userPublicKey, expiresAt: c.expiresAt, jobId, generation });
    this.byWorker.set(workerId, list);
  }

  /** Removes and returns the worker's credentials (of `jobId` only, when given). */
  take(workerId: string, jobId?: string): IssuedCredential[] {
    const list = this.byWorker.get(workerId) ?? [];
    const taken = list.filter((c) => jobId === undefined || c.jobId === jobId);
    const kept = list.filter((c) => !taken.includes(c));
    if (kept.length > 0) this.byWorker.set(workerId, kept);
    else this.byWorker.delete(workerId);
    return taken;
  }

  /** Number of credentials held (all workers). */
  get size(): number {
    let n = 0;
    for (const l of this.byWorker.values()) n += l.length;
    return n;
  }
}

/**
 * What `coordinator serve` reads for revocation:
 * `--nats-system-creds`, `--nats-account-jwt`, `--nats-operator-signing-key`.
 */
export interface NatsRevocationSettings {
  /** `.creds` text of the system-account user. */
  readonly systemCreds: string;
  /** The account JWT as preloaded. */
  readonly accountJwt: string;
  /** Seed of an operator signing key. */
  readonly operatorSigningKeySeed: string;
}

/**
 * A worker's NATS credentials through its life: issued with each assignment (for that
 * generation; the worker's earlier ones are revoked then), revoked when its generation ends (a
 * cancel), when it becomes idle (its generation is over) or leaves. Without a revoker they are
 * only forgotten and expire. Their lifetime counts from their generation's start: each is issued
 * with an allowance for it (`GenerationStarts`, fed by `progress`).
 */
export class WorkerCredentialLifecycle {
  private readonly issued = new IssuedCredentials();
  private readonly starts = new GenerationStarts();

  constructor(
    private readonly issuer: {
      issueWorker(
        jobId: string,
        workerId: string,
        generation?: number,
        startAllowanceSeconds?: number,
      ): Promise<IssuedCredential & { creds: string; inboxPrefix: string }>;
    },
    private readonly revoker: Pick<NatsRevoker, 'revoke'> | undefined,
    private readonly logger: Logger = silentLogger,
  ) {}

  /** Fresh credentials for `workerId` in `generation` of `jobId`; its earlier ones are revoked. */
  async forAssignment(
    workerId: string,
    jobId: string,
    generation: number,
  ): Promise<{ creds: string; inboxPrefix: string }> {
    this.end(workerId, undefined, `worker ${workerId} gets generation ${generation} of ${jobId}`);
    const allowance = this.starts.allowance(jobId, generation, Date.now());
    const c = await this.issuer.issueWorker(jobId, workerId, generation, allowance);
    this.starts.issued(jobId, generation, c.expiresAt);
    this.issued.add(workerId, jobId, generation, c);
    return c;
  }

  /** A rank of `generation` of `jobId` reported progress (its start is over). */
  progress(jobId: string, generation: number): void {
    this.starts.started(jobId, generation, Date.now());
  }

  /** Revokes the worker's credentials (of `jobId` only, when given); failures are logged. */
  end(workerId: string, jobId: string | undefined, why: string): void {
    const taken = this.issued.take(workerId, jobId);
    if (taken.length === 0 || !this.revoker) return;
    this.revoker.revoke(taken).then(
      () => this.logger.info('worker NATS credentials revoked', { worker: workerId, count: taken.length, why }),
      (e: unknown) =>
        this.logger.warn('cannot revoke worker NATS credentials; they expire instead', {
          worker: workerId,
          why,
          error: errorMessage(e),
        }),
    );
  }

  /** Credentials issued and not yet revoked. */
  get outstanding(): number {
    return this.issued.size;
  }
}
