/**
 * Jobs of several stages with real processes (dist/, built by pretest): a nats-server, a
 * coordinator and 2 workers as child processes. A two-stage job must change only each stage's
 * tensors, equal the same stages trained by hand as single-stage jobs, survive a coordinator
 * SIGKILLed inside stage 2 and a `submit --resume` after a kill between stages as an
 * uninterrupted run would (within 1e-5), never run a finished stage again, and commit every step
 * of every stage exactly once in the ledger.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { ledgerGaps, type Ledger } from '../../coordinator/ledger.js';
import type { Job__Output } from '../../proto/index.js';
import { initBackend } from '../../worker/backend.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { makeWordProblems, questionTranslationTexts, wordProblemsJsonl } from '../../worker/data/word-problems.js';
import { train } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { COORDINATOR_CLI, processScope, until, type Cluster } from '../helpers/processes.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';

let dir: string;
const procs = processScope(() => dir);

/**
 * Stage 1 trains layers 0 and 2's FFN up/down (SLAM) on question translation; stage 2 layer 4's
 * q/v (freeze) on the answers.
 */
const STAGE1 = { name: 'translate', method: '{ name: slam, layers: [0, 2] }' };
const STAGE2 = { name: 'answer', method: '{ name: freeze, layers: [4], modules: [q_proj, v_proj] }' };
const STAGE1_TENSORS = [
  'model.layers.0.mlp.up_proj.weight',
  'model.layers.0.mlp.down_proj.weight',
  'model.layers.2.mlp.up_proj.weight',
  'model.layers.2.mlp.down_proj.weight',
];
const STAGE2_TENSORS = ['model.layers.4.self_attn.q_proj.weight', 'model.layers.4.self_attn.v_proj.weight'];
const SGD = '{ name: sgd, lr: 0.5 }';
const ADAMW = '{ name: adamw, lr: 5.0e-3 }';
/** The fault-tolerance runs: steps of each stage. */
const S1 = 6;
const S2 = 20;

const parallelSet = (l: string): string =>
  `{ path: ${join(dir, 'par', `${l}.txt`)}, target: ${join(dir, 'par', `${l}.en.txt`)}, ` +
  `format: parallel, language: ${l} }`;
const dataBlock = (stage: 1 | 2): string =>
  stage === 1
    ? `{ train: [${['sw', 'de', 'zh'].map(parallelSet).join(', ')}], maxSeqLen: 64 }`
    : `{ train: [{ path: ${join(dir, 'data.jsonl')}, format: alpaca }], maxSeqLen: 64 }`;
/** SGD runs one step a stage at a constant rate (a warmup would make it 0); AdamW runs warm up and decay. */
const trainingBlock = (steps: number, optimizer: string): string =>
  `{ maxSteps: ${steps}, globalBatchSize: 6, microBatchSize: 2, optimizer: ${optimizer}, ` +
  `schedule: ${optimizer === SGD ? '{ name: constant }' : '{ name: cosine, warmupRatio: 0.1 }'} }`;

interface Run {
  name: string;
  out: string;
  steps: [number, number];
  optimizer: string;
  /** workers.count; min is 2. @default 2 */
  workers?: number;
}

function twoStageText(r: Run): string {
  return `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${r.name} }
spec:
  model: { path: ${join(dir, 'model')} }
  stages:
    - name: ${STAGE1.name}
      method: ${STAGE1.method}
      data: ${dataBlock(1)}
      training: ${trainingBlock(r.steps[0], r.optimizer)}
    - name: ${STAGE2.name}
      method: ${STAGE2.method}
      data: ${dataBlock(2)}
      training: ${trainingBlock(r.steps[1], r.optimizer)}
  workers: { count: ${r.workers ?? 2}, min: 2 }
  collective: { timeoutSeconds: 8 }
  checkpoint: { everySteps: 3, keep: 2 }
  output: { dir: ${r.out} }
`;
}

/** The same two stages written by hand as single-stage jobs, the second on the first's final model. */
function byHandSpecs(r: Run): [JobSpec, JobSpec] {
  const single = (stage: 1 | 2, model: string, out: string): JobSpec =>
    parseJobSpec(`apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${r.name}-by-hand-${stage} }
spec:
  model: { path: ${model} }
  method: ${stage === 1 ? STAGE1.method : STAGE2.method}
  data: ${dataBlock(stage)}
  training: ${trainingBlock(r.steps[stage - 1]!, r.optimizer)}
  workers: { count: 1 }
  output: { dir: ${out} }
`);
  return [single(1, join(dir, 'model'), join(r.out, '1')), single(2, join(r.out, '1', 'final'), join(r.out, '2'))];
}

