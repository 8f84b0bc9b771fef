/**
 * LinguaLIFT's two stages as one staged TrainJob with real processes (dist/, built by pretest): a
 * nats-server, a coordinator and 2 workers as child processes, the tiny LLaMA and a tiny random
 * mT5-style encoder. Stage align trains the alignment layer on code-switched GSM8K questions
 * (../shared/data, test/fixtures/codeswitch's dictionary); stage task carries it over frozen and
 * trains layer 1's MLP on the word problems.
 *
 * One job goes through both faults, to share the set-up: every process is SIGKILLed between the
 * stages (stage align's final/ written), a new cluster takes the job with `submit --resume` (stage
 * align does not run again), then its coordinator is SIGKILLed inside stage task and restarted. It
 * must end within 1e-5 of an uninterrupted run (the two stages trained by hand, one rank): the
 * alignment layer of both stages and the LLM's trained tensors.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { ledgerGaps, type Ledger } from '../../coordinator/ledger.js';
import { initBackend } from '../../worker/backend.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { runInitEncoder } from '../../worker/commands/init-encoder.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { train } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { processScope, ROOT, until, type Cluster } from '../helpers/processes.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';

const GSM8K = join(ROOT, '..', 'shared', 'data', 'gsm8k-en', 'train.jsonl');
const DICT = join(ROOT, 'test', 'fixtures', 'codeswitch', 'en-de-es-sw.tsv');
/** Steps of stage align and stage task. */
const S1 = 3;
const S2 = 16;

let dir: string;
const procs = processScope(() => dir);

const method = (stage: 'align' | 'task'): string =>
  `{ name: lingualift, stage: ${stage}, encoder: { path: ${join(dir, 'encoder')} }, ` +
  'alignment: { depth: 2, hidden: 48 }' +
  (stage === 'task' ? ', layers: [1], modules: [mlp] }' : ' }');
const data = (stage: 'align' | 'task'): string =>
  stage === 'align'
    ? `{ train: [{ path: ${join(dir, 'questions.jsonl')}, format: codeswitch, field: question, ` +
      `dictionary: ${DICT}, ratio: 0.5, language: en }], maxSeqLen: 96 }`
    : `{ train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca }], maxSeqLen: 64 }`;
const training = (steps: number): string =>
  `{ maxSteps: ${steps}, globalBatchSize: 4, microBatchSize: 2, optimizer: { name: adamw, lr: 1.0e-2 }, ` +
  `schedule: { name: cosine, warmupRatio: 0.1 } }`;

function stagedText(name: string, out: string): string {
  return `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${name} }
spec:
  model: { path: ${join(dir, 'model')} }
  stages:
    - { name: align, method: ${method('align')}, data: ${data('align')}, training: ${training(S1)} }
    - { name: task, method: ${method('task')}, data: ${data('task')}, training: ${training(S2)} }
  workers: { count: 2, min: 2 }
  collective: { timeoutSeconds: 8 }
  checkpoint: { everySteps: 3, keep: 2 }
  output: { dir: ${out} }
`;
}

/** The uninterrupted run: the two stages as single-stage jobs in this process, one rank, one after the other. */
async function trainByHand(out: string): Promise<void> {
  const single = (stage: 'align' | 'task', model: string, steps: number): JobSpec =>
    parseJobSpec(`apiVersion: polytune/v1
kind: TrainJob
metadata: { name: lingualift-by-hand-${stage} }
spec:
  model: { path: ${model} }
  method: ${method(stage)}
  data: ${data(stage)}
  training: ${training(steps)}
  workers: { count: 1 }
  output: { dir: ${join(out, stage)} }
`);
  const scope = natsScope();
  try {
    const nc = await scope.connect(await scope.start());
    for (const spec of [single('align', join(dir, 'model'), S1), single('task', join(out, 'align', 'final'), S2)]) {
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job: uniqueJobName('by-hand'),
        generation: 1,
        rank: 0,
        worldSize: 1,
      });
      await train({
        spec,
        rank: 0,
        worldSize: 1,
        allReduce: (s, d) => ar.allReduce(s, d),
        beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
      });
      await ar.close();
    }
  } finally {
    await scope.cleanup();
  }
}

