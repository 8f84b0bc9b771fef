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
 * The nats-server side (operator JWT, a system account, the polytune account with JetStream, a
 * memory resolver) is produced by `createNatsOperatorSetup`, for tests, for `coordinator nats-auth
 * init`, and from there for the Helm chart.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds, type User } from '@nats-io/jwt';
import { createAccount, createOperator, createUser, fromPublic, fromSeed, type KeyPair } from '@nats-io/nkeys';
import { UserError } from '../common/errors.js';
import { SUBJECT_ROOT } from '../common/subjects.js';
import { JOBS_BUCKET } from './job-store.js';

/** Credentials for one worker on one job, as sent in `Assignment.nats_creds`. */
export interface WorkerNatsCredentials {
  /** The `.creds` text: user JWT and nkey seed. */
  readonly creds: string;
  /** The inbox prefix the worker must connect with. */
  readonly inboxPrefix: string;
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
export function coordinatorPermissions(buckets: readonly string[] = [JOBS_BUCKET, 'polytune_ledger']): Pick<User, 'pub' | 'sub'> {
  return {
    pub: { allow: ['$JS.API.>', '$JS.ACK.>', '$JS.FC.>', ...buckets.map((b) => `$KV.${b}.>`), '_INBOX.>', `${SUBJECT_ROOT}.>`] },
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
   * credentials with its new assignment. @default DEFAULT_NATS_CREDS_TTL_SECONDS (24 h)
   */
  ttlSeconds?: number;
}

/** A day: a leaked worker credential is good for a day at most; a longer job re-forms once a day. */
export const DEFAULT_NATS_CREDS_TTL_SECONDS = 24 * 60 * 60;

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
      throw new UserError(`NATS account signing key: not an nkey seed (${e instanceof Error ? e.message : String(e)})`, { cause: e });
    }
    if (!signer.getPublicKey().startsWith('A')) throw new UserError('NATS account signing key: the seed must be an account key (SA…)');
    const account = options.account?.trim() || signer.getPublicKey();
    try {
      if (!fromPublic(account).getPublicKey().startsWith('A')) throw new Error('not an account key');
    } catch (e) {
      throw new UserError(`NATS account: "${account}" is not an account public key (A…)`, { cause: e });
    }
    this.signer = signer;
    this.account = account;
    const ttl = options.ttlSeconds ?? DEFAULT_NATS_CREDS_TTL_SECONDS;
    if (!Number.isInteger(ttl) || ttl < 0) throw new UserError(`NATS credential lifetime: ${ttl} is not a whole number of seconds >= 0`);
    this.ttlSeconds = ttl;
  }

  /** A fresh user, allowed only `jobId`'s subjects. */
  async issueWorker(jobId: string, workerId: string): Promise<WorkerNatsCredentials> {
    const user = createUser();
    const opts: Parameters<typeof encodeUser>[4] = {
      ...(this.ttlSeconds > 0 ? { exp: Math.floor(Date.now() / 1000) + this.ttlSeconds } : {}),
      ...(this.signer.getPublicKey() !== this.account ? { signer: this.signer } : {}),
    };
    const issuer = this.signer.getPublicKey() !== this.account ? this.account : this.signer;
    const jwt = await encodeUser(`worker ${workerId} job ${jobId}`, user, issuer, workerPermissions(jobId), opts);
    return { creds: new TextDecoder().decode(fmtCreds(jwt, user)), inboxPrefix: jobInboxPrefix(jobId) };
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
  /** Issues `.creds` for another user of the account with the given permissions (tests, tools). */
  issueUser(name: string, permissions: Pick<User, 'pub' | 'sub'>): Promise<string>;
}

const enc = (s: Uint8Array): string => new TextDecoder().decode(s);

/** Creates an operator, a system account and the polytune account (JetStream on, a signing key). */
export async function createNatsOperatorSetup(options: { buckets?: readonly string[] } = {}): Promise<NatsOperatorSetup> {
  const operator = createOperator();
  const system = createAccount();
  const account = createAccount();
  const signing = createAccount();
  const operatorJwt = await encodeOperator('polytune-operator', operator, { system_account: system.getPublicKey() });
  const systemJwt = await encodeAccount('SYS', system, {}, { signer: operator });
  const unlimited = -1;
  const accountJwt = await encodeAccount('polytune', account, {
    signing_keys: [signing.getPublicKey()],
    limits: {
      subs: unlimited, data: unlimited, payload: unlimited, imports: unlimited, exports: unlimited, wildcards: true, conn: unlimited, leaf: unlimited,
      mem_storage: unlimited, disk_storage: unlimited, streams: unlimited, consumer: unlimited,
    },
  }, { signer: operator });
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
      `resolver_preload: { ${JSON.stringify(system.getPublicKey())}: ${JSON.stringify(systemJwt)}, ${JSON.stringify(account.getPublicKey())}: ${JSON.stringify(accountJwt)} }`,
    ],
    account: account.getPublicKey(),
    signingKeySeed: enc(signing.getSeed()),
    coordinatorCreds: await issueUser('coordinator', coordinatorPermissions(options.buckets)),
    issueUser,
  };
}

/**
 * Writes a setup into `dir` (created 0700, files 0600): `nats-auth.conf` (include it from the
 * nats-server config), `coordinator.creds`, `account-signing-key.nk`, `account.pub`.
 */
export function writeNatsOperatorSetup(setup: NatsOperatorSetup, dir: string): Record<string, string> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files: Record<string, string> = {
    'nats-auth.conf': setup.serverConfig.join('\n') + '\n',
    'coordinator.creds': setup.coordinatorCreds,
    'account-signing-key.nk': setup.signingKeySeed + '\n',
    'account.pub': setup.account + '\n',
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
