/**
 * WorkerService and the scheduler: fake workers in the test speak the real Join protocol through
 * worker/session.ts to a real coordinator (real gRPC, real nats-server).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import type { Coordinator } from '../../coordinator/server.js';
import { chooseNatsUrl, CoordinatorSession, type AssignmentEvent, type SessionEvent } from '../../worker/session.js';
import {
  eventually,
  makeSpecFixture,
  startNats,
  startTestCoordinator,
  type SpecFixture,
} from './coordinator-fixtures.js';

/** A test worker: a session and a cursor over its events. */
class FakeWorker {
  private readonly it: AsyncIterator<SessionEvent>;
  constructor(readonly session: CoordinatorSession) {
    this.it = session.events()[Symbol.asyncIterator]();
  }
  static async join(address: string, id: string, heartbeatIntervalMs?: number): Promise<FakeWorker> {
    return new FakeWorker(
      await CoordinatorSession.connect({
        address,
        hello: { workerId: id, backend: 'cpu' },
        connectTimeoutMs: 10_000,
        heartbeatIntervalMs,
      }),
    );
  }
  async next(timeoutMs = 10_000): Promise<SessionEvent> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${this.session.workerId}: no event within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      const r = await Promise.race([this.it.next(), timeout]);
      if (r.done) throw new Error('events ended');
      return r.value;
    } finally {
      clearTimeout(timer);
    }
  }
  async assignment(): Promise<AssignmentEvent> {
    const e = await this.next();
    if (e.type !== 'assignment') throw new Error(`expected an assignment, got ${JSON.stringify(e)}`);
    return e;
  }
}

