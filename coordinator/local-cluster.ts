/**
 * An embedded local cluster for `coordinator submit --local-workers N`: a nats-server with
 * JetStream in a temporary directory, the coordinator in this process on 127.0.0.1:<free port>,
 * and N worker child processes (`node dist/worker/cli.js --coordinator ... --nats ...`).
 *
 * Nothing is left behind: every worker runs in its own process group, `stop()` sends SIGTERM to
 * each group, SIGKILL after a grace period, and awaits every exit; then the coordinator and the
 * nats-server stop (the server's temporary directory is removed). If this process exits without
 * `stop()`, an exit hook SIGKILLs the worker groups; if it is killed outright (SIGKILL), the reaper
 * process (below) stops nats-server and the workers.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { startNatsServer, type NatsServer } from '../common/nats-server-process.js';
import { startCoordinator, type Coordinator } from './server.js';

/** Env var naming the worker entry point to spawn instead of dist/worker/cli.js (tests, custom builds). */
export const WORKER_CLI_ENV = 'POLYTUNE_WORKER_CLI';

/** @default 10 s between SIGTERM and SIGKILL for a worker. */
export const DEFAULT_WORKER_STOP_GRACE_MS = 10_000;

export interface LocalClusterOptions {
  /** Number of worker processes. */
  workers: number;
  /** Passed to each worker as `--backend`. @default the worker's default */
  backend?: string;
  /** The worker entry point. @default $POLYTUNE_WORKER_CLI, else dist/worker/cli.js next to this module's build */
  workerCli?: string;
  /** @default DEFAULT_WORKER_STOP_GRACE_MS */
  stopGraceMs?: number;
  /** Log level for the worker processes unless POLYTUNE_LOG_LEVEL is set. @default 'warn' */
  workerLogLevel?: string;
  logger?: Logger;
}

export interface LocalCluster {
  readonly coordinatorAddress: string;
  readonly natsUrl: string;
  readonly coordinator: Coordinator;
  /** Resolves with the first worker that exits on its own (crash), for the caller to report. */
  readonly workerExited: Promise<{ index: number; code: number | null; signal: NodeJS.Signals | null }>;
  /** Stops workers, coordinator and nats-server; idempotent. */
  stop(): Promise<void>;
}

/** The built worker CLI: `dist/worker/cli.js`, found from this module whether it runs from dist/ or from source. */
export function findWorkerCli(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    join(here, '..', 'worker', 'cli.js'),
    join(here, '..', 'dist', 'worker', 'cli.js'),
    join(here, '..', '..', 'dist', 'worker', 'cli.js'),
  ];
  for (const c of candidates) if (existsSync(c)) return c;
  throw new UserError(`cannot find the built worker (tried ${candidates.join(', ')}): run \`npm run build\` first`);
}

/**
 * The reaper: a tiny detached Node process that holds a pipe from this one. We tell it each pid
 * (`+PID`) or process group (`+-PGID`) we start and forget (`-PID`) each that exited. When the
 * pipe closes — `stop()` ends it, or this process died, even by SIGKILL — it sends SIGTERM to what
 * is still registered, SIGKILL 5 s later, and exits. So a killed `coordinator submit
 * --local-workers` leaves no nats-server or worker behind.
 */
const REAPER_SOURCE = `
const live = new Set();
let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    const n = Number(line.slice(1));
    if (!Number.isInteger(n) || n === 0) continue;
    if (line[0] === '+') live.add(n); else if (line[0] === '-') { live.delete(n); live.delete(-n); }
  }
});
const alive = (p) => { try { process.kill(p, 0); return true; } catch { return false; } };
const kill = (p, s) => { try { process.kill(p, s); } catch {} };
process.stdin.on('end', () => {
  if (live.size === 0) process.exit(0);
  for (const p of live) kill(p, 'SIGTERM');
  const started = Date.now();
  const t = setInterval(() => {
    const left = [...live].filter(alive);
    if (left.length === 0) process.exit(0);
    if (Date.now() - started > 5000) { for (const p of left) kill(p, 'SIGKILL'); process.exit(0); }
  }, 100);
});
`;

interface Reaper {
  add(pid: number, group?: boolean): void;
  forget(pid: number): void;
  /** Ends the pipe; the reaper kills whatever is still registered, then exits. */
  close(): Promise<void>;
}

