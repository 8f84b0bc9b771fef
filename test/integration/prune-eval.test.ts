/**
 * A PruneJob with `spec.eval` through the real coordinator (in-process gRPC, real nats-server) and
 * two real workers (runWorker in this process, all-reducing over NATS), on the tiny model: a few
 * MGSM problems per language (../shared/data/mgsm) and a small `choice` set, scored before pruning
 * (eval/before.*) and after (eval/final.*). Each table equals a direct `evaluate` here (one rank) of
 * the input model and of the written final/ respectively, prediction by prediction, and pruning
 * changed the outputs and the choice scores.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evalSchema, type EvalSpec } from '../../common/eval-spec.js';
import type { NatsServer } from '../../common/nats-server-process.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { scoreChoices } from '../../worker/eval/choice.js';
import { evaluate, type Prediction } from '../../worker/eval/evaluate.js';
import { readProblems, type Problem } from '../../worker/eval/problems.js';
import type { EvalReport } from '../../worker/eval/report.js';
import { LlamaModel } from '../../worker/model/llama.js';
import { ModelTokenizer } from '../../worker/model/tokenizer.js';
import { startInProcessCluster, startNats, type InProcessCluster } from './coordinator-fixtures.js';

const DATA = join(import.meta.dirname, '..', '..', '..', 'shared', 'data');
const MGSM = join(DATA, 'mgsm');
const PAIRS = join(DATA, 'gsm8k-question-translation', 'sw-en');
let dir: string;
let nats: NatsServer;
let cluster: InProcessCluster;

const CHOICES = [' yes', ' maybe', ' no'];
const PROMPTS: Record<string, string[]> = {
  sw: ['Jibu: ndiyo au hapana?', 'Paka ni mnyama. Jibu:', 'Maji ni baridi?', 'Jua ni kubwa. Jibu:'],
  de: ['Ist das wahr? Antwort:', 'Der Hund bellt. Antwort:', 'Wasser ist nass?', 'Die Sonne ist heiss?'],
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-prune-eval-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 5, write: () => {} });
  for (const [lang, prompts] of Object.entries(PROMPTS))
    await writeFile(
      join(dir, `xnli-${lang}.jsonl`),
      prompts.map((prompt, i) => JSON.stringify({ prompt, choices: CHOICES, label: i % 3 })).join('\n') + '\n',
    );
  nats = await startNats();
  cluster = await startInProcessCluster(nats, { workers: 2, idPrefix: 'prune-eval' });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true });
}, 30_000);

/** The eval block: JSON in the spec (YAML reads it), parsed here for the direct evaluation. */
function evalBlock(): { yaml: string; spec: EvalSpec } {
  const raw = {
    sets: [
      { mgsm: MGSM, languages: ['en', 'sw', 'de'], limit: 2 },
      ...['sw', 'de'].map((l) => ({
        path: join(dir, `xnli-${l}.jsonl`),
        format: 'choice',
        language: l,
        benchmark: 'xnli',
      })),
    ],
    maxNewTokens: 5,
    // Every problem run alone: one rank and two give the same outputs bit for bit.
    batchSize: 1,
  };
  return { yaml: JSON.stringify(raw), spec: evalSchema.parse(raw) };
}

/** `evaluate` of the model in `modelDir` on one rank, its outputs under `out`. */
async function directly(
  modelDir: string,
  spec: EvalSpec,
  problems: readonly Problem[],
  out: string,
): Promise<{ report: EvalReport; choiceLogProbs: number[] }> {
  const model = await LlamaModel.load(modelDir);
  try {
    const tokenizer = await ModelTokenizer.load(modelDir, model.config);
    const report = await evaluate({
      model,
      tokenizer,
      spec,
      problems,
      rank: 0,
      worldSize: 1,
      reduce: (v) => Promise.resolve(v),
      outputDir: out,
      name: 'direct',
      step: 0,
    });
    const choice = problems.filter((p) => p.choices !== undefined);
    const choiceLogProbs = scoreChoices(model, tokenizer, choice, 1).flatMap((s) => [...s.meanLogProbs]);
    return { report, choiceLogProbs };
  } finally {
    model.dispose();
  }
}

