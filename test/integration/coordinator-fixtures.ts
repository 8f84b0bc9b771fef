/** Fixtures for the coordinator suites: a fake model dir and data file, specs, a NATS + coordinator pair. */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, LogLevel, silentLogger, type Logger } from '../../common/logging.js';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { startCoordinator, type Coordinator, type CoordinatorOptions } from '../../coordinator/server.js';
import { initBackend } from '../../worker/backend.js';
import { runWorker, type WorkerOptions } from '../../worker/run-worker.js';

export interface SpecFixture {
  dir: string;
  modelDir: string;
  dataFile: string;
  /**
   * A valid spec as YAML with absolute paths; output.dir is `out`, or `out-<name>` with a name (a
   * directory is marked as one job's: common/output-marker.ts).
   */
  yaml(overrides?: { name?: string; workers?: number; min?: number; epochs?: number; samples?: number }): string;
  cleanup(): void;
}

/** A tiny "model" (files exist; contents are placeholders except config.json) and an alpaca data file. */
export function makeSpecFixture(samples = 8): SpecFixture {
  const dir = mkdtempSync(join(tmpdir(), 'polytune-coord-'));
  const modelDir = join(dir, 'model');
  mkdirSync(modelDir);
  writeFileSync(
    join(modelDir, 'config.json'),
    JSON.stringify({
      model_type: 'llama',
      num_hidden_layers: 2,
      hidden_size: 8,
      intermediate_size: 16,
      num_attention_heads: 2,
      num_key_value_heads: 2,
      vocab_size: 32,
      rms_norm_eps: 1e-5,
      hidden_act: 'silu',
    }),
  );
  writeFileSync(join(modelDir, 'model.safetensors'), Buffer.alloc(16));
  writeFileSync(join(modelDir, 'tokenizer.json'), '{}');
  const dataFile = join(dir, 'train.jsonl');
  const lines: string[] = [];
  for (let i = 0; i < samples; i++)
    lines.push(JSON.stringify({ instruction: `What is ${i} + 1?`, output: String(i + 1) }));
  writeFileSync(dataFile, lines.join('\n') + '\n');
  return {
    dir,
    modelDir,
    dataFile,
    yaml: (o = {}) => `apiVersion: polytune/v1
kind: TrainJob
metadata:
  name: ${o.name ?? 'tiny-job'}
spec:
  model:
    path: ${modelDir}
  method:
    name: slam
    layers: [0, 1]
  data:
    train:
      - { path: ${dataFile}, format: alpaca }
  training:
    epochs: ${o.epochs ?? 1}
    globalBatchSize: ${Math.max(2, o.workers ?? 2)}
    microBatchSize: 1
    optimizer: { name: sgd, lr: 0.1 }
  workers: { count: ${o.workers ?? 2}${o.min !== undefined ? `, min: ${o.min}` : ''} }
  output: { dir: ${join(dir, o.name === undefined ? 'out' : `out-${o.name}`)} }
`,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export async function startNats(): Promise<NatsServer> {
  return startNatsServer({ jetstream: true });
}

export async function startTestCoordinator(nats: NatsServer, options: CoordinatorOptions = {}): Promise<Coordinator> {
  return startCoordinator({ listen: '127.0.0.1:0', natsUrl: nats.url, progressFlushMs: 50, ...options });
}

/** Polls `fn` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function eventually<T>(
  fn: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * The in-process cluster's logs: silent, unless `POLYTUNE_TEST_LOG` names a level (debug, info,
 * warn, error), then to stderr, to see what a job and its workers were doing when a test sticks.
 */
function testLogger(component: string): Logger {
  const level = process.env['POLYTUNE_TEST_LOG'];
  return level !== undefined && level in LogLevel
    ? createLogger(component, { level: level as LogLevel })
    : silentLogger;
}

/** A coordinator, a client of it and in-process workers (`runWorker`) on one NATS server. */
export interface InProcessCluster {
  readonly coordinator: Coordinator;
  readonly client: JobClient;
  /** Submits a spec and watches it to its end; the job record then. */
  runToEnd(yaml: string): Promise<Awaited<ReturnType<JobClient['get']>>>;
  /** Stops the workers, the client and the coordinator (not the NATS server). */
  stop(): Promise<void>;
}

export async function startInProcessCluster(
  nats: NatsServer,
  options: {
    workers: number;
    idPrefix: string;
    coordinator?: CoordinatorOptions;
    worker?: Partial<WorkerOptions>;
  },
): Promise<InProcessCluster> {
  // The in-process workers share one tfjs engine: initialise it once, before they start.
  await initBackend('wasm');
  const coordinator = await startTestCoordinator(nats, { logger: testLogger('coordinator'), ...options.coordinator });
  const client = new JobClient({ address: coordinator.address, callTimeoutMs: 10_000 });
  const stop = new AbortController();
  const workers = Array.from({ length: options.workers }, (_, i) =>
    runWorker({
      coordinator: coordinator.address,
      nats: nats.url,
      backend: 'wasm',
      workerId: `${options.idPrefix}-w${i}`,
      logger: testLogger(`worker ${options.idPrefix}-w${i}`),
      signal: stop.signal,
      ...options.worker,
    }),
  );
  return {
    coordinator,
    client,
    async runToEnd(yaml) {
      const id = await client.submitText(yaml, 'test.yaml');
      for await (const ev of client.watch(id))
        if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(String(ev.job?.state))) break;
      return client.get(id);
    },
    async stop() {
      stop.abort();
      await Promise.allSettled(workers);
      client.close();
      await coordinator.stop();
    },
  };
}
