/**
 * Where the `nats-server` binary is. One lookup shared by the coordinator (which starts a local
 * cluster for `submit --local-workers N`), scripts and tests, in the same order as
 * `scripts/setup.sh`:
 *
 * 1. `$POLYTUNE_NATS_SERVER`, when set (an error if it is not an executable file);
 * 2. `.cache/bin/nats-server` under the project root (where `scripts/setup.sh` builds it), the
 *    project root being found upwards from this module, then from the working directory;
 * 3. `nats-server` on `PATH`.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { UserError } from './errors.js';

export const NATS_SERVER_ENV = 'POLYTUNE_NATS_SERVER';
/** Relative to the project root. */
export const NATS_SERVER_CACHE_PATH = join('.cache', 'bin', 'nats-server');

export interface FindNatsServerOptions {
  /** @default process.env */
  env?: NodeJS.ProcessEnv;
  /** Extra directories to look for `.cache/bin/nats-server` in, before the default ones. */
  roots?: readonly string[];
  /** @default process.cwd() */
  cwd?: string;
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function ancestors(dir: string): string[] {
  const out: string[] = [];
  let d = resolve(dir);
  for (;;) {
    out.push(d);
    const up = dirname(d);
    if (up === d) return out;
    d = up;
  }
}

/** The path of a usable `nats-server`, or `undefined` when there is none. */
export function locateNatsServer(options: FindNatsServerOptions = {}): string | undefined {
  const env = options.env ?? process.env;
  const fromEnv = env[NATS_SERVER_ENV];
  if (fromEnv !== undefined && fromEnv !== '') {
    return isExecutableFile(fromEnv) ? resolve(fromEnv) : undefined;
  }
  const here = dirname(fileURLToPath(import.meta.url));
  const roots = [...(options.roots ?? []), ...ancestors(here), ...ancestors(options.cwd ?? process.cwd())];
  const seen = new Set<string>();
  for (const root of roots) {
    if (seen.has(root)) continue;
    seen.add(root);
    const candidate = join(root, NATS_SERVER_CACHE_PATH);
    if (isExecutableFile(candidate)) return candidate;
  }
  for (const dir of (env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, 'nats-server');
    if (isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The path of a usable `nats-server`.
 * @throws UserError saying how to get one when there is none.
 */
export function findNatsServer(options: FindNatsServerOptions = {}): string {
  const found = locateNatsServer(options);
  if (found !== undefined) return found;
  const env = options.env ?? process.env;
  const fromEnv = env[NATS_SERVER_ENV];
  if (fromEnv !== undefined && fromEnv !== '') {
    throw new UserError(`${NATS_SERVER_ENV}=${fromEnv}: not an executable file`);
  }
  throw new UserError(
    'nats-server not found (looked at $' +
      NATS_SERVER_ENV +
      ', ' +
      NATS_SERVER_CACHE_PATH +
      ' and PATH). ' +
      'Run `bash scripts/setup.sh` (builds it on Debian), download one from ' +
      'https://github.com/nats-io/nats-server/releases, or `go install github.com/nats-io/nats-server/v2@latest`; ' +
      'then put it on PATH or point ' +
      NATS_SERVER_ENV +
      ' at it.',
  );
}
