/**
 * A job's timings tell the truth across re-forms (issue 19: `status --json` said 2.1 s for a job
 * that ran 18 s, the last generation's time). A real nats-server and coordinator; workers are the
 * fake worker (coordinator-fake-worker.mjs) as processes, so that one can be SIGKILLed; `status`
 * is the built CLI (dist/).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import type { Coordinator } from '../../coordinator/server.js';
import { formatDuration } from '../../coordinator/views/job-view.js';
import type { Job__Output } from '../../proto/index.js';
import {
  eventually,
  makeSpecFixture,
  startNats,
  startTestCoordinator,
  type SpecFixture,
} from './coordinator-fixtures.js';

const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '..', '..', 'dist', 'coordinator', 'cli.js');
const fakeWorker = join(here, 'coordinator-fake-worker.mjs');

interface Timings {
  wallSeconds: number;
  generationSeconds: number;
  computeSeconds: number;
  reformSeconds: number;
  generations: {
    generation: number;
    worldSize: number;
    wallSeconds: number;
    computeSeconds: number;
    endReason?: string;
  }[];
}

describe('job timings across re-forms', () => {
  let fx: SpecFixture;
  let nats: NatsServer | undefined;
  const coordinators: Coordinator[] = [];
  const workers: ChildProcess[] = [];
  const clients: JobClient[] = [];

  beforeAll(() => {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\` first`);
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
    for (const c of clients.splice(0)) c.close();
    for (const c of coordinators.splice(0)) await c.stop();
    await nats?.stop();
    nats = undefined;
    fx?.cleanup();
  });

  function worker(coordinator: Coordinator, id: string): ChildProcess {
    const args = [fakeWorker, '--coordinator', coordinator.address, '--nats', nats!.url, '--id', id];
    const w = spawn(process.execPath, args, {
      stdio: 'ignore',
      env: { ...process.env, FAKE_WORKER_STEP_MS: '100' },
    });
    workers.push(w);
    return w;
  }

  async function coordinator(): Promise<{ coordinator: Coordinator; client: JobClient }> {
    const c = await startTestCoordinator(nats!);
    coordinators.push(c);
    const client = new JobClient({ address: c.address, callTimeoutMs: 10_000 });
    clients.push(client);
    return { coordinator: c, client };
  }

  const stateOf = async (
    client: JobClient,
    id: string,
    pred: (j: Job__Output) => boolean,
    ms = 30_000,
  ): Promise<Job__Output> =>
    eventually(
      async () => {
        const j = await client.get(id);
        return pred(j) ? j : undefined;
      },
      ms,
      `job ${id}`,
    );

  async function status(address: string, args: string[]): Promise<string> {
    const { stdout } = await promisify(execFile)(process.execPath, [cli, 'status', ...args, '--coordinator', address]);
    return stdout;
  }

  function expectConsistent(t: Timings, job: Job__Output): void {
    // wall = the generations' own times + the gaps between them
    const sum = t.generations.reduce((s, g) => s + g.wallSeconds, 0) + t.reformSeconds;
    expect(t.wallSeconds).toBeCloseTo(sum, 1);
    expect(t.wallSeconds).toBeCloseTo((Number(job.finishedAt) - Number(job.startedAt)) / 1000, 1);
    expect(t.computeSeconds).toBeCloseTo(
      t.generations.reduce((s, g) => s + g.computeSeconds, 0),
      5,
    );
    expect(t.generationSeconds).toBe(t.generations.at(-1)!.wallSeconds);
    // The old field is the last generation's alone.
    expect(t.wallSeconds).toBeGreaterThan(job.elapsedSeconds + 0.5);
  }

  it('after a worker is killed, status gives the wall time since the start, this generation, re-forming', async () => {
    fx = makeSpecFixture(40); // 20 steps of 100 ms a generation
    nats = await startNats();
    const { coordinator: c, client } = await coordinator();
    worker(c, 'ux-a');
    const victim = worker(c, 'ux-b');
    const id = await client.submitText(fx.yaml({ workers: 2, min: 1 }), 'job.yaml');
    const running = await stateOf(client, id, (j) => j.state === 'RUNNING');
    const seenRunning = Date.now();
    await stateOf(client, id, (j) => j.step >= 5);
    victim.kill('SIGKILL');
    const killed = Date.now();
    const done = await stateOf(client, id, (j) => j.state === 'SUCCEEDED');
    const seenDone = Date.now();
    expect(Number(running.generation)).toBe(1);
    // The job's first loss is its first step's (generation 1's), not the second generation's first.
    expect(done.firstLoss).toBe(5);
    expect(done.lastLoss).toBe(5 / 20 + 1);

    const t = (JSON.parse(await status(c.address, [id, '--json'])) as { timings: Timings }).timings;
    expect(t.generations.map((g) => [g.generation, g.worldSize])).toEqual([
      [1, 2],
      [2, 1],
    ]);
    expect(t.generations[0]!.endReason).toMatch(/worker ux-b \(rank \d\) lost/);
    expectConsistent(t, done);
    // The truth by this test's clock: at least from when it saw the job run to the kill, plus the
    // second generation; at most from before the submit to after the end.
    expect(t.wallSeconds).toBeGreaterThanOrEqual((killed - seenRunning) / 1000 + t.generations[1]!.wallSeconds - 0.2);
    expect(t.wallSeconds).toBeLessThanOrEqual((seenDone - seenRunning) / 1000 + 1);

    const block = await status(c.address, [id]);
    expect(block).toMatch(/^state {7}Succeeded$/m);
    expect(block).toMatch(/^generation {2}2, world 1: ux-a$/m);
    expect(block).toMatch(
      new RegExp(
        `^time {8}wall ${formatDuration(t.wallSeconds)}, this generation \\S+, ` +
          'compute \\S+, ' +
          `re-forming \\S+ \\(1 re-form\\)$`,
        'm',
      ),
    );
    expect(await status(c.address, ['-o', 'yaml'])).toMatch(/^ {2}timings:\n {4}wallSeconds: \d/m);
    const table = (await status(c.address, [])).trimEnd().split('\n');
    expect(table[0]).toMatch(/^ID\s+KIND\s+STATE\s+STAGE\s+STEP\s+LOSS\s+RATE\s+AGE$/);
    expect(table[1]).toMatch(new RegExp(`^${id}\\s+TrainJob\\s+Succeeded\\s+-\\s+20/20\\s+\\d\\.\\d{4}\\s+-\\s+\\S+$`));
  }, 60_000);

  it('after a coordinator restart, the wall time counts the time it was away', async () => {
    fx = makeSpecFixture(40);
    nats = await startNats();
    const first = await coordinator();
    const ws = [worker(first.coordinator, 'ux-a'), worker(first.coordinator, 'ux-b')];
    const id = await first.client.submitText(fx.yaml({ workers: 2, min: 2 }), 'job.yaml');
    await stateOf(first.client, id, (j) => j.state === 'RUNNING');
    const seenRunning = Date.now();
    await stateOf(first.client, id, (j) => j.step >= 5);
    for (const w of ws) w.kill('SIGKILL');
    await first.coordinator.stop();
    const away = Date.now();
    await new Promise((r) => setTimeout(r, 1500));
    const second = await coordinator();
    worker(second.coordinator, 'ux-c');
    worker(second.coordinator, 'ux-d');
    const done = await stateOf(second.client, id, (j) => j.state === 'SUCCEEDED');

    const t = (JSON.parse(await status(second.coordinator.address, [id, '--json'])) as { timings: Timings }).timings;
    expect(t.generations.map((g) => g.endReason ?? '')).toEqual(['coordinator restarted', '']);
    expectConsistent(t, done);
    // The first generation ended at its last write before the coordinator went; the 1.5 s away is re-forming.
    expect(t.reformSeconds).toBeGreaterThanOrEqual(1.4);
    const atLeast = (away - seenRunning) / 1000 + 1.5 + t.generations[1]!.wallSeconds - 0.2;
    expect(t.wallSeconds).toBeGreaterThanOrEqual(atLeast);
  }, 60_000);
});
