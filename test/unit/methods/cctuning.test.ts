/**
 * CC-Tuning's spec block, data and pure parts: refusals with their paths (tau <= 0,
 * injectAfterLayer past the depth, a record without instruction_en, data without the English
 * prompt), the parallel + answers records, the Gumbel noise as a pure function, and the Transform
 * Matrix's solve against numpy's lstsq (test/golden/cctuning/transform.safetensors, made by
 * scripts/make-golden-cctuning.py).
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JobSpecError } from '../../../common/errors.js';
import { parseAnyJobSpec, validateAnyJobSpecFiles } from '../../../common/job-kinds.js';
import { parseJobSpec } from '../../../common/jobspec.js';
import { methodModelIssues, trainableTensorNames } from '../../../common/methods/index.js';
import { readDataSource } from '../../../common/records.js';
import { solveTransform } from '../../../worker/methods/cctuning-transform.js';
import { gumbelNoise } from '../../../worker/methods/cctuning.js';
import { readSafetensors } from '../../../worker/model/safetensors.js';

const spec = (method: string, data = '{ path: d.jsonl, format: cctuning }'): string => `
apiVersion: polytune/v1
kind: TrainJob
metadata: { name: t }
spec:
  model: { path: m }
  method: ${method}
  data: { train: [${data}] }
  training: { maxSteps: 1, globalBatchSize: 2, optimizer: { name: sgd, lr: 0.1 } }
  workers: { count: 1 }
  output: { dir: o }
`;

function issues(method: string, data?: string): string[] {
  try {
    parseJobSpec(spec(method, data), { baseDir: '/b' });
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return (e as JobSpecError).issues.map((i) => `${i.path}: ${i.message}`);
  }
  return [];
}

describe('cctuning spec', () => {
  it('takes the defaults and refuses a tau <= 0 at its path', () => {
    const s = parseJobSpec(spec('{ name: cctuning }'), { baseDir: '/b' });
    expect(s.spec.method).toMatchObject({ name: 'cctuning', gumbelTau: 1, injectAfterLayer: 0 });
    expect(issues('{ name: cctuning, gumbelTau: 0 }')).toEqual(['spec.method.gumbelTau: must be > 0']);
    expect(issues('{ name: cctuning, gumbelTau: -1 }')).toEqual(['spec.method.gumbelTau: must be > 0']);
    expect(issues('{ name: cctuning, layers: [1, 1] }')).toEqual(['spec.method.layers: must not repeat a layer']);
  });

  it('refuses injectAfterLayer past the model depth at its path', () => {
    const m = parseJobSpec(spec('{ name: cctuning, injectAfterLayer: 2 }'), { baseDir: '/b' }).spec.method;
    expect(methodModelIssues(m, 2, 'spec.method')).toEqual([
      { path: 'spec.method.injectAfterLayer', message: "layer 2 is past the model's depth (2 layers: 0-1)" },
    ]);
    expect(methodModelIssues(m, 3, 'spec.method')).toEqual([]);
  });

  it('needs data with the English prompt: format cctuning or parallel with answers', () => {
    expect(issues('{ name: cctuning }', '{ path: d.jsonl, format: alpaca }')).toEqual([
      'spec.data.train[0].format: method cctuning needs records with the English prompt: ' +
        'format cctuning, or parallel with answers',
    ]);
    expect(issues('{ name: cctuning }', '{ path: a.txt, format: parallel, target: b.txt, answers: c.txt }')).toEqual(
      [],
    );
    expect(issues('{ name: full }', '{ path: d.jsonl, format: alpaca, answers: c.txt }')).toEqual([
      'spec.data.train[0].answers: is only allowed for format parallel',
    ]);
  });

  it('trains every tensor by default, or modules of layers as freeze', () => {
    const all = ['model.embed_tokens.weight', 'model.layers.0.mlp.up_proj.weight', 'model.layers.1.mlp.up_proj.weight'];
    const m = (y: string) => parseJobSpec(spec(y), { baseDir: '/b' }).spec.method;
    expect(trainableTensorNames(m('{ name: cctuning }'), 2, all)).toEqual(all);
    expect(trainableTensorNames(m('{ name: cctuning, layers: [1], modules: [up_proj] }'), 2, all)).toEqual([
      'model.layers.1.mlp.up_proj.weight',
    ]);
  });
});

describe('eval.ccTransform', () => {
  const withEval = (method: string): string =>
    spec(method) + '  eval: { sets: [{ path: p.tsv, format: mgsm-tsv, language: sw }], ccTransform: true }\n';

  it('on a TrainJob needs method cctuning with a Transform Matrix, refused at its path', () => {
    const at = (method: string): string[] => {
      try {
        parseJobSpec(withEval(method), { baseDir: '/b' });
      } catch (e) {
        return (e as JobSpecError).issues.map((i) => `${i.path}: ${i.message}`);
      }
      return [];
    };
    expect(at('{ name: cctuning }')).toEqual([]);
    expect(parseJobSpec(withEval('{ name: cctuning }'), { baseDir: '/b' }).spec.eval?.ccTransform).toBe(true);
    expect(at('{ name: cctuning, transformSamples: 0 }')).toEqual([
      'spec.eval.ccTransform: needs a Transform Matrix: spec.method.transformSamples must be > 0',
    ]);
    expect(at('{ name: full }')).toEqual([
      'spec.eval.ccTransform: needs method cctuning (the Decision Maker and the Transform Matrix), not full',
    ]);
  });

  it("on an EvalJob needs the model directory's cctuning.safetensors, refused at its path", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'polytune-cceval-'));
    await writeFile(join(dir, 'p.tsv'), 'q\t1\n');
    const evalJob = (cc: boolean): string => `
apiVersion: polytune/v1
kind: EvalJob
metadata: { name: e }
spec:
  model: { path: m }
  eval: { sets: [{ path: p.tsv, format: mgsm-tsv, language: sw }], ccTransform: ${cc} }
  workers: { count: 1 }
  output: { dir: o }
`;
    const fileIssues = async (cc: boolean): Promise<string[]> =>
      validateAnyJobSpecFiles(parseAnyJobSpec(evalJob(cc), { baseDir: dir })).then(
        () => [],
        (e: JobSpecError) => e.issues.map((i) => i.path),
      );
    expect(await fileIssues(false)).toEqual(['spec.model.path']); // no model at all
    expect(await fileIssues(true)).toEqual(['spec.model.path', 'spec.eval.ccTransform']);
  });
});

describe('cctuning data', () => {
  it('reads cctuning records and refuses one without instruction_en, naming file and line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cc-data-'));
    const file = join(dir, 'd.jsonl');
    await writeFile(
      file,
      [
        JSON.stringify({ instruction: 'Hola', input: 'x', output: 'hi', instruction_en: 'Hello', language: 'es' }),
        JSON.stringify({ instruction: 'Bonjour', output: 'hi', language: 'fr' }),
      ].join('\n'),
    );
    await expect(readDataSource({ path: file, format: 'cctuning' })).rejects.toThrow(
      `${file}:2: missing "instruction_en"`,
    );
    await writeFile(file, JSON.stringify({ instruction: 'Hola', input: 'x', output: 'hi', instruction_en: 'Hello' }));
    expect(await readDataSource({ path: file, format: 'cctuning', language: 'es' })).toEqual([
      { kind: 'text', question: 'Hola\nx', questionEn: 'Hello\nx', output: 'hi', language: 'es' },
    ]);
  });

  it('builds paired records from parallel files plus an answer file, line-aligned', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cc-par-'));
    const [p, t, a] = ['zh.txt', 'en.txt', 'ans.txt'].map((f) => join(dir, f));
    await writeFile(p!, '你好\n再见\n');
    await writeFile(t!, 'hello\nbye\n');
    await writeFile(a!, 'A1\nA2\n');
    expect(await readDataSource({ path: p!, format: 'parallel', target: t!, answers: a!, language: 'zh' })).toEqual([
      { kind: 'text', question: '你好', questionEn: 'hello', output: 'A1', language: 'zh' },
      { kind: 'text', question: '再见', questionEn: 'bye', output: 'A2', language: 'zh' },
    ]);
    await writeFile(a!, 'A1\n');
    await expect(readDataSource({ path: p!, format: 'parallel', target: t!, answers: a! })).rejects.toThrow(
      'has 1 lines but',
    );
  });
});

describe('Gumbel noise', () => {
  it('is a pure function of (seed, step, sample index), different across each', () => {
    const a = gumbelNoise(7, 3, 11, 32);
    expect(gumbelNoise(7, 3, 11, 32)).toEqual(a);
    for (const other of [gumbelNoise(8, 3, 11, 32), gumbelNoise(7, 4, 11, 32), gumbelNoise(7, 3, 12, 32)]) {
      expect(other).not.toEqual(a);
    }
    // Gumbel(0, 1): mean is the Euler-Mascheroni constant, variance pi^2 / 6.
    const xs = Array.from({ length: 4000 }, (_, i) => gumbelNoise(1, 0, i, 8)).flatMap((v) => [...v]);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const variance = xs.reduce((s, x) => s + (x - mean) ** 2, 0) / xs.length;
    expect(mean).toBeCloseTo(0.5772, 1);
    expect(variance).toBeCloseTo(Math.PI ** 2 / 6, 1);
  });
});

describe('Transform Matrix solve', () => {
  it("equals numpy's lstsq within 1e-5 relative", async () => {
    const t = new Map(
      (
        await readSafetensors(join(import.meta.dirname, '..', '..', 'golden', 'cctuning', 'transform.safetensors'))
      ).tensors.map((x) => [x.name, x]),
    );
    const [n, h] = t.get('A')!.shape as [number, number];
    const x = solveTransform(t.get('A')!.data, t.get('B')!.data, n, h).x;
    const want = t.get('X')!.data;
    let num = 0;
    let den = 0;
    for (let i = 0; i < want.length; i++) {
      num += (x[i]! - want[i]!) ** 2;
      den += want[i]! ** 2;
    }
    expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
  });

  it('refuses too few rows, naming the numbers, and a singular system', () => {
    expect(() => solveTransform(new Float32Array(12), new Float32Array(12), 3, 4)).toThrow(
      'transform matrix: 3 rows of FFN outputs (samples x layers) for hidden size 4: ' +
        'least squares needs at least 4 rows',
    );
    const zeros = new Float32Array(20);
    expect(() => solveTransform(zeros, zeros, 5, 4)).toThrow(/singular at column 0 of 4/);
    // A ridge makes the same system solvable.
    expect(solveTransform(new Float32Array(12), new Float32Array(12), 3, 4, 0.1).x.every((v) => v === 0)).toBe(true);
  });
});
