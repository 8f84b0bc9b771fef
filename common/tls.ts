/**
 * TLS for the gRPC control plane, shared by the coordinator (server), its clients and the workers.
 *
 * - Server: `cert` + `key` turn TLS on. With `clientCa`, the server asks every client for a
 *   certificate and verifies it against that CA, but does not reject a client that sends none at
 *   the handshake: which service needs one is decided per call (`peerCertificateVerified`). The
 *   coordinator requires it for `WorkerService.Join` (mutual TLS for workers), while CLI clients
 *   authenticate with the bearer token.
 * - Client: `ca` (the CA that signed the server's certificate; the system roots when absent) turns
 *   TLS on; `cert` + `key` present a client certificate.
 *
 * TLS toward NATS (`natsTls`), for the coordinator and the workers alike: `--nats-tls-ca` (the CA
 * of the NATS servers' certificates) makes TLS required and verified; `--nats-tls-cert` +
 * `--nats-tls-key` present a client certificate, for servers that verify their clients.
 *
 * Files are read once, with errors that name the flag and file.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { flagOrEnv } from './cli.js';
import { UserError } from './errors.js';

/** PEM material for the server. */
export interface ServerTls {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** CA bundle that client certificates are verified against; absent: no client certificates asked. */
  readonly clientCa?: Buffer;
}

/** PEM material for a client. TLS is on when this object is given. */
export interface ClientTls {
  /** CA bundle for the server's certificate. @default the system roots */
  readonly ca?: Buffer;
  /** Client certificate chain (mutual TLS); with `key`. */
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** Expected server name when it differs from the host dialled (`grpc.ssl_target_name_override`). */
  readonly serverName?: string;
}

