/**
 * The memory plan at the edges: the coordinator refuses at submit a job whose plan exceeds the
 * `spec.workers` devices (real NATS, real gRPC), and the built CLI's `plan` and `submit --dry-run`
 * print it (dist/coordinator/cli.js: run `npm run build` first).
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { Coordinator } from '../../coordinator/server.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'dist/coordinator/cli.js');

function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, POLYTUNE_COORDINATOR: '127.0.0.1:1' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('memory plan at submit', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient | undefined;
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
    await nats.stop();
    fx.cleanup();
  });

  it('refuses a job that cannot fit the stated GPU, with the numbers and the fix; accepts one that fits', async () => {
    const small = fx
      .yaml({ name: 'too-big' })
      .replace('workers: { count: 2 }', 'workers: { count: 2, gpuMemoryGiB: 1 }');
    const err = await client!.submitText(small, 'small.yaml').catch((e: unknown) => e as CoordinatorCallError);
    expect(err).toBeInstanceOf(CoordinatorCallError);
    expect(err).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((err as CoordinatorCallError).message).toMatch(
      /spec\.workers\.gpuMemoryGiB: the plan needs 1\.\d GiB of GPU memory a worker \(weights 0\.0 GiB/,
    );
    expect((err as CoordinatorCallError).message).toMatch(/use a larger GPU/);
    const host = fx
      .yaml({ name: 'host' })
      .replace('workers: { count: 2 }', 'workers: { count: 2, gpuMemoryGiB: 80, hostMemoryGiB: 0.5 }');
    const err2 = await client!.submitText(host).catch((e: unknown) => e as CoordinatorCallError);
    expect((err2 as CoordinatorCallError).message).toContain('spec.workers.hostMemoryGiB: the plan needs');
    const fits = fx
      .yaml({ name: 'fits' })
      .replace('workers: { count: 2 }', 'workers: { count: 2, gpuMemoryGiB: 80, hostMemoryGiB: 4 }');
    expect(await client!.submitText(fits)).toMatch(/^fits-/);
  });
});

describe('coordinator plan (built CLI)', () => {
  it.each([
    ['slam-metamath-7b', 'MetaMath-7B-V1.0'],
    ['slam-metamath-13b', 'MetaMath-13B-V1.0'],
  ])('%s prints a plan that fits 80 GiB', (name, model) => {
    const r = cli('plan', join(ROOT, 'configs', `${name}.yaml`), '--model-config', join(ROOT, 'configs/models', model));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/gradient checkpointing on/);
    expect(r.stdout).toMatch(/peak +\d+\.\d GiB {2}fits 80 GiB with a 10% margin/);
    // Without the flag: /models is not here, so the copy beside the spec (configs/models/<name>) is used, and said.
    const plain = cli('plan', join(ROOT, 'configs', `${name}.yaml`));
    expect(plain.code).toBe(0);
    expect(plain.stdout.split('\n')[0]).toBe(
      `model: ${join(ROOT, 'configs/models', model, 'config.json')} (/models/${model} is not on this machine)`,
    );
    expect(plain.stdout.split('\n').slice(1).join('\n')).toBe(r.stdout);
  });

  it('exits 1 with the fix when the plan does not fit; submit --dry-run prints the plan and submits nothing', () => {
    const fx = makeSpecFixture();
    try {
      const file = join(fx.dir, 'job.yaml');
      writeFileSync(file, fx.yaml().replace('workers: { count: 2 }', 'workers: { count: 2, gpuMemoryGiB: 1 }'));
      const r = cli('plan', file);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/does NOT fit 1 GiB/);
      expect(r.stdout).toMatch(/spec\.workers\.gpuMemoryGiB: the plan needs/);
      writeFileSync(file, fx.yaml());
      // No coordinator listens on 127.0.0.1:1: a dry run must not try to reach one.
      const dry = cli('submit', file, '--dry-run');
      expect(dry.code).toBe(0);
      expect(dry.stdout).toMatch(/^memory plan per worker: micro-batch 1 x 1024 tokens, 2 layers/);
      const missing = cli('plan', file, '--model-config', join(fx.dir, 'nope'));
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(/--model-config .*nope: ENOENT/);
    } finally {
      fx.cleanup();
    }
  });
});