async function submit(c: Cluster, text: string, resume: boolean): Promise<string> {
  const spec = parseAnyJobSpec(text);
  return until(
    'the coordinator to take the job',
    async () => (await c.client.submitSpec(spec, 'job.yaml', { resume })).jobId,
    20_000,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-lingualift-e2e-'));
  await initBackend('wasm');
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 13, write: () => {} });
  await runInitEncoder({ preset: 'tiny', out: join(dir, 'encoder'), seed: 2 });
  const questions = (await readFile(GSM8K, 'utf8')).split('\n').slice(0, 12).join('\n') + '\n';
  await writeFile(join(dir, 'questions.jsonl'), questions);
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(makeWordProblems(2, 4)));
  await trainByHand(join(dir, 'clean'));
}, 180_000);

afterEach(() => procs.cleanup());

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('lingualift, two stages with real processes', () => {
  it('killed between the stages, resumed; the coordinator SIGKILLed in stage task: as uninterrupted', async () => {
    const out = join(dir, 'faulty');
    const text = stagedText('lingualift-faults', out);
    const alignFinal = join(out, 'align', 'final', 'lingualift.safetensors');

    // Every process killed once stage align's final/ is written.
    const a = await procs.cluster(2);
    await submit(a, text, false);
    const written = await until(
      'stage align final/',
      async () => (await stat(alignFinal).catch(() => undefined))?.ino,
      240_000,
    );
    for (const p of [...a.workers, a.coordinator]) p.kill('SIGKILL');
    a.nats.kill('SIGKILL');
    await a.nats.exited;
    const before = await readFile(alignFinal);

    // A new cluster resumes the job from output.dir; its coordinator is killed inside stage task.
    const b = await procs.cluster(2);
    const id = await submit(b, text, true);
    await until(
      'stage task, a step done',
      async () => {
        const j = await b.client.get(id);
        return j.state === 'RUNNING' && j.stageIndex === 1 && Number(j.step) > S1 + 1 ? j : undefined;
      },
      240_000,
    );
    b.coordinator.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    b.coordinator = b.startCoordinator();
    const job = await until(
      'the job to end',
      async () => {
        const j = await b.client.get(id);
        return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state as string) ? j : undefined;
      },
      240_000,
    );
    expect(job.state, job.error).toBe('SUCCEEDED');
    expect(Number(job.totalSteps)).toBe(S1 + S2);
    expect(Number(job.generation)).toBeGreaterThanOrEqual(2);
    const ledger = JSON.parse(job.ledgerJson) as Ledger;
    // Stage align had finished: the resumed job committed only stage task's steps, each once.
    expect(ledger.committed[0]!.from).toBeGreaterThanOrEqual(S1);
    const gaps = ledgerGaps(ledger, S1 + S2);
    expect(gaps.repeated, job.ledgerJson).toEqual([]);
    expect(gaps.missing.filter((s) => s >= ledger.committed[0]!.from)).toEqual([]);
    expect((await stat(alignFinal)).ino).toBe(written);
    expect((await readFile(alignFinal)).equals(before)).toBe(true);

    const clean = join(dir, 'clean');
    const alignClean = await tensorMap(join(clean, 'align', 'final', 'lingualift.safetensors'));
    expectSameTensors(alignClean, await tensorMap(alignFinal));
    // Stage task carried the layer frozen, and trained the LLM's selected tensors as the clean run did.
    expectSameTensors(
      await tensorMap(alignFinal),
      await tensorMap(join(out, 'final', 'lingualift.safetensors')),
      1e-12,
    );
    expectSameTensors(
      await tensorMap(join(clean, 'task', 'final', 'trainable.safetensors')),
      await tensorMap(join(out, 'final', 'trainable.safetensors')),
    );
  }, 480_000);
});
