/**
 * Starts a real `nats-server` process (and small loopback clusters of them) for the coordinator's
 * embedded local cluster (`coordinator submit --local-workers N`) and for tests.
 *
 * Ports are picked by the server itself (`-1` in its config) and read back from the ports file it
 * writes into `ports_file_dir`, the way nats.js's test launcher does: no race between "find a free
 * port" and "bind it". The HTTP monitoring port is always on, so `/varz` (slow consumers, bytes)
 * and `/routez` can be read.
 *
 * Cleanup is guaranteed: `stop()` terminates the process, awaits its exit and removes the
 * temporary directory (config, ports file, and the JetStream store unless the caller gave one);
 * servers still running when this Node process exits are killed and their directories removed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { PolytuneError } from './errors.js';
import { silentLogger, type Logger } from './logging.js';
import { findNatsServer } from './nats-server-binary.js';

export const DEFAULT_NATS_HOST = '127.0.0.1';
export const DEFAULT_NATS_START_TIMEOUT_MS = 15_000;
export const DEFAULT_NATS_STOP_TIMEOUT_MS = 10_000;

export interface NatsServerOptions {
  /** Enable JetStream. @default false */
  jetstream?: boolean;
  /** JetStream store directory. @default a directory inside the server's temporary directory, removed by `stop()` */
  storeDir?: string;
  /** The server's `max_payload` in bytes. @default the server's default (1 MiB) */
  maxPayload?: number;
  /** Client port; 0 lets the server pick a free one. @default 0 */
  port?: number;
  /** Address to bind (client, monitoring and cluster listeners). @default '127.0.0.1' */
  host?: string;
  /** HTTP monitoring port; 0 picks a free one, `false` turns monitoring off. @default 0 */
  monitorPort?: number | false;
  /** `server_name`. @default 'polytune-<pid>-<n>' */
  serverName?: string;
  /** Cluster (route) settings; omitted: not clustered. */
  cluster?: {
    /** Cluster name, the same on every member. */
    name: string;
    /** Route listen port; 0 picks a free one. @default 0 */
    port?: number;
    /** Route URLs to solicit, e.g. `nats://127.0.0.1:6222`. @default [] */
    routes?: readonly string[];
  };
  /** Extra lines appended verbatim to the generated config file. */
  config?: readonly string[];
  /** Extra command-line arguments. */
  args?: readonly string[];
  /** @default findNatsServer() */
  binary?: string;
  /** Receives the server's log lines at debug level. @default silentLogger */
  logger?: Logger;
  /** @default DEFAULT_NATS_START_TIMEOUT_MS */
  startTimeoutMs?: number;
}

export interface NatsServer {
  /** Client URL, e.g. `nats://127.0.0.1:41234`. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Monitoring URL, e.g. `http://127.0.0.1:41235`; undefined when monitoring is off. */
  readonly monitorUrl: string | undefined;
  /** Route URL when clustered. */
  readonly clusterUrl: string | undefined;
  readonly pid: number;
  readonly serverName: string;
  /** The JetStream store directory, when JetStream is on. */
  readonly storeDir: string | undefined;
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** True until the process exits. */
  readonly running: boolean;
  /** GETs a monitoring endpoint (`varz`, `routez`, `connz`, `jsz`…) and parses the JSON. */
  monitor(endpoint: string): Promise<Record<string, unknown>>;
  /** Terminates the server (SIGTERM, then SIGKILL after a timeout), awaits exit, removes temp dirs. Idempotent. */
  stop(): Promise<void>;
  /** Sends a signal without waiting (e.g. `SIGKILL` to simulate a crash, `SIGSTOP` to freeze it). */
  kill(signal?: NodeJS.Signals): void;
}

/** A nats-server that failed to start; carries the tail of its log. */
export class NatsServerStartError extends PolytuneError {
  readonly log: string;
  constructor(message: string, log: string, options: { cause?: unknown } = {}) {
    super(log ? `${message}\n--- nats-server log (tail) ---\n${log}` : message, options);
    this.name = 'NatsServerStartError';
    this.log = log;
  }
}

interface PortsFile {
  nats?: string[];
  monitoring?: string[];
  cluster?: string[];
}

