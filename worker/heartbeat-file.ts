/**
 * A heartbeat file the worker touches from its event loop (every 10 s), for the chart's exec
 * liveness probe: `POLYTUNE_HEARTBEAT_DIR/worker-<local rank>.heartbeat`.
 *
 * Why a file and not the HTTP /healthz: a probe served on the event loop fails while a long
 * synchronous stretch blocks it (a training step of a 13B model, TensorFlow compiling its kernels
 * from PTX on first use), and Kubernetes then kills a worker that is working. The probe reads the
 * file's age instead, against a bound longer than any such stretch (the chart's
 * worker.liveness.maxStallSeconds, 1 h): a process that is truly stuck is still restarted, and a
 * worker that stops responding sooner is taken out of its job by the coordinator's heartbeats.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../common/logging.js';

/** Env var: the directory of the heartbeat files. Unset: no file. */
export const HEARTBEAT_DIR_ENV = 'POLYTUNE_HEARTBEAT_DIR';
/** @default 10 s */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 10_000;

/** Touches `dir/worker-<localRank>.heartbeat` now and every `intervalMs`; `stop()` ends it. */
export function startHeartbeatFile(
  dir: string,
  localRank: number,
  logger: Logger,
  intervalMs = DEFAULT_HEARTBEAT_INTERVAL_MS,
): { file: string; stop(): void } {
  const file = join(dir, `worker-${localRank}.heartbeat`);
  let warned = false;
  const touch = (): void => {
    try {
      writeFileSync(file, `${new Date().toISOString()}\n`);
    } catch (e) {
      if (!warned)
        logger.warn('cannot write the heartbeat file: the liveness probe will fail', {
          file,
          error: (e as Error).message,
        });
      warned = true;
    }
  };
  mkdirSync(dir, { recursive: true });
  touch();
  const timer = setInterval(touch, intervalMs);
  timer.unref();
  return { file, stop: () => clearInterval(timer) };
}
