#!/usr/bin/env node
/**
 * The `worker` command.
 *
 *   worker --coordinator HOST:PORT [--nats URL] [--backend wasm|cpu|tensorflow] [--metrics-port N]
 *            [--metrics-host HOST] [--local-rank N] [--id ID] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
 *            [--tls-server-name NAME] [--token-file FILE] [--no-native] [--threads N]
 *            [--allow-cpu] [--tf32]   (tensorflow: run without a GPU; TF32 matmuls)
 *            [--nats-tls-ca FILE [--nats-tls-cert FILE --nats-tls-key FILE]] [--storage-root DIR]...
 *   worker init-model --preset tiny --out DIR [--seed N]
 *   worker init-encoder --preset tiny --out DIR [--seed N]   (a random mT5-style encoder, for LinguaLIFT)
 *   worker score --model DIR --input FILE.jsonl [--json] [--template NAME] [--backend B]
 *   worker generate --model DIR --prompt TEXT [--max-new-tokens N] [--json] [--cc-transform]
 *                   [--encoder DIR] [--backend B]
 *
 * Metrics (Prometheus, `/metrics`) are served on --metrics-port, default 9465 + the local rank
 * (--local-rank, else $POLYTUNE_LOCAL_RANK, else 0: the index of this worker process among those of
 * its pod or host, one per GPU); --metrics-port 0 picks a free port. A worker listens on nothing
 * else, so metrics bind --metrics-host, else $POLYTUNE_METRICS_HOST, else 0.0.0.0 (a pod is scraped
 * from outside).
 *
 * On wasm the matrix products run in OpenBLAS when the native addon is built (worker/native):
 * `--no-native` (or POLYTUNE_NATIVE=0) keeps XNNPACK's; `--threads N` (or POLYTUNE_NATIVE_THREADS)
 * gives OpenBLAS N threads, default 1 (one worker a core).
 */
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { flagOrEnv, intFlag, runCli, UsageError } from '../common/cli.js';
import { UserError } from '../common/errors.js';
import { createLogger } from '../common/logging.js';
import { PromMeter, startMetricsServer } from '../common/metrics.js';
import { loadClientTls, NATS_TLS_FLAGS, natsTlsFromFlags } from '../common/tls.js';
import { storageRootsGiven } from '../common/storage-roots.js';
import { readToken } from '../common/token.js';
import { BackendName, DEFAULT_BACKEND, initBackend } from './backend.js';
import { HEARTBEAT_DIR_ENV, startHeartbeatFile } from './heartbeat-file.js';
import type { NativeOptions } from './native/index.js';
import { runGenerate } from './commands/generate.js';
import { runInitEncoder } from './commands/init-encoder.js';
import { runInitModel } from './commands/init-model.js';
import { runScore } from './commands/score.js';
import { runWorker } from './run-worker.js';

/** DESIGN.md: worker metrics on 9465 + the local rank. */
const DEFAULT_WORKER_METRICS_PORT = 9465;

const USAGE =
  `usage:
  worker --coordinator HOST:PORT [--nats URL] [--backend wasm|cpu|tensorflow] [--metrics-port N] [--metrics-host HOST]
           [--local-rank N] [--id ID] [--tls-ca FILE] [--tls-cert FILE ` +
  `--tls-key FILE] [--tls-server-name NAME] [--token-file FILE]
           [--no-native] [--threads N]   (env POLYTUNE_NATIVE=0, POLYTUNE_NATIVE_THREADS)
           [--allow-cpu] [--tf32]   (tensorflow: run without a GPU; TF32 matmuls; env POLYTUNE_ALLOW_CPU, POLYTUNE_TF32)
           [--nats-tls-ca FILE [--nats-tls-cert FILE --nats-tls-key FILE]]   (env POLYTUNE_NATS_TLS_{CA,CERT,KEY})
           [--storage-root DIR]...   (env POLYTUNE_STORAGE_ROOTS, ':'-separated: an assignment naming a path
                                      outside them is refused; unset: any path)
  worker init-model --preset tiny --out DIR [--seed N]
  worker init-encoder --preset tiny --out DIR [--seed N]
  worker score --model DIR --input FILE.jsonl [--json] [--template NAME] [--backend B] [--no-native] [--threads N]
  worker generate --model DIR --prompt TEXT [--max-new-tokens N] [--json] [--cc-transform] [--encoder DIR] [--backend B]
           [--no-native] [--threads N]
`;

