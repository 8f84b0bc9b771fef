/**
 * A polytune cluster of real processes for e2e tests (dist/, built by pretest): a nats-server with
 * JetStream, a coordinator and workers as child processes, to be killed with SIGKILL mid-job.
 * `processScope().cleanup()` in `afterEach` kills what is left and stops the servers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';

export const ROOT = resolve(import.meta.dirname, '../..');
export const COORDINATOR_CLI = join(ROOT, 'dist/coordinator/cli.js');
export const WORKER_CLI = join(ROOT, 'dist/worker/cli.js');

export interface Cluster {
  nats: NatsServer;
  address: string;
  coordinator: ChildProcess;
  workers: ChildProcess[];
  client: JobClient;
  startCoordinator(): ChildProcess;
}

export interface ProcessScope {
  /** `node ARGS` in `cwd`, stderr kept (and printed when it ends badly). */
  node(args: string[], options?: { stdout?: boolean }): ChildProcess;
  /** A nats-server (its JetStream store under `dir`), a coordinator and `workers` workers. */
  cluster(workers: number): Promise<Cluster>;
  /** Kills every process still running, closes clients, stops the servers. */
  cleanup(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

export function processScope(dir: () => string): ProcessScope {
  const children: ChildProcess[] = [];
  const servers: NatsServer[] = [];
  const clients: JobClient[] = [];
  const node = (args: string[], options: { stdout?: boolean } = {}): ChildProcess => {
    const child = spawn(process.execPath, args, {
      cwd: dir(),
      stdio: ['ignore', options.stdout ? 'pipe' : 'ignore', 'pipe'],
      env: { ...process.env, POLYTUNE_LOG_LEVEL: 'warn' },
    });
    let tail = '';
    child.stderr!.on('data', (b: Buffer) => {
      tail = (tail + b.toString()).slice(-4000);
    });
    child.on('exit', (code, sig) => {
      if (code !== 0 && sig !== 'SIGKILL' && sig !== 'SIGTERM')
        process.stderr.write(`[${args[1]}] exited ${code ?? sig}:\n${tail}\n`);
    });
    children.push(child);
    return child;
  };
  return {
    node,
    async cluster(workers) {
      const nats = await startNatsServer({ jetstream: true, storeDir: await mkdtemp(join(dir(), 'js-')) });
      servers.push(nats);
      const address = `127.0.0.1:${await freePort()}`;
      const startCoordinator = (): ChildProcess =>
        node([COORDINATOR_CLI, 'serve', '--listen', address, '--nats', nats.url, '--metrics-port', '0']);
      const c: Cluster = {
        nats,
        address,
        coordinator: startCoordinator(),
        startCoordinator,
        workers: Array.from({ length: workers }, () =>
          node([WORKER_CLI, '--coordinator', address, '--nats', nats.url, '--metrics-port', '0']),
        ),
        client: new JobClient({ address }),
      };
      clients.push(c.client);
      return c;
    },
    async cleanup() {
      for (const c of clients.splice(0)) c.close();
      for (const ch of children.splice(0)) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL');
      await Promise.all(servers.splice(0).map((s) => s.stop()));
    },
  };
}

/** Polls `fn` every 100 ms until it returns a value (errors count as "not yet": a coordinator may be restarting). */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
