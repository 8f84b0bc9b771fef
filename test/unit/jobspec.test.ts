import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JobSpecError } from '../../common/errors.js';
import { parseJobSpec, validateJobSpecFiles } from '../../common/jobspec.js';

const VALID = `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: slam-test }
spec:
  model: { path: model }
  method: { name: slam, layers: [0, 1] }
  data:
    train:
      - { path: data/a.jsonl, format: alpaca, language: sw }
  training:
    epochs: 1
    globalBatchSize: 8
    microBatchSize: 2
    optimizer: { name: adamw, lr: 1.0e-3 }
  workers: { count: 2 }
  output: { dir: out }
`;

function issuesOf(text: string): { path: string; message: string }[] {
  try {
    parseJobSpec(text, { baseDir: '/base' });
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return [...(e as JobSpecError).issues];
  }
  throw new Error('expected the spec to be refused');
}

describe('parseJobSpec', () => {
  it('accepts a valid spec, applies defaults and resolves relative paths', () => {
    const spec = parseJobSpec(VALID, { baseDir: '/base' });
    expect(spec.spec.model.path).toBe('/base/model');
    expect(spec.spec.data.train[0]!.path).toBe('/base/data/a.jsonl');
    expect(spec.spec.output.dir).toBe('/base/out');
    expect(spec.spec.data.template).toBe('slam');
    expect(spec.spec.data.shuffle).toBe(true);
    expect(spec.spec.training.schedule).toEqual({ name: 'constant', warmupRatio: 0 });
    expect(spec.spec.training.optimizer).toEqual({
      name: 'adamw',
      lr: 1e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 0,
    });
    expect(spec.spec.collective.compression).toBe('none');
  });

  it.each([
    ['unknown field', VALID.replace('epochs: 1', 'epochs: 1\n    bogus: 3'), 'spec.training.bogus', 'unknown field'],
    [
      'unknown field in a list item',
      VALID.replace('language: sw', 'language: sw, extra: 1'),
      'spec.data.train[0].extra',
      'unknown field',
    ],
    ['negative lr', VALID.replace('lr: 1.0e-3', 'lr: -1'), 'spec.training.optimizer.lr', 'must be > 0'],
    [
      'wrong type',
      VALID.replace('globalBatchSize: 8', 'globalBatchSize: "eight"'),
      'spec.training.globalBatchSize',
      'must be number, received string',
    ],
    ['missing field', VALID.replace('  output: { dir: out }\n', ''), 'spec.output', 'is required'],
    [
      'min above count',
      VALID.replace('count: 2 }', 'count: 2, min: 3 }'),
      'spec.workers.min',
      'must be <= spec.workers.count',
    ],
    [
      'batch below workers',
      VALID.replace('globalBatchSize: 8', 'globalBatchSize: 1'),
      'spec.training.globalBatchSize',
      'must be >= spec.workers.count',
    ],
    ['unknown method', VALID.replace('name: slam,', 'name: magic,'), 'spec.method.name', 'must be one of'],
    ['unknown format', VALID.replace('format: alpaca', 'format: csv'), 'spec.data.train[0].format', 'must be one of'],
    ['bad name', VALID.replace('name: slam-test', 'name: Slam_Test'), 'metadata.name', 'DNS-1123'],
    ['no epochs nor maxSteps', VALID.replace('epochs: 1', ''), 'spec.training.epochs', 'one of epochs or maxSteps'],
    [
      'bad template',
      VALID.replace('format: alpaca, language: sw }', 'format: alpaca }\n    template: "no placeholder"'),
      'spec.data.template',
      '{question}',
    ],
    [
      'parallel without target',
      VALID.replace('format: alpaca', 'format: parallel'),
      'spec.data.train[0].target',
      'is required',
    ],
    ['wrong apiVersion', VALID.replace('polytune/v1', 'polytune/v2'), 'apiVersion', 'polytune/v1'],
  ])('refuses %s with the field path', (_name, text, path, message) => {
    const issues = issuesOf(text);
    const hit = issues.find((i) => i.path === path);
    expect(hit, JSON.stringify(issues)).toBeDefined();
    expect(hit!.message).toContain(message);
  });

  it('refuses text that is not YAML, or not a mapping', () => {
    expect(issuesOf('a: [1, 2')[0]!.message).toContain('not valid YAML');
    expect(issuesOf('- 1\n- 2\n')[0]!.message).toContain('must be a mapping');
  });

  it('names the source in the message', () => {
    expect(() => parseJobSpec(VALID.replace('lr: 1.0e-3', 'lr: 0'), { source: 'job.yaml' })).toThrow(
      /job\.yaml: invalid job spec\n {2}spec\.training\.optimizer\.lr: must be > 0/,
    );
  });
});

describe('validateJobSpecFiles', () => {
  it('checks the model directory, the layers and the data files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-spec-'));
    await mkdir(join(dir, 'model'));
    await writeFile(
      join(dir, 'model', 'config.json'),
      JSON.stringify({
        model_type: 'llama',
        num_hidden_layers: 2,
        hidden_size: 8,
        intermediate_size: 16,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        vocab_size: 32,
        rms_norm_eps: 1e-5,
        hidden_act: 'silu',
      }),
    );
    await writeFile(join(dir, 'model', 'model.safetensors'), '');
    await writeFile(join(dir, 'model', 'tokenizer.json'), '{}');
    const bad = parseJobSpec(VALID.replace('layers: [0, 1]', 'layers: [0, 2]'), { baseDir: dir });
    const err = await validateJobSpecFiles(bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobSpecError);
    const issues = (err as JobSpecError).issues;
    expect(issues).toContainEqual({
      path: 'spec.method.layers[1]',
      message: expect.stringContaining("past the model's depth (2 layers"),
    });
    expect(issues).toContainEqual({
      path: 'spec.data.train[0].path',
      message: expect.stringContaining('no such file'),
    });

    await mkdir(join(dir, 'data'));
    await writeFile(join(dir, 'data', 'a.jsonl'), '{"instruction":"q","output":"a"}\n');
    await expect(validateJobSpecFiles(parseJobSpec(VALID, { baseDir: dir }))).resolves.toMatchObject({ numLayers: 2 });
  });
});
