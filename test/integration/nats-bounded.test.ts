/**
 * Nothing on the way out waits for a NATS server that is gone: with the server stopped under a
 * connection that reconnects for ever (as a worker's job connection does), a flush never gets its
 * answer; closing the collective, settling a flush and releasing the connection still end in
 * bounded time (common/nats-bounded.ts). A worker whose credential expired mid-step hung here.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { settleWithin } from '../../common/nats-bounded.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { drainOrClose } from '../../worker/job-nats.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName, type NatsServer } from '../helpers/nats-server.js';

const nats = natsScope();
afterEach(() => nats.cleanup());

/** A connection that reconnects for ever, a minute between attempts (no attempt settles a flush meanwhile). */
function reconnecting(server: NatsServer): Promise<NatsConnection> {
  return nats.connect(server, { reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 60_000 });
}

/** Stops the server under `nc` and returns once `nc` knows it is disconnected. */
async function orphan(server: NatsServer, nc: NatsConnection): Promise<void> {
  const statuses = nc.status(); // before the stop: a status is not kept for a later listener
  await server.stop();
  for await (const s of statuses) if (s.type === 'disconnect') break;
}

async function seconds<T>(work: Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await work;
  return [v, (performance.now() - t0) / 1000];
}

describe('waits on a connection whose server is gone', () => {
  it('settleWithin gives up at its deadline, and ends at once when the connection closes', async () => {
    const server = await nats.start();
    const nc = await reconnecting(server);
    await orphan(server, nc);
    const [answered, waited] = await seconds(settleWithin(nc.flush(), nc, 300));
    expect(answered).toBe(false);
    expect(waited).toBeLessThan(1.5);
    const pending = nc.flush();
    setTimeout(() => void nc.close(), 100);
    const [closed, took] = await seconds(settleWithin(pending, nc, 30_000));
    expect(closed).toBe(true);
    expect(took).toBeLessThan(5);
  });

  it('closing a collective and releasing its connection end in bounded time', async () => {
    const server = await nats.start();
    const nc = await reconnecting(server);
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc,
      job: uniqueJobName('bounded'),
      generation: 1,
      rank: 0,
      worldSize: 2,
    });
    await orphan(server, nc);
    const [, closing] = await seconds(ar.close());
    expect(closing).toBeLessThan(5);
    const [, releasing] = await seconds(drainOrClose(nc, 300));
    expect(releasing).toBeLessThan(5);
    expect(nc.isClosed()).toBe(true);
  });
});
