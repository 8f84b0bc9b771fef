#!/usr/bin/env node
/**
 * `npm run experiment:mini-slam`: a miniature reproduction of SLAM's claim on a CPU, every number
 * from polytune's own jobs (`coordinator submit SPEC --local-workers N --watch`), see
 * docs/experiments/mini-slam.md.
 *
 *   node dist/scripts/mini-slam/run.js [--out DIR] [--trial] [--cache DIR] [--base-only] [--publish DIR]
 *
 * `--trial`: the same pipeline on a fraction of the data (minutes); `--base-only`: stop after the
 * base model's evaluation (is the gap there?); `--publish docs/experiments/mini-slam`: copy the
 * JSON, plots and heatmap there and write the tables into docs/experiments/mini-slam.md;
 * `--report-only`: only the tables, plots and publishing, from `DIR/results.json` and `DIR/evals/`.
 *
 * 1. data (data.ts), a vocabulary cut to it (vocab.ts), a random-init LLaMA;
 * 2. the base model: pretraining from scratch (method full), cached under
 *    `--cache/mini-slam-base-<hash of its inputs>`;
 * 3. the layer analysis of the base model (heatmap);
 * 4. the tuning arms (specs.ts), then an EvalJob per arm on the held-out problems;
 * 5. `DIR/results.json` (what every table and plot is made from), `DIR/results.md` (the tables),
 *    `DIR/evals/<arm>.json` (the EvalJobs' own JSON), `DIR/logs/` (each job's output).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { cp, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { applyTemplate, type PromptTokenizer } from '../../worker/data/encode.js';
import { bundledTokenizerDir, writeRandomModel } from '../../worker/commands/init-model.js';
import { PRESET_CONFIGS } from '../../worker/model/presets.js';
import { readSafetensorsHeader } from '../../worker/model/safetensors.js';
import { ModelTokenizer } from '../../worker/model/tokenizer.js';
import {
  answerRecords,
  corpusTexts,
  makeProblemSets,
  pretrainRecords,
  translationRecords,
  writeProblemTsv,
} from './data.js';
import { SETTING, trialSetting, type Setting } from './setting.js';
import { analysisSpec, ARM_TITLES, ARMS, armSpec, evalSpec, pretrainSpec, type Arm, type Paths } from './specs.js';
import { accuracyTable, costTable, evalJsonSchema, type ArmRow, type EvalJson } from './table.js';
import { cutTokenizer } from './vocab.js';
import { writePlots, type LossCurves } from './plots.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const CLI = join(ROOT, 'dist/coordinator/cli.js');

const say = (line: string): void =>
  void process.stdout.write(`[mini-slam ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

export interface JobRun {
  readonly wallSeconds: number;
  /** [step, loss] as the watch printed them (the plain progress lines). */
  readonly loss: [number, number][];
  /** The median of the training tokens/s the job reported at its steps (one step's rate is noisy). */
  readonly tokensPerSecond: number;
  readonly chosenLayers?: number[];
}

/** Parses `coordinator submit --watch`'s plain progress lines (coordinator/views/progress-view.ts). */
export function parseWatch(text: string): Omit<JobRun, 'wallSeconds'> {
  const loss: [number, number][] = [];
  const rates: number[] = [];
  let chosenLayers: number[] | undefined;
  for (const line of text.split('\n')) {
    const m = /\bstep (\d+)\/\d+\s+loss (\S+)/.exec(line);
    if (m && Number.isFinite(Number(m[2]))) {
      const step = Number(m[1]);
      if (loss.length === 0 || loss[loss.length - 1]![0] !== step) loss.push([step, Number(m[2])]);
    }
    const r = /\s([\d.]+) tok\/s/.exec(line);
    if (r && m) rates.push(Number(r[1]));
    const c = /chosen layers: ([\d, ]+)/.exec(line);
    if (c) chosenLayers = c[1]!.split(',').map((x) => Number(x.trim()));
  }
  rates.sort((a, b) => a - b);
  const tokensPerSecond = rates.length === 0 ? 0 : rates[Math.floor(rates.length / 2)]!;
  return { loss, tokensPerSecond, ...(chosenLayers ? { chosenLayers } : {}) };
}

