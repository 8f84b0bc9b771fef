/**
 * Storage roots through the real gRPC coordinator and real workers (common/storage-roots.ts):
 * the coordinator refuses at submit a spec naming a path outside its `--storage-root`s, with the
 * field path; a worker with its own roots refuses an assignment whose paths are outside them even
 * when the coordinator let it through (as a forged or misrouted assignment would be).
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { Coordinator } from '../../coordinator/server.js';
import {
  makeSpecFixture,
  startInProcessCluster,
  startNats,
  startTestCoordinator,
  type SpecFixture,
} from './coordinator-fixtures.js';

let nats: NatsServer;
let fx: SpecFixture;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  nats = await startNats();
  fx = makeSpecFixture();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await nats.stop();
  fx.cleanup();
});

async function refusal(p: Promise<unknown>): Promise<CoordinatorCallError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(CoordinatorCallError);
  expect((e as CoordinatorCallError).code).toBe(status.INVALID_ARGUMENT);
  return e as CoordinatorCallError;
}

describe('storage roots', () => {
  it('the coordinator refuses /etc/passwd as data, an output dir outside, and a link out of the root', async () => {
    const coordinator: Coordinator = await startTestCoordinator(nats, { storageRoots: [fx.dir] });
    const client = new JobClient({ address: coordinator.address, callTimeoutMs: 10_000 });
    cleanups.push(
      () => coordinator.stop(),
      () => client.close(),
    );
    const root = realpathSync(fx.dir);
    await client.submitText(fx.yaml({ name: 'inside' }));

    const passwd = await refusal(client.submitText(fx.yaml({ name: 'passwd' }).replace(fx.dataFile, '/etc/passwd')));
    expect(passwd.message).toContain(`spec.data.train[0].path: /etc/passwd is outside the storage roots (${root})`);

    const outside = mkdtempSync(join(tmpdir(), 'polytune-outside-'));
    cleanups.push(() => rmSync(outside, { recursive: true, force: true }));
    const out = await refusal(
      client.submitText(fx.yaml({ name: 'out' }).replace(/output: \{ dir: .* \}/, `output: { dir: ${outside}/job }`)),
    );
    expect(out.message).toMatch(/spec\.output\.dir: .*polytune-outside-.*\/job is not inside a storage root/);

    mkdirSync(join(fx.dir, 'links'), { recursive: true });
    symlinkSync('/etc', join(fx.dir, 'links', 'etc'));
    const link = await refusal(
      client.submitText(fx.yaml({ name: 'link' }).replace(fx.dataFile, join(fx.dir, 'links', 'etc', 'passwd'))),
    );
    expect(link.message).toMatch(/spec\.data\.train\[0\]\.path: .*links\/etc\/passwd \(\/etc\/passwd\) is outside/);
    // Nothing refused was created: no output directory outside the root.
    expect((await client.list()).map((j) => j.name)).toEqual(['inside']);
  });

  it('a worker with roots refuses an assignment naming paths outside them, as the coordinator did not', async () => {
    const workerRoot = mkdtempSync(join(tmpdir(), 'polytune-worker-root-'));
    cleanups.push(() => rmSync(workerRoot, { recursive: true, force: true }));
    const cluster = await startInProcessCluster(nats, {
      workers: 1,
      idPrefix: 'roots',
      worker: { storageRoots: [workerRoot] },
    });
    cleanups.push(() => cluster.stop());
    const job = await cluster.runToEnd(fx.yaml({ name: 'forged', workers: 1 }));
    expect(job.state).toBe('FAILED');
    expect(job.error).toMatch(/assignment of job .*: invalid job spec/);
    expect(job.error).toContain(`spec.data.train[0].path: ${fx.dataFile} is outside the storage roots`);
    expect(job.error).toMatch(/spec\.output\.dir: .* is not inside a storage root/);
  });
});
