/** Jobs of several stages: parsing, the derived single-stage specs, their checks and steps (common/stages.ts). */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JobSpecError } from '../../common/errors.js';
import { JOB_KIND_TABLE, jobKindOf, parseAnyJobSpec, trainJobStageSteps } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { markerContent } from '../../common/output-marker.js';
import { isStaged, stageFinalDir, stageJobSpec, stageOffsets, type StagedJobSpec } from '../../common/stages.js';
import { PromMeter } from '../../common/metrics.js';
import { newJobRecord, parseStoredRecord } from '../../coordinator/job-record.js';
import { stageOf } from '../../coordinator/scheduler.js';
import { finishedStagesOnDisk } from '../../worker/train/stages.js';
import { createWorkerMetrics } from '../../worker/worker-metrics.js';

const stage = (name: string, method: string, data = 'data/a.jsonl', extra = ''): string => `
    - name: ${name}
      method: ${method}
      data: { train: [{ path: ${data}, format: alpaca }], maxSeqLen: 64 }
      training: { maxSteps: 3, globalBatchSize: 4, optimizer: { name: sgd, lr: 0.1 } }${extra}`;

const staged = (stages: string, extra = ''): string => `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: two }
spec:
  model: { path: model }
  stages:${stages}
  workers: { count: 2 }
  checkpoint: { everySteps: 2 }
  output: { dir: out }
${extra}`;

const TWO = staged(
  stage('translate', '{ name: slam, layers: [0] }', 'data/p.jsonl') +
    stage('answer', '{ name: freeze, layers: [1], modules: [q_proj] }'),
);

function issuesOf(text: string): { path: string; message: string }[] {
  try {
    parseAnyJobSpec(text, { baseDir: '/base' });
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return [...(e as JobSpecError).issues];
  }
  throw new Error('expected the spec to be refused');
}

function parseStaged(text: string): StagedJobSpec {
  const spec = parseAnyJobSpec(text, { baseDir: '/base' });
  if (spec.kind !== 'TrainJob' || !isStaged(spec)) throw new Error('expected a job of several stages');
  return spec;
}