const live = new Set<{ child: ChildProcess; dir: string }>();
let exitHookInstalled = false;
let serverCounter = 0;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const s of live) {
      try {
        s.child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
      try {
        rmSync(s.dir, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function confString(s: string): string {
  return JSON.stringify(s);
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}

/** Resolves when the server at host:port greets a TCP client with `INFO`. */
function probe(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = netConnect({ host, port });
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.once('data', (buf) => finish(buf.toString('latin1').startsWith('INFO')));
    sock.once('error', () => finish(false));
    sock.once('close', () => finish(false));
  });
}

/** Starts one nats-server and resolves once it accepts client connections. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = options.binary ?? findNatsServer();
  const host = options.host ?? DEFAULT_NATS_HOST;
  const logger = options.logger ?? silentLogger;
  const startTimeoutMs = options.startTimeoutMs ?? DEFAULT_NATS_START_TIMEOUT_MS;
  const port = options.port ?? 0;
  const monitorPort = options.monitorPort ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`port: must be 0..65535, got ${port}`);
  if (options.maxPayload !== undefined && (!Number.isInteger(options.maxPayload) || options.maxPayload <= 0)) {
    throw new RangeError(`maxPayload: must be a positive integer, got ${options.maxPayload}`);
  }
  const serverName = options.serverName ?? `polytune-${process.pid}-${++serverCounter}`;

  const dir = mkdtempSync(join(tmpdir(), 'polytune-nats-'));
  const storeDir = options.jetstream ? (options.storeDir ?? join(dir, 'jetstream')) : undefined;
  const lines: string[] = [
    `server_name: ${confString(serverName)}`,
    `listen: ${confString(`${host}:${port === 0 ? -1 : port}`)}`,
    `ports_file_dir: ${confString(dir)}`,
  ];
  if (monitorPort !== false) lines.push(`http: ${confString(`${host}:${monitorPort === 0 ? -1 : monitorPort}`)}`);
  if (options.maxPayload !== undefined) lines.push(`max_payload: ${options.maxPayload}`);
  if (storeDir !== undefined) lines.push(`jetstream: { store_dir: ${confString(storeDir)} }`);
  if (options.cluster) {
    const c = options.cluster;
    const cport = c.port ?? 0;
    lines.push('cluster: {');
    lines.push(`  name: ${confString(c.name)}`);
    lines.push(`  listen: ${confString(`${host}:${cport === 0 ? -1 : cport}`)}`);
    if (c.routes && c.routes.length > 0) lines.push(`  routes: [${c.routes.map(confString).join(', ')}]`);
    lines.push('}');
  }
  lines.push(...(options.config ?? []));
  const confPath = join(dir, 'nats-server.conf');
  writeFileSync(confPath, lines.join('\n') + '\n');

  installExitHook();
  const child = spawn(binary, ['-c', confPath, ...(options.args ?? [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  const entry = { child, dir };
  live.add(entry);

  const tail: string[] = [];
  const log = logger.child(`nats-server:${serverName}`);
  const onOutput = (chunk: Buffer): void => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line === '') continue;
      tail.push(line);
      if (tail.length > 40) tail.shift();
      log.debug(line);
    }
  };
  child.stdout?.on('data', onOutput);
  child.stderr?.on('data', onOutput);

  let running = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      running = false;
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      running = false;
      tail.push(`spawn error: ${err.message}`);
      resolve({ code: null, signal: null });
    });
  });

  let stopping: Promise<void> | undefined;
  const cleanup = (): void => {
    live.delete(entry);
    rmSync(dir, { recursive: true, force: true });
  };
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (running) {
        child.kill('SIGTERM');
        const timedOut = await Promise.race([
          exited.then(() => false),
          sleep(DEFAULT_NATS_STOP_TIMEOUT_MS).then(() => true),
        ]);
        if (timedOut && running) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      cleanup();
    })();
    return stopping;
  };

  // Wait for the ports file, then for the client port to greet us.
  const deadline = Date.now() + startTimeoutMs;
  let ports: PortsFile | undefined;
  try {
    for (;;) {
      if (!running) throw new NatsServerStartError(`nats-server ${binary} exited during start-up`, tail.join('\n'));
      if (Date.now() > deadline) {
        throw new NatsServerStartError(
          `nats-server ${binary} did not start within ${startTimeoutMs} ms`,
          tail.join('\n'),
        );
      }
      if (ports === undefined && child.pid !== undefined) {
        const name = readdirSync(dir).find((f) => f.endsWith(`_${child.pid}.ports`));
        if (name !== undefined) {
          try {
            const parsed = JSON.parse(readFileSync(join(dir, name), 'utf8')) as PortsFile;
            const complete =
              (parsed.nats?.length ?? 0) > 0 &&
              (monitorPort === false || (parsed.monitoring?.length ?? 0) > 0) &&
              (!options.cluster || (parsed.cluster?.length ?? 0) > 0);
            if (complete) ports = parsed;
          } catch {
            // partially written; try again
          }
        }
      }
      if (ports !== undefined) {
        const clientPort = portOf(ports.nats![0]!);
        if (await probe(host, clientPort, 1000)) break;
      }
      await sleep(20);
    }
  } catch (e) {
    await stop();
    throw e;
  }

  const clientUrl = ports.nats![0]!;
  const monitorUrl = monitorPort === false ? undefined : ports.monitoring?.[0];
  const clusterUrl = options.cluster ? ports.cluster?.[0] : undefined;
  const server: NatsServer = {
    url: `nats://${host}:${portOf(clientUrl)}`,
    host,
    port: portOf(clientUrl),
    monitorUrl: monitorUrl === undefined ? undefined : `http://${host}:${portOf(monitorUrl)}`,
    clusterUrl: clusterUrl === undefined ? undefined : `nats://${host}:${portOf(clusterUrl)}`,
    pid: child.pid!,
    serverName,
    storeDir,
    exited,
    get running() {
      return running;
    },
    async monitor(endpoint: string): Promise<Record<string, unknown>> {
      if (server.monitorUrl === undefined) throw new PolytuneError(`nats-server ${serverName}: monitoring is off`);
      const res = await fetch(`${server.monitorUrl}/${endpoint.replace(/^\//, '')}`);
      if (!res.ok) throw new PolytuneError(`nats-server ${serverName}: GET /${endpoint}: HTTP ${res.status}`);
      return (await res.json()) as Record<string, unknown>;
    },
    stop,
    kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (running) child.kill(signal);
    },
  };
  logger.debug('nats-server started', {
    url: server.url,
    monitor: server.monitorUrl,
    pid: server.pid,
    jetstream: storeDir !== undefined,
  });
  return server;
}

export interface NatsClusterOptions extends Omit<NatsServerOptions, 'cluster' | 'port' | 'serverName' | 'storeDir'> {
  /** @default 'polytune-<pid>-<n>' */
  clusterName?: string;
}

export interface NatsCluster {
  readonly servers: readonly NatsServer[];
  /** Client URLs of every member, for `connect({ servers })`. */
  readonly urls: readonly string[];
  /** Stops every member (in parallel); idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `n` servers on loopback routed to each other (the first is the seed; NATS gossips the
 * full mesh) and resolves once every member sees n-1 routes. JetStream stays off unless asked.
 */
export async function startNatsCluster(n: number, options: NatsClusterOptions = {}): Promise<NatsCluster> {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`n: must be a positive integer, got ${n}`);
  const { clusterName, ...serverOptions } = options;
  const name = clusterName ?? `polytune-${process.pid}-${++serverCounter}`;
  if (serverOptions.monitorPort === false)
    throw new RangeError('monitorPort: a cluster needs monitoring to see its routes');
  const servers: NatsServer[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.stop()));
  };
  try {
    const seed = await startNatsServer({ ...serverOptions, serverName: `${name}-0`, cluster: { name } });
    servers.push(seed);
    const rest = await Promise.all(
      Array.from({ length: n - 1 }, (_, i) =>
        startNatsServer({
          ...serverOptions,
          serverName: `${name}-${i + 1}`,
          cluster: { name, routes: [seed.clusterUrl!] },
        }),
      ),
    );
    servers.push(...rest);
    const deadline = Date.now() + (options.startTimeoutMs ?? DEFAULT_NATS_START_TIMEOUT_MS);
    for (const s of servers) {
      for (;;) {
        const routez = await s.monitor('routez');
        const routes = Array.isArray(routez['routes']) ? (routez['routes'] as Array<{ remote_id?: string }>) : [];
        const peers = new Set(routes.map((r) => r.remote_id));
        if (peers.size >= n - 1) break;
        if (Date.now() > deadline) {
          throw new NatsServerStartError(
            `nats cluster ${name}: ${s.serverName} has ${peers.size} of ${n - 1} routes`,
            '',
          );
        }
        await sleep(25);
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { servers, urls: servers.map((s) => s.url), stop };
}
