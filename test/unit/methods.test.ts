/** The method table (common/methods/): each method's block, its rules at any path, and what it trains. */
import { describe, expect, it } from 'vitest';
import { JobSpecError } from '../../common/errors.js';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';
import {
  METHOD_NAMES,
  SUPPORTED_METHODS,
  methodIssues,
  methodModelIssues,
  methodSchema,
  trainableTensorNames,
  type MethodSpec,
} from '../../common/methods/index.js';

const spec = (method: string): string => `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: t }
spec:
  model: { path: m }
  method: ${method}
  data: { train: [{ path: d.jsonl, format: alpaca }] }
  training: { maxSteps: 1, globalBatchSize: 2, optimizer: { name: sgd, lr: 0.1 } }
  workers: { count: 1 }
  output: { dir: o }
`;

function issues(method: string): string[] {
  try {
    parseJobSpec(spec(method), { baseDir: '/b' });
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return (e as JobSpecError).issues.map((i) => `${i.path}: ${i.message}`);
  }
  return [];
}

describe('method blocks', () => {
  it('trains every method but prune, which is refused at spec.method.name pointing at its job kind', () => {
    expect(SUPPORTED_METHODS).toEqual(['slam', 'freeze', 'full', 'lingualift', 'cctuning']);
    // Pruning is a job kind of its own: one issue pointing there, whatever fields the block has.
    for (const block of ['{ name: prune }', '{ name: prune, sparsity: 0.3, layers: [0] }']) {
      expect(issues(block)).toEqual([
        expect.stringMatching(
          /^spec\.method\.name: is not a training method: pruning is its own job kind, kind: PruneJob/,
        ),
      ]);
    }
    expect(issues('{ name: magic }')).toEqual([`spec.method.name: must be one of ${METHOD_NAMES.join(', ')}`]);
  });

  it('lingualift: its blocks and rules, what each stage trains', () => {
    expect(issues('{ name: lingualift, encoder: { path: enc } }')).toEqual([]);
    expect(issues('{ name: lingualift }')).toEqual(['spec.method.encoder: is required']);
    expect(issues('{ name: lingualift, encoder: { path: e }, layers: [0] }')).toEqual([
      'spec.method.layers: is only allowed with stage task (stage align trains only the alignment layer)',
    ]);
    expect(issues('{ name: lingualift, encoder: { path: e }, fusion: sideways }')).toEqual([
      'spec.method.fusion: must be one of prepend, replace',
    ]);
    expect(issues('{ name: lingualift, stage: task, encoder: { path: e }, layers: [0, 0] }')).toEqual([
      'spec.method.layers: must not repeat a layer',
    ]);
    const names = ['model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.up_proj.weight', 'model.norm.weight'];
    const block = (extra: string): MethodSpec =>
      parseJobSpec(spec(`{ name: lingualift, encoder: { path: e }${extra} }`), { baseDir: '/b' }).spec.method;
    expect(trainableTensorNames(block(''), 2, names)).toEqual([]);
    expect(trainableTensorNames(block(', stage: task'), 2, names)).toEqual(names);
    expect(trainableTensorNames(block(', stage: task, layers: [1], modules: [up_proj]'), 2, names)).toEqual([
      'model.layers.1.mlp.up_proj.weight',
    ]);
  });

  it('keeps each method to its own fields and rules', () => {
    expect(issues('{ name: slam, layers: [0, 1] }')).toEqual([]);
    expect(issues('{ name: freeze }')).toEqual(['spec.method.layers: is required for method freeze']);
    expect(issues('{ name: full, layers: [0] }')).toEqual([
      'spec.method.layers: method full trains every tensor: layers and modules must not be set',
    ]);
    expect(issues('{ name: full, bogus: 1 }')).toEqual(['spec.method.bogus: unknown field']);
    expect(issues('{ name: slam, layers: [1, 1] }')).toEqual(['spec.method.layers: must not repeat a layer']);
    expect(issues('{ name: freeze, layers: [0], modules: [nope] }')[0]).toMatch(
      /^spec\.method\.modules\[0\]: must be one of/,
    );
  });

  it("states its rules at the path it is given (a stage's method)", () => {
    const m = methodSchema.parse({ name: 'slam', layers: [0, 4, 0] });
    expect(methodIssues(m, 'spec.stages[1].method')).toEqual([
      { path: 'spec.stages[1].method.layers', message: 'must not repeat a layer' },
    ]);
    expect(methodModelIssues(m, 4, 'spec.stages[1].method')).toEqual([
      { path: 'spec.stages[1].method.layers[1]', message: "layer 4 is past the model's depth (4 layers: 0-3)" },
    ]);
  });

  it('names the tensors each method trains', () => {
    const names = [
      'model.embed_tokens.weight',
      ...[0, 1].flatMap((l) =>
        ['mlp.up_proj', 'mlp.down_proj', 'mlp.gate_proj'].map((m) => `model.layers.${l}.${m}.weight`),
      ),
      'model.norm.weight',
    ];
    expect(trainableTensorNames(methodSchema.parse({ name: 'slam' }), 2, names)).toEqual([
      'model.layers.0.mlp.up_proj.weight',
      'model.layers.0.mlp.down_proj.weight',
      'model.layers.1.mlp.up_proj.weight',
      'model.layers.1.mlp.down_proj.weight',
    ]);
    expect(trainableTensorNames(methodSchema.parse({ name: 'full' }), 2, names)).toEqual(names);
    expect(() => trainableTensorNames(methodSchema.parse({ name: 'freeze', layers: [5] }), 2, names)).toThrow(
      /selects no tensor/,
    );
  });
});

