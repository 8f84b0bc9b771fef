/**
 * Bounded waits on a NATS connection. A flush or drain waits for the server's answer; on a
 * connection that lost its server (reconnecting, or refused because its credential expired or
 * was revoked) that answer may never come: nats.js (3.x) rejects a pending flush only when it
 * dials again, not when the connection is closed, and a worker whose credential expired was seen
 * with a flush pending for minutes, its reconnect silent after one attempt. Whatever must end
 * whether or not the server answers (closing a collective, releasing an assignment's connection)
 * waits through `settleWithin`.
 */
import type { NatsConnection } from '@nats-io/transport-node';

/** @default 2 s for a flush, drain or close on the way out. */
export const DEFAULT_NATS_SETTLE_MS = 2_000;

/**
 * Waits until `work` settles (resolved or rejected), the connection is closed, or `timeoutMs`
 * pass, whichever comes first; never rejects.
 * @returns true when `work` settled or the connection closed, false when the time ran out
 */
export async function settleWithin(
  work: Promise<unknown>,
  nc: NatsConnection,
  timeoutMs = DEFAULT_NATS_SETTLE_MS,
): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([
      work.then(
        () => true,
        () => true,
      ),
      nc.closed().then(() => true),
      timedOut,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