/** Reads a PEM file, naming `what` (usually the flag) in the error. */
export function readPem(what: string, path: string): Buffer {
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch (e) {
    throw new UserError(`${what}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, {
      cause: e,
    });
  }
  if (!pem.toString('latin1').includes('-----BEGIN ')) throw new UserError(`${what}: ${path} is not a PEM file`);
  return pem;
}

/** File paths as given on a command line or in env vars; all undefined means TLS off. */
export interface ServerTlsFiles {
  cert?: string | undefined;
  key?: string | undefined;
  clientCa?: string | undefined;
}

export interface ClientTlsFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  serverName?: string | undefined;
}

/** Loads server TLS from files; undefined when none is given. `--tls-cert` and `--tls-key` go together. */
export function loadServerTls(files: ServerTlsFiles): ServerTls | undefined {
  if (!files.cert && !files.key) {
    if (files.clientCa) throw new UserError('--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)');
    return undefined;
  }
  if (!files.cert || !files.key) throw new UserError('--tls-cert and --tls-key go together');
  return {
    cert: readPem('--tls-cert', files.cert),
    key: readPem('--tls-key', files.key),
    ...(files.clientCa ? { clientCa: readPem('--tls-client-ca', files.clientCa) } : {}),
  };
}

/** Loads client TLS from files; undefined (plaintext) when none is given. */
export function loadClientTls(files: ClientTlsFiles): ClientTls | undefined {
  if (!files.ca && !files.cert && !files.key) return undefined;
  if (Boolean(files.cert) !== Boolean(files.key)) throw new UserError('--tls-cert and --tls-key go together');
  return {
    ...(files.ca ? { ca: readPem('--tls-ca', files.ca) } : {}),
    ...(files.cert ? { cert: readPem('--tls-cert', files.cert) } : {}),
    ...(files.key ? { key: readPem('--tls-key', files.key) } : {}),
    ...(files.serverName ? { serverName: files.serverName } : {}),
  };
}

/** PEM material for the NATS connections, as nats.js takes it (`connect({ tls })`). */
export interface NatsTls {
  readonly ca: string;
  readonly cert?: string;
  readonly key?: string;
}

export interface NatsTlsFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}

/** Loads TLS toward NATS from files; undefined (plaintext) when none is given. */
export function loadNatsTls(files: NatsTlsFiles): NatsTls | undefined {
  if (!files.ca && !files.cert && !files.key) return undefined;
  if (!files.ca)
    throw new UserError('--nats-tls-cert and --nats-tls-key need --nats-tls-ca (the CA of the NATS servers)');
  if (Boolean(files.cert) !== Boolean(files.key)) throw new UserError('--nats-tls-cert and --nats-tls-key go together');
  const pem = (what: string, path: string): string => readPem(what, path).toString('utf8');
  return {
    ca: pem('--nats-tls-ca', files.ca),
    ...(files.cert && files.key
      ? { cert: pem('--nats-tls-cert', files.cert), key: pem('--nats-tls-key', files.key) }
      : {}),
  };
}

/** The env vars of the NATS TLS flags, the same for the coordinator and the workers. */
export const NATS_TLS_ENV = {
  ca: 'POLYTUNE_NATS_TLS_CA',
  cert: 'POLYTUNE_NATS_TLS_CERT',
  key: 'POLYTUNE_NATS_TLS_KEY',
} as const;

/** The NATS TLS flags, for parseArgs. */
export const NATS_TLS_FLAGS = {
  'nats-tls-ca': { type: 'string' },
  'nats-tls-cert': { type: 'string' },
  'nats-tls-key': { type: 'string' },
} as const;

/** Loads NATS TLS from parsed flags, else their env vars. */
export function natsTlsFromFlags(v: Readonly<Record<string, string | boolean | undefined>>): NatsTls | undefined {
  return loadNatsTls({
    ca: flagOrEnv(v, 'nats-tls-ca', NATS_TLS_ENV.ca),
    cert: flagOrEnv(v, 'nats-tls-cert', NATS_TLS_ENV.cert),
    key: flagOrEnv(v, 'nats-tls-key', NATS_TLS_ENV.key),
  });
}

/**
 * A certificate provider that always offers the same PEM material (grpc-js asks for one to request, not require, client
 * certificates).
 */
class StaticCertificateProvider implements grpc.experimental.CertificateProvider {
  constructor(
    private readonly ca: Buffer | null,
    private readonly identity: { certificate: Buffer; privateKey: Buffer } | null,
  ) {}
  // Listeners are called on a later microtask, as a file-watching provider would: grpc-js
  // registers the server's own watcher only after adding these listeners, and an update delivered
  // synchronously would never reach it (the server would then drop every connection).
  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    queueMicrotask(() => listener(this.ca ? { caCertificate: this.ca } : null));
  }
  removeCaCertificateListener(): void {}
  addIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    queueMicrotask(() => listener(this.identity));
  }
  removeIdentityCertificateListener(): void {}
}

/**
 * Server credentials: plaintext without `tls`; TLS; or TLS that also asks for (but does not require) client
 * certificates.
 */
export function serverCredentials(tls: ServerTls | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  if (!tls.clientCa)
    return grpc.ServerCredentials.createSsl(null, [{ cert_chain: tls.cert, private_key: tls.key }], false);
  // One provider for both roles: grpc-js 1.14's factory and constructor name their first two
  // parameters in opposite orders, so the same object in both places is the only safe call.
  const provider = new StaticCertificateProvider(tls.clientCa, { certificate: tls.cert, privateKey: tls.key });
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
}

/** Channel credentials for a client: plaintext without `tls`. */
export function channelCredentials(tls: ClientTls | undefined): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

/** Channel options that go with `channelCredentials` (the server-name override). */
export function channelTlsOptions(tls: ClientTls | undefined): grpc.ChannelOptions {
  return tls?.serverName
    ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName }
    : {};
}

/** grpc-js's AuthContext (not exported by the package). */
type AuthContext = ReturnType<grpc.ServerDuplexStream<unknown, unknown>['getAuthContext']>;

/** True when the call came over TLS with a client certificate that verified against the server's client CA. */
export function peerCertificateVerified(call: { getAuthContext(): AuthContext }): boolean {
  const ctx = call.getAuthContext();
  return ctx.transportSecurityType === 'ssl' && ctx.sslPeerCertificate !== undefined;
}

/** The names of the verified client certificate: its subject CN and its DNS subject alternative names. */
export function peerCertificateNames(call: { getAuthContext(): AuthContext }): string[] {
  const cert = call.getAuthContext().sslPeerCertificate;
  if (!cert) return [];
  const cn = cert.subject?.CN;
  const names = typeof cn === 'string' ? [cn] : Array.isArray(cn) ? [...cn] : [];
  for (const entry of (cert.subjectaltname ?? '').split(',')) {
    const m = /^\s*DNS:(.+?)\s*$/.exec(entry);
    if (m) names.push(m[1]!);
  }
  return [...new Set(names)];
}