describe('lingualift across stages', () => {
  const DATA = '{ train: [{ path: d.jsonl, format: alpaca }] }';
  const TRAINING = '{ maxSteps: 1, globalBatchSize: 2, optimizer: { name: sgd, lr: 0.1 } }';
  const staged = (align: string, task: string): string => `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: t }
spec:
  model: { path: m }
  stages:
    - { name: first, method: ${align}, data: ${DATA}, training: ${TRAINING} }
    - { name: second, method: ${task}, data: ${DATA}, training: ${TRAINING} }
  workers: { count: 1 }
  output: { dir: o }
`;
  function stagedIssues(align: string, task: string): string[] {
    try {
      parseAnyJobSpec(staged(align, task), { baseDir: '/b' });
    } catch (e) {
      expect(e).toBeInstanceOf(JobSpecError);
      return (e as JobSpecError).issues.map((i) => `${i.path}: ${i.message}`);
    }
    return [];
  }
  const align = '{ name: lingualift, encoder: { path: enc }, alignment: { depth: 2, hidden: 48 } }';

  it('stage task takes the layer of the stage before it: the same encoder, depth, width and fusion', () => {
    expect(
      stagedIssues(align, '{ name: lingualift, stage: task, encoder: { path: ./enc }, alignment: { hidden: 48 } }'),
    ).toEqual([]);
    expect(
      stagedIssues(
        align,
        '{ name: lingualift, stage: task, encoder: { path: enc2 }, alignment: { depth: 1, hidden: 48 }, ' +
          'fusion: replace }',
      ),
    ).toEqual([
      "spec.stages[1].method.encoder.path: /b/enc2 differs from the stage before's /b/enc: stage task carries that " +
        "stage's alignment layer (give alignment.from for another one)",
      "spec.stages[1].method.alignment.depth: 1 differs from the stage before's 2: stage task carries that stage's " +
        'alignment layer (give alignment.from for another one)',
      "spec.stages[1].method.fusion: replace differs from the stage before's prepend: stage task carries that " +
        "stage's alignment layer (give alignment.from for another one)",
    ]);
    expect(stagedIssues(align, '{ name: lingualift, stage: task, encoder: { path: enc } }')).toEqual([
      "spec.stages[1].method.alignment.hidden: the LLM's differs from the stage before's 48: stage task carries " +
        "that stage's alignment layer (give alignment.from for another one)",
    ]);
    expect(stagedIssues('{ name: full }', '{ name: lingualift, stage: task, encoder: { path: enc } }')).toEqual([
      'spec.stages[1].method.alignment.from: is required: stage task carries the alignment layer of the stage ' +
        'before it, and the stage before it is full',
    ]);
    // With alignment.from, any earlier stage.
    expect(
      stagedIssues(
        '{ name: full }',
        '{ name: lingualift, stage: task, encoder: { path: e }, alignment: { from: l.st } }',
      ),
    ).toEqual([]);
  });
});
