/**
 * LinguaLIFT's two stages on the tiny LLaMA and a tiny random mT5 encoder (`init-encoder`), over a
 * real nats-server, on 1 and on 2 workers:
 *
 * - stage align (code-switched GSM8K questions, ../shared/data) changes only the alignment layer:
 *   the LLM's exported model is bit-identical to the input, the encoder's files untouched;
 * - stage task, from stage align's final/ (its lingualift.safetensors carried over), changes only
 *   the LLM's selected tensors: the alignment layer bit-identical, other LLM tensors too;
 * - 1 and 2 workers end within 1e-5 in both stages; the encoder's cost per step is reported;
 * - an alignment layer of other sizes is refused naming its file;
 * - an EvalJob on stage task's final/ scores MGSM per language with the encoder and alignment
 *   layer (read from final/lingualift.safetensors): each output is the generation with the
 *   question's prefix before the templated prompt.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { JOB_KIND_TABLE } from '../../common/job-kinds.js';
import { runInitEncoder } from '../../worker/commands/init-encoder.js';
import { applyTemplate } from '../../worker/data/encode.js';
import { runEvalJob } from '../../worker/eval/run-eval.js';
import { loadLingualift } from '../../worker/methods/lingualift.js';
import { generate } from '../../worker/model/generate.js';
import { LlamaModel } from '../../worker/model/llama.js';
import { ModelTokenizer } from '../../worker/model/tokenizer.js';
import { train, type StepReport } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { relativeError, tensorMap } from '../helpers/tensors.js';
import { tinyTrainDir } from '../helpers/train-job.js';

const ROOT = join(import.meta.dirname, '..', '..');
const GSM8K = join(ROOT, '..', 'shared', 'data', 'gsm8k-en', 'train.jsonl');
const DICT = join(ROOT, 'test', 'fixtures', 'codeswitch', 'en-de-es-sw.tsv');
const MGSM = join(ROOT, '..', 'shared', 'data', 'mgsm');

let dir: string;
const nats = natsScope();

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-lingualift-', 3, 2, 9);
  await runInitEncoder({ preset: 'tiny', out: join(dir, 'encoder'), seed: 1 });
  // 12 GSM8K questions, as alpaca records whose `question` is code-switched.
  const lines = (await readFile(GSM8K, 'utf8')).split('\n').slice(0, 12).join('\n') + '\n';
  await writeFile(join(dir, 'gsm8k.jsonl'), lines);
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function alignSpec(out: string, workers: number): JobSpec {
  return parseJobSpec(
    `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: lingualift-align }
spec:
  model: { path: model }
  method: { name: lingualift, stage: align, encoder: { path: encoder }, alignment: { depth: 2, hidden: 48 } }
  data:
    train: [{ path: gsm8k.jsonl, format: codeswitch, field: question, dictionary: ${DICT}, ratio: 0.5, language: en }]
    maxSeqLen: 256
  training: { maxSteps: 3, globalBatchSize: 4, microBatchSize: 2, optimizer: { name: adamw, lr: 1.0e-2 } }
  workers: { count: ${workers} }
  output: { dir: ${out} }
`,
    { baseDir: dir },
  );
}

function taskSpec(model: string, out: string, workers: number): JobSpec {
  return parseJobSpec(
    `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: lingualift-task }
spec:
  model: { path: ${model} }
  method:
    name: lingualift
    stage: task
    encoder: { path: encoder }
    alignment: { depth: 2, hidden: 48 }
    layers: [1]
    modules: [mlp]
  data:
    train: [{ path: data.jsonl, format: alpaca }]
    maxSeqLen: 48
  training: { maxSteps: 2, globalBatchSize: 4, microBatchSize: 2, optimizer: { name: adamw, lr: 1.0e-2 } }
  workers: { count: ${workers} }
  output: { dir: ${out} }
`,
    { baseDir: dir },
  );
}

async function runJob(spec: JobSpec, workers: number): Promise<StepReport[]> {
  const server = await nats.start();
  const job = uniqueJobName('lingualift');
  const reports: StepReport[] = [];
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
        timeoutMs: 30_000,
      });
      try {
        await train({
          spec,
          rank,
          worldSize: workers,
          allReduce: (seq, data, o) => ar.allReduce(seq, data, undefined, o),
          beginAllReduce: (seq, length, o) => ar.begin(seq, length, undefined, o),
          onStep: (r) => rank === 0 && reports.push(r),
        });
      } finally {
        await ar.close();
      }
    }),
  );
  return reports;
}

const sha = async (file: string): Promise<string> =>
  createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
const same = (a: Float32Array, b: Float32Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

describe('lingualift, two stages', () => {
  it('align trains only the alignment layer, task only the selected LLM tensors; 1 vs 2 workers', async () => {
    const encoderBefore = await sha(join(dir, 'encoder', 'model.safetensors'));
    const modelIn = await tensorMap(join(dir, 'model', 'model.safetensors'));
    const align = { 1: join(dir, 'align-1'), 2: join(dir, 'align-2') };
    const reports = await runJob(alignSpec(align[1], 1), 1);
    await runJob(alignSpec(align[2], 2), 2);
    expect(reports).toHaveLength(3);
    expect(reports.every((r) => Number.isFinite(r.loss))).toBe(true);
    expect(reports[0]!.methodStats?.['encoderForwardMs']).toBeGreaterThan(0);
    expect(reports[0]!.methodStats?.['encoderForwardGmac']).toBeGreaterThan(0);

    // Only the alignment layer changed: the LLM bit-identical, the encoder's file untouched.
    const alignOut = await tensorMap(join(align[1], 'final', 'lingualift.safetensors'));
    expect([...alignOut.keys()].sort()).toEqual([
      'alignment.0.bias',
      'alignment.0.weight',
      'alignment.1.bias',
      'alignment.1.weight',
      'alignment.separator',
    ]);
    const modelAfterAlign = await tensorMap(join(align[1], 'final', 'model.safetensors'));
    for (const [name, t] of modelIn) expect(same(modelAfterAlign.get(name)!, t), name).toBe(true);
    // No LLM tensor trained: final/ has no trainable.safetensors (the layer is in lingualift.safetensors).
    expect(existsSync(join(align[1], 'final', 'trainable.safetensors'))).toBe(false);
    expect(await sha(join(dir, 'encoder', 'model.safetensors'))).toBe(encoderBefore);
    // 1 vs 2 workers.
    const align2 = await tensorMap(join(align[2], 'final', 'lingualift.safetensors'));
    for (const [name, t] of alignOut) expect(relativeError(align2.get(name)!, t), name).toBeLessThan(1e-5);

    // Stage task from stage align's final/: the alignment layer carried over and frozen.
    const task = { 1: join(dir, 'task-1'), 2: join(dir, 'task-2') };
    await runJob(taskSpec(join(align[1], 'final'), task[1], 1), 1);
    await runJob(taskSpec(join(align[1], 'final'), task[2], 2), 2);
    // The alignment layer is carried frozen on 1 and on 2 workers alike.
    for (const out of [task[1], task[2]]) {
      const alignAfterTask = await tensorMap(join(out, 'final', 'lingualift.safetensors'));
      for (const [name, t] of alignOut) expect(same(alignAfterTask.get(name)!, t), name).toBe(true);
    }
    const modelAfterTask = await tensorMap(join(task[1], 'final', 'model.safetensors'));
    const changed = [...modelIn].filter(([name, t]) => !same(modelAfterTask.get(name)!, t)).map(([n]) => n);
    expect(changed.sort()).toEqual([
      'model.layers.1.mlp.down_proj.weight',
      'model.layers.1.mlp.gate_proj.weight',
      'model.layers.1.mlp.up_proj.weight',
    ]);
    const task2 = await tensorMap(join(task[2], 'final', 'model.safetensors'));
    for (const name of changed)
      expect(relativeError(task2.get(name)!, modelAfterTask.get(name)!), name).toBeLessThan(1e-5);
    expect(await sha(join(dir, 'encoder', 'model.safetensors'))).toBe(encoderBefore);

    // An EvalJob on the two-stage model: the encoder comes from lingualift.safetensors' metadata.
    const final = join(task[1], 'final');
    const evalSpec = JOB_KIND_TABLE.EvalJob.parse(
      {
        apiVersion: 'polytune/v1',
        kind: 'EvalJob',
        metadata: { name: 'lingualift-eval' },
        spec: {
          model: { path: final },
          eval: { sets: [{ mgsm: MGSM, languages: ['de', 'sw'], limit: 2 }], maxNewTokens: 4, batchSize: 4 },
          workers: { count: 1 },
          output: { dir: join(dir, 'eval') },
        },
      },
      { baseDir: dir },
    );
    const report = await runEvalJob({ spec: evalSpec, rank: 0, worldSize: 1, reduce: (d) => Promise.resolve(d) });
    expect(report.benchmarks[0]!.languages.map((l) => [l.language, l.total])).toEqual([
      ['de', 2],
      ['sw', 2],
    ]);
    const predictions = (await readFile(join(dir, 'eval', 'eval', 'final.predictions.rank-0.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { output: string; language: string; index: number });
    const model = await LlamaModel.load(final);
    const tokenizer = await ModelTokenizer.load(final, model.config);
    const loaded = (await loadLingualift(final, model.config, tokenizer))!;
    try {
      const problems = (await readFile(join(MGSM, 'mgsm_de.tsv'), 'utf8')).split('\n').slice(0, 2);
      const questions = problems.map((l) => l.split('\t')[0]!);
      const prefix = loaded.prefixer.prefix(questions);
      const outs = await generate(
        model,
        tokenizer,
        questions.map((q) => applyTemplate('slam', q)),
        { maxNewTokens: 4, prefix },
      ).finally(() => prefix.vectors.dispose());
      const de = predictions.filter((p) => p.language === 'de').sort((a, b) => a.index - b.index);
      expect(de.map((p) => p.output)).toEqual(outs.map((o) => o.text));
    } finally {
      loaded.dispose();
      model.dispose();
    }
  }, 240_000);

  it('refuses an alignment layer of other sizes, naming its file', async () => {
    const from = join(dir, 'align-1', 'final', 'lingualift.safetensors');
    const spec = alignSpec(join(dir, 'align-bad'), 1);
    const bad: JobSpec = {
      ...spec,
      spec: {
        ...spec.spec,
        method: { ...spec.spec.method, alignment: { depth: 2, hidden: 40, from } } as JobSpec['spec']['method'],
      },
    };
    await expect(runJob(bad, 1)).rejects.toThrow(`${from} (tensor alignment.0.weight): shape [48, 32] does not fit`);
  }, 60_000);
});
