/**
 * CC-Tuning through the real coordinator with real processes (dist/, built by pretest), on the
 * quickstart-size model (the tiny preset: 8 layers, hidden 64) and word problems in the ten
 * languages of the quickstart:
 *
 * - a worker SIGKILLed mid-job: the job (3 workers, min 2, AdamW) re-forms on 2 and ends within
 *   1e-5 (relative L2) of a clean one-rank run, model and Decision Maker (the Gumbel choices are
 *   a function of seed, step and sample, not of the world);
 * - an evaluation before (an EvalJob on the base model) and after (the TrainJob's `eval` with
 *   `ccTransform: true`) in every language the data has; the job record holds both tables and the
 *   Decision Maker's choices per language.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { initBackend } from '../../worker/backend.js';
import { ccTuningJsonl, makeWordProblems, WORD_PROBLEM_LANGUAGES } from '../../worker/data/word-problems.js';
import { train } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { processScope, until, type Cluster } from '../helpers/processes.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';

const STEPS = 8;
let dir: string;
const procs = processScope(() => dir);

const EVAL_SETS = WORD_PROBLEM_LANGUAGES.map((l) => `{ path: ${l}.tsv, format: mgsm-tsv, language: ${l} }`);
const evalBlock = (ccTransform: boolean): string =>
  `{ sets: [${EVAL_SETS.join(', ')}], maxNewTokens: 8, batchSize: 4, ccTransform: ${ccTransform} }`;

function trainSpec(name: string, out: string, workers: number, min: number, withEval: boolean): string {
  return `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${name} }
spec:
  model: { path: model }
  method: { name: cctuning, gumbelTau: 1.0, injectAfterLayer: 0 }
  data:
    train: [{ path: cc.jsonl, format: cctuning }]
    maxSeqLen: 64
  training:
    maxSteps: ${STEPS}
    globalBatchSize: 6
    microBatchSize: 2
    optimizer: { name: adamw, lr: 1.0e-3 }
  workers: { count: ${workers}, min: ${min} }
  collective: { timeoutSeconds: 8 }
  checkpoint: { everySteps: 2, keep: 2 }
  output: { dir: ${out} }
${withEval ? `  eval: ${evalBlock(true)}\n` : ''}`;
}

async function submit(c: Cluster, text: string): Promise<string> {
  const spec = parseAnyJobSpec(text, { baseDir: dir });
  for (let i = 0; ; i++) {
    try {
      return (await c.client.submitSpec(spec, 'job.yaml')).jobId;
    } catch (e) {
      if (i > 50) throw e;
      await new Promise((r) => setTimeout(r, 200)); // the coordinator is still starting
    }
  }
}

const ended = (c: Cluster, id: string) =>
  until(
    `${id} to end`,
    async () => {
      const j = await c.client.get(id);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state as string) ? j : undefined;
    },
    240_000,
  );

/** The accuracy table of an eval JSON: language -> accuracy, for the word-problem set. */
function accuracies(evalJson: string): Record<string, number> {
  const r = JSON.parse(evalJson) as { benchmarks: { languages: { language: string; accuracy: number }[] }[] };
  return Object.fromEntries(r.benchmarks.flatMap((b) => b.languages.map((l) => [l.language, l.accuracy])));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-cc-e2e-'));
  await initBackend('wasm');
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 11, write: () => {} });
  await writeFile(join(dir, 'cc.jsonl'), ccTuningJsonl(makeWordProblems(2, 2)));
  // Held-out problems (another seed), two per language, as MGSM-style TSV files.
  for (const l of WORD_PROBLEM_LANGUAGES) {
    const ps = makeWordProblems(2, 99, { languages: [l] });
    await writeFile(join(dir, `${l}.tsv`), ps.map((p) => `${p.instruction}\t${p.answer}\n`).join(''));
  }
  // The clean run: one rank, in this process, no evaluation (it changes no weight).
  const scope = natsScope();
  try {
    const server = await scope.start();
    const ar = await GradientAllReduce.create({
      key: TEST_COLLECTIVE_KEY,
      nc: await scope.connect(server),
      job: uniqueJobName('clean'),
      generation: 1,
      rank: 0,
      worldSize: 1,
    });
    await train({
      spec: parseJobSpec(trainSpec('clean', 'clean', 1, 1, false), { baseDir: dir }),
      rank: 0,
      worldSize: 1,
      allReduce: (s, d) => ar.allReduce(s, d),
      beginAllReduce: (s, n, o) => ar.begin(s, n, undefined, o),
    });
    await ar.close();
  } finally {
    await scope.cleanup();
  }
}, 180_000);

afterEach(() => procs.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('CC-Tuning on a cluster (real processes)', () => {
  it('a SIGKILLed worker: ends as the clean run; evaluation before and after in every language', async () => {
    const c = await procs.cluster(3);
    // Before: the base model, through the coordinator.
    const before = await submit(
      c,
      `apiVersion: polytune/v1
kind: EvalJob
metadata: { name: before }
spec:
  model: { path: model }
  eval: ${evalBlock(false)}
  workers: { count: 3 }
  output: { dir: before }
`,
    );
    const b = await ended(c, before);
    expect(b.state, b.error).toBe('SUCCEEDED');

    const id = await submit(c, trainSpec('killed', 'killed', 3, 2, true));
    await until('step 3', async () => {
      const j = await c.client.get(id);
      return j.state === 'RUNNING' && j.step >= 3 ? j.step : undefined;
    });
    c.workers[1]!.kill('SIGKILL');
    const job = await ended(c, id);
    expect(job.state, job.error).toBe('SUCCEEDED');
    expect(Number(job.generation)).toBeGreaterThanOrEqual(2);

    const out = (run: string, file: string) => tensorMap(join(dir, run, 'final', file));
    expectSameTensors(await out('clean', 'trainable.safetensors'), await out('killed', 'trainable.safetensors'));
    const dm = async (run: string) =>
      new Map([['decision_maker.weight', (await out(run, 'cctuning.safetensors')).get('decision_maker.weight')!]]);
    expectSameTensors(await dm('clean'), await dm('killed'));

    // The Decision Maker's choices reached the job record: per language, 8 layers.
    const choices = Object.entries(job.layerChoices);
    expect(choices.length).toBeGreaterThan(1);
    for (const [, { counts }] of choices) expect(counts).toHaveLength(8);

    // Before and after, every language of the data.
    const accBefore = accuracies(b.evalJson);
    const accAfter = accuracies(job.evalJson);
    expect(Object.keys(accBefore).sort()).toEqual([...WORD_PROBLEM_LANGUAGES].sort());
    expect(Object.keys(accAfter).sort()).toEqual([...WORD_PROBLEM_LANGUAGES].sort());
    process.stdout.write(`cctuning eval before ${JSON.stringify(accBefore)}\nafter ${JSON.stringify(accAfter)}\n`);
  }, 400_000);
});
