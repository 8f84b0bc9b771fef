/** Every number of a spec has an upper bound, refused with its field path (common/spec-primitives.ts). */
import { describe, expect, it } from 'vitest';
import { DataFormatError, JobSpecError, jsonSyntaxProblem } from '../../common/errors.js';
import { mixSamples, mixSamplesAsync } from '../../common/data-mixture.js';
import { planSteps } from '../../common/data-plan.js';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { parseJobSpec } from '../../common/jobspec.js';
import { readLlamaConfig } from '../../common/model-config.js';
import { readChoiceRecords } from '../../common/choice-records.js';
import { readDataSource } from '../../common/records.js';
import { SPEC_LIMITS } from '../../common/spec-primitives.js';
import { isJobName } from '../../common/subjects.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

interface Train {
  [k: string]: unknown;
}

function trainSpec(patch: (s: Train) => void): string {
  const spec: Train = {
    apiVersion: 'polytune/v1',
    kind: 'TrainJob',
    metadata: { name: 'bounds' },
    spec: {
      model: { path: '/m' },
      method: { name: 'slam', layers: [0] },
      data: { train: [{ path: '/d.jsonl', format: 'alpaca' }] },
      training: { epochs: 1, globalBatchSize: 8, microBatchSize: 2, optimizer: { name: 'sgd', lr: 0.1 } },
      workers: { count: 2 },
      output: { dir: '/out' },
    },
  };
  patch(spec['spec'] as Train);
  return JSON.stringify(spec);
}

function refusal(text: string): { path: string; message: string }[] {
  try {
    parseAnyJobSpec(text);
  } catch (e) {
    expect(e).toBeInstanceOf(JobSpecError);
    return [...(e as JobSpecError).issues];
  }
  throw new Error('expected the spec to be refused');
}

const sub = (o: Train, k: string): Train => o[k] as Train;