/** A boolean flag, else its env var (`1` or `true`). */
function boolFlagOrEnv(values: Record<string, string | boolean | undefined>, flag: string, env: string): boolean {
  return values[flag] === true || ['1', 'true'].includes((process.env[env] ?? '').toLowerCase());
}

function backendFlag(value: string | undefined): BackendName {
  if (value === undefined) return DEFAULT_BACKEND;
  if (!(value in BackendName))
    throw new UsageError(`--backend: must be one of ${Object.keys(BackendName).join(', ')}, got "${value}"`);
  return value as BackendName;
}

const NATIVE_FLAGS = { 'no-native': { type: 'boolean' }, threads: { type: 'string' } } as const;

/** `--no-native` and `--threads N`; what they leave unset comes from the env vars (worker/native). */
function nativeFlags(v: Record<string, string | boolean | undefined>): NativeOptions {
  return {
    ...(v['no-native'] ? { enabled: false } : {}),
    ...(v.threads !== undefined ? { threads: intFlag('threads', v.threads as string, 1, 1) } : {}),
  };
}

function required(name: string, value: string | undefined): string {
  if (value === undefined || value === '') throw new UsageError(`--${name} is required\n${USAGE}`);
  return value;
}

const write = (line: string): void => {
  process.stdout.write(line + '\n');
};

