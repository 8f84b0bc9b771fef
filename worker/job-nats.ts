/**
 * The NATS connection a worker uses for one assignment. With credentials in the assignment
 * (coordinator running NATS security, see coordinator/nats-credentials.ts), a connection of its
 * own, authenticated as this worker on this job only, with the job's inbox prefix; it is closed
 * when the assignment ends (drained, or closed at once when it lost its server: its credential
 * expired or was revoked). Without, the worker's one shared, unauthenticated connection.
 */
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { DEFAULT_NATS_SETTLE_MS, settleWithin } from '../common/nats-bounded.js';
import type { NatsTls } from '../common/tls.js';
import { chooseNatsUrl, type AssignmentEvent } from './session.js';

export interface JobNats {
  readonly nc: NatsConnection;
  /** Closes the connection if it belongs to this assignment; the shared one stays. Idempotent. */
  release(): Promise<void>;
}

export async function jobNatsConnection(
  a: Pick<AssignmentEvent, 'natsUrl' | 'natsCreds' | 'natsInboxPrefix' | 'jobId'>,
  options: { natsFlag: string | undefined; workerId: string; tls?: NatsTls; shared: () => Promise<NatsConnection> },
): Promise<JobNats> {
  if (!a.natsCreds) {
    const nc = await options.shared();
    return { nc, release: () => Promise.resolve() };
  }
  const nc = await connect({
    servers: chooseNatsUrl(options.natsFlag, a),
    name: `polytune-worker-${options.workerId}-${a.jobId}`,
    maxReconnectAttempts: -1,
    authenticator: credsAuthenticator(new TextEncoder().encode(a.natsCreds)),
    ...(a.natsInboxPrefix ? { inboxPrefix: a.natsInboxPrefix } : {}),
    ...(options.tls ? { tls: options.tls } : {}),
  });
  closeOnLostCredentials(nc);
  let released: Promise<void> | undefined;
  return { nc, release: () => (released ??= drainOrClose(nc)) };
}

/** The server's word for a credential that expired or was revoked, or a connect it refused. */
export function isCredentialFailure(error: unknown): boolean {
  const e = error as { name?: unknown; message?: unknown } | undefined;
  return (
    /UserAuthenticationExpired|AuthorizationError/.test(String(e?.name ?? '')) ||
    /user authentication (expired|revoked)|authorization violation/i.test(String(e?.message ?? error ?? ''))
  );
}

/**
 * An assignment's credential that expired or was revoked never works again: once the server says
 * so and the connection drops, it is closed instead of reconnecting in vain, so that whatever
 * waits on it (a flush, a drain) ends and the worker reports the generation's end.
 */
function closeOnLostCredentials(nc: NatsConnection): void {
  void (async () => {
    let refused = false;
    for await (const s of nc.status()) {
      if (s.type === 'error' && isCredentialFailure(s.error)) refused = true;
      if (refused && (s.type === 'disconnect' || s.type === 'reconnecting')) {
        await nc.close().catch(() => undefined);
        return;
      }
    }
  })();
}

/**
 * Drains the connection, or closes it when draining does not finish in `timeoutMs`: a connection
 * whose credential expired or was revoked (its generation is over) reconnects in vain, and a drain
 * waits for a server, so the assignment would never end and its Result never be sent. The close is
 * bounded as well (`settleWithin`).
 */
export async function drainOrClose(nc: NatsConnection, timeoutMs = DEFAULT_NATS_SETTLE_MS): Promise<void> {
  if (nc.isClosed()) return;
  await settleWithin(nc.drain(), nc, timeoutMs);
  if (!nc.isClosed()) await settleWithin(nc.close(), nc, timeoutMs);
}
