/**
 * The `choice` eval set kind: records of prompt and candidate labels, the prediction is the label
 * with the highest mean per-token log-prob (worker/eval/choice.ts), checked against the same
 * quantity computed from the full logits and a log-softmax here; accuracy per language through
 * `evaluate`; bad records refused with file and line.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readChoiceRecords } from '../../common/choice-records.js';
import { evalSchema } from '../../common/eval-spec.js';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { scoreChoices } from '../../worker/eval/choice.js';
import { evaluate } from '../../worker/eval/evaluate.js';
import { readProblems } from '../../worker/eval/problems.js';
import { LlamaModel } from '../../worker/model/llama.js';
import { ModelTokenizer } from '../../worker/model/tokenizer.js';

let dir: string;
let model: LlamaModel;
let tokenizer: ModelTokenizer;

const CHOICES = [' yes', ' maybe', ' no'];
const record = (prompt: string, label: number | string, extra = {}): string =>
  JSON.stringify({ prompt, choices: CHOICES, label, ...extra });

beforeAll(async () => {
  await initBackend('wasm');
  dir = await mkdtemp(join(tmpdir(), 'polytune-choice-'));
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 2, write: () => {} });
  model = await LlamaModel.load(join(dir, 'model'));
  tokenizer = await ModelTokenizer.load(join(dir, 'model'), model.config);
  const sw = ['Jibu: ndiyo au hapana?', 'Paka ni mnyama. Answer:', 'Maji ni baridi?'];
  const de = ['Ist das wahr? Antwort:', 'Der Hund bellt. Answer:'];
  await writeFile(join(dir, 'xnli-sw.jsonl'), sw.map((p, i) => record(p, i % 3)).join('\n') + '\n');
  await writeFile(join(dir, 'xnli-de.jsonl'), de.map((p) => record(p, ' no')).join('\n') + '\n');
}, 120_000);
afterAll(async () => {
  model.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** Mean log-prob of `cont` after `context`, from the full logits (independent of the loss head). */
function meanLogProb(context: number[], cont: number[]): number {
  const ids = [...context, ...cont];
  const logits = tf.tidy(() => model.logits(tf.tensor2d(ids, [1, ids.length], 'int32')).arraySync()[0]!);
  let sum = 0;
  cont.forEach((tok, k) => {
    const row = logits[context.length + k - 1]!;
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0));
    sum += row[tok]! - lse;
  });
  return sum / cont.length;
}

describe('choice sets', () => {
  it('scores each candidate by its mean per-token log-prob and predicts the highest', async () => {
    const problems = await readProblems([{ path: join(dir, 'xnli-sw.jsonl'), format: 'choice', language: 'sw' }]);
    expect(problems.map((p) => p.label)).toEqual([0, 1, 2]);
    const want = problems.map((p) => {
      const context = tokenizer.encode(p.question, { addEos: false });
      return CHOICES.map((c) => meanLogProb(context, tokenizer.encode(c, { addBos: false, addEos: false })));
    });
    for (const batchSize of [1, 4]) {
      const scores = scoreChoices(model, tokenizer, problems, batchSize);
      problems.forEach((_, i) => {
        scores[i]!.meanLogProbs.forEach((v, k) => expect(v).toBeCloseTo(want[i]![k]!, 4));
        expect(scores[i]!.prediction).toBe(want[i]!.indexOf(Math.max(...want[i]!)));
      });
    }
  });

  it('reports accuracy per language through evaluate, with the predictions', async () => {
    const spec = evalSchema.parse({
      sets: [
        { path: join(dir, 'xnli-sw.jsonl'), format: 'choice', language: 'sw', benchmark: 'xnli' },
        { path: join(dir, 'xnli-de.jsonl'), format: 'choice', language: 'de', benchmark: 'xnli' },
      ],
      batchSize: 4,
    });
    const problems = await readProblems(spec.sets);
    const scores = scoreChoices(model, tokenizer, problems, 4);
    const report = await evaluate({
      model,
      tokenizer,
      spec,
      problems,
      rank: 0,
      worldSize: 1,
      reduce: (v) => Promise.resolve(v),
      outputDir: dir,
      name: 'final',
      step: 0,
    });
    const correct = (lang: string): number =>
      problems.filter((p, i) => p.language === lang && scores[i]!.prediction === p.label).length;
    expect(report.benchmarks).toEqual([
      {
        benchmark: 'xnli',
        languages: [
          { language: 'sw', correct: correct('sw'), total: 3, accuracy: correct('sw') / 3 },
          { language: 'de', correct: correct('de'), total: 2, accuracy: correct('de') / 2 },
        ],
        average: (correct('sw') / 3 + correct('de') / 2) / 2,
      },
    ]);
    const lines = (await readFile(join(dir, 'eval', 'final.predictions.rank-0.jsonl'), 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(5);
    expect(JSON.parse(lines[3]!)).toMatchObject({ benchmark: 'xnli', language: 'de', answer: ' no' });
  });

  it('refuses a bad record with the file and line', async () => {
    const file = join(dir, 'bad.jsonl');
    await writeFile(file, record('ok', 0) + '\n' + record('bad', ' nope') + '\n');
    await expect(readChoiceRecords(file)).rejects.toThrow(/bad\.jsonl:2.*"label" must be an index/);
    await writeFile(file, JSON.stringify({ prompt: 'x', choices: ['only'], label: 0 }) + '\n');
    await expect(readChoiceRecords(file)).rejects.toThrow(/"choices" must be 2 to 64 non-empty strings/);
  });
});
