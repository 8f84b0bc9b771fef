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
import { readFileSync } from 'node:fs';
import type { Metadata } from '@grpc/grpc-js';
import { UserError } from '../common/errors.js';
import { AuthenticationError } from './errors.js';

/** Env var holding the client token (JobService), for `serve` and for clients. */
export const TOKEN_ENV = 'POLYTUNE_TOKEN';
/** Env var holding the worker token (WorkerService), for `serve` and for workers. */
export const WORKER_TOKEN_ENV = 'POLYTUNE_WORKER_TOKEN';
/** Tokens shorter than this are refused: they can be guessed. */
export const MIN_TOKEN_LENGTH = 16;
/** Longer tokens are refused (a header is not a place for a file). */
export const MAX_TOKEN_LENGTH = 4096;

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

/** Checks a token's shape; `what` names its source in the error. */
export function checkToken(token: string, what: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN_LENGTH) throw new UserError(`${what}: the token must have at least ${MIN_TOKEN_LENGTH} characters`);
  if (t.length > MAX_TOKEN_LENGTH) throw new UserError(`${what}: the token must have at most ${MAX_TOKEN_LENGTH} characters`);
  if (!/^[\x21-\x7e]+$/.test(t)) throw new UserError(`${what}: the token must be printable ASCII without spaces`);
  return t;
}

/**
 * A token from `--token-file FILE` if given, else from the env var, else undefined. The file's
 * content is trimmed (a trailing newline is fine).
 */
export function readToken(file: string | undefined, envVar: string, flag = '--token-file'): string | undefined {
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new UserError(`${flag}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
    }
    return checkToken(text, `${flag} ${file}`);
  }
  const env = process.env[envVar];
  return env ? checkToken(env, `$${envVar}`) : undefined;
}

export interface CallAuthPolicy {
  /** Client token for JobService; undefined: JobService is open. */
  clientToken?: string | undefined;
  /** Worker token for WorkerService.Join; undefined: no token asked. */
  workerToken?: string | undefined;
  /** Join needs a verified client certificate (mutual TLS). */
  requireWorkerCertificate?: boolean;
}

/** Throws `AuthenticationError` unless the call carries the client token (when one is configured). */
export function authorizeJobCall(policy: CallAuthPolicy, method: string, metadata: Metadata): void {
  if (policy.clientToken === undefined) return;
  const presented = bearerToken(metadata);
  if (presented === undefined) throw new AuthenticationError(`${method}: missing bearer token (metadata "authorization: Bearer <token>")`);
  if (!tokenMatches(presented, policy.clientToken)) throw new AuthenticationError(`${method}: invalid bearer token`);
}

/** Throws unless a Join call is allowed: verified client certificate and/or worker token, as configured. */
export function authorizeWorkerCall(policy: CallAuthPolicy, metadata: Metadata, certificateVerified: boolean): void {
  if (policy.requireWorkerCertificate && !certificateVerified) {
    throw new AuthenticationError('Join: a client certificate signed by the coordinator\'s --tls-client-ca is required (mutual TLS)');
  }
  if (policy.workerToken === undefined) return;
  const presented = bearerToken(metadata);
  if (presented === undefined) throw new AuthenticationError('Join: missing worker bearer token');
  if (!tokenMatches(presented, policy.workerToken)) throw new AuthenticationError('Join: invalid worker bearer token');
}
