/**
 * The job store is not trusted, and the job API has limits: records written into `polytune_jobs`
 * behind the coordinator's back, junk values, tampering with a running job; List paging, Delete,
 * retention, the Pending cap, output directories and storage roots; heavy planning does not stop
 * heartbeats. Real nats-server, real gRPC, fake workers speaking the real Join protocol.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../common/logging.js';
import { PromMeter } from '../../common/metrics.js';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { newJobRecord } from '../../coordinator/job-record.js';
import type { Coordinator, CoordinatorOptions } from '../../coordinator/server.js';
import { CoordinatorSession, type SessionEvent } from '../../worker/session.js';
import {
  eventually,
  makeSpecFixture,
  startNats,
  startTestCoordinator,
  type SpecFixture,
} from './coordinator-fixtures.js';
import { KvBucket } from '../../common/subjects.js';

class FakeWorker {
  private readonly events: SessionEvent[] = [];
  constructor(readonly session: CoordinatorSession) {
    void (async () => {
      for await (const e of session.events()) this.events.push(e);
    })();
  }
  static async join(
    address: string,
    id: string,
    options: { heartbeatIntervalMs?: number; logger?: Logger } = {},
  ): Promise<FakeWorker> {
    return new FakeWorker(
      await CoordinatorSession.connect({
        address,
        hello: { workerId: id, backend: 'cpu' },
        connectTimeoutMs: 10_000,
        ...options,
      }),
    );
  }
  assignments(): SessionEvent[] {
    return this.events.filter((e) => e.type === 'assignment');
  }
}

async function callError(p: Promise<unknown>): Promise<CoordinatorCallError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(CoordinatorCallError);
  return e as CoordinatorCallError;
}

/** A metric's value in the meter's Prometheus text; 0 when absent. */
async function metric(meter: PromMeter, series: string): Promise<number> {
  const text = await meter.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

describe('the job store is not trusted', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let kv: KV;
  let coord: Coordinator | undefined;
  let client: JobClient;
  let fx: SpecFixture;
  let meter: PromMeter;
  const workers: FakeWorker[] = [];

  async function start(options: CoordinatorOptions = {}): Promise<void> {
    meter = new PromMeter();
    coord = await startTestCoordinator(nats, { heartbeatTimeoutMs: 1_500, meter, ...options });
    client = new JobClient({ address: coord.address, callTimeoutMs: 10_000 });
  }

  async function join(id: string, heartbeatIntervalMs = 300): Promise<FakeWorker> {
    const w = await FakeWorker.join(coord!.address, id, { heartbeatIntervalMs });
    workers.push(w);
    return w;
  }

  /** A running job on two fake workers. */
  async function runningJob(): Promise<{ id: string; w0: FakeWorker; w1: FakeWorker }> {
    const id = await client.submitText(fx.yaml({ workers: 2 }));
    const w0 = await join('w-a');
    const w1 = await join('w-b');
    await eventually(
      async () => ((await client.get(id)).state === 'RUNNING' ? true : undefined),
      10_000,
      'the job to run',
    );
    return { id, w0, w1 };
  }

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
    nc = await connect({ servers: nats.url });
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) await w.session.close();
    client?.close();
    await coord?.stop();
    coord = undefined;
    await nc.close();
    await nats.stop();
    fx.cleanup();
  });

  it('a Pending record written into polytune_jobs by someone else never runs and is reported', async () => {
    await start();
    kv = await new Kvm(nc).open(KvBucket.jobs);
    // A well-formed record of a valid spec, as an attacker with NATS access would write it.
    const real = await client.submitText(fx.yaml({ name: 'legit' }));
    await client.cancel(real);
    const template = JSON.parse((await kv.get(real))!.string()) as Record<string, unknown>;
    const injected = {
      ...template,
      id: 'evil-abcde',
      name: 'evil',
      state: 'Pending',
      error: '',
      finishedAt: 0,
      createdAt: Date.now(),
    };
    await kv.put('evil-abcde', JSON.stringify(injected));
    const w0 = await join('w-a');
    const w1 = await join('w-b');
    const job = await eventually(
      async () => {
        const j = await client.get('evil-abcde');
        return j.state === 'FAILED' ? j : undefined;
      },
      5_000,
      'the injected job to be failed',
    );
    expect(job.error).toMatch(/not written by this coordinator \(injected into polytune_jobs\): never run/);
    await new Promise((r) => setTimeout(r, 500));
    expect(w0.assignments()).toEqual([]);
    expect(w1.assignments()).toEqual([]);
    expect(await metric(meter, 'polytune_store_bad_values_total{bucket="polytune_jobs",reason="foreign"}')).toBe(1);
    expect((await client.list()).map((j) => [j.id, j.state])).toContainEqual(['evil-abcde', 'FAILED']);
  });

  it('a Pending record found at start whose spec no longer validates is set Failed, never run', async () => {
    const kvm = new Kvm(nc);
    kv = await kvm.create(KvBucket.jobs, { history: 5 });
    const spec = parseAnyJobSpec(fx.yaml({ name: 'old' }));
    const record = newJobRecord('old-abcde', spec, 2, Date.now());
    const bad = {
      ...record,
      spec: { ...spec, spec: { ...spec.spec, collective: { compression: 'none', timeoutSeconds: 1e9 } } },
    };
    await kv.put(record.id, JSON.stringify(bad));
    await start();
    await join('w-a');
    await join('w-b');
    const job = await client.get(record.id);
    expect(job.state).toBe('FAILED');
    expect(job.error).toMatch(
      /stored record refused: its spec is invalid: spec.collective.timeoutSeconds: must be <= 2147483/,
    );
    expect(await metric(meter, 'polytune_store_bad_values_total{bucket="polytune_jobs",reason="spec"}')).toBe(1);
  });

  it('a junk value under any key does not break List (it is listed as corrupt)', async () => {
    await start();
    kv = await new Kvm(nc).open(KvBucket.jobs);
    const id = await client.submitText(fx.yaml());
    await kv.put('junk-key', 'this is not JSON {');
    await kv.put('shape-key', JSON.stringify({ id: 'shape-key', state: 'Running' }));
    await kv.put('binary-key', new Uint8Array([0xff, 0xfe, 0x00, 0x01]));
    const page = await client.listPage();
    expect(page.jobs.map((j) => j.id)).toEqual([id]);
    expect([...page.corruptKeys].sort()).toEqual(['binary-key', 'junk-key', 'shape-key']);
    expect(await client.list()).toHaveLength(1);
    // Scheduling goes on: the legit job runs once two workers join.
    await join('w-a');
    await join('w-b');
    await eventually(
      async () => ((await client.get(id)).state === 'RUNNING' ? true : undefined),
      10_000,
      'the job to run',
    );
    expect(await metric(meter, 'polytune_store_bad_values_total{bucket="polytune_jobs",reason="unreadable"}')).toBe(3);
  });

  it(
    'a running job rewritten as Succeeded (or deleted) is restored, ' +
      'the alert counter goes up, and it can still be cancelled',
    async () => {
      await start();
      kv = await new Kvm(nc).open(KvBucket.jobs);
      const { id, w0 } = await runningJob();
      const stored = JSON.parse((await kv.get(id))!.string()) as Record<string, unknown>;
      await kv.put(id, JSON.stringify({ ...stored, state: 'Succeeded', lastLoss: 0.0001, finishedAt: Date.now() }));
      await eventually(
        async () =>
          (await metric(meter, 'polytune_store_tampering_total{bucket="polytune_jobs",kind="rewritten"}')) >= 1
            ? true
            : undefined,
        5_000,
        'the tampering to be counted',
      );
      const job = await client.get(id);
      expect(job.state).toBe('RUNNING');
      expect(job.hasLoss).toBe(false);
      expect(JSON.parse((await kv.get(id))!.string()).state).toBe('Running');

      await kv.delete(id);
      await eventually(
        async () =>
          (await metric(meter, 'polytune_store_tampering_total{bucket="polytune_jobs",kind="deleted"}')) >= 1
            ? true
            : undefined,
        5_000,
        'the deletion to be counted',
      );
      expect((await client.get(id)).state).toBe('RUNNING');
      expect((await client.cancel(id)).state).toBe('CANCELLED');
      expect(w0.assignments()).toHaveLength(1);
    },
  );

  it("a forged ledger is replaced by the coordinator's own", async () => {
    await start({ progressFlushMs: 10 });
    const { id, w0, w1 } = await runningJob();
    const [a0, a1] = [w0.assignments()[0], w1.assignments()[0]];
    if (a0?.type !== 'assignment' || a1?.type !== 'assignment') throw new Error('no assignments');
    const rank0 = a0.rank === 0 ? w0 : w1;
    rank0.session.progress({
      jobId: id,
      generation: 1,
      step: 1,
      totalSteps: 4,
      loss: 1,
      tokensPerSecond: 1,
      epoch: 0,
      supervisedTokens: 1,
      elapsedSeconds: 1,
    });
    const ledgerKv = await new Kvm(nc).open(KvBucket.ledger);
    await eventually(
      async () => ((await ledgerKv.get(id))?.length ? true : undefined),
      5_000,
      'the ledger to be written',
    );
    await ledgerKv.put(
      id,
      JSON.stringify({ committed: [{ from: 0, to: 4, generation: 1, worldSize: 2 }], rolledBack: [] }),
    );
    const ledger = JSON.parse((await client.get(id)).ledgerJson) as { committed: { to: number }[] };
    expect(ledger.committed.at(-1)!.to).toBe(1);
    expect(await metric(meter, 'polytune_store_tampering_total{bucket="polytune_ledger",kind="rewritten"}')).toBe(1);
  });

  it('a worker refuses an assignment whose spec_json does not parse as a spec', async () => {
    await start();
    const errors: string[] = [];
    const logger: Logger = {
      debug: () => {},
      info: () => {},
      warn: () => {},
      error: (msg: string, f?: Record<string, unknown>) => errors.push(`${msg} ${JSON.stringify(f)}`),
      child: () => logger,
    } as unknown as Logger;
    const w = await FakeWorker.join(coord!.address, 'w-x', { logger });
    workers.push(w);
    await eventually(() => (coord!.registry.get('w-x') ? true : undefined), 5_000, 'the worker to join');
    const spec = {
      apiVersion: 'polytune/v1',
      kind: 'TrainJob',
      metadata: { name: 'x' },
      spec: { model: { path: '/m' }, unknownField: 1 },
    };
    coord!.registry.send('w-x', {
      assignment: {
        jobId: 'x-abcde',
        generation: 1,
        rank: 0,
        worldSize: 1,
        specJson: JSON.stringify(spec),
        natsUrl: nats.url,
      },
    });
    await eventually(() => (errors.length > 0 ? true : undefined), 5_000, 'the refusal');
    expect(errors[0]).toMatch(/assignment with an invalid spec refused/);
    expect(errors[0]).toMatch(/spec.unknownField: unknown field/);
    expect(w.assignments()).toEqual([]);
  });
});

