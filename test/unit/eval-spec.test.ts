/** Spec kinds EvalJob and LayerAnalysis, spec.eval and method.layers auto: parsing and field-path errors. */
import { describe, expect, it } from 'vitest';
import { JobSpecError } from '../../common/errors.js';
import { expandProblemSets } from '../../common/eval-spec.js';
import { parseAnyJobSpec } from '../../common/job-kinds.js';

function issues(text: string): string[] {
  try {
    parseAnyJobSpec(text, { baseDir: '/base' });
  } catch (e) {
    if (e instanceof JobSpecError) return e.issues.map((i) => `${i.path}: ${i.message}`);
    throw e;
  }
  return [];
}

const evalJob = (evalBlock: string): string => `
apiVersion: polytune/v1
kind: EvalJob
metadata: { name: e }
spec:
  model: { path: m }
  eval: ${evalBlock}
  workers: { count: 2 }
  output: { dir: out }
`;

describe('EvalJob and LayerAnalysis specs', () => {
  it('parses an EvalJob, resolves paths against the spec directory, applies defaults, expands sets', () => {
    const spec = parseAnyJobSpec(
      evalJob(
        '{ sets: [{ mgsm: data/mgsm, languages: [en, sw], limit: ' +
          '5 }, { path: x.jsonl, format: msvamp, language: zh }] }',
      ),
      { baseDir: '/base' },
    );
    expect(spec.kind).toBe('EvalJob');
    if (spec.kind !== 'EvalJob') return;
    expect(spec.spec.model.path).toBe('/base/m');
    expect(spec.spec.eval).toMatchObject({ maxNewTokens: 600, template: 'slam', batchSize: 8 });
    expect(expandProblemSets(spec.spec.eval.sets)).toEqual([
      { path: '/base/data/mgsm/mgsm_en.tsv', format: 'mgsm-tsv', language: 'en', benchmark: 'mgsm', limit: 5 },
      { path: '/base/data/mgsm/mgsm_sw.tsv', format: 'mgsm-tsv', language: 'sw', benchmark: 'mgsm', limit: 5 },
      { path: '/base/x.jsonl', format: 'msvamp', language: 'zh', benchmark: 'msvamp', limit: undefined },
    ]);
  });

  it('names every mistake by its field path', () => {
    expect(issues(evalJob('{ sets: [{ mgsm: d, msvamp: e }], everySteps: 3, extra: 1 }'))).toEqual([
      'spec.eval.extra: unknown field',
    ]);
    expect(issues(evalJob('{ sets: [{ mgsm: d, msvamp: e }], everySteps: 3 }'))).toEqual([
      'spec.eval.sets[0]: must have only one of mgsm, msvamp',
      'spec.eval.everySteps: is only allowed on a TrainJob',
    ]);
    expect(
      issues(
        evalJob('{ sets: [{ path: f.tsv }, { mgsm: d, languages: [en, xx], format: mgsm-tsv }], maxNewTokens: 0 }'),
      ),
    ).toEqual(['spec.eval.maxNewTokens: must be > 0']);
    expect(
      issues(
        evalJob(
          '{ sets: [{ path: f.tsv }, { mgsm: d, languages: [en, tlh], ' +
            'format: mgsm-tsv }, { msvamp: d, languages: [te] }] }',
        ),
      ),
    ).toEqual([
      'spec.eval.sets[0].format: is required with path',
      'spec.eval.sets[0].language: is required with path',
      'spec.eval.sets[1].format: is only allowed with path (mgsm implies it)',
      'spec.eval.sets[1].languages[1]: mgsm has no "tlh" (it has bn, de, en, es, fr, ja, ru, sw, te, th, zh)',
      'spec.eval.sets[2].languages[0]: msvamp has no "te" (it has bn, de, en, es, fr, ja, ru, sw, th, zh)',
    ]);
    expect(issues('apiVersion: polytune/v1\nkind: PredictJob\n')).toEqual([
      'kind: must be one of TrainJob, EvalJob, LayerAnalysis, PruneJob',
    ]);
  });

  it('LayerAnalysis: the probe must include English; k and threshold are checked', () => {
    const la = (analysis: string): string => `
apiVersion: polytune/v1
kind: LayerAnalysis
metadata: { name: a }
spec:
  model: { path: m }
  analysis: ${analysis}
  workers: { count: 1 }
  output: { dir: out }
`;
    const ok = parseAnyJobSpec(la('{ probe: [{ mgsm: d }] }'), { baseDir: '/b' });
    expect(ok.kind === 'LayerAnalysis' && ok.spec.analysis).toMatchObject({
      k: 6,
      threshold: 0.5,
      probe: [{ mgsm: '/b/d' }],
    });
    expect(issues(la('{ probe: [{ mgsm: d, languages: [de, fr] }] }'))).toEqual([
      'spec.analysis.probe: must include English (en): overlap is measured against it',
    ]);
    expect(issues(la('{ probe: [{ mgsm: d }], k: 0, threshold: 1.5 }'))).toEqual([
      'spec.analysis.k: must be > 0',
      'spec.analysis.threshold: must be <= 1',
    ]);
  });

  it('TrainJob: layers auto needs method.analysis, which needs layers auto; spec.eval sets are checked', () => {
    const train = (method: string, extra = ''): string => `
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
${extra}`;
    expect(issues(train('{ name: slam, layers: auto }'))).toEqual([
      'spec.method.analysis: is required with layers "auto" (the probe prompts of the layer analysis)',
    ]);
    expect(issues(train('{ name: slam, layers: [0], analysis: { probe: [{ mgsm: d }] } }'))).toEqual([
      'spec.method.analysis: is only allowed with layers "auto"',
    ]);
    expect(
      issues(
        train('{ name: slam, layers: auto, analysis: { probe: [{ mgsm: d }] } }', '  eval: { sets: [{ path: x }] }'),
      ),
    ).toEqual(['spec.eval.sets[0].format: is required with path', 'spec.eval.sets[0].language: is required with path']);
    const spec = parseAnyJobSpec(
      train(
        '{ name: slam, layers: auto, analysis: { probe: [{ mgsm: d }] } }',
        '  eval: { sets: [{ mgsm: e }], everySteps: 100 }',
      ),
      { baseDir: '/b' },
    );
    expect(spec.kind === 'TrainJob' && spec.spec.eval?.sets).toEqual([{ mgsm: '/b/e' }]);
    // (`'method' in`: a TrainJob with spec.stages has no top-level method; this one has one.)
    expect(spec.kind === 'TrainJob' && 'method' in spec.spec && spec.spec.method.analysis?.probe).toEqual([
      { mgsm: '/b/d' },
    ]);
  });
});
