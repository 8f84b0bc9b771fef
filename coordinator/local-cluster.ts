/**
 * An embedded local cluster for `coordinator submit --local-workers N`: a nats-server with
 * JetStream in a temporary directory, the coordinator in this process on 127.0.0.1:<free port>,
 * and N worker child processes (`node dist/worker/cli.js --coordinator ... --nats ...`).
 *
 * Nothing is left behind: every worker runs in its own process group, `stop()` sends SIGTERM to
 * each group, SIGKILL after a grace period, and awaits every exit; then the coordinator and the
 * nats-server stop (the server's temporary directory is removed). If this process exits without
 * `stop()`, an exit hook SIGKILLs the worker groups.
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
  const candidates = [join(here, '..', 'worker', 'cli.js'), join(here, '..', 'dist', 'worker', 'cli.js'), join(here, '..', '..', 'dist', 'worker', 'cli.js')];
  for (const c of candidates) if (existsSync(c)) return c;
  throw new UserError(`cannot find the built worker (tried ${candidates.join(', ')}): run \`npm run build\` first`);
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
  if (!Number.isInteger(options.workers) || options.workers < 1) throw new UserError(`--local-workers: must be an integer >= 1, got ${options.workers}`);
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
      await Promise.all(procs.map(async (p) => {
        if (!p.running || p.child.pid === undefined) return;
        const pid = p.child.pid;
        signalGroup(pid, 'SIGTERM');
        const t = setTimeout(() => signalGroup(pid, 'SIGKILL'), grace);
        await p.exited;
        clearTimeout(t);
        // Anything the worker left in its group.
        signalGroup(pid, 'SIGKILL');
        liveGroups.delete(pid);
      }));
      await coordinator?.stop();
      await nats?.stop();
      logger.info('local cluster stopped');
    })();
    return stopped;
  };

  try {
    nats = await startNatsServer({ jetstream: true, logger: logger.child('nats') });
    coordinator = await startCoordinator({ listen: '127.0.0.1:0', natsUrl: nats.url, logger: logger.child('coordinator') });
    logger.info('local cluster: nats and coordinator up', { nats: nats.url, coordinator: coordinator.address });
    const env = { ...process.env, POLYTUNE_LOG_LEVEL: process.env['POLYTUNE_LOG_LEVEL'] ?? options.workerLogLevel ?? 'warn' };
    let firstExit!: (v: { index: number; code: number | null; signal: NodeJS.Signals | null }) => void;
    const workerExited = new Promise<{ index: number; code: number | null; signal: NodeJS.Signals | null }>((r) => (firstExit = r));
    for (let i = 0; i < options.workers; i++) {
      const args = [workerCli, '--coordinator', coordinator.address, '--nats', nats.url, '--id', `local-${i}`];
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
      if (child.pid !== undefined) liveGroups.add(child.pid);
      procs.push(proc);
    }
    logger.info('local cluster: workers started', { workers: options.workers });
    return { coordinatorAddress: coordinator.address, natsUrl: nats.url, coordinator, workerExited, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
