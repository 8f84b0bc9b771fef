/**
 * NATS security in operator (JWT) mode: the coordinator holds the polytune account's signing key
 * and issues each worker, for each assignment, a user JWT that may publish and subscribe only on
 * that job's subjects:
 *
 * ```
 * pub allow  polytune.<job>.>   _INBOX_<job>.>      (gradient chunks, peer control, replies)
 * sub allow  polytune.<job>.>   _INBOX_<job>.>
 * ```
 *
 * A worker connects with `inboxPrefix: _INBOX_<job>`, so request/reply between peers works
 * without opening the shared `_INBOX.>`. A client without credentials cannot connect at all;
 * one with another job's credentials gets a permissions violation and its messages are dropped
 * by the server.
 *
 * Each credential is for one worker in one generation of one job, with a short lifetime
 * (`DEFAULT_NATS_CREDS_TTL_SECONDS`); a new generation gets new ones, and those of an ended
 * generation or a departed worker are revoked (nats-revocation.ts) when the coordinator can update
 * the account JWT, else they expire. The lifetime counts from the generation's start, not from the
 * issue: each generation's credentials get the lifetime plus an allowance for its start
 * (`GenerationStarts`), so a generation whose start (model load, start barrier) takes longer than
 * the lifetime does not end before its first step, generation after generation.
 *
 * The nats-server side (operator JWT, a system account, the polytune account with JetStream, a
 * memory resolver) is produced by `createNatsOperatorSetup`, for tests, for `coordinator nats-auth
 * init`, and from there for the Helm chart. With it come what revocation needs: an operator
 * signing key (the account JWT must be signed by the operator to be updated), a system-account
 * user allowed only to send account updates, and the account JWT itself.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds, type User } from '@nats-io/jwt';
import { createAccount, createOperator, createUser, fromPublic, fromSeed, type KeyPair } from '@nats-io/nkeys';
import { UserError } from '../common/errors.js';
import { KvBucket, SUBJECT_ROOT } from '../common/subjects.js';

/** Credentials for one worker on one job, as sent in `Assignment.nats_creds`. */
export interface WorkerNatsCredentials {
  /** The `.creds` text: user JWT and nkey seed. */
  readonly creds: string;
  /** The inbox prefix the worker must connect with. */
  readonly inboxPrefix: string;
  /** The user's public key (`U…`): what a revocation names. */
  readonly userPublicKey: string;
  /** Expiry in Unix seconds; 0: none. */
  readonly expiresAt: number;
}

/** The inbox prefix of a job's workers (a single subject token). */
export function jobInboxPrefix(jobId: string): string {
  return `_INBOX_${jobId}`;
}

/** What a worker on `jobId` may do. */
export function workerPermissions(jobId: string): Pick<User, 'pub' | 'sub'> {
  const subjects = [`${SUBJECT_ROOT}.${jobId}.>`, `${jobInboxPrefix(jobId)}.>`];
  return { pub: { allow: subjects }, sub: { allow: subjects } };
}

/**
 * What the coordinator may do: JetStream API and its KV buckets (jobs, ledger), its own inboxes,
 * and every job's subjects (it is trusted with them).
 */
export function coordinatorPermissions(
  buckets: readonly string[] = [KvBucket.jobs, KvBucket.ledger],
): Pick<User, 'pub' | 'sub'> {
  return {
    pub: {
      allow: [
        '$JS.API.>',
        '$JS.ACK.>',
        '$JS.FC.>',
        ...buckets.map((b) => `$KV.${b}.>`),
        '_INBOX.>',
        `${SUBJECT_ROOT}.>`,
      ],
    },
    sub: { allow: ['_INBOX.>', `${SUBJECT_ROOT}.>`] },
  };
}

export interface NatsCredentialIssuerOptions {
  /** Seed (`SA…`) of the account's signing key, or of the account itself. */
  signingKeySeed: string;
  /** The account's public key (`A…`) when the seed is a signing key's. @default the seed's own public key */
  account?: string;
  /**
   * Lifetime of an issued credential, in seconds; 0: no expiry. The server closes a connection
   * whose credential expires: the world re-forms (a NATS loss) and every rank gets fresh
   * credentials with its new assignment. @default DEFAULT_NATS_CREDS_TTL_SECONDS (1 h)
   */
  ttlSeconds?: number;
}

