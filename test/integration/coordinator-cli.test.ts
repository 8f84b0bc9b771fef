/**
 * The built `coordinator` CLI as a real process (dist/coordinator/cli.js, from `npm run build`,
 * which `npm test`'s set-up runs). Workers are the fake worker (POLYTUNE_WORKER_CLI), so this
 * suite tests the CLI and the local cluster, not training.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeSpecFixture, type SpecFixture } from './coordinator-fixtures.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const cli = join(root, 'dist', 'coordinator', 'cli.js');
const fakeWorker = join(here, 'coordinator-fake-worker.mjs');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(
  args: string[],
  env: Record<string, string> = {},
  onStart?: (pid: number, stdout: () => string) => void,
): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], {
      env: { ...process.env, POLYTUNE_WORKER_CLI: fakeWorker, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code, signal) => resolve({ code, signal, stdout, stderr }));
    onStart?.(child.pid!, () => stdout);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every descendant pid of `pid` (workers are in their own process groups but still children). */
function descendants(pid: number): number[] {
  const rows = execFileSync('ps', ['-eo', 'pid=,ppid='], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number));
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const [c, pp] of rows)
      if (pp === p && c !== undefined) {
        out.push(c);
        walk(c);
      }
  };
  walk(pid);
  return out;
}

describe('coordinator CLI', () => {
  let fx: SpecFixture;

  beforeAll(() => {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\` first`);
  });

  afterEach(() => fx?.cleanup());

  function writeSpec(yaml: string, name = 'job.yaml'): string {
    const p = join(fx.dir, name);
    writeFileSync(p, yaml);
    return p;
  }

  it('submit of a bad spec exits 2 with the field path and no stack trace, before contacting anyone', async () => {
    fx = makeSpecFixture();
    const spec = writeSpec(fx.yaml().replace('lr: 0.1', 'lr: 0'));
    const r = await run(['submit', spec, '--coordinator', '127.0.0.1:1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('spec.training.optimizer.lr: must be > 0');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('submit --local-workers runs the job, prints progress and a summary, exits 0, leaves no process', async () => {
    fx = makeSpecFixture();
    // Relative paths in the spec resolve against the spec file's directory.
    const spec = writeSpec(fx.yaml().replaceAll(fx.dir + '/', ''));
    let kids: number[] = [];
    const r = await run(['submit', spec, '--local-workers', '2'], {}, (pid, stdout) => {
      const t = setInterval(() => {
        if (stdout().includes('Running')) {
          kids = descendants(pid);
          clearInterval(t);
        }
      }, 20);
      t.unref();
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/submitted tiny-job-[a-z0-9]{5}/);
    expect(r.stdout).toContain('step 4/4');
    expect(r.stdout).toContain('loss 5.0000 -> 1.2500 over 4/4 steps');
    expect(r.stdout).toContain(`output: ${join(fx.dir, 'out')}`);
    expect(kids.length).toBeGreaterThanOrEqual(3); // nats-server + 2 workers
    expect(kids.filter(alive)).toEqual([]);
  });

  it('submit --local-workers reports a cluster that cannot start (no silent exit 0)', async () => {
    fx = makeSpecFixture();
    const r = await run(['submit', writeSpec(fx.yaml()), '--local-workers', '2'], {
      POLYTUNE_NATS_SERVER: join(fx.dir, 'no-such-nats-server'),
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('nats-server');
  });

  it('submit --local-workers exits non-zero when the job fails', async () => {
    fx = makeSpecFixture();
    const r = await run(['submit', writeSpec(fx.yaml()), '--local-workers', '2'], { FAKE_WORKER_FAIL: '1' });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('Failed');
    expect(r.stdout).toContain('fake failure at step 2');
  });

  /** `submit --local-workers 2` sent `signal` once its job runs; with the processes it had then. */
  async function signalWhileRunning(
    signal: NodeJS.Signals,
  ): Promise<{ r: Awaited<ReturnType<typeof run>>; kids: number[] }> {
    fx = makeSpecFixture();
    let kids: number[] = [];
    const r = await run(
      ['submit', writeSpec(fx.yaml()), '--local-workers', '2'],
      { FAKE_WORKER_STEP_MS: '2000' },
      (pid, stdout) => {
        const t = setInterval(() => {
          if (stdout().includes('Running')) {
            clearInterval(t);
            kids = descendants(pid);
            process.kill(pid, signal);
          }
        }, 20);
        t.unref();
      },
    );
    return { r, kids };
  }

  it('SIGINT during submit --local-workers stops nats-server and the workers', async () => {
    const { r, kids } = await signalWhileRunning('SIGINT');
    expect(r.code).not.toBe(0);
    expect(kids.length).toBeGreaterThanOrEqual(3);
    expect(kids.filter(alive)).toEqual([]);
  });

  it('SIGKILL of submit --local-workers still leaves no process (the reaper stops them)', async () => {
    const { r, kids } = await signalWhileRunning('SIGKILL');
    expect(r.signal).toBe('SIGKILL');
    expect(kids.length).toBeGreaterThanOrEqual(4); // reaper, nats-server, 2 workers
    const deadline = Date.now() + 10_000;
    while (kids.some(alive) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    expect(kids.filter(alive)).toEqual([]);
  });
});
