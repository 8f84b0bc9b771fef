/**
 * `coordinator serve` as a real process (dist/coordinator/cli.js) against a real nats-server that
 * listens on every address: an unauthenticated NATS reached through the machine's non-loopback
 * address is refused unless `--insecure-nats`; on loopback it is used as before. Metrics bind the
 * `--listen` host unless `--metrics-host`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'coordinator', 'cli.js');

/** The machine's first non-internal IPv4 address, if any. */
const externalIp = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

let nats: NatsServer;
const children: ChildProcess[] = [];

beforeAll(async () => {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\` first`);
  nats = await startNatsServer({ jetstream: true, host: '0.0.0.0' });
});
afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGTERM');
      await new Promise((r) => c.once('exit', r));
    }
  }
});
afterAll(() => nats?.stop());

interface Served {
  child: ChildProcess;
  /** Resolves with the JSON log line whose msg is `msg`, or rejects when the process exits first. */
  logged(msg: string): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; stderr: string }>;
}

function serve(args: string[], env: Record<string, string> = {}): Served {
  const child = spawn(process.execPath, [cli, 'serve', ...args], {
    env: { ...process.env, POLYTUNE_LOG_FORMAT: 'json', POLYTUNE_INSECURE_NATS: '', POLYTUNE_METRICS_HOST: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let stderr = '';
  const waiters: Array<() => void> = [];
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
    for (const w of waiters) w();
  });
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) =>
    child.on('exit', (code) => resolve({ code, stderr })),
  );
  const logged = (msg: string): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const look = (): boolean => {
        for (const line of stderr.split('\n')) {
          if (!line.startsWith('{')) continue;
          const o = JSON.parse(line) as Record<string, unknown>;
          if (o['msg'] === msg) {
            resolve(o);
            return true;
          }
        }
        return false;
      };
      if (look()) return;
      waiters.push(look);
      void exited.then(({ code }) => reject(new Error(`serve exited (${code}) before logging "${msg}": ${stderr}`)));
    });
  return { child, logged, exited };
}

const reachable = async (url: string): Promise<boolean> => {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(2_000) })).ok;
  } catch {
    return false;
  }
};

describe.skipIf(externalIp === undefined)('coordinator serve and an unauthenticated NATS', () => {
  it('refuses one on a non-loopback address, naming it and --insecure-nats, exit 2 without a stack', async () => {
    const s = serve(['--listen', '127.0.0.1:0', '--metrics-port', '0', '--nats', `nats://${externalIp}:${nats.port}`]);
    const { code, stderr } = await s.exited;
    expect(code).toBe(2);
    expect(stderr).toContain(
      `refusing to use NATS at nats://${externalIp}:${nats.port} without authentication: ${externalIp} is not loopback`,
    );
    expect(stderr).toContain('--insecure-nats');
    expect(stderr).not.toMatch(/\n\s+at /);
  });

  it('uses it with --insecure-nats (or POLYTUNE_INSECURE_NATS=1), with a warning', async () => {
    for (const [args, env] of [
      [['--insecure-nats'], {}],
      [[], { POLYTUNE_INSECURE_NATS: '1' }],
    ] as const) {
      const s = serve(
        ['--listen', '127.0.0.1:0', '--metrics-port', '0', '--nats', `nats://${externalIp}:${nats.port}`, ...args],
        env,
      );
      const up = await s.logged('coordinator listening');
      expect(up['natsExposure']).toBe('insecure');
      await s.logged(
        'NATS without authentication off loopback (--insecure-nats): whoever reaches it can forge gradients and jobs',
      );
      s.child.kill('SIGTERM');
      expect((await s.exited).code).toBe(0);
    }
  });

  it('uses one on loopback without any flag', async () => {
    const s = serve(['--listen', '127.0.0.1:0', '--metrics-port', '0', '--nats', `nats://127.0.0.1:${nats.port}`]);
    expect((await s.logged('coordinator listening'))['natsExposure']).toBe('loopback');
  });
});

describe.skipIf(externalIp === undefined)('coordinator metrics bind host', () => {
  it("follows --listen 127.0.0.1: reachable on loopback, not on the machine's other address", async () => {
    const s = serve(['--listen', '127.0.0.1:0', '--metrics-port', '0', '--nats', `nats://127.0.0.1:${nats.port}`]);
    const url = String((await s.logged('metrics at /metrics'))['url']);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const port = new URL(url).port;
    expect(await reachable(url)).toBe(true);
    expect(await reachable(`http://${externalIp}:${port}/metrics`)).toBe(false);
  });

  it('binds --metrics-host when given (0.0.0.0: reachable on the other address too)', async () => {
    const s = serve([
      '--listen',
      '127.0.0.1:0',
      '--metrics-port',
      '0',
      '--metrics-host',
      '0.0.0.0',
      '--nats',
      `nats://127.0.0.1:${nats.port}`,
    ]);
    const url = String((await s.logged('metrics at /metrics'))['url']);
    expect(url).toMatch(/^http:\/\/0\.0\.0\.0:\d+\/metrics$/);
    expect(await reachable(`http://${externalIp}:${new URL(url).port}/metrics`)).toBe(true);
  });

  it('follows --listen 0.0.0.0 (the Helm chart: pods are scraped from outside)', async () => {
    const s = serve(['--listen', '0.0.0.0:0', '--metrics-port', '0', '--nats', `nats://127.0.0.1:${nats.port}`]);
    const url = String((await s.logged('metrics at /metrics'))['url']);
    expect(url).toMatch(/^http:\/\/0\.0\.0\.0:\d+\/metrics$/);
  });
});