/**
 * An hour: a leaked worker credential that was not revoked is good for an hour at most. A
 * generation that runs longer re-forms once an hour (its ranks keep their state in memory, so
 * this costs a pause, not progress); revocation, not the lifetime, ends a departed worker's access.
 * The lifetime counts from the generation's start (`GenerationStarts` adds an allowance for it).
 */
export const DEFAULT_NATS_CREDS_TTL_SECONDS = 60 * 60;

/** Issues per-job worker credentials. */
export class NatsCredentialIssuer {
  private readonly signer: KeyPair;
  readonly account: string;
  private readonly ttlSeconds: number;

  constructor(options: NatsCredentialIssuerOptions) {
    let signer: KeyPair;
    try {
      signer = fromSeed(new TextEncoder().encode(options.signingKeySeed.trim()));
    } catch (e) {
      throw new UserError(
        `NATS account signing key: not an nkey seed (${e instanceof Error ? e.message : String(e)})`,
        { cause: e },
      );
    }
    if (!signer.getPublicKey().startsWith('A'))
      throw new UserError('NATS account signing key: the seed must be an account key (SA…)');
    const account = options.account?.trim() || signer.getPublicKey();
    try {
      if (!fromPublic(account).getPublicKey().startsWith('A')) throw new Error('not an account key');
    } catch (e) {
      throw new UserError(`NATS account: "${account}" is not an account public key (A…)`, { cause: e });
    }
    this.signer = signer;
    this.account = account;
    const ttl = options.ttlSeconds ?? DEFAULT_NATS_CREDS_TTL_SECONDS;
    if (!Number.isInteger(ttl) || ttl < 0)
      throw new UserError(`NATS credential lifetime: ${ttl} is not a whole number of seconds >= 0`);
    this.ttlSeconds = ttl;
  }

  /**
   * A fresh user, allowed only `jobId`'s subjects, for one generation (named in the JWT). It expires
   * the lifetime plus `startAllowanceSeconds` (the time the generation may take to start, at most
   * `MAX_START_ALLOWANCE_TTLS` lifetimes) from now.
   */
  async issueWorker(
    jobId: string,
    workerId: string,
    generation?: number,
    startAllowanceSeconds = 0,
  ): Promise<WorkerNatsCredentials> {
    const user = createUser();
    const allowance = Math.min(Math.ceil(startAllowanceSeconds), MAX_START_ALLOWANCE_TTLS * this.ttlSeconds);
    const expiresAt = this.ttlSeconds > 0 ? Math.floor(Date.now() / 1000) + this.ttlSeconds + allowance : 0;
    const opts: Parameters<typeof encodeUser>[4] = {
      ...(expiresAt > 0 ? { exp: expiresAt } : {}),
      ...(this.signer.getPublicKey() !== this.account ? { signer: this.signer } : {}),
    };
    const issuer = this.signer.getPublicKey() !== this.account ? this.account : this.signer;
    const name = `worker ${workerId} job ${jobId}${generation !== undefined ? ` generation ${generation}` : ''}`;
    const jwt = await encodeUser(name, user, issuer, workerPermissions(jobId), opts);
    return {
      creds: new TextDecoder().decode(fmtCreds(jwt, user)),
      inboxPrefix: jobInboxPrefix(jobId),
      userPublicKey: user.getPublicKey(),
      expiresAt,
    };
  }
}

/** A generation's start may take this many times the longest start measured for its job. */
export const START_ALLOWANCE_FACTOR = 2;

/**
 * The start allowance is at most this many lifetimes (`issueWorker`): a job whose generations keep
 * expiring before their first step would otherwise double it without end (each cut generation
 * counts its lifetime plus its own allowance as its start), and so the life of a leaked credential.
 */
export const MAX_START_ALLOWANCE_TTLS = 8;