describe('List pages, Delete, retention, the Pending cap, output directories and roots', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient;
  let fx: SpecFixture;
  const workers: FakeWorker[] = [];

  async function start(options: CoordinatorOptions = {}): Promise<void> {
    coord = await startTestCoordinator(nats, { heartbeatTimeoutMs: 1_000, ...options });
    client = new JobClient({ address: coord.address, callTimeoutMs: 20_000 });
  }

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) await w.session.close();
    client?.close();
    await coord?.stop();
    coord = undefined;
    await nats.stop();
    fx.cleanup();
  });

  it('List pages through every job, newest first, without specs; Get has the spec', async () => {
    await start();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await client.submitText(fx.yaml({ name: `page-${i}` })));
    const first = await client.listPage(2);
    expect(first.jobs).toHaveLength(2);
    expect(first.nextPageToken).not.toBe('');
    const all = await client.list(2);
    expect(all.map((j) => j.id).sort()).toEqual([...ids].sort());
    expect(new Set(all.map((j) => j.id)).size).toBe(5);
    for (let i = 1; i < all.length; i++) expect(all[i - 1]!.createdAt).toBeGreaterThanOrEqual(all[i]!.createdAt);
    expect(all.every((j) => j.specJson === '')).toBe(true);
    expect(JSON.parse((await client.get(ids[0]!)).specJson).metadata.name).toBe('page-0');
    expect((await callError(client.listPage(5000))).code).toBe(status.INVALID_ARGUMENT);
    expect((await callError(client.listPage(2, 'not-a-token'))).message).toMatch(/page_token/);
  });

  it('List stays small with big specs: 40 jobs with 60 KiB templates fit one page of a few KiB', async () => {
    await start({ maxPendingPerClient: 0 });
    const template = `{question}${'t'.repeat(60 * 1024)}`;
    const yaml = fx.yaml().replace('  data:\n', `  data:\n    template: "${template}"\n`);
    expect(yaml.length).toBeGreaterThan(60 * 1024);
    await Promise.all(Array.from({ length: 40 }, () => client.submitText(yaml)));
    const page = await client.listPage(100);
    expect(page.jobs).toHaveLength(40);
    expect(JSON.stringify(page).length).toBeLessThan(40 * 1024);
    expect(JSON.parse((await client.get(page.jobs[0]!.id)).specJson).spec.data.template).toBe(template);
  });

  it('Delete removes a finished job (record and ledger) and refuses an unfinished one', async () => {
    await start();
    const id = await client.submitText(fx.yaml());
    const refused = await callError(client.delete(id));
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.message).toMatch(/is Pending: only a finished job can be deleted \(cancel it first/);
    await client.cancel(id);
    expect((await client.delete(id)).state).toBe('CANCELLED');
    expect((await callError(client.get(id))).code).toBe(status.NOT_FOUND);
    expect((await callError(client.delete(id))).code).toBe(status.NOT_FOUND);
    expect(await client.list()).toEqual([]);
  });

  it('finished jobs past the retention are deleted; unfinished ones are kept', async () => {
    await start({ retentionHours: 1 / 3600 }); // one second
    const done = await client.submitText(fx.yaml({ name: 'done' }));
    const waiting = await client.submitText(fx.yaml({ name: 'waiting' }));
    await client.cancel(done);
    await eventually(
      async () =>
        (await client.get(done).then(
          () => false,
          () => true,
        ))
          ? true
          : undefined,
      8_000,
      'the retention',
    );
    expect((await client.get(waiting)).state).toBe('PENDING');
  });

  it('a client gets at most --max-pending-per-client Pending jobs (RESOURCE_EXHAUSTED)', async () => {
    await start({ maxPendingPerClient: 2 });
    const a = await client.submitText(fx.yaml({ name: 'a' }));
    await client.submitText(fx.yaml({ name: 'b' }));
    const e = await callError(client.submitText(fx.yaml({ name: 'c' })));
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(e.message).toMatch(/already has 2 Pending jobs \(the coordinator's --max-pending-per-client\)/);
    await client.cancel(a);
    await client.submitText(fx.yaml({ name: 'c' }));
  });

  it("an output dir with someone else's files or another job's is refused; the job's own is reused", async () => {
    await start();
    const theirs = join(fx.dir, 'theirs');
    mkdirSync(theirs);
    writeFileSync(join(theirs, 'notes.txt'), 'private');
    const yaml = (dir: string, name?: string): string =>
      fx.yaml(name === undefined ? {} : { name }).replace(/output: \{ dir: .* \}/, `output: { dir: ${dir} }`);
    const e = await callError(client.submitText(yaml(theirs)));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.message).toMatch(/spec.output.dir: .*theirs holds files polytune did not write/);
    expect(e.message).not.toContain('private');
    const ours = join(fx.dir, 'ours');
    await client.submitText(yaml(ours));
    expect(existsSync(join(ours, '.polytune'))).toBe(true);
    writeFileSync(join(ours, 'checkpoints'), '');
    await client.submitText(yaml(ours));
    // Another job's (marked with its name) is refused, naming that job.
    const other = await callError(client.submitText(yaml(ours, 'other-job')));
    expect(other.code).toBe(status.INVALID_ARGUMENT);
    expect(other.message).toMatch(/spec.output.dir: .*ours belongs to job "tiny-job"/);
  });

  it(
    'five submits with huge (allowed) weights do not ' + 'delay heartbeats past their timeout while a job runs',
    async () => {
      await start();
      const id = await client.submitText(fx.yaml({ workers: 2 }));
      for (const wid of ['hb-a', 'hb-b'])
        workers.push(await FakeWorker.join(coord!.address, wid, { heartbeatIntervalMs: 200 }));
      await eventually(
        async () => ((await client.get(id)).state === 'RUNNING' ? true : undefined),
        10_000,
        'the job to run',
      );
      // 100,000 records at weight 100 = 10M samples an epoch: the largest mixture allowed.
      const big = join(fx.dir, 'big.jsonl');
      writeFileSync(
        big,
        Array.from({ length: 100_000 }, (_, i) => JSON.stringify({ instruction: `q${i}`, output: `a${i}` })).join(
          '\n',
        ) + '\n',
      );
      const heavy = fx
        .yaml({ name: 'heavy' })
        .replace(`{ path: ${fx.dataFile}, format: alpaca }`, `{ path: ${big}, format: alpaca, weight: 100 }`);
      expect(heavy).toContain('weight: 100 }');
      let worst = 0;
      let last = performance.now();
      const probe = setInterval(() => {
        const now = performance.now();
        worst = Math.max(worst, now - last);
        last = now;
      }, 20);
      try {
        await Promise.all(Array.from({ length: 5 }, () => client.submitText(heavy)));
      } finally {
        clearInterval(probe);
      }
      const job = await client.get(id);
      expect(job.state).toBe('RUNNING');
      expect(job.generation).toBe(1);
      expect(coord!.registry.get('hb-a')?.status).toBe('busy');
      expect(coord!.registry.get('hb-b')?.status).toBe('busy');
      // Without the slices the workers are declared lost above; the loop (shared with the coordinator
      // here) never stalled for a heartbeat timeout (1 s). Measured: 0.2-0.5 s with slices.
      expect(worst, `the longest gap between two 20 ms ticks`).toBeLessThan(900);
    },
    60_000,
  );
});
