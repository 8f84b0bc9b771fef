/**
 * Short-lived, revoked worker credentials do not stop training: two real workers train a job over
 * a nats-server in operator mode whose per-generation credentials live a few seconds; each expiry
 * closes the workers' connections, the world re-forms with fresh credentials (the old ones are
 * revoked on the way), and the job ends Succeeded in a later generation.
 *
 * Not a race with the machine's speed: the first generation's credentials live at most
 * TTL_SECONDS, less than the job takes on any machine (its start alone takes longer), so they
 * expire during the job; the later generations' live TTL_SECONDS past their start
 * (GenerationStarts in coordinator/nats-credentials.ts), however loaded the machine, so the job
 * cannot loop through re-forms that never reach a step.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credsAuthenticator } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '../../common/nats-server-process.js';
import { createNatsOperatorSetup, NatsCredentialIssuer } from '../../coordinator/nats-credentials.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { startInProcessCluster, type InProcessCluster } from './coordinator-fixtures.js';

// Shorter than the job: its first generation's credentials (1-2 s left when issued) expire in it.
const TTL_SECONDS = 2;

let dir: string;
let server: NatsServer;
let cluster: InProcessCluster;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-creds-ttl-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 3, write: () => {} });
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(64, 1)));
  const setup = await createNatsOperatorSetup();
  server = await startNatsServer({ jetstream: true, config: setup.serverConfig });
  cluster = await startInProcessCluster(server, {
    workers: 2,
    idPrefix: 'ttl',
    coordinator: {
      natsConnect: { authenticator: credsAuthenticator(new TextEncoder().encode(setup.coordinatorCreds)) },
      natsIssuer: new NatsCredentialIssuer({
        signingKeySeed: setup.signingKeySeed,
        account: setup.account,
        ttlSeconds: TTL_SECONDS,
      }),
      natsRevocation: {
        systemCreds: setup.systemCreds,
        accountJwt: setup.accountJwt,
        operatorSigningKeySeed: setup.operatorSigningKeySeed,
      },
    },
  });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}, 30_000);

describe('per-generation credentials that expire during a job', () => {
  it('the world re-forms with fresh credentials and the job succeeds', async () => {
    const out = join(dir, 'out');
    const job = await cluster.runToEnd(`
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: creds-ttl-test }
spec:
  model: { path: ${join(dir, 'model')} }
  method: { name: slam, layers: [0] }
  data:
    train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca }]
    maxSeqLen: 64
  training:
    maxSteps: 40
    globalBatchSize: 4
    microBatchSize: 2
    optimizer: { name: sgd, lr: 0.01 }
  workers: { count: 2 }
  collective: { timeoutSeconds: 5 }
  output: { dir: ${out} }
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    expect(job.step).toBe(40);
    // A generation ended because the server closed its connections on expiry (the end reason says
    // so), and a later one, with fresh credentials, finished the job.
    const expired = job.generations.filter((g) => /User Authentication Expired/i.test(g.endReason));
    expect(expired.length, JSON.stringify(job.generations.map((g) => g.endReason))).toBeGreaterThan(0);
    expect(job.generation).toBeGreaterThan(Math.max(...expired.map((g) => Number(g.generation))));
    expect((await readFile(join(out, 'final', 'config.json'), 'utf8')).length).toBeGreaterThan(0);
  }, 240_000);
});