/** Jobs whose starts are remembered (the oldest is forgotten first). */
const REMEMBERED_JOBS = 1024;

/**
 * How long each job's generations take to start, so that credentials live their lifetime past the
 * start: without it, a generation whose start takes longer than the lifetime (a loaded machine, a
 * large model) ends by expiry before its first step, and so does the next, until the job fails
 * for too many re-forms.
 *
 * A generation's start is measured from its first credential's issue to the first progress report
 * of one of its ranks (its first step). A generation that made no report and whose credentials
 * expired took at least their whole lifetime to start: that lifetime counts as its start. The next
 * generation's allowance is `START_ALLOWANCE_FACTOR` times the longest start measured for the job,
 * so after such a generation the allowance at least doubles, and some generation of the job gets
 * past a start of up to `MAX_START_ALLOWANCE_TTLS` + 1 lifetimes (the issuer caps the allowance
 * there). The price: a leaked, unrevoked credential lives that much longer, 9 lifetimes at most.
 * Times in ms since the Unix epoch, passed in (no clock here).
 */
export class GenerationStarts {
  private readonly jobs = new Map<
    string,
    { generation: number; issuedAt: number; expiresAt: number; started: boolean; longestStartSeconds: number }
  >();

  /** Seconds to add to the lifetime of credentials issued at `now` for `generation` of `jobId`. */
  allowance(jobId: string, generation: number, now: number): number {
    let job = this.jobs.get(jobId);
    if (!job || job.generation !== generation) {
      let longest = job?.longestStartSeconds ?? 0;
      if (job && !job.started && job.expiresAt > 0 && now >= job.expiresAt * 1000)
        longest = Math.max(longest, job.expiresAt - job.issuedAt / 1000);
      job = { generation, issuedAt: now, expiresAt: 0, started: false, longestStartSeconds: longest };
      this.jobs.delete(jobId);
      this.jobs.set(jobId, job);
      if (this.jobs.size > REMEMBERED_JOBS) this.jobs.delete(this.jobs.keys().next().value as string);
    }
    return Math.ceil(START_ALLOWANCE_FACTOR * job.longestStartSeconds);
  }

  /** A credential of `generation` was issued that expires at `expiresAt` (Unix seconds; 0: never). */
  issued(jobId: string, generation: number, expiresAt: number): void {
    const job = this.jobs.get(jobId);
    if (!job || job.generation !== generation || expiresAt === 0) return;
    job.expiresAt = job.expiresAt === 0 ? expiresAt : Math.min(job.expiresAt, expiresAt);
  }

  /** A rank of `generation` reported progress at `now`: the generation has started. */
  started(jobId: string, generation: number, now: number): void {
    const job = this.jobs.get(jobId);
    if (!job || job.generation !== generation || job.started) return;
    job.started = true;
    job.longestStartSeconds = Math.max(job.longestStartSeconds, (now - job.issuedAt) / 1000);
  }
}

/** Everything a nats-server and the coordinator need for operator mode. Secrets: keep them so. */
export interface NatsOperatorSetup {
  /** Lines for the nats-server config (operator, system account, memory resolver with preloads). */
  readonly serverConfig: readonly string[];
  /** The polytune account's public key. */
  readonly account: string;
  /** Seed of the account signing key the coordinator issues worker credentials with. */
  readonly signingKeySeed: string;
  /** `.creds` for the coordinator (JetStream KV, its inboxes, all job subjects). */
  readonly coordinatorCreds: string;
  /** The polytune account's JWT as preloaded (the base that revocations are added to). */
  readonly accountJwt: string;
  /** Seed of an operator signing key: signs account JWT updates (revocations). */
  readonly operatorSigningKeySeed: string;
  /** `.creds` of a system-account user that may only send account JWT updates. */
  readonly systemCreds: string;
  /** Issues `.creds` for another user of the account with the given permissions (tests, tools). */
  issueUser(name: string, permissions: Pick<User, 'pub' | 'sub'>): Promise<string>;
}

const enc = (s: Uint8Array): string => new TextDecoder().decode(s);

