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
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { loadNatsTls, natsTlsFromFlags } from '../../common/tls.js';
import { serveSecurity } from '../../coordinator/cli-security.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { natsScope } from '../helpers/nats-server.js';
import { startInProcessCluster, type InProcessCluster } from './coordinator-fixtures.js';
import { makeTestPki, type TestPki } from './security-fixtures.js';

let pki: TestPki;
let dir: string;
let server: NatsServer;
let cluster: InProcessCluster;
const nats = natsScope();

beforeAll(async () => {
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
  const flags = {
    'nats-tls-ca': pki.files.ca,
    'nats-tls-cert': pki.files.workerCert,
    'nats-tls-key': pki.files.workerKey,
  };
  cluster = await startInProcessCluster(server, {
    workers: 2,
    idPrefix: 'tls',
    coordinator: serveSecurity(flags),
    worker: { natsTls: natsTlsFromFlags(flags)! },
  });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
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
    const nc = await nats.connect(server, {
      tls: loadNatsTls({ ca: pki.files.ca, cert: pki.files.workerCert, key: pki.files.workerKey })!,
    });
    expect(nc.info?.tls_required).toBe(true);
  });

  it('the coordinator and two workers train a job to the end', async () => {
    const out = join(dir, 'out');
    const job = await cluster.runToEnd(`
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
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    expect((await readFile(join(out, 'final', 'config.json'), 'utf8')).length).toBeGreaterThan(0);
  }, 120_000);

  it('refuses NATS TLS flags that do not go together, naming them', () => {
    expect(() => loadNatsTls({ cert: pki.files.workerCert, key: pki.files.workerKey })).toThrow(/--nats-tls-ca/);
    expect(() => loadNatsTls({ ca: pki.files.ca, cert: pki.files.workerCert })).toThrow(
      /--nats-tls-cert and --nats-tls-key go together/,
    );
    expect(() => loadNatsTls({ ca: join(dir, 'missing.pem') })).toThrow(/--nats-tls-ca: cannot read/);
  });
});
