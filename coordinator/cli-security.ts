/**
 * The security flags of the `coordinator` command, and `coordinator nats-auth init`. Each flag
 * has an env var, for the Helm chart (secrets mounted as files, paths in env):
 *
 * | `serve` flag | env | what |
 * |---|---|---|
 * | `--tls-cert FILE`, `--tls-key FILE` | `POLYTUNE_TLS_CERT`, `POLYTUNE_TLS_KEY` | TLS on the gRPC port |
 * | `--tls-client-ca FILE` | `POLYTUNE_TLS_CLIENT_CA` | workers must present a certificate it signed (mutual TLS) |
 * | `--token-file FILE` | `POLYTUNE_TOKEN` (the token itself) | bearer token every JobService call needs |
 * | `--worker-token-file FILE` | `POLYTUNE_WORKER_TOKEN` (the token itself) | bearer token Join needs |
 * | `--worker-id-from-cert`, `--no-worker-id-from-cert` | `POLYTUNE_WORKER_ID_FROM_CERT=1`/`0` | a worker's id must be a name of its client certificate (default: on under mutual TLS) |
 * | `--nats-creds FILE` | `POLYTUNE_NATS_CREDS` | the coordinator's own NATS credentials |
 * | `--nats-account-signing-key FILE` | `POLYTUNE_NATS_ACCOUNT_SIGNING_KEY` | seed that signs per-job worker credentials |
 * | `--nats-account PUBKEY` | `POLYTUNE_NATS_ACCOUNT` | the account the signing key belongs to |
 * | `--nats-creds-ttl SECONDS` | `POLYTUNE_NATS_CREDS_TTL` | lifetime of issued worker credentials, past their generation's start (default an hour; 0: none) |
 * | `--nats-system-creds FILE` | `POLYTUNE_NATS_SYSTEM_CREDS` | revocation: a system-account user allowed to update the account JWT |
 * | `--nats-account-jwt FILE` | `POLYTUNE_NATS_ACCOUNT_JWT` | revocation: the account JWT the servers preloaded |
 * | `--nats-operator-signing-key FILE` | `POLYTUNE_NATS_OPERATOR_SIGNING_KEY` | revocation: an operator signing key (signs account updates) |
 * | `--nats-tls-ca FILE` | `POLYTUNE_NATS_TLS_CA` | TLS to NATS, verifying the servers with this CA |
 * | `--nats-tls-cert FILE`, `--nats-tls-key FILE` | `POLYTUNE_NATS_TLS_CERT`, `POLYTUNE_NATS_TLS_KEY` | a client certificate for NATS |
 * | `--insecure-nats` | `POLYTUNE_INSECURE_NATS=1` | use a NATS without authentication that is not on loopback (nats-exposure.ts) |
 *
 * | client flag (`submit`, `status`, `watch`, `cancel`) | env | what |
 * |---|---|---|
 * | `--tls-ca FILE` | `POLYTUNE_TLS_CA` | TLS to the coordinator, verifying it with this CA |
 * | `--tls-cert FILE`, `--tls-key FILE` | `POLYTUNE_TLS_CLIENT_CERT`, `POLYTUNE_TLS_CLIENT_KEY` | a client certificate |
 * | `--tls-server-name NAME` | `POLYTUNE_TLS_SERVER_NAME` | the name in the coordinator's certificate, when it differs from the host dialled |
 * | `--token-file FILE` | `POLYTUNE_TOKEN` | the bearer token |
 */
import { readFileSync } from 'node:fs';
import { credsAuthenticator } from '@nats-io/transport-node';
import { flagOrEnv } from '../common/cli.js';
import { UserError } from '../common/errors.js';
import { loadClientTls, loadServerTls, NATS_TLS_FLAGS, natsTlsFromFlags, type ClientTls } from '../common/tls.js';
import { readToken } from '../common/token.js';
import { TOKEN_ENV, WORKER_TOKEN_ENV } from './auth.js';
import { INSECURE_NATS_ENV } from './nats-exposure.js';
import { checkNatsRevocationSettings, type NatsRevocationSettings } from './nats-revocation.js';
import { createNatsOperatorSetup, NatsCredentialIssuer, writeNatsOperatorSetup } from './nats-credentials.js';
import type { CoordinatorOptions } from './server.js';

type Values = Record<string, string | boolean | undefined>;

export const CLIENT_SECURITY_FLAGS = {
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-server-name': { type: 'string' },
  'token-file': { type: 'string' },
} as const;

