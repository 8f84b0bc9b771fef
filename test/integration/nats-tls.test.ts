/**
 * NATS over TLS: a real nats-server that requires TLS and verifies client certificates, the real
 * coordinator (its settings read by `serveSecurity`, as `serve --nats-tls-ca ...` does) and two
 * real workers (`runWorker` with the settings `worker --nats-tls-ca ...` reads) train a job to the
 * end; a client without TLS, or without a certificate, is refused.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logging.js';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { loadNatsTls, natsTlsFromFlags } from '../../common/tls.js';
import { serveSecurity } from '../../coordinator/cli-security.js';
import { JobClient } from '../../coordinator/client.js';
import type { Coordinator } from '../../coordinator/server.js';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { runWorker } from '../../worker/run-worker.js';
import { natsScope } from '../helpers/nats-server.js';
import { startTestCoordinator } from './coordinator-fixtures.js';
import { makeTestPki, type TestPki } from './security-fixtures.js';

let pki: TestPki;
let dir: string;
let server: NatsServer;
let coord: Coordinator;
let client: JobClient;
const stop = new AbortController();
let workers: Promise<void>[] = [];
const nats = natsScope();

beforeAll(async () => {
  await initBackend('wasm');
  pki = makeTestPki();
  dir = await mkdtemp(join(tmpdir(), 'polytune-nats-tls-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(24, 1)));
  server = await startNatsServer({
    jetstream: true,
    config: [
      'tls {',
      `  cert_file: ${JSON.stringify(pki.files.serverCert)}`,
      `  key_file: ${JSON.stringify(pki.files.serverKey)}`,
      `  ca_file: ${JSON.stringify(pki.files.ca)}`,
      '  verify: true',
      '}',
    ],
  });
  const flags = { 'nats-tls-ca': pki.files.ca, 'nats-tls-cert': pki.files.workerCert, 'nats-tls-key': pki.files.workerKey };
  coord = await startTestCoordinator(server, serveSecurity(flags));
  client = new JobClient({ address: coord.address, callTimeoutMs: 10_000 });
  const natsTls = natsTlsFromFlags(flags)!;
  workers = [0, 1].map((i) => runWorker({
    coordinator: coord.address, nats: server.url, backend: 'wasm', workerId: `tls-w${i}`, logger: silentLogger, signal: stop.signal, natsTls,
  }));
}, 120_000);

afterAll(async () => {
  stop.abort();
  await Promise.allSettled(workers);
  client?.close();
  await coord?.stop();
  await nats.cleanup();
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
  pki?.cleanup();
}, 30_000);

describe('NATS over TLS', () => {
  it('refuses a client without TLS, and one without a client certificate', async () => {
    // Without a CA the client cannot trust the server's certificate; with it, the server wants one.
    await expect(nats.connect(server)).rejects.toThrow(/certificate/);
    await expect(nats.connect(server, { tls: { ca: pki.ca.toString() } })).rejects.toThrow(/SSL/);
    const nc = await nats.connect(server, { tls: loadNatsTls({ ca: pki.files.ca, cert: pki.files.workerCert, key: pki.files.workerKey })! });
    expect(nc.info?.tls_required).toBe(true);
  });

  it('the coordinator and two workers train a job to the end', async () => {
    const out = join(dir, 'out');
    const id = await client.submitText(`
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: nats-tls-test }
spec:
  model: { path: ${join(dir, 'model')} }
  method: { name: slam, layers: [0] }
  data:
    train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca }]
    maxSeqLen: 64
  training:
    maxSteps: 2
    globalBatchSize: 4
    microBatchSize: 2
    optimizer: { name: sgd, lr: 0.01 }
  workers: { count: 2 }
  output: { dir: ${out} }
`, 'tls.yaml');
    for await (const ev of client.watch(id)) if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(String(ev.job?.state))) break;
    const job = await client.get(id);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    expect((await readFile(join(out, 'final', 'config.json'), 'utf8')).length).toBeGreaterThan(0);
  }, 120_000);

  it('refuses NATS TLS flags that do not go together, naming them', () => {
    expect(() => loadNatsTls({ cert: pki.files.workerCert, key: pki.files.workerKey })).toThrow(/--nats-tls-ca/);
    expect(() => loadNatsTls({ ca: pki.files.ca, cert: pki.files.workerCert })).toThrow(/--nats-tls-cert and --nats-tls-key go together/);
    expect(() => loadNatsTls({ ca: join(dir, 'missing.pem') })).toThrow(/--nats-tls-ca: cannot read/);
  });
});