describe('spec.stages', () => {
  it('parses each stage with the single-stage blocks: defaults applied, paths resolved', () => {
    const spec = parseStaged(TWO);
    expect(spec.spec.stages.map((s) => s.name)).toEqual(['translate', 'answer']);
    expect(spec.spec.stages[0]!.data).toMatchObject({
      train: [{ path: '/base/data/p.jsonl', format: 'alpaca', weight: 1 }],
      template: 'slam',
      shuffle: true,
    });
    expect(spec.spec.stages[1]!.training).toMatchObject({ maxSteps: 3, microBatchSize: 4, gradClip: 1, seed: 42 });
    expect(spec.spec).toMatchObject({
      model: { path: '/base/model' },
      output: { dir: '/base/out' },
      checkpoint: { everySteps: 2, keep: 3 },
    });
    // What a client sends the coordinator (the parsed spec as JSON) parses to the same spec.
    expect(parseAnyJobSpec(JSON.stringify(spec))).toEqual(spec);
  });

  it('derives each stage as a single-stage TrainJob: the previous final model in, output.dir/<stage> out', () => {
    const spec = parseStaged(TWO);
    const [a, b] = [stageJobSpec(spec, 0), stageJobSpec(spec, 1)];
    expect(a.spec.model.path).toBe('/base/model');
    expect(a.spec.output.dir).toBe('/base/out/translate');
    expect(b.spec.model.path).toBe('/base/out/translate/final');
    expect(b.spec.output.dir).toBe('/base/out/answer');
    expect(b.spec.method).toEqual({ name: 'freeze', layers: [1], modules: ['q_proj'] });
    expect(b.spec.workers).toEqual(spec.spec.workers);
    expect(b.spec.checkpoint).toEqual(spec.spec.checkpoint);
    expect('stages' in b.spec).toBe(false);
    // A derived stage is a valid single-stage spec.
    expect(parseJobSpec(JSON.stringify(b))).toEqual(b);
  });

  it("counts as finished only the leading stages whose final/ this job's marker names", async () => {
    const base = await mkdtemp(join(tmpdir(), 'polytune-stages-'));
    const spec = parseAnyJobSpec(TWO, { baseDir: base }) as StagedJobSpec;
    const mark = async (stageName: string, content: string): Promise<void> => {
      await mkdir(stageFinalDir(spec, stageName), { recursive: true });
      await writeFile(join(stageFinalDir(spec, stageName), '.polytune'), content);
    };
    expect(await finishedStagesOnDisk(spec)).toBe(0);
    await mark('translate', markerContent('another-job'));
    await mark('answer', markerContent('two'));
    expect(await finishedStagesOnDisk(spec)).toBe(0);
    await mark('translate', '');
    expect(await finishedStagesOnDisk(spec)).toBe(0);
    await mark('translate', markerContent('two'));
    expect(await finishedStagesOnDisk(spec)).toBe(2);
    await mark('answer', markerContent('another-job'));
    expect(await finishedStagesOnDisk(spec)).toBe(1);
  });

  it('refuses top-level method, data or training beside stages', () => {
    const text = TWO.replace(
      '  stages:',
      '  method: { name: full }\n' +
        '  training: { maxSteps: 1, globalBatchSize: 2, optimizer: { name: sgd, lr: 1 } }\n  stages:',
    );
    const issues = issuesOf(text);
    expect(issues.map((i) => i.path)).toEqual(['spec.method', 'spec.training']);
    expect(issues[0]!.message).toMatch(/not allowed with spec.stages/);
  });

  it('names the stage in every mistake: unknown fields, per-stage rules, names', () => {
    expect(issuesOf(staged(stage('a', '{ name: slam }', 'd.jsonl', '\n      epochs: 2')))).toEqual([
      { path: 'spec.stages[0].epochs', message: 'unknown field' },
    ]);
    expect(issuesOf(staged(stage('a', '{ name: slam }') + stage('b', '{ name: freeze, layerz: [1] }')))).toContainEqual(
      { path: 'spec.stages[1].method.layerz', message: 'unknown field' },
    );
    const rules = issuesOf(
      staged(
        stage('a', '{ name: slam }') +
          stage('b', '{ name: freeze }').replace('globalBatchSize: 4', 'globalBatchSize: 1'),
      ),
    );
    expect(rules).toContainEqual({ path: 'spec.stages[1].method.layers', message: 'is required for method freeze' });
    expect(rules.map((i) => i.path)).toContain('spec.stages[1].training.globalBatchSize');
    expect(rules.map((i) => i.path).filter((p) => p.startsWith('spec.stages[0]'))).toEqual([]);
    const names = issuesOf(
      staged(stage('a', '{ name: slam }') + stage('a', '{ name: slam }') + stage('final', '{ name: slam }')),
    );
    expect(names).toEqual([
      { path: 'spec.stages[1].name', message: '"a" is already the name of spec.stages[0]' },
      expect.objectContaining({ path: 'spec.stages[2].name', message: expect.stringMatching(/reserved/) as string }),
    ]);
    expect(issuesOf(staged(stage('a', '{ name: slam }') + stage('Not_DNS', '{ name: slam }')))).toEqual([
      expect.objectContaining({ path: 'spec.stages[1].name', message: expect.stringMatching(/DNS-1123/) as string }),
    ]);
    expect(issuesOf(staged(''.padEnd(0)).replace('  stages:', '  stages: []'))).toEqual([
      { path: 'spec.stages', message: 'must list at least one stage' },
    ]);
  });

  it("checks every stage's files and layers against the job's model, naming spec.stages[i]", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-stages-'));
    await writeFile(
      join(dir, 'config.json'),
      JSON.stringify({
        model_type: 'llama',
        num_hidden_layers: 2,
        hidden_size: 8,
        intermediate_size: 16,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        vocab_size: 32,
      }),
    );
    await writeFile(join(dir, 'model.safetensors'), Buffer.alloc(16));
    await writeFile(join(dir, 'tokenizer.json'), '{}');
    await writeFile(join(dir, 'a.jsonl'), '{"instruction":"q","output":"a"}\n');
    const text = staged(
      stage('a', '{ name: slam, layers: [0] }', 'a.jsonl') +
        stage('b', '{ name: freeze, layers: [5, 0] }', 'missing.jsonl'),
    ).replace('path: model', `path: ${dir}`);
    const spec = parseAnyJobSpec(text, { baseDir: dir });
    const err = await jobKindOf(spec)
      .validateFiles(spec, 'job.yaml')
      .catch((e: unknown) => e as JobSpecError);
    expect(err).toBeInstanceOf(JobSpecError);
    expect((err as JobSpecError).issues).toEqual([
      { path: 'spec.stages[1].method.layers[0]', message: "layer 5 is past the model's depth (2 layers: 0-1)" },
      { path: 'spec.stages[1].data.train[0].path', message: `${join(dir, 'missing.jsonl')}: no such file` },
    ]);
    // Fixed, the job reports the stage that trains the most.
    await writeFile(join(dir, 'missing.jsonl'), '{"instruction":"q","output":"a"}\n');
    const ok = parseAnyJobSpec(text.replace('[5, 0]', '[1, 0]'), { baseDir: dir });
    const { numLayers, parameters } = await jobKindOf(ok).validateFiles(ok);
    expect(numLayers).toBe(2);
    expect(parameters.trainable).toBeGreaterThan(0);
    expect(jobKindOf(ok).describe(ok, parameters)).toMatch(
      /^2 stages: a \(slam\), b \(freeze\); a stage trains at most/,
    );
    expect(jobKindOf(ok).stageNames(ok)).toEqual(['a', 'b']);
  });

  it("counts the job's steps as the stages' end to end", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-stages-'));
    const rows = (n: number): string =>
      Array.from({ length: n }, (_, i) => JSON.stringify({ instruction: `q${i}`, output: 'a' })).join('\n') + '\n';
    await writeFile(join(dir, 'p.jsonl'), rows(10));
    await writeFile(join(dir, 'a.jsonl'), rows(6));
    const text = staged(
      stage('a', '{ name: slam }', 'p.jsonl').replace('maxSteps: 3', 'epochs: 2') +
        stage('b', '{ name: slam }', 'a.jsonl').replace('maxSteps: 3', 'epochs: 1'),
    );
    const resolved = parseAnyJobSpec(text, { baseDir: dir });
    expect(await trainJobStageSteps(resolved as StagedJobSpec)).toEqual([6, 2]); // ceil(10/4) * 2, ceil(6/4)
    expect(await JOB_KIND_TABLE.TrainJob.totalSteps(resolved as StagedJobSpec)).toBe(8);
    expect(stageOffsets([6, 2])).toEqual({ offsets: [0, 6], total: 8 });
  });

  it('the job record starts at stage 1 of n; progress moves it only to one of its own stages', () => {
    const spec = parseStaged(TWO);
    const record = newJobRecord('two-x', spec, 2);
    expect(record.stage).toEqual({ index: 0, count: 2, name: 'translate' });
    // Resumed, it may start at any stage: unknown until its first progress.
    expect(newJobRecord('two-y', spec, 2, Date.now(), true).stage).toBeUndefined();
    const p = { stageIndex: 1, stageCount: 2, stageName: 'answer' } as Parameters<typeof stageOf>[1];
    expect(stageOf(record, p)).toEqual({ stage: { index: 1, count: 2, name: 'answer' } });
    expect(stageOf(record, { ...p, stageName: 'other' })).toEqual({});
    expect(stageOf(record, { ...p, stageCount: 3 })).toEqual({});
    // Read back from the (untrusted) store, a stage the spec does not have is dropped.
    const stored = (stage: unknown): unknown => {
      const r = parseStoredRecord('two-x', JSON.stringify({ ...record, stage }));
      return r.ok ? r.record.stage : r.message;
    };
    expect(stored({ index: 1, count: 2, name: 'answer' })).toEqual({ index: 1, count: 2, name: 'answer' });
    expect(stored({ index: 1, count: 2, name: 'translate' })).toBeUndefined();
    expect(stored({ index: 5, count: 2, name: 'answer' })).toBeUndefined();
    expect(stored({ index: 0, count: 2, name: 'translate', extra: 1 })).toMatch(/not a job record/);
    const single = newJobRecord('one-x', parseJobSpec(stageJobSpecText()), 2);
    expect(single.stage).toBeUndefined();
    expect(stageOf(single, p)).toEqual({});
  });

  it('polytune_job_stage: one series a job, the stage 1-based with its name', async () => {
    const meter = new PromMeter();
    const metrics = createWorkerMetrics(meter);
    metrics.stage('j', { index: 0, count: 2, name: 'translate' });
    metrics.stage('j', { index: 1, count: 2, name: 'answer' });
    const text = await meter.registry.metrics();
    expect(text).toContain('polytune_job_stage{job_id="j",stage="answer"} 2');
    expect(text).not.toContain('stage="translate"');
    metrics.jobEnded('j');
    expect(await meter.registry.metrics()).not.toContain('polytune_job_stage{');
  });
});

function stageJobSpecText(): string {
  return JSON.stringify(stageJobSpec(parseStaged(TWO), 1));
}