describe('coordinator WorkerService and scheduling', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient;
  let fx: SpecFixture;
  const workers: FakeWorker[] = [];

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
    coord = await startTestCoordinator(nats, { heartbeatTimeoutMs: 1_500 });
    client = new JobClient({ address: coord.address, callTimeoutMs: 5_000 });
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) await w.session.close();
    client.close();
    await coord?.stop();
    await nats.stop();
    fx.cleanup();
  });

  async function join(id: string): Promise<FakeWorker> {
    const w = await FakeWorker.join(coord!.address, id);
    workers.push(w);
    return w;
  }

  it('assigns distinct ranks once count workers joined; progress and results drive the job to Succeeded', async () => {
    const id = await client.submitText(fx.yaml({ workers: 2 }));
    const w0 = await join('w-a');
    // One worker is not a gang of two: the job stays Pending.
    await new Promise((r) => setTimeout(r, 300));
    expect((await client.get(id)).state).toBe('PENDING');
    const w1 = await join('w-b');

    const [a0, a1] = await Promise.all([w0.assignment(), w1.assignment()]);
    expect(new Set([a0.rank, a1.rank])).toEqual(new Set([0, 1]));
    for (const a of [a0, a1]) {
      expect(a).toMatchObject({ jobId: id, generation: 1, worldSize: 2, natsUrl: nats.url, totalSteps: 4 });
      expect(a.spec.spec.model.path).toBe(fx.modelDir);
    }
    // The generation's collective key: 32 bytes, the same for the gang (not in the job's record).
    expect(a0.collectiveKey).toHaveLength(32);
    expect(Buffer.from(a1.collectiveKey).equals(Buffer.from(a0.collectiveKey))).toBe(true);
    expect(JSON.stringify(await client.get(id))).not.toContain(Buffer.from(a0.collectiveKey).toString('base64'));
    expect(chooseNatsUrl(undefined, a0)).toBe(nats.url);
    expect(chooseNatsUrl('nats://elsewhere:4222', a0)).toBe('nats://elsewhere:4222');

    const job = await client.get(id);
    expect(job.state).toBe('RUNNING');
    expect(job.generation).toBe(1);
    const byRank = a0.rank === 0 ? [w0, w1] : [w1, w0];
    expect(job.workers).toEqual(byRank.map((w) => w.session.workerId));
    const [r0, r1] = byRank as [FakeWorker, FakeWorker];

    const states: string[] = [];
    const watching = (async () => {
      for await (const ev of client.watch(id)) states.push(ev.job?.state ?? '');
    })();

    const progress = (step: number, loss: number) => ({
      jobId: id,
      generation: 1,
      step,
      totalSteps: 4,
      loss,
      tokensPerSecond: 100 + step,
      epoch: 0,
      supervisedTokens: 10,
      elapsedSeconds: step,
    });
    r0.session.progress(progress(1, 3.5));
    r1.session.progress({ ...progress(1, 99), step: 3 }); // rank 1's progress does not update the job
    r0.session.progress(progress(2, 3.0));
    await eventually(
      async () => {
        const j = await client.get(id);
        return j.step === 2 ? j : undefined;
      },
      5_000,
      'step 2 in the job record',
    );
    const mid = await client.get(id);
    expect(mid).toMatchObject({ step: 2, lastLoss: 3.0, firstLoss: 3.5, tokensPerSecond: 102, hasLoss: true });

    r1.session.result({ jobId: id, generation: 1, ok: true, steps: 4 });
    r0.session.progress(progress(4, 2.0));
    r0.session.result({
      jobId: id,
      generation: 1,
      ok: true,
      steps: 4,
      firstLoss: 3.5,
      finalLoss: 2.0,
      outputDir: '/out/x',
    });
    await watching;
    const done = await client.get(id);
    expect(done).toMatchObject({ state: 'SUCCEEDED', step: 4, firstLoss: 3.5, lastLoss: 2.0, outputDir: '/out/x' });
    expect(done.finishedAt).toBeGreaterThan(0);
    expect(states.at(-1)).toBe('SUCCEEDED');

    // Both workers are free again: a new job is assigned to them, generation 1 of that job.
    const id2 = await client.submitText(fx.yaml({ name: 'second' }));
    const [b0, b1] = await Promise.all([w0.assignment(), w1.assignment()]);
    expect([b0.jobId, b1.jobId]).toEqual([id2, id2]);
  });

  it('a failed Result fails the job and cancels the other ranks', async () => {
    const id = await client.submitText(fx.yaml({ workers: 3 }));
    const ws = await Promise.all(['f-1', 'f-2', 'f-3'].map(join));
    const as = await Promise.all(ws.map((w) => w.assignment()));
    const failing = ws[as.findIndex((a) => a.rank === 2)]!;
    failing.session.result({ jobId: id, generation: 1, ok: false, error: 'out of memory at step 3' });
    const others = ws.filter((w) => w !== failing);
    for (const w of others) expect(await w.next()).toMatchObject({ type: 'cancel', jobId: id });
    const job = await client.get(id);
    expect(job.state).toBe('FAILED');
    expect(job.error).toContain('rank 2');
    expect(job.error).toContain('out of memory at step 3');
  });

  it(
    'a worker whose stream closes mid-job re-forms the world: the ' +
      'survivor leaves the old generation, the job goes on in the next',
    async () => {
      const id = await client.submitText(fx.yaml({ workers: 2 }));
      const [w0, w1] = await Promise.all([join('c-1'), join('c-2')]);
      await Promise.all([w0.assignment(), w1.assignment()]);
      await w1.session.close();
      expect(await w0.next()).toMatchObject({ type: 'cancel', jobId: id });
      const pending = await eventually(async () => {
        const j = await client.get(id);
        return j.state === 'PENDING' ? j : undefined;
      });
      expect(pending.error).toMatch(/worker c-2 \(rank \d\) lost: stream/);
      // A new worker joins: generation 2, the survivor first (it holds the job's state), resuming.
      const w2 = await join('c-3');
      const [a0, a2] = await Promise.all([w0.assignment(), w2.assignment()]);
      expect(a0).toMatchObject({ jobId: id, generation: 2, rank: 0, resume: true });
      expect(a2).toMatchObject({ jobId: id, generation: 2, rank: 1, resume: true });
      expect((await client.get(id)).state).toBe('RUNNING');
    },
  );

  it('a job down to workers.min goes on, and takes a joining worker in at the next generation', async () => {
    const id = await client.submitText(fx.yaml({ workers: 2, min: 1 }));
    const [w0, w1] = await Promise.all([join('g-1'), join('g-2')]);
    await Promise.all([w0.assignment(), w1.assignment()]);
    await w1.session.close();
    expect(await w0.next()).toMatchObject({ type: 'cancel', jobId: id });
    const gen2 = await w0.assignment();
    expect(gen2).toMatchObject({ jobId: id, generation: 2, rank: 0, worldSize: 1, resume: true });
    const w2 = await join('g-3');
    expect(await w0.next()).toMatchObject({ type: 'cancel', jobId: id });
    const [a0, a2] = await Promise.all([w0.assignment(), w2.assignment()]);
    expect(a0).toMatchObject({ generation: 3, rank: 0, worldSize: 2 });
    expect(a2).toMatchObject({ generation: 3, rank: 1, worldSize: 2, resume: true });
    // Each generation its own collective key.
    expect(Buffer.from(a2.collectiveKey).equals(Buffer.from(a0.collectiveKey))).toBe(true);
    expect(Buffer.from(a0.collectiveKey).equals(Buffer.from(gen2.collectiveKey))).toBe(false);
  });

  it('heartbeats keep an idle worker registered past the heartbeat timeout', async () => {
    const w = await FakeWorker.join(coord!.address, 'chatty', 300);
    workers.push(w);
    await new Promise((r) => setTimeout(r, 2_500));
    expect(coord!.registry.get('chatty')?.status).toBe('idle');
    expect(w.session.open).toBe(true);
  });

  it('a worker silent longer than the heartbeat timeout is lost', async () => {
    const id = await client.submitText(fx.yaml({ workers: 1 }));
    const w = await FakeWorker.join(coord!.address, 'quiet');
    workers.push(w);
    await w.assignment();
    // Heartbeats every 2 s by default vs. a 1.5 s timeout in this suite: the worker is lost and
    // the job waits, Pending, for a new world.
    const job = await eventually(
      async () => {
        const j = await client.get(id);
        return j.state === 'PENDING' ? j : undefined;
      },
      10_000,
      'heartbeat loss',
    );
    expect(job.error).toMatch(/worker quiet \(rank 0\) lost: no heartbeat/);
    // And the coordinator closed its stream.
    expect(await w.next()).toMatchObject({ type: 'closed' });
  });

  it('Cancel of a running job sends Cancel to every rank', async () => {
    const id = await client.submitText(fx.yaml({ workers: 2 }));
    const ws = await Promise.all([join('k-1'), join('k-2')]);
    await Promise.all(ws.map((w) => w.assignment()));
    expect((await client.cancel(id)).state).toBe('CANCELLED');
    for (const w of ws)
      expect(await w.next()).toMatchObject({ type: 'cancel', jobId: id, reason: 'cancelled by user' });
  });

  it('a worker started before the coordinator connects once it is up', async () => {
    const address = coord!.address;
    await coord!.stop();
    client.close();
    const port = Number(address.split(':').pop());
    const connecting = CoordinatorSession.connect({
      address,
      hello: { workerId: 'early', backend: 'cpu' },
      connectTimeoutMs: 15_000,
    });
    await new Promise((r) => setTimeout(r, 800));
    coord = await startTestCoordinator(nats, { listen: `127.0.0.1:${port}` });
    client = new JobClient({ address: coord.address });
    const session = await connecting;
    workers.push(new FakeWorker(session));
    expect(session.workerId).toBe('early');
  });

  it('a coordinator restarted on the same NATS puts a Running job back to Pending and lists it', async () => {
    const id = await client.submitText(fx.yaml({ workers: 1 }));
    const w = await join('r-1');
    await w.assignment();
    expect((await client.get(id)).state).toBe('RUNNING');
    client.close();
    await coord!.stop();
    expect(await w.next()).toMatchObject({ type: 'closed' });
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address });
    const job = (await client.list()).find((j) => j.id === id);
    expect(job).toMatchObject({ state: 'PENDING', generation: 1 });
    // A new worker gets it in generation 2.
    const w2 = await join('r-2');
    expect(await w2.assignment()).toMatchObject({ jobId: id, generation: 2, rank: 0 });
  });
});