/** Trains the by-hand specs in this process, one rank, one after the other. */
async function trainByHand(r: Run): Promise<void> {
  const scope = natsScope();
  try {
    const server = await scope.start();
    const nc = await scope.connect(server);
    for (const spec of byHandSpecs(r)) {
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

async function submit(c: Cluster, text: string, resume = false): Promise<string> {
  const spec = parseAnyJobSpec(text);
  return until(
    'the coordinator to take the job',
    async () => (await c.client.submitSpec(spec, 'job.yaml', { resume })).jobId,
    20_000,
  );
}

/** Waits for Succeeded; the ledger must commit every job step from `from` to the end exactly once. */
async function finished(c: Cluster, id: string, total: number): Promise<{ job: Job__Output; ledger: Ledger }> {
  const job = await until(
    'the job to end',
    async () => {
      const j = await c.client.get(id);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state as string) ? j : undefined;
    },
    240_000,
  );
  expect(job.state, job.error).toBe('SUCCEEDED');
  expect(Number(job.totalSteps)).toBe(total);
  expect({ index: job.stageIndex, count: job.stageCount, name: job.stageName }).toEqual({
    index: 1,
    count: 2,
    name: STAGE2.name,
  });
  const ledger = JSON.parse(job.ledgerJson) as Ledger;
  const from = ledger.committed[0]!.from;
  const gaps = ledgerGaps(ledger, total);
  expect({ missing: gaps.missing.filter((s) => s >= from), repeated: gaps.repeated }, job.ledgerJson).toEqual({
    missing: [],
    repeated: [],
  });
  expect(ledger.committed.at(-1)!.to).toBe(total);
  return { job, ledger };
}

const model = (d: string): Promise<Map<string, Float32Array>> => tensorMap(join(d, 'model.safetensors'));
const trainable = (d: string): Promise<Map<string, Float32Array>> => tensorMap(join(d, 'trainable.safetensors'));

/** Names of the tensors whose bits differ between two models (the same names in both). */
function changed(a: Map<string, Float32Array>, b: Map<string, Float32Array>): string[] {
  expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
  return [...a]
    .filter(
      ([name, x]) =>
        !Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
          Buffer.from(b.get(name)!.buffer, b.get(name)!.byteOffset, b.get(name)!.byteLength),
        ),
    )
    .map(([name]) => name)
    .sort();
}

const clean: Run = { name: 'clean', out: '', steps: [S1, S2], optimizer: ADAMW };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-stages-'));
  await initBackend('wasm');
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 11, write: () => {} });
  const problems = makeWordProblems(3, 2);
  await writeFile(join(dir, 'data.jsonl'), wordProblemsJsonl(problems));
  await mkdir(join(dir, 'par'));
  for (const [l, t] of questionTranslationTexts(problems)) {
    await writeFile(join(dir, 'par', `${l}.txt`), t.source);
    await writeFile(join(dir, 'par', `${l}.en.txt`), t.target);
  }
  // The uninterrupted run the fault-tolerance cases must end at: both stages by hand, one rank.
  clean.out = join(dir, 'clean');
  await trainByHand(clean);
}, 180_000);

