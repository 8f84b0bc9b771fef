/**
 * Fault tolerance with real processes (dist/, built by pretest): a nats-server, a coordinator and
 * workers as child processes; parts are killed with SIGKILL mid-job. Each job must finish with the
 * trainable tensors of a clean, uninterrupted run (within 1e-5 relative), and its ledger must show
 * every step committed exactly once.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../common/nats-server-process.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { ledgerGaps, type Ledger } from '../../coordinator/ledger.js';
import { initBackend } from '../../worker/backend.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { train } from '../../worker/train/trainer.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { processScope, until, type Cluster } from '../helpers/processes.js';

const STEPS = 24;
let dir: string;
let clean: Map<string, Float32Array>;
const procs = processScope(() => dir);

function specText(name: string, out: string, workers: number, min: number): string {
  return `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${name} }
spec:
  model: { path: ${join(dir, 'model')} }
  method: { name: slam, layers: [0, 2, 4] }
  data:
    train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca }]
    maxSeqLen: 64
  training:
    maxSteps: ${STEPS}
    globalBatchSize: 6
    microBatchSize: 2
    optimizer: { name: adamw, lr: 5.0e-3 }
    schedule: { name: cosine, warmupRatio: 0.1 }
  workers: { count: ${workers}, min: ${min} }
  collective: { timeoutSeconds: 8 }
  checkpoint: { everySteps: 4, keep: 2 }
  output: { dir: ${out} }
`;
}

const trainable = (outDir: string): Promise<Map<string, Float32Array>> =>
  tensorMap(join(outDir, 'final', 'trainable.safetensors'));
const expectClean = (actual: Map<string, Float32Array>): void => expectSameTensors(clean, actual);

async function submit(c: Cluster, text: string, resume = false): Promise<string> {
  const spec = parseJobSpec(text);
  for (let i = 0; ; i++) {
    try {
      return (await c.client.submitSpec(spec, 'job.yaml', { resume })).jobId;
    } catch (e) {
      if (i > 50) throw e;
      await new Promise((r) => setTimeout(r, 200)); // the coordinator is still starting
    }
  }
}

const atStep = (c: Cluster, id: string, step: number): Promise<number> =>
  until(`step ${step}`, async () => {
    const j = await c.client.get(id);
    return j.state === 'RUNNING' && j.step >= step ? j.step : undefined;
  });

/** Waits for Succeeded; the ledger must commit every step from where the job began to the end once. */
async function finished(c: Cluster, id: string): Promise<{ generation: number; ledger: Ledger }> {
  const job = await until(
    'the job to end',
    async () => {
      const j = await c.client.get(id);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state as string) ? j : undefined;
    },
    240_000,
  );
  expect(job.state, job.error).toBe('SUCCEEDED');
  // status --json's lossByLanguage: the word problems' languages, each a finite loss.
  expect(Object.keys(job.lossByLanguage).length).toBeGreaterThan(1);
  expect(Object.values(job.lossByLanguage).every((v) => Number.isFinite(v) && v > 0)).toBe(true);
  const ledger = JSON.parse(job.ledgerJson) as Ledger;
  const from = ledger.committed[0]!.from;
  const gaps = ledgerGaps(ledger, STEPS);
  expect({ missing: gaps.missing.filter((s) => s >= from), repeated: gaps.repeated }).toEqual({
    missing: [],
    repeated: [],
  });
  expect(ledger.committed.at(-1)!.to).toBe(STEPS);
  // The timings (issue 19): the job's wall time spans its generations and the re-forms between them.
  const gens = job.generations;
  expect(gens.map((g) => Number(g.generation))).toEqual(Array.from({ length: gens.length }, (_, i) => i + 1));
  expect(job.wallSeconds).toBeCloseTo((Number(job.finishedAt) - Number(job.startedAt)) / 1000, 1);
  expect(job.wallSeconds).toBeCloseTo(gens.reduce((s, g) => s + g.wallSeconds, 0) + job.reformSeconds, 1);
  if (gens.length > 1) expect(job.wallSeconds).toBeGreaterThan(gens.at(-1)!.wallSeconds + gens[0]!.wallSeconds);
  return { generation: Number(job.generation), ledger };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-ft-'));
  await initBackend('wasm');
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 11, write: () => {} });
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(3, 2)));
  // The clean run: one rank, in this process.
  const scope = natsScope();
  try {
    const server = await scope.start();
    const nc = await scope.connect(server);
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc,
      job: uniqueJobName('clean'),
      generation: 1,
      rank: 0,
      worldSize: 1,
    });
    await train({
      spec: parseJobSpec(specText('clean', join(dir, 'clean'), 1, 1)),
      rank: 0,
      worldSize: 1,
      allReduce: (s, d) => ar.allReduce(s, d),
      beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
    });
    await ar.close();
  } finally {
    await scope.cleanup();
  }
  clean = await trainable(join(dir, 'clean'));
}, 180_000);

afterEach(() => procs.cleanup());

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('fault tolerance (real processes)', () => {
  it('a worker killed with SIGKILL: the job finishes on the other 2, as a clean run would', async () => {
    const c = await procs.cluster(3);
    const out = join(dir, 'lost-worker');
    const id = await submit(c, specText('lost-worker', out, 3, 2));
    await atStep(c, id, 6);
    c.workers[1]!.kill('SIGKILL');
    const { generation, ledger } = await finished(c, id);
    expect(ledger.committed[0]!.from).toBe(0);
    expect(generation).toBeGreaterThanOrEqual(2);
    expect(ledger.committed.at(-1)!.worldSize).toBe(2);
    expectClean(await trainable(out));
  }, 300_000);

  it('the coordinator killed with SIGKILL and restarted: the job finishes, as a clean run would', async () => {
    const c = await procs.cluster(2);
    const out = join(dir, 'lost-coordinator');
    const id = await submit(c, specText('lost-coordinator', out, 2, 2));
    await atStep(c, id, 6);
    c.coordinator.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    c.coordinator = c.startCoordinator();
    await finished(c, id);
    expectClean(await trainable(out));
  }, 300_000);

  it('nats-server restarted mid-job: the job finishes, as a clean run would', async () => {
    const c = await procs.cluster(2);
    const out = join(dir, 'lost-nats');
    const id = await submit(c, specText('lost-nats', out, 2, 2));
    await atStep(c, id, 6);
    const { port, storeDir } = c.nats;
    c.nats.kill('SIGKILL');
    await c.nats.exited;
    const again = await startNatsServer({ jetstream: true, port, storeDir: storeDir! });
    try {
      await finished(c, id);
      expectClean(await trainable(out));
    } finally {
      await again.stop();
    }
  }, 300_000);

  it('resumed from a checkpoint on 3 workers, of a job begun on 2', async () => {
    const c = await procs.cluster(3);
    const out = join(dir, 'resumed');
    const first = await submit(c, specText('resumed', out, 2, 2));
    await atStep(c, first, 10);
    await c.client.cancel(first);
    const second = await submit(c, specText('resumed', out, 3, 3), true);
    const { ledger } = await finished(c, second);
    expect(ledger.committed[0]!.from).toBeGreaterThanOrEqual(8);
    expect(ledger.committed[0]!.worldSize).toBe(3);
    expectClean(await trainable(out));
  }, 300_000);
});
