/**
 * The new kinds through the real coordinator (in-process gRPC, real nats-server) and two real
 * workers (runWorker, in this process, all-reducing over NATS), on the tiny model and
 * ../shared/data/mgsm (a few problems per language):
 * - an EvalJob writes the per-language table (eval/final.json|md) and per-rank predictions, and
 *   the table is in the job record;
 * - a LayerAnalysis job puts its chosen layers in the record;
 * - a TrainJob with `method.layers: auto` and `spec.eval` trains the chosen layers and evaluates.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MGSM_LANGUAGES } from '../../common/eval-spec.js';
import type { NatsServer } from '../../common/nats-server-process.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import type { EvalReport } from '../../worker/eval/report.js';
import { readSafetensors } from '../../worker/model/safetensors.js';
import { startInProcessCluster, startNats, type InProcessCluster } from './coordinator-fixtures.js';

const MGSM = join(import.meta.dirname, '..', '..', '..', 'shared', 'data', 'mgsm');
let dir: string;
let nats: NatsServer;
let cluster: InProcessCluster;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-evaljob-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 5, write: () => {} });
  nats = await startNats();
  cluster = await startInProcessCluster(nats, { workers: 2, idPrefix: 'eval' });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true });
}, 30_000);

const runToEnd = (yaml: string): ReturnType<InProcessCluster['runToEnd']> => cluster.runToEnd(yaml);

describe('EvalJob, LayerAnalysis and layers auto through the coordinator and 2 workers', () => {
  it('an EvalJob on MGSM produces the per-language table', async () => {
    const out = join(dir, 'eval-out');
    const job = await runToEnd(`
apiVersion: polytune/v1
kind: EvalJob
metadata: { name: eval-mgsm-test }
spec:
  model: { path: ${join(dir, 'model')} }
  eval:
    sets: [{ mgsm: ${MGSM}, limit: 2 }]
    maxNewTokens: 6
    batchSize: 4
  workers: { count: 2 }
  output: { dir: ${out} }
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    expect(job.totalSteps).toBe(22);
    const report = JSON.parse(await readFile(join(out, 'eval', 'final.json'), 'utf8')) as EvalReport;
    expect(report.worldSize).toBe(2);
    expect(report.benchmarks).toHaveLength(1);
    const mgsm = report.benchmarks[0]!;
    expect(mgsm.benchmark).toBe('mgsm');
    expect(mgsm.languages.map((l) => l.language)).toEqual([...MGSM_LANGUAGES]);
    for (const l of mgsm.languages) {
      expect(l.total).toBe(2);
      expect(l.accuracy).toBe(l.correct / 2);
    }
    expect(mgsm.average).toBeCloseTo(mgsm.languages.reduce((s, l) => s + l.accuracy, 0) / 11, 12);
    const md = await readFile(join(out, 'eval', 'final.md'), 'utf8');
    // The Markdown table: a row per language (issue 19: 11 languages as columns did not read), then the average.
    expect(md).toContain('### mgsm\n\n| language | accuracy % | correct |\n|---|---:|---:|\n');
    for (const l of mgsm.languages)
      expect(md).toContain(`| ${l.language} | ${(100 * l.accuracy).toFixed(1)} | ${l.correct}/2 |`);
    expect(md).toContain(`| average | ${(100 * mgsm.average).toFixed(1)} | `);
    // Each rank wrote its share of the predictions: 11 and 11 of the 22 problems.
    const preds = await Promise.all(
      [0, 1].map(async (r) =>
        (await readFile(join(out, 'eval', `final.predictions.rank-${r}.jsonl`), 'utf8'))
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { language: string; index: number; answer: string }),
      ),
    );
    expect(preds.map((p) => p.length)).toEqual([11, 11]);
    expect(new Set(preds.flat().map((p) => `${p.language}/${p.index}`)).size).toBe(22);
    expect(preds.flat().find((p) => p.language === 'en' && p.index === 0)?.answer).toBe('18');
    // The table is in the job record (status --json shows it as "eval").
    expect(JSON.parse(job.evalJson)).toEqual(report);
  }, 60_000);

  it('a LayerAnalysis job writes analysis.json and the heatmap and records the chosen layers', async () => {
    const out = join(dir, 'analysis-out');
    const job = await runToEnd(`
apiVersion: polytune/v1
kind: LayerAnalysis
metadata: { name: analysis-test }
spec:
  model: { path: ${join(dir, 'model')} }
  analysis:
    probe: [{ mgsm: ${MGSM}, languages: [en, de, sw, zh], limit: 2 }]
    k: 3
  workers: { count: 2 }
  output: { dir: ${out} }
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    const analysis = JSON.parse(await readFile(join(out, 'analysis.json'), 'utf8')) as { chosenLayers: number[] };
    expect(analysis.chosenLayers).toHaveLength(3);
    expect(job.chosenLayers).toEqual(analysis.chosenLayers);
    expect(existsSync(join(out, 'analysis.png'))).toBe(true);
    expect(existsSync(join(out, 'analysis.svg'))).toBe(true);
  }, 60_000);

  it('a TrainJob with layers auto trains the chosen layers and evaluates every step and at the end', async () => {
    const out = join(dir, 'train-out');
    const job = await runToEnd(`
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: auto-layers-test }
spec:
  model: { path: ${join(dir, 'model')} }
  method:
    name: slam
    layers: auto
    analysis: { probe: [{ mgsm: ${MGSM}, languages: [en, de], limit: 2 }], k: 2 }
  data:
    train: [{ path: ${join(MGSM, 'mgsm_en.tsv')}, format: mgsm-tsv, language: en }]
    maxSeqLen: 256
  training: { maxSteps: 2, globalBatchSize: 2, microBatchSize: 1, optimizer: { name: sgd, lr: 0.01 } }
  eval: { sets: [{ mgsm: ${MGSM}, languages: [en, sw], limit: 1 }], maxNewTokens: 4, everySteps: 1 }
  workers: { count: 2 }
  output: { dir: ${out} }
`);
    expect(job.error).toBe('');
    expect(job.state).toBe('SUCCEEDED');
    const analysis = JSON.parse(await readFile(join(out, 'analysis', 'analysis.json'), 'utf8')) as {
      chosenLayers: number[];
    };
    expect(job.chosenLayers).toEqual(analysis.chosenLayers);
    expect(job.chosenLayers).toHaveLength(2);
    // Only the chosen layers' up_proj and down_proj trained.
    const trained = (await readSafetensors(join(out, 'final', 'trainable.safetensors'))).tensors
      .map((t) => t.name)
      .sort();
    expect(trained).toEqual(
      job.chosenLayers
        .flatMap((l) => [`model.layers.${l}.mlp.down_proj.weight`, `model.layers.${l}.mlp.up_proj.weight`])
        .sort(),
    );
    expect(existsSync(join(out, 'eval', 'step-00000001.json'))).toBe(true);
    const final = JSON.parse(await readFile(join(out, 'eval', 'final.json'), 'utf8')) as EvalReport;
    expect(final.step).toBe(2);
    expect(final.benchmarks[0]!.languages.map((l) => [l.language, l.total])).toEqual([
      ['en', 1],
      ['sw', 1],
    ]);
    expect(JSON.parse(job.evalJson)).toMatchObject({ name: 'final', step: 2 });
  }, 60_000);
});