afterEach(() => procs.cleanup());

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('jobs of several stages (real processes)', () => {
  it(
    'two stages on 2 workers: each changes only its tensors; ' + 'one SGD step each equals single-stage jobs by hand',
    async () => {
      const run: Run = { name: 'two-sgd', out: join(dir, 'two-sgd'), steps: [1, 1], optimizer: SGD };
      const c = await procs.cluster(2);
      const id = await submit(c, twoStageText(run));
      await finished(c, id, 2);
      const [input, first, second, last] = await Promise.all([
        model(join(dir, 'model')),
        model(join(run.out, STAGE1.name, 'final')),
        model(join(run.out, STAGE2.name, 'final')),
        model(join(run.out, 'final')),
      ]);
      expect(changed(input, first)).toEqual([...STAGE1_TENSORS].sort());
      expect(changed(first, second)).toEqual([...STAGE2_TENSORS].sort());
      expect(changed(second, last)).toEqual([]);
      // output.dir/final/ is the last stage's final model: the same files.
      expect((await stat(join(run.out, 'final', 'model.safetensors'))).ino).toBe(
        (await stat(join(run.out, STAGE2.name, 'final', 'model.safetensors'))).ino,
      );
      expect([...(await trainable(join(run.out, STAGE1.name, 'final'))).keys()].sort()).toEqual(
        [...STAGE1_TENSORS].sort(),
      );

      const byHand: Run = { ...run, name: 'by-hand-sgd', out: join(dir, 'by-hand-sgd') };
      await trainByHand(byHand);
      expectSameTensors(await model(join(byHand.out, '1', 'final')), first, 1e-6);
      expectSameTensors(await model(join(byHand.out, '2', 'final')), second, 1e-6);
    },
    300_000,
  );

  it('a worker SIGKILLed inside stage 1: the other 2 finish both stages as an uninterrupted run would', async () => {
    const run: Run = { ...clean, name: 'lost-worker', out: join(dir, 'lost-worker'), workers: 3 };
    const c = await procs.cluster(3);
    const id = await submit(c, twoStageText(run));
    await until('stage 1, step 3', async () => {
      const j = await c.client.get(id);
      return j.state === 'RUNNING' && j.stageCount === 2 && j.stageIndex === 0 && Number(j.step) >= 3 ? j : undefined;
    });
    c.workers[1]!.kill('SIGKILL');
    const { job, ledger } = await finished(c, id, S1 + S2);
    expect(ledger.committed[0]!.from).toBe(0);
    expect(Number(job.generation)).toBeGreaterThanOrEqual(2);
    expect(ledger.committed.at(-1)!.worldSize).toBe(2);
    expectSameTensors(
      await trainable(join(clean.out, '1', 'final')),
      await trainable(join(run.out, STAGE1.name, 'final')),
    );
    expectSameTensors(await trainable(join(clean.out, '2', 'final')), await trainable(join(run.out, 'final')));
  }, 300_000);

  it('the coordinator SIGKILLed inside stage 2 and restarted: the job ends as an uninterrupted run would', async () => {
    const run: Run = { ...clean, name: 'lost-coordinator', out: join(dir, 'lost-coordinator') };
    const c = await procs.cluster(2);
    const id = await submit(c, twoStageText(run));
    await until('stage 2, step 1', async () => {
      const j = await c.client.get(id);
      return j.state === 'RUNNING' && j.stageIndex === 1 && Number(j.step) > S1 ? j : undefined;
    });
    c.coordinator.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    c.coordinator = c.startCoordinator();
    const { job, ledger } = await finished(c, id, S1 + S2);
    expect(ledger.committed[0]!.from).toBe(0);
    // The restarted coordinator formed a new world, which went on inside stage 2 (or, on a fast
    // machine, found it finished: the result then commits the steps no report brought).
    expect(Number(job.generation)).toBeGreaterThanOrEqual(2);
    expectSameTensors(
      await trainable(join(clean.out, '1', 'final')),
      await trainable(join(run.out, STAGE1.name, 'final')),
    );
    expectSameTensors(await trainable(join(clean.out, '2', 'final')), await trainable(join(run.out, 'final')));

    // status shows the stage: `stage 2/2 (answer)` (in the status block, issue 19).
    const status = procs.node([COORDINATOR_CLI, 'status', id, '--coordinator', c.address], { stdout: true });
    let text = '';
    status.stdout!.on('data', (b: Buffer) => (text += b.toString()));
    expect(await new Promise((r) => status.on('exit', r))).toBe(0);
    expect(text).toMatch(new RegExp(`^stage {7}2/2 \\(${STAGE2.name}\\)$`, 'm'));
    expect(text).toMatch(new RegExp(`^step {8}${S1 + S2}/${S1 + S2} \\(100%\\)$`, 'm'));
  }, 300_000);

  it(
    'killed between the stages, then `submit --resume`: ' + 'stage 1 does not run again; ends as an uninterrupted run',
    async () => {
      const run: Run = { ...clean, name: 'resumed', out: join(dir, 'resumed') };
      const stage1Final = join(run.out, STAGE1.name, 'final', 'model.safetensors');
      const a = await procs.cluster(2);
      await submit(a, twoStageText(run));
      const written = await until(
        'stage 1 final model',
        async () => (await stat(stage1Final).catch(() => undefined))?.ino,
        240_000,
      );
      for (const p of [...a.workers, a.coordinator]) p.kill('SIGKILL');
      a.nats.kill('SIGKILL');
      await a.nats.exited;
      const before = await readFile(stage1Final);

      // A new cluster; the job goes on from output.dir with the CLI's --resume, followed with --watch.
      const b = await procs.cluster(2);
      const specFile = join(dir, 'resumed.yaml');
      await writeFile(specFile, twoStageText(run));
      await until('the coordinator to listen', async () => (await b.client.list()) && true, 20_000);
      const cli = spawn(
        process.execPath,
        [COORDINATOR_CLI, 'submit', specFile, '--coordinator', b.address, '--resume', '--watch'],
        {
          cwd: dir,
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let out = '';
      cli.stdout.on('data', (d: Buffer) => (out += d.toString()));
      cli.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise((r) => cli.on('exit', r));
      expect(code, out).toBe(0);
      expect(out).toMatch(/submitted resumed-\w+: 2 stages: translate \(slam\), answer \(freeze\)/);
      expect(out).toContain(`stage 2/2 (${STAGE2.name})  step ${S1 + S2}/${S1 + S2}`);
      expect(out).not.toContain('stage 1/2');
      const id = /submitted (resumed-\w+)/.exec(out)![1]!;
      const { ledger } = await finished(b, id, S1 + S2);
      // Stage 1 was finished: the resumed job committed only stage 2's steps, and left stage 1's output alone.
      expect(ledger.committed[0]!.from).toBeGreaterThanOrEqual(S1);
      expect((await stat(stage1Final)).ino).toBe(written);
      expect((await readFile(stage1Final)).equals(before)).toBe(true);
      expectSameTensors(await trainable(join(clean.out, '2', 'final')), await trainable(join(run.out, 'final')));
    },
    300_000,
  );
});
