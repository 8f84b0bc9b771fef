/**
 * The embedded local cluster: real nats-server, in-process coordinator, worker child processes; nothing left behind.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { JobClient } from '../../coordinator/client.js';
import { startLocalCluster, type LocalCluster } from '../../coordinator/local-cluster.js';
import { makeSpecFixture, type SpecFixture } from './coordinator-fixtures.js';

const fakeWorker = join(dirname(fileURLToPath(import.meta.url)), 'coordinator-fake-worker.mjs');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('local cluster', () => {
  let cluster: LocalCluster | undefined;
  let fx: SpecFixture | undefined;
  let tmp: string | undefined;

  afterEach(async () => {
    await cluster?.stop();
    fx?.cleanup();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    cluster = undefined;
    delete process.env['FAKE_WORKER_PIDFILE'];
    delete process.env['FAKE_WORKER_HANG'];
  });

  it('runs a job on N worker processes to Succeeded, then stops every process', async () => {
    fx = makeSpecFixture(8);
    tmp = mkdtempSync(join(tmpdir(), 'polytune-lc-'));
    const pidFile = join(tmp, 'pids');
    process.env['FAKE_WORKER_PIDFILE'] = pidFile;
    cluster = await startLocalCluster({ workers: 2, workerCli: fakeWorker });
    const client = new JobClient({ address: cluster.coordinatorAddress });
    try {
      const id = await client.submitText(fx.yaml({ workers: 2 }));
      let last;
      for await (const ev of client.watch(id)) last = ev.job;
      expect(last).toMatchObject({ state: 'SUCCEEDED', step: 4, firstLoss: 5, lastLoss: 1.25 });
    } finally {
      client.close();
    }
    const pids = readFileSync(pidFile, 'utf8').trim().split('\n').map(Number);
    expect(pids).toHaveLength(2);
    expect(pids.every(alive)).toBe(true);
    await cluster.stop();
    expect(pids.some(alive)).toBe(false);
  });

  it('SIGKILLs a worker that ignores SIGTERM after the grace period', async () => {
    tmp = mkdtempSync(join(tmpdir(), 'polytune-lc-'));
    const pidFile = join(tmp, 'pids');
    process.env['FAKE_WORKER_PIDFILE'] = pidFile;
    process.env['FAKE_WORKER_HANG'] = '1';
    cluster = await startLocalCluster({ workers: 1, workerCli: fakeWorker, stopGraceMs: 300 });
    // Wait for the worker to register.
    const deadline = Date.now() + 10_000;
    while (cluster.coordinator.registry.all().length < 1 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const [pid] = readFileSync(pidFile, 'utf8').trim().split('\n').map(Number);
    await cluster.stop();
    expect(alive(pid!)).toBe(false);
  });
});