function startReaper(): Reaper {
  const child = spawn(process.execPath, ['-e', REAPER_SOURCE], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  child.unref();
  const stdin = child.stdin!;
  stdin.on('error', () => undefined);
  (stdin as unknown as { unref?: () => void }).unref?.();
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
  const write = (line: string): void => {
    if (!stdin.destroyed && stdin.writable) stdin.write(line + '\n');
  };
  return {
    add: (pid, group = false) => write(`+${group ? -pid : pid}`),
    forget: (pid) => write(`-${pid}`),
    close: async () => {
      // Hold the event loop open until the reaper has exited (it was unref'd while idle).
      child.ref();
      stdin.end();
      await exited;
    },
  };
}

interface WorkerProcess {
  index: number;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  running: boolean;
}

const liveGroups = new Set<number>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of liveGroups) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // the group is gone
  }
}

export async function startLocalCluster(options: LocalClusterOptions): Promise<LocalCluster> {
  const logger = options.logger ?? silentLogger;
  if (!Number.isInteger(options.workers) || options.workers < 1)
    throw new UserError(`--local-workers: must be an integer >= 1, got ${options.workers}`);
  const workerCli = options.workerCli ?? (process.env[WORKER_CLI_ENV] || findWorkerCli());
  const grace = options.stopGraceMs ?? DEFAULT_WORKER_STOP_GRACE_MS;
  installExitHook();

  let nats: NatsServer | undefined;
  let coordinator: Coordinator | undefined;
  const procs: WorkerProcess[] = [];
  let stopping = false;
  let stopped: Promise<void> | undefined;

  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      stopping = true;
      await Promise.all(
        procs.map(async (p) => {
          if (!p.running || p.child.pid === undefined) return;
          const pid = p.child.pid;
          signalGroup(pid, 'SIGTERM');
          const t = setTimeout(() => signalGroup(pid, 'SIGKILL'), grace);
          await p.exited;
          clearTimeout(t);
          // Anything the worker left in its group.
          signalGroup(pid, 'SIGKILL');
          liveGroups.delete(pid);
        }),
      );
      await coordinator?.stop();
      await nats?.stop();
      await reaper.close();
      logger.info('local cluster stopped');
    })();
    return stopped;
  };

  const reaper = startReaper();
  try {
    nats = await startNatsServer({ jetstream: true, logger: logger.child('nats') });
    const natsPid = nats.pid;
    reaper.add(natsPid);
    void nats.exited.then(() => reaper.forget(natsPid));
    coordinator = await startCoordinator({
      listen: '127.0.0.1:0',
      natsUrl: nats.url,
      logger: logger.child('coordinator'),
    });
    logger.info('local cluster: nats and coordinator up', { nats: nats.url, coordinator: coordinator.address });
    const env = {
      ...process.env,
      POLYTUNE_LOG_LEVEL: process.env['POLYTUNE_LOG_LEVEL'] ?? options.workerLogLevel ?? 'warn',
    };
    let firstExit!: (v: { index: number; code: number | null; signal: NodeJS.Signals | null }) => void;
    const workerExited = new Promise<{ index: number; code: number | null; signal: NodeJS.Signals | null }>(
      (r) => (firstExit = r),
    );
    for (let i = 0; i < options.workers; i++) {
      const args = [
        workerCli,
        '--coordinator',
        coordinator.address,
        '--nats',
        nats.url,
        '--id',
        `local-${i}`,
        '--local-rank',
        String(i),
      ];
      if (options.backend) args.push('--backend', options.backend);
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'], env, detached: true });
      const proc: WorkerProcess = {
        index: i,
        child,
        running: true,
        exited: new Promise((resolve) => {
          child.once('exit', (code, signal) => {
            proc.running = false;
            if (child.pid !== undefined) liveGroups.delete(child.pid);
            if (!stopping) firstExit({ index: i, code, signal });
            resolve({ code, signal });
          });
          child.once('error', (e) => {
            logger.error('worker process failed to start', { index: i, error: e.message });
            proc.running = false;
            if (!stopping) firstExit({ index: i, code: null, signal: null });
            resolve({ code: null, signal: null });
          });
        }),
      };
      if (child.pid !== undefined) {
        const pid = child.pid;
        liveGroups.add(pid);
        reaper.add(pid, true);
        void proc.exited.then(() => reaper.forget(pid));
      }
      procs.push(proc);
    }
    logger.info('local cluster: workers started', { workers: options.workers });
    return { coordinatorAddress: coordinator.address, natsUrl: nats.url, coordinator, workerExited, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