export const SERVE_SECURITY_FLAGS = {
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-client-ca': { type: 'string' },
  'worker-id-from-cert': { type: 'boolean' },
  'no-worker-id-from-cert': { type: 'boolean' },
  'insecure-nats': { type: 'boolean' },
  'token-file': { type: 'string' },
  'worker-token-file': { type: 'string' },
  'nats-creds': { type: 'string' },
  'nats-account-signing-key': { type: 'string' },
  'nats-account': { type: 'string' },
  'nats-creds-ttl': { type: 'string' },
  'nats-system-creds': { type: 'string' },
  'nats-account-jwt': { type: 'string' },
  'nats-operator-signing-key': { type: 'string' },
  ...NATS_TLS_FLAGS,
} as const;

export const SECURITY_USAGE =
  `security (see README "Security"):
  serve:   [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE ` +
  `[--no-worker-id-from-cert]]] [--token-file FILE] [--worker-token-file FILE]
           [--insecure-nats] [--nats-creds FILE] [--nats-account-signing-key ` +
  `FILE [--nats-account PUBKEY] [--nats-creds-ttl SECONDS]
             [--nats-system-creds FILE --nats-account-jwt FILE --nats-operator-signing-key FILE]]   (revocation)
           [--nats-tls-ca FILE [--nats-tls-cert FILE --nats-tls-key FILE]]   (workers take the same NATS TLS flags)
           --nats-creds-ttl: worker credentials' lifetime past their generation's start (default 3600; 0: none)
  clients: [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME] [--token-file FILE]
  env: POLYTUNE_TOKEN, POLYTUNE_WORKER_TOKEN, POLYTUNE_TLS_{CERT,KEY,CLIENT_CA,CA,CLIENT_CERT,CLIENT_KEY,SERVER_NAME},
       POLYTUNE_NATS_{CREDS,ACCOUNT_SIGNING_KEY,ACCOUNT,CREDS_TTL,SYSTEM_CREDS,ACCOUNT_JWT,OPERATOR_SIGNING_KEY}, ` +
  `POLYTUNE_NATS_TLS_{CA,CERT,KEY}, POLYTUNE_INSECURE_NATS=1,
       POLYTUNE_WORKER_ID_FROM_CERT=0|1
  coordinator nats-auth init --out DIR    writes nats-server operator config and the coordinator's NATS secrets
`;

/** TLS and token for a JobService client, from flags, else env. */
export function clientSecurity(v: Values): { tls?: ClientTls; token?: string } {
  const tls = loadClientTls({
    ca: flagOrEnv(v, 'tls-ca', 'POLYTUNE_TLS_CA'),
    cert: flagOrEnv(v, 'tls-cert', 'POLYTUNE_TLS_CLIENT_CERT'),
    key: flagOrEnv(v, 'tls-key', 'POLYTUNE_TLS_CLIENT_KEY'),
    serverName: flagOrEnv(v, 'tls-server-name', 'POLYTUNE_TLS_SERVER_NAME'),
  });
  const token = readToken(v['token-file'] as string | undefined, TOKEN_ENV);
  return { ...(tls ? { tls } : {}), ...(token !== undefined ? { token } : {}) };
}

function readTextFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UserError(`${flag}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, {
      cause: e,
    });
  }
}

/** The security options of `serve`, from flags, else env. */
export function serveSecurity(
  v: Values,
): Pick<CoordinatorOptions, 'tls' | 'auth' | 'natsConnect' | 'natsIssuer' | 'natsRevocation' | 'insecureNats'> {
  const tls = loadServerTls({
    cert: flagOrEnv(v, 'tls-cert', 'POLYTUNE_TLS_CERT'),
    key: flagOrEnv(v, 'tls-key', 'POLYTUNE_TLS_KEY'),
    clientCa: flagOrEnv(v, 'tls-client-ca', 'POLYTUNE_TLS_CLIENT_CA'),
  });
  const clientToken = readToken(v['token-file'] as string | undefined, TOKEN_ENV);
  const workerToken = readToken(v['worker-token-file'] as string | undefined, WORKER_TOKEN_ENV, '--worker-token-file');
  if (clientToken !== undefined && clientToken === workerToken)
    throw new UserError(
      'the worker token must differ from the client token (a worker must not be able to submit or cancel)',
    );
  const credsFile = flagOrEnv(v, 'nats-creds', 'POLYTUNE_NATS_CREDS');
  const creds = credsFile ? readTextFile('--nats-creds', credsFile) : undefined;
  if (creds !== undefined && !creds.includes('BEGIN NATS USER JWT'))
    throw new UserError(`--nats-creds: ${credsFile} is not a NATS .creds file`);
  const keyFile = flagOrEnv(v, 'nats-account-signing-key', 'POLYTUNE_NATS_ACCOUNT_SIGNING_KEY');
  const account = flagOrEnv(v, 'nats-account', 'POLYTUNE_NATS_ACCOUNT');
  if (account && !keyFile) throw new UserError('--nats-account needs --nats-account-signing-key');
  const ttlText = flagOrEnv(v, 'nats-creds-ttl', 'POLYTUNE_NATS_CREDS_TTL');
  if (ttlText !== undefined && !keyFile)
    throw new UserError(
      '--nats-creds-ttl needs --nats-account-signing-key (it is the lifetime of the credentials it signs)',
    );
  const ttlSeconds = ttlText === undefined ? undefined : Number(ttlText);
  if (ttlSeconds !== undefined && !(Number.isInteger(ttlSeconds) && ttlSeconds >= 0))
    throw new UserError(`--nats-creds-ttl: "${ttlText}" is not a whole number of seconds >= 0`);
  const natsIssuer = keyFile
    ? new NatsCredentialIssuer({
        signingKeySeed: readTextFile('--nats-account-signing-key', keyFile),
        ...(account ? { account } : {}),
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
      })
    : undefined;
  const revocationFiles = {
    systemCreds: flagOrEnv(v, 'nats-system-creds', 'POLYTUNE_NATS_SYSTEM_CREDS'),
    accountJwt: flagOrEnv(v, 'nats-account-jwt', 'POLYTUNE_NATS_ACCOUNT_JWT'),
    operatorSigningKeySeed: flagOrEnv(v, 'nats-operator-signing-key', 'POLYTUNE_NATS_OPERATOR_SIGNING_KEY'),
  };
  const natsRevocation = revocationSettings(revocationFiles, natsIssuer?.account);
  const natsTls = natsTlsFromFlags(v);
  const natsConnect = {
    ...(creds !== undefined ? { authenticator: credsAuthenticator(new TextEncoder().encode(creds)) } : {}),
    ...(natsTls ? { tls: natsTls } : {}),
  };
  return {
    ...(tls ? { tls } : {}),
    auth: { clientToken, workerToken, ...workerIdFromCertificate(v) },
    ...(Object.keys(natsConnect).length > 0 ? { natsConnect } : {}),
    ...(natsIssuer ? { natsIssuer } : {}),
    ...(natsRevocation ? { natsRevocation } : {}),
    ...(v['insecure-nats'] === true || process.env[INSECURE_NATS_ENV] === '1' ? { insecureNats: true } : {}),
  };
}

/** The three revocation files, all or none, read and checked; undefined when none is given. */
function revocationSettings(
  files: {
    systemCreds: string | undefined;
    accountJwt: string | undefined;
    operatorSigningKeySeed: string | undefined;
  },
  account: string | undefined,
): NatsRevocationSettings | undefined {
  const given = Object.values(files).filter((f) => f !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3)
    throw new UserError(
      '--nats-system-creds, --nats-account-jwt and ' +
        '--nats-operator-signing-key go together (revocation needs all three)',
    );
  if (account === undefined)
    throw new UserError(
      '--nats-system-creds needs --nats-account-signing-key (revocation is of the credentials it signs)',
    );
  const settings = {
    systemCreds: readTextFile('--nats-system-creds', files.systemCreds!),
    accountJwt: readTextFile('--nats-account-jwt', files.accountJwt!).trim(),
    operatorSigningKeySeed: readTextFile('--nats-operator-signing-key', files.operatorSigningKeySeed!).trim(),
  };
  checkNatsRevocationSettings(settings, account);
  return settings;
}

/**
 * `--worker-id-from-cert` / `--no-worker-id-from-cert`, else `POLYTUNE_WORKER_ID_FROM_CERT` (`1`/`0`);
 * absent: the coordinator's default (on under mutual TLS).
 */
function workerIdFromCertificate(v: Values): { workerIdFromCertificate?: boolean } {
  if (v['worker-id-from-cert'] === true && v['no-worker-id-from-cert'] === true) {
    throw new UserError('--worker-id-from-cert and --no-worker-id-from-cert contradict each other');
  }
  if (v['worker-id-from-cert'] === true) return { workerIdFromCertificate: true };
  if (v['no-worker-id-from-cert'] === true) return { workerIdFromCertificate: false };
  const env = process.env['POLYTUNE_WORKER_ID_FROM_CERT'];
  if (env === undefined || env === '') return {};
  if (env !== '0' && env !== '1') throw new UserError(`POLYTUNE_WORKER_ID_FROM_CERT: "${env}" must be 1 or 0`);
  return { workerIdFromCertificate: env === '1' };
}

/** `coordinator nats-auth init --out DIR`: a fresh operator, accounts and coordinator credentials. */
export async function natsAuthInit(out: string): Promise<Record<string, string>> {
  const setup = await createNatsOperatorSetup();
  return writeNatsOperatorSetup(setup, out);
}
