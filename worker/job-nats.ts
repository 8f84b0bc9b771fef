/**
 * The NATS connection a worker uses for one assignment. With credentials in the assignment
 * (coordinator running NATS security, see coordinator/nats-credentials.ts), a connection of its
 * own, authenticated as this worker on this job only, with the job's inbox prefix; it is closed
 * when the assignment ends. Without, the worker's one shared, unauthenticated connection.
 */
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
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
  let released: Promise<void> | undefined;
  return { nc, release: () => (released ??= nc.drain().catch(() => nc.close())) };
}