/** Creates an operator, a system account and the polytune account (JetStream on, a signing key). */
export async function createNatsOperatorSetup(
  options: { buckets?: readonly string[] } = {},
): Promise<NatsOperatorSetup> {
  const operator = createOperator();
  const operatorSigning = createOperator();
  const system = createAccount();
  const account = createAccount();
  const signing = createAccount();
  const operatorJwt = await encodeOperator('polytune-operator', operator, {
    system_account: system.getPublicKey(),
    signing_keys: [operatorSigning.getPublicKey()],
  });
  const unlimited = -1;
  // What both accounts leave unlimited; the polytune account adds its JetStream limits.
  const noAccountLimits = {
    subs: unlimited,
    data: unlimited,
    payload: unlimited,
    imports: unlimited,
    exports: unlimited,
    wildcards: true,
    conn: unlimited,
    leaf: unlimited,
  };
  // Connections to the system account (the coordinator's revocation user) need limits of their own.
  const systemJwt = await encodeAccount('SYS', system, { limits: noAccountLimits }, { signer: operator });
  const accountJwt = await encodeAccount(
    'polytune',
    account,
    {
      signing_keys: [signing.getPublicKey()],
      limits: {
        ...noAccountLimits,
        mem_storage: unlimited,
        disk_storage: unlimited,
        streams: unlimited,
        consumer: unlimited,
      },
    },
    { signer: operatorSigning },
  );
  const systemUser = createUser();
  const systemUserJwt = await encodeUser(
    'coordinator-revocations',
    systemUser,
    system,
    revocationPermissions(account.getPublicKey()),
  );
  const issueUser = async (name: string, permissions: Pick<User, 'pub' | 'sub'>): Promise<string> => {
    const user = createUser();
    const jwt = await encodeUser(name, user, account.getPublicKey(), permissions, { signer: signing });
    return enc(fmtCreds(jwt, user));
  };
  return {
    serverConfig: [
      `operator: ${JSON.stringify(operatorJwt)}`,
      `system_account: ${JSON.stringify(system.getPublicKey())}`,
      'resolver: MEMORY',
      `resolver_preload: { ${JSON.stringify(system.getPublicKey())}: ${JSON.stringify(systemJwt)}, ` +
        `${JSON.stringify(account.getPublicKey())}: ${JSON.stringify(accountJwt)} }`,
    ],
    account: account.getPublicKey(),
    signingKeySeed: enc(signing.getSeed()),
    coordinatorCreds: await issueUser('coordinator', coordinatorPermissions(options.buckets)),
    accountJwt,
    operatorSigningKeySeed: enc(operatorSigning.getSeed()),
    systemCreds: enc(fmtCreds(systemUserJwt, systemUser)),
    issueUser,
  };
}

/** What the coordinator's system-account user may do: send the polytune account's JWT updates. */
export function revocationPermissions(account: string): Pick<User, 'pub' | 'sub'> {
  return { pub: { allow: [`$SYS.REQ.ACCOUNT.${account}.CLAIMS.UPDATE`] }, sub: { allow: ['_INBOX.>'] } };
}

/**
 * Writes a setup into `dir` (created 0700, files 0600): `nats-auth.conf` (include it from the
 * nats-server config), `coordinator.creds`, `account-signing-key.nk`, `account.pub`, and for
 * revocation `account.jwt`, `operator-signing-key.nk`, `system.creds`.
 */
export function writeNatsOperatorSetup(setup: NatsOperatorSetup, dir: string): Record<string, string> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: Record<string, string> = {
    'nats-auth.conf': setup.serverConfig.join('\n') + '\n',
    'coordinator.creds': setup.coordinatorCreds,
    'account-signing-key.nk': setup.signingKeySeed + '\n',
    'account.pub': setup.account + '\n',
    'account.jwt': setup.accountJwt + '\n',
    'operator-signing-key.nk': setup.operatorSigningKeySeed + '\n',
    'system.creds': setup.systemCreds,
  };
  const written: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    const path = join(dir, name);
    writeFileSync(path, text, { mode: 0o600 });
    chmodSync(path, 0o600);
    written[name] = path;
  }
  return written;
}
