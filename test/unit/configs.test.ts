/** Every spec people start from parses; the paper configs say what the SLAM paper says. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { fitsDevice, formatMemoryPlan, memoryFitIssues, planMemory } from '../../common/memory-plan.js';
import { parseLlamaConfig } from '../../common/model-config.js';
import { isStaged, stageJobSpec } from '../../common/stages.js';

const CONFIGS = resolve(import.meta.dirname, '../../configs');

describe('configs/', () => {
  it.each(readdirSync(CONFIGS).filter((f) => f.endsWith('.yaml')))('%s parses', (file) => {
    expect(() =>
      parseAnyJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { source: file, baseDir: CONFIGS }),
    ).not.toThrow();
  });

  it.each(['slam-metamath-7b.yaml', 'slam-metamath-13b.yaml'])('%s has the SLAM paper settings', (file) => {
    const s = parseJobSpec(readFileSync(join(CONFIGS, file), 'utf8'), { baseDir: CONFIGS }).spec;
    expect(s.method).toEqual({ name: 'slam', layers: [0, 1, 2, 3, 4, 5], modules: ['up_proj', 'down_proj'] });
    expect(s.training).toMatchObject({
      epochs: 4,
      globalBatchSize: 512,
      optimizer: { name: 'adamw', lr: 2e-5 },
      schedule: { name: 'cosine' },
    });
    expect(s.data.maxSeqLen).toBe(1024);
    expect(s.data.template).toBe('slam');
    expect(new Set(s.data.train.map((d) => d.language))).toEqual(
      new Set(['bn', 'th', 'sw', 'ja', 'zh', 'de', 'fr', 'ru', 'es', 'en']),
    );
  });
});

describe('paper configs: memory', () => {
  it.each([
    ['slam-metamath-7b.yaml', 'MetaMath-7B-V1.0'],
    ['slam-metamath-13b.yaml', 'MetaMath-13B-V1.0'],
  ])('%s fits an 80 GiB GPU with the margin, checkpointing on, and its comments are the plan', (file, model) => {
    const text = readFileSync(join(CONFIGS, file), 'utf8');
    const spec = parseJobSpec(text, { baseDir: CONFIGS });
    expect(spec.spec.model.path).toBe(`/models/${model}`);
    const config = parseLlamaConfig(JSON.parse(readFileSync(join(CONFIGS, 'models', model, 'config.json'), 'utf8')));
    const plan = planMemory(config, spec);
    expect(spec.spec.training.gradientCheckpointing).toBe(true);
    expect(spec.spec.workers.gpuMemoryGiB).toBe(80);
    expect(fitsDevice(plan.gpu.peak, 80)).toBe(true);
    expect(memoryFitIssues(config, spec)).toEqual([]);
    // Without checkpointing the same settings would not fit: the reason it is on.
    expect(fitsDevice(planMemory(config, spec, { gradientCheckpointing: false }).gpu.peak, 80)).toBe(false);
    const comment = formatMemoryPlan(plan, spec.spec.workers)
      .map((l) => `#   ${l}`.trimEnd())
      .join('\n');
    expect(text).toContain(comment);
  });
});

describe('configs/two-stage-tiny.yaml', () => {
  it('is a job of two stages on the quickstart model: question translation (parallel), then the answers', () => {
    const spec = parseAnyJobSpec(readFileSync(join(CONFIGS, 'two-stage-tiny.yaml'), 'utf8'), { baseDir: CONFIGS });
    expect(spec.kind).toBe('TrainJob');
    if (spec.kind !== 'TrainJob' || !isStaged(spec)) throw new Error('expected spec.stages');
    const quickstart = parseJobSpec(readFileSync(join(CONFIGS, 'quickstart.yaml'), 'utf8'), { baseDir: CONFIGS });
    expect(spec.spec.model).toEqual(quickstart.spec.model);
    const [first, second] = spec.spec.stages;
    expect(spec.spec.stages.map((s) => s.name)).toEqual(['question-alignment', 'answers']);
    expect(first!.data.train.length).toBeGreaterThan(1);
    for (const src of first!.data.train) {
      expect(src.format).toBe('parallel');
      expect(src.target).toMatch(/\.en\.txt$/);
      expect(src.path.startsWith(join(quickstart.spec.model.path, '..', 'data'))).toBe(true);
    }
    expect(second!.data.train).toEqual(quickstart.spec.data.train);
    // Stage 2 starts from stage 1's final model; each writes under output.dir/<stage>/.
    expect(stageJobSpec(spec, 1).spec.model.path).toBe(join(spec.spec.output.dir, 'question-alignment', 'final'));
    expect(stageJobSpec(spec, 1).spec.output.dir).toBe(join(spec.spec.output.dir, 'answers'));
  });
});

describe('configs/lingualift-tiny.yaml', () => {
  it('is LinguaLIFT in two stages on the quickstart model: align on code-switched text, then task', () => {
    const spec = parseAnyJobSpec(readFileSync(join(CONFIGS, 'lingualift-tiny.yaml'), 'utf8'), { baseDir: CONFIGS });
    if (spec.kind !== 'TrainJob' || !isStaged(spec)) throw new Error('expected spec.stages');
    const quickstart = parseJobSpec(readFileSync(join(CONFIGS, 'quickstart.yaml'), 'utf8'), { baseDir: CONFIGS });
    expect(spec.spec.model).toEqual(quickstart.spec.model);
    const [align, task] = spec.spec.stages;
    expect(spec.spec.stages.map((s) => s.name)).toEqual(['align', 'task']);
    if (align!.method.name !== 'lingualift' || task!.method.name !== 'lingualift')
      throw new Error('expected lingualift');
    expect([align!.method.stage, task!.method.stage]).toEqual(['align', 'task']);
    expect(task!.method.encoder).toEqual(align!.method.encoder);
    expect(task!.method.alignment).toEqual(align!.method.alignment);
    // Stage align: code-switched on the fly with the small dictionary of the test fixtures.
    const [src] = align!.data.train;
    expect(src).toMatchObject({ format: 'codeswitch', field: 'question', language: 'en' });
    expect(existsSync(src!.path) && existsSync(src!.dictionary!)).toBe(true);
    expect(src!.dictionary).toBe(resolve(CONFIGS, '..', 'test', 'fixtures', 'codeswitch', 'en-de-es-sw.tsv'));
    // Stage task: English instructions, from stage align's final/ (its lingualift.safetensors).
    expect(task!.data.train.every((s) => s.format === 'alpaca' && s.language === 'en')).toBe(true);
    expect(stageJobSpec(spec, 1).spec.model.path).toBe(join(spec.spec.output.dir, 'align', 'final'));
  });
});