/** Writes the spec as YAML and runs it to its end on an embedded local cluster. */
async function submit(spec: Record<string, unknown>, file: string, log: string, workers: number): Promise<JobRun> {
  await mkdir(dirname(file), { recursive: true });
  await mkdir(dirname(log), { recursive: true });
  await writeFile(file, stringify(spec));
  const started = performance.now();
  const out = createWriteStream(log);
  let text = '';
  const code = await new Promise<number | null>((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, 'submit', file, '--local-workers', String(workers), '--watch'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const take = (chunk: Buffer): void => {
      text += chunk.toString('utf8');
      out.write(chunk);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', reject);
    child.on('close', (c) => resolvePromise(c));
  });
  await new Promise<void>((r) => out.end(r));
  const wallSeconds = (performance.now() - started) / 1000;
  if (code !== 0) throw new Error(`${file}: coordinator submit exited with ${code}; see ${log}:\n${text.slice(-2000)}`);
  return { wallSeconds, ...parseWatch(text) };
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Parameters in a safetensors file (its header's shapes). */
async function parameterCount(file: string): Promise<number> {
  const h = await readSafetensorsHeader(file);
  return h.tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
}

function modelConfig(s: Setting, vocabSize: number): Record<string, unknown> {
  const m = s.model;
  return {
    ...PRESET_CONFIGS.tiny,
    vocab_size: vocabSize,
    hidden_size: m.hidden,
    intermediate_size: m.intermediate,
    num_hidden_layers: m.layers,
    num_attention_heads: m.heads,
    num_key_value_heads: m.kvHeads,
    head_dim: m.hidden / m.heads,
    max_position_embeddings: 256,
  };
}

const sha = (x: string | Buffer): string => createHash('sha256').update(x).digest('hex');

export interface Results {
  readonly setting: Setting;
  readonly trial: boolean;
  readonly vocab: { readonly size: number; readonly source: number };
  readonly parameters: number;
  readonly base: { readonly cacheKey: string; readonly cached: boolean; readonly pretrain?: JobRun };
  readonly analysis: { readonly chosenLayers: number[]; readonly wallSeconds: number };
  readonly arms: Record<Arm, { train?: JobRun; trainable: number; evalWallSeconds: number; chosenLayers?: number[] }>;
  readonly stageSeconds: Record<string, number>;
}

/** The rows of the tables from the results and the EvalJobs' JSON. */
export function armRows(results: Results, evals: Record<Arm, EvalJson>): ArmRow[] {
  return ARMS.map((arm) => {
    const a = results.arms[arm];
    return {
      arm,
      title: ARM_TITLES[arm],
      eval: evals[arm],
      trainable: a.trainable,
      total: results.parameters,
      wallSeconds: a.train?.wallSeconds ?? 0,
      tokensPerSecond: a.train?.tokensPerSecond ?? 0,
    };
  });
}

export function armCurves(results: Results): LossCurves {
  return ARMS.flatMap((arm) => {
    const t = results.arms[arm].train;
    return t ? [{ series: ARM_TITLES[arm], loss: t.loss }] : [];
  });
}

export function pretrainCurve(results: Results): LossCurves {
  return results.base.pretrain ? [{ series: 'pretraining (method full)', loss: results.base.pretrain.loss }] : [];
}

export const TABLE_BEGIN = '<!-- mini-slam:accuracy-table (written by the experiment; do not edit) -->';
export const TABLE_END = '<!-- /mini-slam:accuracy-table -->';
export const COST_BEGIN = '<!-- mini-slam:cost-table -->';
export const COST_END = '<!-- /mini-slam:cost-table -->';

/** Replaces the text between `begin` and `end` in `doc`. */
export function replaceBetween(doc: string, begin: string, end: string, body: string): string {
  const i = doc.indexOf(begin);
  const j = doc.indexOf(end);
  if (i < 0 || j < i) throw new Error(`the doc has no ${begin} ... ${end} section`);
  return `${doc.slice(0, i + begin.length)}\n${body}${doc.slice(j)}`;
}

/**
 * Copies what the doc shows into `dir` (docs/experiments/mini-slam/): the EvalJobs' JSON, results.json,
 * the plots and the base model's layer-analysis heatmap; writes the tables into `dir`.md.
 */
async function publish(out: string, dir: string, rows: ArmRow[]): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(dir, 'evals'), { recursive: true });
  await cp(join(out, 'evals'), join(dir, 'evals'), { recursive: true });
  await cp(join(out, 'results.json'), join(dir, 'results.json'));
  await cp(join(out, 'plots'), dir, { recursive: true });
  for (const ext of ['svg', 'png', 'json'])
    await cp(join(out, `analysis/analysis.${ext}`), join(dir, `layer-analysis.${ext}`));
  const docFile = `${dir}.md`;
  let doc = await readFile(docFile, 'utf8');
  doc = replaceBetween(doc, TABLE_BEGIN, TABLE_END, accuracyTable(rows));
  doc = replaceBetween(doc, COST_BEGIN, COST_END, costTable(rows));
  await writeFile(docFile, doc);
  say(`published to ${dir} and ${docFile}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: join(ROOT, 'runs/mini-slam') },
      cache: { type: 'string', default: join(ROOT, '.cache/experiments') },
      trial: { type: 'boolean', default: false },
      'base-only': { type: 'boolean', default: false },
      publish: { type: 'string' },
      'report-only': { type: 'boolean', default: false },
    },
  });
  const s = values.trial ? trialSetting(SETTING) : SETTING;
  const out = resolve(values.out!);
  if (values['report-only']) {
    const results = JSON.parse(await readFile(join(out, 'results.json'), 'utf8')) as Results;
    // The curves and rates again from the jobs' logs (the parser may have changed since).
    for (const arm of ARMS) {
      const t = results.arms[arm].train;
      if (t) results.arms[arm].train = { ...t, ...parseWatch(await readFile(join(out, `logs/${arm}.log`), 'utf8')) };
    }
    await report(out, results, await readEvals(join(out, 'evals')), values.publish);
    return;
  }
  const stageSeconds: Record<string, number> = {};
  const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const r = await f();
    stageSeconds[name] = (performance.now() - t0) / 1000;
    say(`${name}: ${stageSeconds[name]!.toFixed(0)} s`);
    return r;
  };
  await rm(out, { recursive: true, force: true });
  const paths: Paths = { data: join(out, 'data'), test: join(out, 'data/test'), probe: join(out, 'data/probe') };

  // 1. Data, vocabulary, the random-init model.
  const initDir = join(out, 'model-init');
  const { vocab, parameters } = await timed('data', async () => {
    const sets = makeProblemSets(s.sizes, s.seed);
    const tokDir = bundledTokenizerDir();
    const source = JSON.parse(await readFile(join(tokDir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    const tcfg = JSON.parse(await readFile(join(tokDir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    const cut = cutTokenizer(
      source,
      tcfg,
      corpusTexts(sets, (q) => applyTemplate('slam', q)),
    );
    const tokFiles = join(out, 'tokenizer');
    await mkdir(tokFiles, { recursive: true });
    await writeFile(join(tokFiles, 'tokenizer.json'), JSON.stringify(cut.json));
    await writeFile(join(tokFiles, 'tokenizer_config.json'), JSON.stringify(tcfg, null, 2) + '\n');
    const params = await writeRandomModel(initDir, modelConfig(s, cut.vocabSize), s.seed, [
      join(tokFiles, 'tokenizer.json'),
      join(tokFiles, 'tokenizer_config.json'),
    ]);
    const tokenizer = await ModelTokenizer.load(initDir);
    if (tokenizer.eosId === undefined) throw new Error(`${initDir}: the tokenizer has no EOS token`);
    const encoder: PromptTokenizer = {
      encode: (t, o) => tokenizer.encode(t, o),
      eosId: tokenizer.eosId,
      addBosDefault: tokenizer.addBosDefault,
    };
    await mkdir(paths.data, { recursive: true });
    const pretrain = pretrainRecords(sets.pretrainEnglish, sets.pretrainPlain, encoder, 'slam', s.maxSeqLen);
    await writeFile(join(paths.data, 'pretrain.jsonl'), pretrain);
    await writeFile(join(paths.data, 'tune-answers.jsonl'), answerRecords(sets.tune));
    await writeFile(join(paths.data, 'tune-translate.jsonl'), translationRecords(sets.tune));
    await writeProblemTsv(paths.test, sets.test);
    await writeProblemTsv(paths.probe, sets.probe);
    say(`vocabulary ${cut.vocabSize} of ${cut.sourceVocabSize} tokens; model ${params} parameters`);
    return { vocab: { size: cut.vocabSize, source: cut.sourceVocabSize }, parameters: params };
  });

  // 2. The base model, cached by a hash of everything it is made from.
  const pretrainFile = join(paths.data, 'pretrain.jsonl');
  const cacheKey = sha(
    JSON.stringify({
      spec: pretrainSpec(s, 'MODEL', 'DATA', 'OUT'),
      data: sha(await readFile(pretrainFile)),
      weights: sha(await readFile(join(initDir, 'model.safetensors'))),
      config: await readFile(join(initDir, 'config.json'), 'utf8'),
      tokenizer: sha(await readFile(join(initDir, 'tokenizer.json'))),
    }),
  ).slice(0, 16);
  const baseDir = join(resolve(values.cache!), `mini-slam-base-${cacheKey}`);
  const cached = await exists(join(baseDir, 'model.safetensors'));
  let pretrain: JobRun;
  if (cached) {
    say(`base model: cached at ${baseDir}`);
    pretrain = JSON.parse(await readFile(join(baseDir, 'pretrain.json'), 'utf8')) as JobRun;
  } else {
    pretrain = await timed('pretrain', () =>
      submit(
        pretrainSpec(s, initDir, pretrainFile, join(out, 'pretrain')),
        join(out, 'specs/pretrain.yaml'),
        join(out, 'logs/pretrain.log'),
        s.workers,
      ),
    );
    // Into the cache under a temporary name, then renamed: a cached directory is always whole.
    const tmp = `${baseDir}.tmp-${process.pid}`;
    await mkdir(dirname(baseDir), { recursive: true });
    await rm(tmp, { recursive: true, force: true });
    await cp(join(out, 'pretrain/final'), tmp, { recursive: true });
    await writeFile(join(tmp, 'pretrain.json'), JSON.stringify(pretrain, null, 2) + '\n');
    await rm(baseDir, { recursive: true, force: true });
    await rename(tmp, baseDir);
  }

  // 3. The layer analysis of the base model.
  if (values['base-only']) {
    await timed('eval none', () =>
      submit(
        evalSpec('none', s, baseDir, paths, join(out, 'eval/none')),
        join(out, 'specs/eval-none.yaml'),
        join(out, 'logs/eval-none.log'),
        s.workers,
      ),
    );
    process.stdout.write(await readFile(join(out, 'eval/none/eval/final.md'), 'utf8'));
    return;
  }
  const analysisRun = await timed('analysis', () =>
    submit(
      analysisSpec(s, baseDir, paths, join(out, 'analysis')),
      join(out, 'specs/analysis.yaml'),
      join(out, 'logs/analysis.log'),
      s.workers,
    ),
  );
  const analysisJson = JSON.parse(await readFile(join(out, 'analysis/analysis.json'), 'utf8')) as {
    chosenLayers: number[];
  };

  // 4. The arms, then their evaluations.
  const arms = {} as Results['arms'];
  const evals = {} as Record<Arm, EvalJson>;
  await mkdir(join(out, 'evals'), { recursive: true });
  for (const arm of ARMS) {
    let train: JobRun | undefined;
    let modelDir = baseDir;
    let trainable = 0;
    if (arm !== 'none') {
      const dir = join(out, 'arms', arm);
      train = await timed(`train ${arm}`, () =>
        submit(
          armSpec(arm, s, baseDir, paths, dir),
          join(out, `specs/${arm}.yaml`),
          join(out, `logs/${arm}.log`),
          s.workers,
        ),
      );
      modelDir = join(dir, 'final');
      trainable = arm === 'two-stage' ? parameters : await parameterCount(join(modelDir, 'trainable.safetensors'));
    }
    const evalDir = join(out, 'eval', arm);
    const ev = await timed(`eval ${arm}`, () =>
      submit(
        evalSpec(arm, s, modelDir, paths, evalDir),
        join(out, `specs/eval-${arm}.yaml`),
        join(out, `logs/eval-${arm}.log`),
        s.workers,
      ),
    );
    const raw = await readFile(join(evalDir, 'eval/final.json'), 'utf8');
    evals[arm] = evalJsonSchema.parse(JSON.parse(raw));
    await writeFile(join(out, 'evals', `${arm}.json`), raw);
    arms[arm] = {
      ...(train ? { train } : {}),
      trainable,
      evalWallSeconds: ev.wallSeconds,
      ...(train?.chosenLayers ? { chosenLayers: train.chosenLayers } : {}),
    };
  }

  const results: Results = {
    setting: s,
    trial: values.trial === true,
    vocab,
    parameters,
    base: { cacheKey, cached, pretrain },
    analysis: { chosenLayers: analysisJson.chosenLayers, wallSeconds: analysisRun.wallSeconds },
    arms,
    stageSeconds,
  };
  await writeFile(join(out, 'results.json'), JSON.stringify(results, null, 2) + '\n');
  await report(out, results, evals, values.publish);
  say(
    `done in ${Object.values(stageSeconds)
      .reduce((a, b) => a + b, 0)
      .toFixed(0)} s; results in ${out}`,
  );
}

/** The EvalJobs' JSON copied to `dir/<arm>.json`, checked. */
export async function readEvals(dir: string): Promise<Record<Arm, EvalJson>> {
  const out = {} as Record<Arm, EvalJson>;
  for (const arm of ARMS) {
    const file = join(dir, `${arm}.json`);
    const r = evalJsonSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
    if (!r.success) throw new Error(`${file}: not an EvalJob's final.json: ${r.error.message}`);
    out[arm] = r.data;
  }
  return out;
}

/** The tables (results.md), the plots, and with `publishDir` the doc's copy (`--report-only` redoes just this). */
async function report(out: string, results: Results, evals: Record<Arm, EvalJson>, publishDir?: string): Promise<void> {
  const rows = armRows(results, evals);
  await writeFile(join(out, 'results.md'), `${accuracyTable(rows)}\n${costTable(rows)}`);
  await writePlots(join(out, 'plots'), rows, armCurves(results), pretrainCurve(results));
  if (publishDir) await publish(out, resolve(publishDir), rows);
  process.stdout.write(`\n${accuracyTable(rows)}\n${costTable(rows)}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`mini-slam: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