/** Per benchmark and language: [correct, total, accuracy]. */
const table = (r: EvalReport): string[] =>
  r.benchmarks.flatMap((b) =>
    b.languages.map((l) => `${b.benchmark}/${l.language} ${l.correct}/${l.total} ${l.accuracy}`),
  );

/** Every rank's `eval/<name>.predictions.rank-R.jsonl`, in problem order. */
async function predictions(out: string, name: string, ranks: number): Promise<Prediction[]> {
  const all: Prediction[] = [];
  for (let r = 0; r < ranks; r++) {
    const text = await readFile(join(out, 'eval', `${name}.predictions.rank-${r}.jsonl`), 'utf8');
    all.push(
      ...text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Prediction),
    );
  }
  const key = (p: Prediction): string => `${p.benchmark}/${p.language}/${String(p.index).padStart(6, '0')}`;
  return all.sort((a, b) => key(a).localeCompare(key(b)));
}

describe('PruneJob with spec.eval (coordinator and 2 workers)', () => {
  it('scores the input model before and the pruned model after, as a direct evaluation of each', async () => {
    const out = join(dir, 'out');
    const ev = evalBlock();
    const job = await cluster.runToEnd(`
apiVersion: polytune/v1
kind: PruneJob
metadata: { name: prune-eval-test }
spec:
  model: { path: ${join(dir, 'model')} }
  prune:
    sparsity: 0.5
    calibration:
      sources:
        - { path: ${join(PAIRS, 'train.sw')}, target: ${join(PAIRS, 'train.en')}, format: parallel, language: sw }
      samples: 4
      shots: 2
      maxSeqLen: 128
    features: { topK: 4 }
  eval: ${ev.yaml}
  workers: { count: 2 }
  output: { dir: ${out} }
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    const read = async (name: string): Promise<EvalReport> =>
      JSON.parse(await readFile(join(out, 'eval', `${name}.json`), 'utf8')) as EvalReport;
    const [before, final] = [await read('before'), await read('final')];
    for (const [r, name] of [
      [before, 'before'],
      [final, 'final'],
    ] as const) {
      expect(r.name).toBe(name);
      expect(r.worldSize).toBe(2);
      expect(r.benchmarks.map((b) => [b.benchmark, b.languages.map((l) => [l.language, l.total])])).toEqual([
        [
          'mgsm',
          [
            ['en', 2],
            ['sw', 2],
            ['de', 2],
          ],
        ],
        [
          'xnli',
          [
            ['sw', 4],
            ['de', 4],
          ],
        ],
      ]);
      await expect(readFile(join(out, 'eval', `${name}.md`), 'utf8')).resolves.toContain('### xnli');
    }
    // The job record holds the last table, the pruned model's.
    expect(JSON.parse(job.evalJson)).toEqual(final);

    const problems = await readProblems(ev.spec.sets);
    const input = await directly(join(dir, 'model'), ev.spec, problems, join(dir, 'direct-input'));
    const pruned = await directly(join(out, 'final'), ev.spec, problems, join(dir, 'direct-pruned'));
    expect(table(before)).toEqual(table(input.report));
    expect(table(final)).toEqual(table(pruned.report));
    // Problem by problem: the two ranks' predictions are the direct run's, output text included.
    const [beforeOut, finalOut] = [await predictions(out, 'before', 2), await predictions(out, 'final', 2)];
    expect(beforeOut).toEqual(await predictions(join(dir, 'direct-input'), 'direct', 1));
    expect(finalOut).toEqual(await predictions(join(dir, 'direct-pruned'), 'direct', 1));
    expect(beforeOut).toHaveLength(14);
    expect(finalOut).not.toEqual(beforeOut);
    // Pruning half of every projection's weights moved every candidate's score.
    expect(input.choiceLogProbs).toHaveLength(24);
    input.choiceLogProbs.forEach((v, i) => expect(v).not.toBe(pruned.choiceLogProbs[i]));
    const meanNll = (xs: number[]): number => -xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(Math.abs(meanNll(input.choiceLogProbs) - meanNll(pruned.choiceLogProbs))).toBeGreaterThan(1e-3);
  }, 120_000);
});
