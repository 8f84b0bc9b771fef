/** JobService against a real nats-server (JetStream) and real gRPC on 127.0.0.1:0. */
import { status } from '@grpc/grpc-js';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { JobRecord } from '../../coordinator/job-record.js';
import type { Coordinator } from '../../coordinator/server.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';
import { KvBucket } from '../../common/subjects.js';

describe('coordinator JobService', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient | undefined;
  let nc: NatsConnection | undefined;
  let fx: SpecFixture;

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address, callTimeoutMs: 5_000 });
  });

  afterEach(async () => {
    client?.close();
    await coord?.stop();
    await nc?.close();
    await nats.stop();
    fx.cleanup();
    client = undefined;
    coord = undefined;
    nc = undefined;
  });

  it('stores a submitted job in the polytune_jobs KV bucket; Get and List return it', async () => {
    const id = await client!.submitText(fx.yaml({ name: 'kv-check' }), 'job.yaml');
    expect(id).toMatch(/^kv-check-[a-z0-9]{5}$/);

    nc = await connect({ servers: nats.url });
    const kv = await new Kvm(nc).open(KvBucket.jobs);
    const entry = await kv.get(id);
    expect(entry?.operation).toBe('PUT');
    const stored = entry!.json<JobRecord>();
    expect(stored).toMatchObject({ id, name: 'kv-check', state: 'Pending', totalSteps: 4, generation: 0 });
    expect(stored.spec.spec.model.path).toBe(fx.modelDir);
    expect((await kv.status()).history).toBeGreaterThanOrEqual(1);

    const job = await client!.get(id);
    expect(job).toMatchObject({ id, name: 'kv-check', state: 'PENDING', totalSteps: 4, hasLoss: false });
    expect(JSON.parse(job.specJson).metadata.name).toBe('kv-check');

    const other = await client!.submitText(fx.yaml({ name: 'second' }));
    const listed = await client!.list();
    expect(listed.map((j) => j.id)).toEqual(expect.arrayContaining([id, other]));
  });

  it('rejects a bad spec with INVALID_ARGUMENT naming the field, and keeps serving', async () => {
    const bad = fx.yaml().replace('lr: 0.1', 'lr: -1');
    const err = await client!.submitText(bad, 'bad.yaml').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CoordinatorCallError);
    expect((err as CoordinatorCallError).code).toBe(status.INVALID_ARGUMENT);
    expect((err as CoordinatorCallError).message).toContain('spec.training.optimizer.lr');
    expect((err as CoordinatorCallError).isUserMistake).toBe(true);

    const missing = fx.yaml().replace(fx.dataFile, `${fx.dataFile}.nope`);
    const err2 = await client!.submitText(missing).catch((e: unknown) => e as CoordinatorCallError);
    expect(err2).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((err2 as CoordinatorCallError).message).toContain('spec.data.train[0].path');

    const tooDeep = fx.yaml().replace('layers: [0, 1]', 'layers: [0, 7]');
    const err3 = await client!.submitText(tooDeep).catch((e: unknown) => e as CoordinatorCallError);
    expect((err3 as CoordinatorCallError).message).toContain('spec.method.layers[1]');

    // The server still answers.
    const id = await client!.submitText(fx.yaml());
    expect((await client!.get(id)).state).toBe('PENDING');
  });

  it('Get of an unknown job is NOT_FOUND', async () => {
    const err = await client!.get('no-such-job').catch((e: unknown) => e as CoordinatorCallError);
    expect(err).toMatchObject({ code: status.NOT_FOUND });
  });

  it('Cancel ends a pending job; Watch streams the snapshot and the terminal state', async () => {
    const id = await client!.submitText(fx.yaml());
    const events: string[] = [];
    const watching = (async () => {
      for await (const ev of client!.watch(id)) events.push(`${ev.kind}:${ev.job?.state}`);
    })();
    // Let the watch see the snapshot first.
    await new Promise((r) => setTimeout(r, 200));
    const cancelled = await client!.cancel(id, 'test says stop');
    expect(cancelled.state).toBe('CANCELLED');
    expect(cancelled.error).toBe('test says stop');
    await watching;
    expect(events[0]).toBe('SNAPSHOT:PENDING');
    expect(events.at(-1)).toBe('STATE:CANCELLED');
    // Cancelling again leaves it as it is.
    expect((await client!.cancel(id)).state).toBe('CANCELLED');
  });

  it('a restarted coordinator on the same NATS still lists the job', async () => {
    const id = await client!.submitText(fx.yaml({ name: 'survivor' }));
    client!.close();
    await coord!.stop();
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address, callTimeoutMs: 5_000 });
    const listed = await client.list();
    expect(listed.find((j) => j.id === id)).toMatchObject({ name: 'survivor', state: 'PENDING' });
  });
});
