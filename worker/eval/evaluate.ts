/**
 * Scoring a model on MGSM / MSVAMP, and on classification sets (`choice`: choice.ts, by the mean
 * log-prob of each candidate instead of generation), spread across the ranks of a job.
 *
 * Each rank takes every `worldSize`-th problem (problem i goes to rank i mod worldSize: a
 * deterministic share that mixes languages, so ranks finish together), generates greedily
 * (worker/model/generate.ts, left-padded batches with a KV cache), extracts the last number
 * (answer.ts) and counts correct/total per benchmark and language. The counts are summed over the
 * ranks with the job's collective, in one vector whose layout every rank derives from the same
 * problem list, so every rank ends with the same table. Rank 0 writes it as JSON and Markdown;
 * every rank writes its own predictions.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { EvalSpec } from '../../common/eval-spec.js';
import { CHAT_TEMPLATE_NAME } from '../../common/jobspec.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { applyTemplate } from '../data/encode.js';
import { generate, type PromptPrefixer } from '../model/generate.js';
import type { ForwardHooks, PromptHooks } from '../model/hooks.js';
import type { LlamaModel } from '../model/llama.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import { extractLastNumber, isCorrect, parseGold } from './answer.js';
import { scoreChoices } from './choice.js';
import { writeFileAtomically } from '../train/atomic-dir.js';
import type { Problem } from './problems.js';
import { evalMarkdown, type BenchmarkScore, type EvalReport, type LanguageScore } from './report.js';

/** Sums a vector over the ranks; identical on every rank. */
export type ReduceFn = (data: Float32Array) => Promise<Float32Array>;

/** One scored problem, a line of `eval/<name>.predictions.rank-R.jsonl`. */
export interface Prediction {
  readonly benchmark: string;
  readonly language: string;
  readonly index: number;
  readonly answer: string;
  /** The last number of the output; of a `choice` problem, the index of the chosen candidate. */
  readonly prediction: number | null;
  readonly correct: boolean;
  readonly output: string;
}

export interface EvaluateOptions {
  readonly model: LlamaModel;
  readonly tokenizer: ModelTokenizer;
  /** The trained method's forward hooks, used in generation and choice scoring. @default none */
  readonly hooks?: ForwardHooks;
  /** Hooks made per batch of prompts (CC-Tuning's transform, `eval.ccTransform`). @default none */
  readonly hooksFor?: PromptHooks;
  /** The trained method's prefix of each question (LinguaLIFT), at the prefill. @default none */
  readonly prefixer?: PromptPrefixer;
  readonly spec: EvalSpec;
  /** All problems, in the same order on every rank (problems.ts `readProblems`). */
  readonly problems: readonly Problem[];
  readonly rank: number;
  readonly worldSize: number;
  readonly reduce: ReduceFn;
  /** Where `eval/` goes (the job's output.dir). */
  readonly outputDir: string;
  readonly name: string;
  readonly step: number;
  /** Problems this rank has scored so far, of its share. */
  readonly onProgress?: (done: number, share: number) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
}

const predictionOf = (p: Problem): Pick<Prediction, 'benchmark' | 'language' | 'index' | 'answer'> => ({
  benchmark: p.benchmark,
  language: p.language,
  index: p.index,
  answer: p.answer,
});

/** The ordered (benchmark, language) groups of a problem list. */
function groupsOf(problems: readonly Problem[]): { key: string; benchmark: string; language: string }[] {
  const seen = new Map<string, { key: string; benchmark: string; language: string }>();
  for (const p of problems) {
    const key = `${p.benchmark}/${p.language}`;
    if (!seen.has(key)) seen.set(key, { key, benchmark: p.benchmark, language: p.language });
  }
  return [...seen.values()];
}

/** The prompt text of a question under the eval template (`chat`: the model's chat template). */
function promptOf(
  tokenizer: ModelTokenizer,
  template: string,
  question: string,
): { text: string; addBos: boolean | undefined } {
  if (template === CHAT_TEMPLATE_NAME)
    return { text: tokenizer.renderChat([{ role: 'user', content: question }], true), addBos: false };
  return { text: applyTemplate(template, question), addBos: undefined };
}

