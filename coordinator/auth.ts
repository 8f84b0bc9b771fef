/**
 * Who may call the coordinator.
 *
 * - `JobService` (Submit, Get, List, Cancel, Watch): when a client token is configured, every call
 *   carries `authorization: Bearer <token>`. Read-only calls need it too: a job record holds the
 *   spec (paths, output locations) and a Watch is a long-lived stream; a cluster that wants an
 *   open dashboard gives it its own copy of the token.
 * - `WorkerService.Join`: a worker is handed job specs and NATS credentials, so it is
 *   authenticated too: by a client certificate that verifies against `--tls-client-ca` (mutual
 *   TLS) when that is set, and by the worker token (a different secret from the client token, so
 *   a worker cannot submit or cancel) when that is set. Either, both, or neither (local cluster).
 *
 * Tokens are compared in constant time (sha256 of both, then `timingSafeEqual`, so the length
 * does not leak either).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Metadata } from '@grpc/grpc-js';
import { AuthenticationError } from './errors.js';

/** Env var holding the client token (JobService), for `serve` and for clients. */
export const TOKEN_ENV = 'POLYTUNE_TOKEN';
/** Env var holding the worker token (WorkerService), for `serve` and for workers. */
export const WORKER_TOKEN_ENV = 'POLYTUNE_WORKER_TOKEN';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** Constant-time comparison of a presented token with the expected one. */
export function tokenMatches(presented: string | undefined, expected: string): boolean {
  const ok = timingSafeEqual(digest(presented ?? ''), digest(expected));
  return ok && presented !== undefined;
}

/** The bearer token of a call's metadata, or undefined when there is none (or it is not `Bearer`). */
export function bearerToken(metadata: Metadata): string | undefined {
  const values = metadata.get('authorization');
  if (values.length !== 1) return undefined;
  const v = values[0];
  if (typeof v !== 'string') return undefined;
  const m = /^Bearer ([\x21-\x7e]+)$/i.exec(v.trim());
  return m?.[1];
}

export interface CallAuthPolicy {
  /** Client token for JobService; undefined: JobService is open. */
  clientToken?: string | undefined;
  /** Worker token for WorkerService.Join; undefined: no token asked. */
  workerToken?: string | undefined;
  /** Join needs a verified client certificate (mutual TLS). */
  requireWorkerCertificate?: boolean;
  /** A worker's id must be a name of its client certificate (CN or DNS SAN): one certificate a worker. */
  workerIdFromCertificate?: boolean;
}

/** Throws unless `workerId` is one of the names of the worker's client certificate (when the policy asks). */
export function authorizeWorkerId(policy: CallAuthPolicy, workerId: string, certificateNames: readonly string[]): void {
  if (!policy.workerIdFromCertificate) return;
  if (!certificateNames.includes(workerId)) {
    throw new AuthenticationError(
      `Hello.worker_id "${workerId}" is not a name of the worker's client certificate ` +
        `(${certificateNames.join(', ') || 'none'}); --worker-id-from-cert is on`,
    );
  }
}

/**
 * Who a JobService call comes from, for per-client limits (the Pending cap): the bearer token's
 * identity (a digest, never the token) when the call has one, else the peer's address without
 * its port (`ipv4:10.0.0.7`).
 */
export function clientIdentity(metadata: Metadata, peer: string): string {
  const token = bearerToken(metadata);
  if (token !== undefined) return `token:${digest(token).toString('hex').slice(0, 16)}`;
  const m = /^(.*):\d+$/.exec(peer);
  return (m?.[1] ?? peer).replace(/^ipv6:\[(.*)\]$/, 'ipv6:$1');
}

/** Throws `AuthenticationError` unless the call carries the client token (when one is configured). */
export function authorizeJobCall(policy: CallAuthPolicy, method: string, metadata: Metadata): void {
  if (policy.clientToken === undefined) return;
  const presented = bearerToken(metadata);
  if (presented === undefined)
    throw new AuthenticationError(`missing bearer token (metadata "authorization: Bearer <token>")`);
  if (!tokenMatches(presented, policy.clientToken)) throw new AuthenticationError(`invalid bearer token for ${method}`);
}

/** Throws unless a Join call is allowed: verified client certificate and/or worker token, as configured. */
export function authorizeWorkerCall(policy: CallAuthPolicy, metadata: Metadata, certificateVerified: boolean): void {
  if (policy.requireWorkerCertificate && !certificateVerified) {
    throw new AuthenticationError(
      "Join: a client certificate signed by the coordinator's --tls-client-ca is required (mutual TLS)",
    );
  }
  if (policy.workerToken === undefined) return;
  const presented = bearerToken(metadata);
  if (presented === undefined) throw new AuthenticationError('Join: missing worker bearer token');
  if (!tokenMatches(presented, policy.workerToken)) throw new AuthenticationError('Join: invalid worker bearer token');
}