async function main(signal: AbortSignal): Promise<number> {
  const argv = process.argv.slice(2);
  const command = argv[0] !== undefined && !argv[0].startsWith('-') ? argv[0] : 'run';
  const rest = command === 'run' && argv[0] !== 'run' ? argv : argv.slice(1);
  type Flags = Record<string, { type: 'string' | 'boolean'; default?: string; multiple?: boolean }>;
  const parse = (options: Flags): Record<string, string | boolean | undefined> => {
    try {
      return parseArgs({
        args: rest,
        options: { ...options, help: { type: 'boolean' } },
        strict: true,
        allowPositionals: false,
      }).values as Record<string, string | boolean | undefined>;
    } catch (e) {
      throw new UsageError(`${(e as Error).message}\n${USAGE}`);
    }
  };
  switch (command) {
    case 'run': {
      const v = parse({
        coordinator: { type: 'string' },
        nats: { type: 'string' },
        backend: { type: 'string' },
        'metrics-port': { type: 'string' },
        'metrics-host': { type: 'string' },
        'local-rank': { type: 'string' },
        id: { type: 'string' },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'tls-server-name': { type: 'string' },
        'token-file': { type: 'string' },
        'allow-cpu': { type: 'boolean' },
        tf32: { type: 'boolean' },
        'storage-root': { type: 'string', multiple: true },
        ...NATS_TLS_FLAGS,
        ...NATIVE_FLAGS,
      });
      if (v.help) return (write(USAGE), 0);
      // Security toward the coordinator (README "Security"); flags win over env vars.
      const tls = loadClientTls({
        ca: flagOrEnv(v, 'tls-ca', 'POLYTUNE_TLS_CA'),
        cert: flagOrEnv(v, 'tls-cert', 'POLYTUNE_TLS_CLIENT_CERT'),
        key: flagOrEnv(v, 'tls-key', 'POLYTUNE_TLS_CLIENT_KEY'),
        serverName: flagOrEnv(v, 'tls-server-name', 'POLYTUNE_TLS_SERVER_NAME'),
      });
      const token = readToken(v['token-file'] as string | undefined, 'POLYTUNE_WORKER_TOKEN');
      const natsTls = natsTlsFromFlags(v);
      const localRank = intFlag(
        'local-rank',
        (v['local-rank'] as string | undefined) ?? process.env['POLYTUNE_LOCAL_RANK'],
        0,
      );
      const metricsPort = intFlag(
        'metrics-port',
        v['metrics-port'] as string | undefined,
        DEFAULT_WORKER_METRICS_PORT + localRank,
      );
      const workerId = (v.id as string | undefined) ?? `${hostname()}-${process.pid}`;
      const logger = createLogger(`worker ${workerId}`);
      // The entry point wires prom-client (STYLE.md); the worker records through the MetricMeter.
      const meter = new PromMeter({ logger: logger.child('metrics') });
      const serveMetrics = (port: number): ReturnType<typeof startMetricsServer> =>
        startMetricsServer({
          meter,
          port,
          host: (v['metrics-host'] as string | undefined) || process.env['POLYTUNE_METRICS_HOST'] || '0.0.0.0',
          logger: logger.child('metrics'),
        });
      const metrics = await serveMetrics(metricsPort).catch((e: unknown) => {
        // A default port taken (several workers on one host without --local-rank): any free port, and say so.
        if (v['metrics-port'] === undefined && (e as NodeJS.ErrnoException).code === 'EADDRINUSE') {
          logger.warn(
            'default metrics port in use; serving metrics on a free port (set --local-rank or --metrics-port)',
            { port: metricsPort },
          );
          return serveMetrics(0);
        }
        throw new UserError(`--metrics-port ${metricsPort}: cannot serve metrics: ${(e as Error).message}`, {
          cause: e,
        });
      });
      logger.info('metrics at /metrics', { url: metrics.url, localRank });
      const heartbeatDir = process.env[HEARTBEAT_DIR_ENV];
      const heartbeat = heartbeatDir ? startHeartbeatFile(heartbeatDir, localRank, logger) : undefined;
      try {
        await runWorker({
          coordinator: (v.coordinator as string | undefined) ?? process.env['POLYTUNE_COORDINATOR'] ?? '127.0.0.1:7070',
          nats: (v.nats as string | undefined) ?? process.env['POLYTUNE_NATS_URL'],
          backend: backendFlag(v.backend as string | undefined),
          native: nativeFlags(v),
          backendOptions: {
            allowCpu: boolFlagOrEnv(v, 'allow-cpu', 'POLYTUNE_ALLOW_CPU'),
            tf32: boolFlagOrEnv(v, 'tf32', 'POLYTUNE_TF32'),
          },
          // parseArgs gives a `multiple` flag as an array.
          storageRoots: storageRootsGiven(v['storage-root'] as unknown as string[] | undefined),
          workerId,
          logger,
          signal,
          meter,
          ...(tls ? { tls } : {}),
          ...(token !== undefined ? { token } : {}),
          ...(natsTls ? { natsTls } : {}),
        });
      } finally {
        heartbeat?.stop();
        await metrics.close();
      }
      return 0;
    }
    case 'init-model':
    case 'init-encoder': {
      // The same flags: a random-init checkpoint (the LLM, or a T5 encoder) in HF layout.
      const v = parse({
        preset: { type: 'string', default: 'tiny' },
        out: { type: 'string' },
        seed: { type: 'string' },
      });
      if (v.help) return (write(USAGE), 0);
      await (command === 'init-model' ? runInitModel : runInitEncoder)({
        preset: v.preset as string,
        out: required('out', v.out as string | undefined),
        seed: intFlag('seed', v.seed as string | undefined, 0),
        write,
      });
      return 0;
    }
    case 'score': {
      const v = parse({
        model: { type: 'string' },
        input: { type: 'string' },
        json: { type: 'boolean' },
        backend: { type: 'string' },
        template: { type: 'string' },
        ...NATIVE_FLAGS,
      });
      if (v.help) return (write(USAGE), 0);
      await initBackend(backendFlag(v.backend as string | undefined), nativeFlags(v));
      await runScore({
        model: required('model', v.model as string | undefined),
        input: required('input', v.input as string | undefined),
        json: Boolean(v.json),
        write,
        ...(v.template !== undefined ? { template: v.template as string } : {}),
      });
      return 0;
    }
    case 'generate': {
      const v = parse({
        model: { type: 'string' },
        prompt: { type: 'string' },
        'max-new-tokens': { type: 'string' },
        json: { type: 'boolean' },
        'cc-transform': { type: 'boolean' },
        encoder: { type: 'string' },
        backend: { type: 'string' },
        ...NATIVE_FLAGS,
      });
      if (v.help) return (write(USAGE), 0);
      await initBackend(backendFlag(v.backend as string | undefined), nativeFlags(v));
      await runGenerate({
        ccTransform: Boolean(v['cc-transform']),
        ...(v.encoder !== undefined ? { encoder: v.encoder as string } : {}),
        model: required('model', v.model as string | undefined),
        prompt: required('prompt', v.prompt as string | undefined),
        maxNewTokens: intFlag('max-new-tokens', v['max-new-tokens'] as string | undefined, 128, 1),
        json: Boolean(v.json),
        write,
      });
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"\n${USAGE}`);
  }
}

await runCli(main);