describe('spec bounds', () => {
  const cases: [string, (s: Train) => void, string, RegExp][] = [
    [
      'weight',
      (s) => ((sub(s, 'data')['train'] as Train[])[0]!['weight'] = 1e6),
      'spec.data.train[0].weight',
      /<= 1000/,
    ],
    [
      'weight 1e308',
      (s) => ((sub(s, 'data')['train'] as Train[])[0]!['weight'] = 1e308),
      'spec.data.train[0].weight',
      /<= 1000/,
    ],
    [
      'timeoutSeconds',
      (s) => (s['collective'] = { timeoutSeconds: 2_147_484 }),
      'spec.collective.timeoutSeconds',
      /2147483/,
    ],
    ['workers.count', (s) => (s['workers'] = { count: 5000 }), 'spec.workers.count', /<= 4096/],
    ['workers.min', (s) => (s['workers'] = { count: 2, min: 1e9 }), 'spec.workers.min', /<= 4096/],
    ['maxSeqLen', (s) => (sub(s, 'data')['maxSeqLen'] = 1e6), 'spec.data.maxSeqLen', /<= 131072/],
    ['microBatchSize', (s) => (sub(s, 'training')['microBatchSize'] = 1e5), 'spec.training.microBatchSize', /<= 4096/],
    [
      'globalBatchSize',
      (s) => (sub(s, 'training')['globalBatchSize'] = 1e9),
      'spec.training.globalBatchSize',
      /<= 1048576/,
    ],
    ['epochs', (s) => (sub(s, 'training')['epochs'] = 1e6), 'spec.training.epochs', /<= 10000/],
    ['maxSteps', (s) => (sub(s, 'training')['maxSteps'] = 1e12), 'spec.training.maxSteps', /<= 100000000/],
    [
      'lr',
      (s) => (sub(s, 'training')['optimizer'] = { name: 'sgd', lr: 1e300 }),
      'spec.training.optimizer.lr',
      /<= 1000/,
    ],
    ['seed', (s) => (sub(s, 'training')['seed'] = 2 ** 40), 'spec.training.seed', /<= 4294967295/],
    [
      'checkpoint.everySteps',
      (s) => (s['checkpoint'] = { everySteps: 1e10 }),
      'spec.checkpoint.everySteps',
      /<= 100000000/,
    ],
    ['checkpoint.keep', (s) => (s['checkpoint'] = { keep: 1e6 }), 'spec.checkpoint.keep', /<= 1000/],
    [
      'template size',
      (s) => (sub(s, 'data')['template'] = `{question}${'x'.repeat(70_000)}`),
      'spec.data.template',
      /at most 65536 bytes/,
    ],
    [
      'eval.maxNewTokens',
      (s) => (s['eval'] = { sets: [{ path: '/p.tsv', format: 'mgsm-tsv', language: 'sw' }], maxNewTokens: 1e9 }),
      'spec.eval.maxNewTokens',
      /<= 131072/,
    ],
    [
      'eval.batchSize',
      (s) => (s['eval'] = { sets: [{ path: '/p.tsv', format: 'mgsm-tsv', language: 'sw' }], batchSize: 1e9 }),
      'spec.eval.batchSize',
      /<= 4096/,
    ],
    [
      'eval.sets[].limit',
      (s) => (s['eval'] = { sets: [{ mgsm: '/mgsm', limit: 1e12 }] }),
      'spec.eval.sets[0].limit',
      /<= 10000000/,
    ],
    [
      'eval template size',
      (s) => (s['eval'] = { sets: [{ mgsm: '/mgsm' }], template: `{question}${'y'.repeat(70_000)}` }),
      'spec.eval.template',
      /at most 65536 bytes/,
    ],
  ];
  it.each(cases)('refuses %s with its field path', (_name, patch, path, message) => {
    const issues = refusal(trainSpec(patch));
    expect(issues.map((i) => i.path)).toContain(path);
    expect(issues.find((i) => i.path === path)!.message).toMatch(message);
  });

  it('accepts every limit itself', () => {
    const spec = parseJobSpec(
      trainSpec((s) => {
        (sub(s, 'data')['train'] as Train[])[0]!['weight'] = SPEC_LIMITS.weight;
        s['collective'] = { timeoutSeconds: SPEC_LIMITS.timeoutSeconds };
        s['workers'] = { count: SPEC_LIMITS.workers };
        sub(s, 'data')['maxSeqLen'] = SPEC_LIMITS.maxSeqLen;
        sub(s, 'training')['globalBatchSize'] = SPEC_LIMITS.globalBatchSize;
      }),
    );
    expect(spec.spec.collective.timeoutSeconds).toBe(2_147_483);
  });

  it('bounds the analysis and EvalJob numbers', () => {
    const la = {
      apiVersion: 'polytune/v1',
      kind: 'LayerAnalysis',
      metadata: { name: 'la' },
      spec: {
        model: { path: '/m' },
        analysis: { probe: [{ mgsm: '/mgsm', languages: ['en', 'sw'] }], k: 1e6, maxSeqLen: 1e7 },
        workers: { count: 1 },
        output: { dir: '/o' },
      },
    };
    const paths = refusal(JSON.stringify(la)).map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['spec.analysis.k', 'spec.analysis.maxSeqLen']));
    const ev = {
      apiVersion: 'polytune/v1',
      kind: 'EvalJob',
      metadata: { name: 'ev' },
      spec: {
        model: { path: '/m' },
        eval: { sets: [{ mgsm: '/mgsm' }], stop: ['x'.repeat(2000)] },
        workers: { count: 9999 },
        output: { dir: '/o' },
      },
    };
    expect(refusal(JSON.stringify(ev)).map((i) => i.path)).toEqual(
      expect.arrayContaining(['spec.eval.stop[0]', 'spec.workers.count']),
    );
  });

  it('refuses a mixture of more than 10M samples an epoch before allocating it', async () => {
    const records = Array.from({ length: 20_000 }, () => ({
      kind: 'text' as const,
      question: 'q',
      output: 'a',
      language: undefined,
    }));
    expect(() => mixSamples([{ records, weight: 1000 }], 'none', 1)).toThrow(
      /spec.data.train: .*20000000 samples an epoch; at most 10000000/,
    );
    const ok = await mixSamplesAsync([{ records, weight: 2.5 }], 'none', 1);
    expect(ok.length).toBe(50_000);
    expect([...ok]).toEqual([...mixSamples([{ records, weight: 2.5 }], 'none', 1)]);
  });

  it('refuses a plan of more steps than the limit', () => {
    expect(() => planSteps(10_000_000, { epochs: 10_000, globalBatchSize: 1 } as never)).toThrow(
      /spec.training.epochs: makes 100000000000 steps/,
    );
  });

  it('keeps the DNS label rule in one place', () => {
    expect(isJobName('a'.repeat(63))).toBe(true);
    expect(isJobName('a'.repeat(64))).toBe(false);
    expect(refusal(trainSpec(() => undefined).replace('"bounds"', '"Bad_Name"')).map((i) => i.path)).toEqual([
      'metadata.name',
    ]);
  });
});

