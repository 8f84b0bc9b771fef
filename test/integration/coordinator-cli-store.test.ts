/**
 * The built CLI (dist/coordinator/cli.js) for the job store's commands: `status` pages through List
 * and warns about junk keys, `delete` refuses an unfinished job and deletes a finished one, `serve`
 * refuses a storage root that does not exist.
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import type { Coordinator } from '../../coordinator/server.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';
import { KvBucket } from '../../common/subjects.js';

const cli = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'coordinator', 'cli.js');

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('coordinator CLI: status, delete, serve flags of the store', () => {
  let nats: NatsServer;
  let coord: Coordinator;
  let client: JobClient;
  let fx: SpecFixture;

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address });
  });

  afterEach(async () => {
    client.close();
    await coord.stop();
    await nats.stop();
    fx.cleanup();
  });

  it('status lists every job across pages and warns about junk keys; delete needs a finished job', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await client.submitText(fx.yaml({ name: `cli-${i}` })));
    const nc = await connect({ servers: nats.url });
    await (await new Kvm(nc).open(KvBucket.jobs)).put('junk', 'garbage');
    await nc.close();
    const status = await run(['status', '--coordinator', coord.address]);
    expect(status.code).toBe(0);
    for (const id of ids) expect(status.stdout).toContain(id);
    expect(status.stderr).toMatch(/warning: 1 key\(s\) of the job store hold no job record and were skipped: junk/);

    const refused = await run(['delete', ids[0]!, '--coordinator', coord.address]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/is Pending: only a finished job can be deleted \(cancel it first/);
    expect(refused.stderr).not.toMatch(/\n\s+at /);
    await client.cancel(ids[0]!);
    const deleted = await run(['delete', ids[0]!, '--coordinator', coord.address]);
    expect(deleted.code).toBe(0);
    expect(deleted.stdout).toContain(`deleted ${ids[0]} (Cancelled)`);
    expect((await client.list()).map((j) => j.id).sort()).toEqual(ids.slice(1).sort());
  });

  it('serve refuses a storage root that does not exist, naming the flag', async () => {
    const r = await run([
      'serve',
      '--nats',
      nats.url,
      '--listen',
      '127.0.0.1:0',
      '--metrics-port',
      '0',
      '--storage-root',
      '/no/such/root',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--storage-root: \/no\/such\/root: ENOENT/);
    const bad = await run(['serve', '--retention-hours', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--retention-hours: must be an integer >= 0/);
  });
});
