/**
 * CC-Tuning end to end in the trainer over a real nats-server: the same AdamW job on 1 and on 2
 * workers ends within 1e-5 (losses; model and Decision Maker in relative L2 error, as every
 * trainer test: docs/methods.md "1 vs 2 workers" says why not per element; the Gumbel choices do
 * not depend on the world size), and the final outputs hold `decision_maker.weight`, a
 * `transform_matrix` that solves the least squares of the written A and B (normal equations), and
 * `transform-inputs.safetensors`.
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAnyJobSpec, type EvalJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { createEvalHook, runEvalJob } from '../../worker/eval/run-eval.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { ccTuningJsonl, makeWordProblems } from '../../worker/data/word-problems.js';
import { train } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';
import { tinyTrainDir } from '../helpers/train-job.js';

let dir: string;
const nats = natsScope();
const STEPS = 3;
const EVAL_SET = '{ path: sw.tsv, format: mgsm-tsv, language: sw }';

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-cctuning-', 5, 2, 11);
  await writeFile(join(dir, 'cc.jsonl'), ccTuningJsonl(makeWordProblems(2, 11)));
  const sw = makeWordProblems(4, 12, { languages: ['sw'] });
  await writeFile(join(dir, 'sw.tsv'), sw.map((p) => `${p.instruction}\t${p.answer}\n`).join(''));
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function ccSpec(out: string, workers: number): JobSpec {
  return parseJobSpec(
    `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: cc }
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
  workers: { count: ${workers} }
  output: { dir: ${out} }
  eval: { sets: [${EVAL_SET}], maxNewTokens: 6, batchSize: 2, ccTransform: true }
`,
    { baseDir: dir },
  );
}

async function run(out: string, workers: number): Promise<{ losses: number[]; choices: unknown[] }> {
  const server = await nats.start();
  const job = uniqueJobName('cc');
  const losses: number[] = [];
  const choices: unknown[][] = Array.from({ length: workers }, () => []);
  await Promise.all(
    Array.from({ length: workers }, async (_, rank) => {
      const nc = await nats.connect(server);
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: 1,
        rank,
        worldSize: workers,
        timeoutMs: 20_000,
      });
      try {
        const spec = ccSpec(out, workers);
        await train({
          spec,
          rank,
          worldSize: workers,
          evaluate: createEvalHook({ spec: spec.spec.eval!, outputDir: out, rank, worldSize: workers }),
          allReduce: (seq, data, o) => ar.allReduce(seq, data, undefined, o),
          beginAllReduce: (seq, length, o) => ar.begin(seq, length, undefined, o),
          onStep: (r) => {
            if (rank === 0) losses.push(r.loss);
            choices[rank]!.push(r.choicesByLanguage);
            // The English pass's cost is reported with every step: one pass a micro-batch of this rank's.
            expect(r.methodStats?.englishPasses).toBeGreaterThan(0);
            expect(r.methodStats?.englishPassMs).toBeGreaterThan(0);
          },
        });
      } finally {
        await ar.close();
      }
    }),
  );
  // Every rank reports the same reduced choices.
  for (const c of choices) expect(c).toEqual(choices[0]);
  return { losses, choices: choices[0]! };
}

describe('CC-Tuning in the trainer', () => {
  it('ends the same on 1 and 2 workers and writes the Transform Matrix with its inputs', async () => {
    const { losses: one, choices: oneChoices } = await run(join(dir, 'w1'), 1);
    const { losses: two, choices: twoChoices } = await run(join(dir, 'w2'), 2);
    expect(one).toHaveLength(STEPS);
    // The Decision Maker's choices per step, language and layer: every sample with supervised
    // tokens counted once, the same on 1 and 2 workers (the Gumbel noise is a function of seed,
    // step and sample).
    expect(twoChoices).toEqual(oneChoices);
    const counted = (oneChoices as Record<string, number[]>[]).map((c) => {
      expect(Object.values(c).every((counts) => counts.length === 8)).toBe(true);
      return Object.values(c)
        .flat()
        .reduce((s, n) => s + n, 0);
    });
    expect(counted.every((n) => n >= 4 && n <= 6)).toBe(true);
    for (let i = 0; i < STEPS; i++) expect(Math.abs(one[i]! - two[i]!)).toBeLessThan(1e-5 * Math.abs(one[i]!));

    const cc1 = await tensorMap(join(dir, 'w1', 'final', 'cctuning.safetensors'));
    const cc2 = await tensorMap(join(dir, 'w2', 'final', 'cctuning.safetensors'));
    expect([...cc1.keys()].sort()).toEqual(['decision_maker.weight', 'transform_matrix']);
    const dm = (m: Map<string, Float32Array>) => new Map([['decision_maker.weight', m.get('decision_maker.weight')!]]);
    expectSameTensors(dm(cc1), dm(cc2));
    expectSameTensors(
      await tensorMap(join(dir, 'w1', 'final', 'trainable.safetensors')),
      await tensorMap(join(dir, 'w2', 'final', 'trainable.safetensors')),
    );

    // eval.ccTransform runs in the TrainJob on 1 and 2 ranks (X from the live model) and in an EvalJob
    // on final/ (the written X), with the same outputs. (The 3-step tiny model's greedy text hardly
    // depends on the injection; test/unit/model/cctuning-generate.test.ts shows the injection itself.)
    const predictions = async (out: string): Promise<string[]> => {
      const files = (await readdir(join(out, 'eval'))).filter((f) => f.startsWith('final.predictions.'));
      const lines = (await Promise.all(files.map((f) => readFile(join(out, 'eval', f), 'utf8')))).join('');
      return lines
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { index: number; output: string })
        .sort((x, y) => x.index - y.index)
        .map((p) => p.output);
    };
    const evalJob = async (): Promise<string[]> => {
      const out = join(dir, 'eval');
      const spec = parseAnyJobSpec(
        `
apiVersion: polytune/v1
kind: EvalJob
metadata: { name: e }
spec:
  model: { path: ${join(dir, 'w1', 'final')} }
  eval: { sets: [${EVAL_SET}], maxNewTokens: 6, batchSize: 2, ccTransform: true }
  workers: { count: 1 }
  output: { dir: ${out} }
`,
        { baseDir: dir },
      ) as EvalJobSpec;
      await runEvalJob({ spec, rank: 0, worldSize: 1, reduce: async (d) => d });
      return predictions(out);
    };
    const trained = await predictions(join(dir, 'w1'));
    expect(trained).toHaveLength(4);
    expect(await predictions(join(dir, 'w2'))).toHaveLength(4);
    expect(await evalJob()).toEqual(trained);

    // X solves min ||A X - B||: A^T (A X - B) = 0 up to float32 rounding of X.
    const inputs = await tensorMap(join(dir, 'w1', 'final', 'transform-inputs.safetensors'));
    const a = inputs.get('A')!;
    const b = inputs.get('B')!;
    const x = cc1.get('transform_matrix')!;
    const H = 64;
    const n = a.length / H;
    expect(n).toBe(20 * 8); // 20 records x 8 layers
    const r = new Float64Array(n * H);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < H; j++) {
        let s = -b[i * H + j]!;
        for (let k = 0; k < H; k++) s += a[i * H + k]! * x[k * H + j]!;
        r[i * H + j] = s;
      }
    let g = 0;
    let atb = 0;
    for (let p = 0; p < H; p++)
      for (let j = 0; j < H; j++) {
        let s = 0;
        let t = 0;
        for (let i = 0; i < n; i++) {
          s += a[i * H + p]! * r[i * H + j]!;
          t += a[i * H + p]! * b[i * H + j]!;
        }
        g += s * s;
        atb += t * t;
      }
    expect(Math.sqrt(g / atb)).toBeLessThan(1e-3);
  }, 240_000);
});