/** Scores this rank's share, sums the counts over the ranks, and writes the outputs. */
export async function evaluate(options: EvaluateOptions): Promise<EvalReport> {
  const { model, tokenizer, spec, problems, rank, worldSize } = options;
  const log = options.logger ?? silentLogger;
  const started = performance.now();
  const groups = groupsOf(problems);
  const groupIndex = new Map(groups.map((g, i) => [g.key, i]));
  const counts = new Float32Array(2 * groups.length); // [correct, total] per group
  const mine = problems.filter((_, i) => i % worldSize === rank);
  const predictions: Prediction[] = [];

  const count = (p: Problem, correct: boolean): void => {
    const g = groupIndex.get(`${p.benchmark}/${p.language}`)!;
    counts[2 * g] = counts[2 * g]! + (correct ? 1 : 0);
    counts[2 * g + 1] = counts[2 * g + 1]! + 1;
  };
  // Classification sets (`choice`): scored, not generated (choice.ts).
  const chosen = mine.filter((p) => p.choices !== undefined);
  const generated = mine.filter((p) => p.choices === undefined);
  for (let b = 0; b < chosen.length; b += spec.batchSize) {
    const batch = chosen.slice(b, b + spec.batchSize);
    scoreChoices(model, tokenizer, batch, spec.batchSize, options).forEach((s, j) => {
      const p = batch[j]!;
      const correct = s.prediction === p.label;
      count(p, correct);
      const output = p.choices![s.prediction]!;
      predictions.push({ ...predictionOf(p), prediction: s.prediction, correct, output });
    });
    options.onProgress?.(Math.min(b + spec.batchSize, chosen.length), mine.length);
    await new Promise((r) => setImmediate(r));
  }
  for (let b = 0; b < generated.length; b += spec.batchSize) {
    const batch = generated.slice(b, b + spec.batchSize);
    // Rows of one generate() call share add_bos; with `chat` none gets BOS, otherwise the default.
    const prompts = batch.map((p) => promptOf(tokenizer, spec.template, p.question));
    const addBos = prompts[0]!.addBos;
    // A method's prefix is made from the question itself; with `promptIds` it stands for the prompt.
    const prefixer = options.prefixer;
    const prefix = prefixer?.prefix(batch.map((p) => p.question));
    const outs = await generate(
      model,
      tokenizer,
      prefixer?.promptIds ? batch.map(() => prefixer.promptIds!) : prompts.map((p) => p.text),
      {
        maxNewTokens: spec.maxNewTokens,
        stop: spec.stop,
        ...(addBos !== undefined ? { addBos } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.hooks ? { hooks: options.hooks } : {}),
        ...(options.hooksFor ? { hooksFor: options.hooksFor } : {}),
        ...(prefix ? { prefix } : {}),
      },
    ).finally(() => prefix?.vectors.dispose());
    batch.forEach((p, j) => {
      const output = outs[j]!.text;
      const prediction = extractLastNumber(output);
      const correct = isCorrect(prediction, parseGold(p.answer));
      count(p, correct);
      predictions.push({ ...predictionOf(p), prediction: prediction ?? null, correct, output });
    });
    options.onProgress?.(chosen.length + Math.min(b + spec.batchSize, generated.length), mine.length);
  }

  const summed = await options.reduce(counts);
  const benchmarks: BenchmarkScore[] = [];
  for (const [i, g] of groups.entries()) {
    const correct = Math.round(summed[2 * i]!);
    const total = Math.round(summed[2 * i + 1]!);
    let bench = benchmarks.find((x) => x.benchmark === g.benchmark);
    if (!bench) {
      bench = { benchmark: g.benchmark, languages: [], average: 0 };
      benchmarks.push(bench);
    }
    (bench.languages as LanguageScore[]).push({
      language: g.language,
      correct,
      total,
      accuracy: total > 0 ? correct / total : 0,
    });
  }
  const report: EvalReport = {
    name: options.name,
    step: options.step,
    benchmarks: benchmarks.map((x) => ({
      ...x,
      average: x.languages.reduce((s, l) => s + l.accuracy, 0) / Math.max(1, x.languages.length),
    })),
    maxNewTokens: spec.maxNewTokens,
    template: spec.template,
    worldSize,
    seconds: (performance.now() - started) / 1000,
  };

  const dir = join(options.outputDir, 'eval');
  await mkdir(dir, { recursive: true });
  await writeFileAtomically(
    join(dir, `${options.name}.predictions.rank-${rank}.jsonl`),
    predictions.map((p) => JSON.stringify(p)).join('\n') + (predictions.length ? '\n' : ''),
  );
  if (rank === 0) {
    await writeFileAtomically(join(dir, `${options.name}.json`), JSON.stringify(report, null, 2) + '\n');
    await writeFileAtomically(join(dir, `${options.name}.md`), evalMarkdown(report));
  }
  log.info('evaluation done', {
    name: options.name,
    problems: problems.length,
    mine: mine.length,
    seconds: report.seconds,
    average: Object.fromEntries(report.benchmarks.map((x) => [x.benchmark, x.average])),
  });
  return report;
}

/** `eval/step-00000200` for a step, `final` at the end. */
export function evalName(step: number, final: boolean): string {
  return final ? 'final' : `step-${String(step).padStart(8, '0')}`;
}