describe('errors name a file and what is wrong, never its contents', () => {
  it('a data file that is not JSON Lines', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-bounds-'));
    const file = join(dir, 'passwd.jsonl');
    writeFileSync(file, 'root:x:0:0:root:/root:/bin/bash\n');
    const err = await readDataSource({ path: file, format: 'alpaca', language: undefined }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataFormatError);
    expect((err as Error).message).toContain(`${file}:1: not valid JSON`);
    expect((err as Error).message).not.toContain('root');
  });

  it("a record's own language is checked with the spec's rule in every JSONL format, naming file:line", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-bounds-'));
    const good = { language: 'sw' };
    const bad = { language: 'Swahili; DROP' };
    const cases = [
      ['alpaca', { instruction: 'q', output: 'a' }],
      ['cctuning', { instruction: 'q', output: 'a', instruction_en: 'q' }],
      ['tokenized', { input_ids: [1, 2], labels: [1, 2] }],
      ['codeswitch', { codeswitched: 'q', text: 'a' }],
    ] as const;
    for (const [format, rec] of cases) {
      const file = join(dir, `${format}.jsonl`);
      writeFileSync(file, `${JSON.stringify({ ...rec, ...good })}\n${JSON.stringify({ ...rec, ...bad })}\n`);
      const err = await readDataSource({ path: file, format, language: undefined }).catch((e: unknown) => e);
      expect((err as Error).message, format).toContain(`${file}:2: "language" must be an ISO 639 code`);
      expect((err as Error).message, format).not.toContain('DROP');
    }
    const file = join(dir, 'choice.jsonl');
    const choice = { prompt: 'p', choices: ['a', 'b'], label: 0 };
    writeFileSync(file, `${JSON.stringify({ ...choice, ...good })}\n${JSON.stringify({ ...choice, language: 7 })}\n`);
    await expect(readChoiceRecords(file)).rejects.toThrow(`${file}:2: "language" must be an ISO 639 code`);
  });

  it("a config.json that is someone else's JSON is not quoted back", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'polytune-bounds-'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'ghp_s3cr3t-t0ken/with+symbols', auths: {} }));
    const err = await readLlamaConfig(dir).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/config.json: model_type a string of 29 characters is not supported/);
    expect((err as Error).message).not.toContain('s3cr3t');
    writeFileSync(join(dir, 'config.json'), '{"token": "s3cr3t"');
    const bad = await readLlamaConfig(dir).catch((e: unknown) => e);
    expect((bad as Error).message).toMatch(/config.json: not valid JSON/);
    expect((bad as Error).message).not.toContain('s3cr3t');
  });

  it('jsonSyntaxProblem keeps the position and drops the quote', () => {
    let e: unknown;
    try {
      JSON.parse('secret-value');
    } catch (x) {
      e = x;
    }
    expect(String((e as Error).message)).toContain('secret');
    expect(jsonSyntaxProblem(e)).not.toContain('secret');
    expect(jsonSyntaxProblem(e)).toMatch(/^not valid JSON/);
  });
});
