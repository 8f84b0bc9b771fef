/**
 * What a person sees from the built CLI (dist/, from `npm run build`), issue 19: `submit --watch`
 * in a pseudo-terminal (one line redrawn in place) and through a pipe (a line per update, no escape
 * codes); a spec with a mistake under `--local-workers` stopped before any process starts. Workers
 * are the fake worker (coordinator-fake-worker.mjs): this tests the views, not training.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { replay, runInPty } from '../helpers/screen.js';
import { JobClient } from '../../coordinator/client.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';

const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '..', '..', 'dist', 'coordinator', 'cli.js');
const fakeWorker = join(here, 'coordinator-fake-worker.mjs');

function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, POLYTUNE_WORKER_CLI: fakeWorker, FAKE_WORKER_STEP_MS: '150', ...extra };
}

interface Piped {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runPiped(args: string[], extra: Record<string, string> = {}): Promise<Piped> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env: env(extra), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('what a person sees', () => {
  let fx: SpecFixture;
  let scratch: string | undefined;

  beforeAll(() => {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\` first`);
    execFileSync('script', ['--version']); // bsdutils
  });

  afterEach(() => {
    fx?.cleanup();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    scratch = undefined;
  });

  function spec(yaml: string): string {
    const p = join(fx.dir, 'job.yaml');
    writeFileSync(p, yaml);
    return p;
  }

  it('a terminal: one line per job redrawn in place (bar, step/total, rate, ETA); then the summary', async () => {
    fx = makeSpecFixture(16);
    const file = spec(fx.yaml());
    const q = JSON.stringify;
    const r = await runInPty(`${q(process.execPath)} ${q(cli)} submit ${q(file)} --local-workers 2`, env());
    const screen = replay(r.output);
    expect(r.code, r.output).toBe(0);
    // Redrawn: log-update went back over its line (erase line, cursor up) more than once.
    expect(r.output.split('\x1b[2K').length).toBeGreaterThan(3);
    // The screen holds one progress line, at the end state, not one line a step.
    const progress = screen.filter((l) => /^tiny-job-[a-z0-9]{5} {2}\[/.test(l));
    expect(progress, screen.join('\n')).toHaveLength(1);
    expect(progress[0]).toMatch(/\[█{24}\] {2}8\/8 {2}100% {2}Succeeded {2}loss 0\.6250 {2}1000 tok\/s$/);
    expect(screen.some((l) => /step \d+\/8/.test(l))).toBe(false);
    const id = progress[0]!.split(' ')[0]!;
    // State changes stay above it (Pending only when the watch began before the gang formed).
    expect(
      screen.filter((l) => l.startsWith(`[${id}] `) && !l.endsWith('] Pending')),
      screen.join('\n'),
    ).toEqual([expect.stringMatching(/\] Running \(generation 1, workers local-\d, local-\d\)$/), `[${id}] Succeeded`]);
    const summary = /^job tiny-job-[a-z0-9]{5} Succeeded in \d+\.\ds \(compute \d+\.\ds\)$/;
    expect(screen.some((l) => summary.test(l))).toBe(true);
    // While it ran, a frame had an ETA.
    expect(r.output).toMatch(/[1-7]\/8 +\d+% {2}loss \d\.\d{4} {2}1000 tok\/s {2}ETA \d/);
  }, 60_000);

  it('watch of two jobs on a terminal: a live line each, then both summaries', async () => {
    fx = makeSpecFixture(16);
    const nats = await startNats();
    const coordinator = await startTestCoordinator(nats);
    const client = new JobClient({ address: coordinator.address });
    const workers = ['w0', 'w1'].map((id) =>
      spawn(process.execPath, [fakeWorker, '--coordinator', coordinator.address, '--nats', nats.url, '--id', id], {
        stdio: 'ignore',
        env: env({ FAKE_WORKER_STEP_MS: '200' }),
      }),
    );
    try {
      const a = await client.submitText(fx.yaml({ name: 'job-a', workers: 1 }), 'a.yaml');
      const b = await client.submitText(fx.yaml({ name: 'job-b', workers: 1 }), 'b.yaml');
      const q = JSON.stringify;
      const cmd = `${q(process.execPath)} ${q(cli)} watch ${a} ${b} --coordinator ${coordinator.address}`;
      const r = await runInPty(cmd, env());
      const screen = replay(r.output);
      expect(r.code, r.output).toBe(0);
      for (const id of [a, b]) {
        expect(
          screen.filter((l) => l.startsWith(`${id}  [`)),
          screen.join('\n'),
        ).toEqual([expect.stringMatching(/\[█{24}\] {2}8\/8 {2}100% {2}Succeeded/)]);
        expect(screen.some((l) => l.startsWith(`job ${id} Succeeded in `))).toBe(true);
      }
    } finally {
      for (const w of workers) w.kill('SIGKILL');
      client.close();
      await coordinator.stop();
      await nats.stop();
    }
  }, 60_000);

  it('a pipe: a line per update, no escape codes (CI logs)', async () => {
    fx = makeSpecFixture(16);
    const r = await runPiped(['submit', spec(fx.yaml()), '--local-workers', '2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toContain('\x1b');
    const steps = r.stdout.split('\n').filter((l) => /^\[tiny-job-[a-z0-9]{5}\] step \d+\/8 {2}loss/.test(l));
    expect(steps.length).toBeGreaterThan(1);
    expect(steps.at(-1)).toMatch(/step 8\/8 {2}loss 0\.6250 {2}1000 tok\/s {2}elapsed /);
    expect(r.stdout).toMatch(/^\[tiny-job-[a-z0-9]{5}\] Succeeded$/m);
  }, 60_000);

  it('a spec with a mistake under --local-workers exits 2, naming the field, with no process started', async () => {
    fx = makeSpecFixture();
    // Valid YAML and schema; the mistake is in the files (found only by the file checks).
    const file = spec(fx.yaml().replace(fx.dataFile, join(fx.dir, 'no-such-data.jsonl')));
    scratch = mkdtempSync(join(tmpdir(), 'polytune-ux-'));
    const pidFile = join(scratch, 'worker-pids');
    const tmp = join(scratch, 'tmp');
    execFileSync('mkdir', [tmp]);
    const r = await runPiped(['submit', file, '--local-workers', '2'], { TMPDIR: tmp, FAKE_WORKER_PIDFILE: pidFile });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('spec.data.train[0].path');
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stdout).not.toContain('local cluster');
    expect(existsSync(pidFile)).toBe(false); // no worker
    expect(readdirSync(tmp)).toEqual([]); // no nats-server store directory
  }, 30_000);

  it('a data file that does not parse under --local-workers: exit 2 before anything starts', async () => {
    fx = makeSpecFixture();
    writeFileSync(fx.dataFile, '{"instruction": "no output field"}\n');
    scratch = mkdtempSync(join(tmpdir(), 'polytune-ux-'));
    const pidFile = join(scratch, 'worker-pids');
    const r = await runPiped(['submit', spec(fx.yaml()), '--local-workers', '2'], { FAKE_WORKER_PIDFILE: pidFile });
    expect(r.code).toBe(2);
    expect(r.stdout).not.toContain('local cluster');
    expect(existsSync(pidFile)).toBe(false);
  }, 30_000);
});
