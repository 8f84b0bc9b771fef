/**
 * The `choice` eval set kind: records of prompt and candidate labels, the prediction is the label
 * with the highest mean per-token log-prob (worker/eval/choice.ts), checked against the same
 * quantity computed from the full logits and a log-softmax here; accuracy per language through
 * `evaluate`; a method's inference (CC-Tuning's transform, LinguaLIFT's prefix) scored as the prefill
 * of generation computes it; bad records refused with file and line.
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
import { ccTransformHooks, type CcTransform } from '../../worker/methods/cctuning.js';
import { generateIds, type PromptPrefixer } from '../../worker/model/generate.js';
import type { PromptHooks } from '../../worker/model/hooks.js';
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

function seeded(n: number, seed: number, scale: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}

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

  it("scores with a method's hooksFor and prefix as the prefill of generation does", async () => {
    // Candidates of one token each: their log-prob is the prefill's next-token log-softmax in generation.
    const single = [5, 9, 14, 23, 40, 77]
      .map((t) => tokenizer.decode([t]))
      .filter((c) => c.length > 0 && tokenizer.encode(c, { addBos: false, addEos: false }).length === 1)
      .slice(0, 3);
    expect(single.length).toBeGreaterThanOrEqual(2);
    const cand = single.map((c) => tokenizer.encode(c, { addBos: false, addEos: false })[0]!);
    const questions = ['Paka ni mnyama. Answer:', 'Maji?', 'Ist das wahr? Antwort: ja oder nein'];
    const problems = questions.map((q, i) => ({
      benchmark: 'x',
      language: 'sw',
      index: i,
      question: q,
      answer: '0',
      choices: single,
      label: 0,
    }));
    const L = model.config.numHiddenLayers;
    const H = model.config.hiddenSize;
    const cc: CcTransform = {
      decisionMaker: seeded(L * H, 3, 2),
      transform: seeded(H * H, 5, 8),
      injectAfterLayer: 0,
    };
    const hooksFor: PromptHooks = (prompts, lastColumn) => ccTransformHooks(model, cc, prompts, lastColumn).hooks;
    // A prefix of 1 to 3 vectors a question (left-padded to 3), fixed by the question's length.
    const prefixer: PromptPrefixer = {
      prefix: (qs) => ({
        vectors: tf.tensor3d(Float32Array.from(qs.flatMap((q) => Array.from(seeded(3 * H, q.length, 0.5)))), [
          qs.length,
          3,
          H,
        ]),
        pad: Int32Array.from(qs, (q) => q.length % 3),
      }),
    };
    const logSoftmax = (row: Float32Array, t: number): number => {
      const max = Math.max(...row);
      return row[t]! - (max + Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0)));
    };
    for (const inference of [{ hooksFor }, { prefixer }]) {
      const scores = scoreChoices(model, tokenizer, problems, 4, inference);
      const prompts = questions.map((q) => tokenizer.encode(q, { addEos: false }));
      const prefix = 'prefixer' in inference ? prefixer.prefix(questions) : undefined;
      const first: Float32Array[] = [];
      const V = model.config.vocabSize;
      await generateIds(model, prompts, {
        maxNewTokens: 1,
        eosIds: [],
        ...('hooksFor' in inference ? { hooksFor } : {}),
        ...(prefix ? { prefix } : {}),
        onLogits: (step, l) => {
          if (step === 0) for (let b = 0; b < prompts.length; b++) first.push(l.slice(b * V, (b + 1) * V));
        },
      }).finally(() => prefix?.vectors.dispose());
      const plain = scoreChoices(model, tokenizer, problems, 4);
      problems.forEach((_, i) => {
        scores[i]!.meanLogProbs.forEach((v, k) => expect(v).toBeCloseTo(logSoftmax(first[i]!, cand[k]!), 3));
        // The method matters: the bare model scores otherwise.
        expect(Math.abs(plain[i]!.meanLogProbs[0]! - scores[i]!.meanLogProbs[0]!)).toBeGreaterThan(1e-3);
      });
    }
  });

  it('refuses a bad record with the file and line', async () => {
    const file = join(dir, 'bad.jsonl');
    await writeFile(file, record('ok', 0) + '\n' + record('bad', ' nope') + '\n');
    await expect(readChoiceRecords(file)).rejects.toThrow(/bad\.jsonl:2.*"label" must be an index/);
    await writeFile(file, JSON.stringify({ prompt: 'x', choices: ['only'], label: 0 }) + '\n');
    await expect(readChoiceRecords(file)).rejects.toThrow(/"choices" must be 2 to 64 non-empty strings/);
  });
});
