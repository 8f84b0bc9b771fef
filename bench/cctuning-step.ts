/**
 * `npm run bench:cctuning -- [--backend wasm] [--batch 4] [--steps 5]`: the cost the CC-Tuning
 * paper leaves open, the extra English pass per step. On the quickstart-size model (the tiny
 * preset: 8 layers, hidden 64, a 32000-token tokenizer) and word problems in ten languages, in one
 * process, on the same micro-batches:
 *
 * - sft: the trainer's step (worker/train/step.ts `computeStepGradients`) with the plain loss
 *   (`model.nllRowSums`) on the non-English records, every model tensor trainable;
 * - cctuning: the same step with the method's `prepare` (the English pass, no tape) and `loss`
 *   (Decision Maker, injection), the Decision Maker trainable too;
 * - englishPass: the English pass (`prepare`) inside the cctuning step, timed and metered alone.
 *
 * Seconds: the median of `steps` timed steps after one warm-up. Memory: the peak of live tensor
 * bytes during a step above what was live before it (bench/buffer-meter.ts), weights excluded.
 * Prints one JSON object with the three and the ratios to sft.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import type { MethodSpecOf } from '../common/methods/index.js';
import { readDataSource } from '../common/records.js';
import { BackendName, initBackend } from '../worker/backend.js';
import { runInitModel } from '../worker/commands/init-model.js';
import { ccTuningJsonl, makeWordProblems } from '../worker/data/word-problems.js';
import { cctuning } from '../worker/methods/cctuning.js';
import type { MethodRun } from '../worker/methods/index.js';
import { LlamaModel } from '../worker/model/llama.js';
import { listModelTensors } from '../worker/model/safetensors.js';
import { ModelTokenizer } from '../worker/model/tokenizer.js';
import { computeStepGradients, type RowLoss } from '../worker/train/step.js';
import { BufferMeter } from './buffer-meter.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'wasm' },
    batch: { type: 'string', default: '4' },
    steps: { type: 'string', default: '5' },
  },
});
const B = Number(values.batch);
const STEPS = Number(values.steps);
const METHOD: MethodSpecOf<'cctuning'> = {
  name: 'cctuning',
  gumbelTau: 1,
  injectAfterLayer: 0,
  transformSamples: 0,
  transformRidge: 0,
};
const MAX_SEQ_LEN = 128;

interface Measure {
  seconds: number;
  peakBytes: number;
}

async function main(): Promise<void> {
  const backend = values.backend;
  if (!(backend in BackendName)) throw new Error(`--backend ${backend}: expected wasm, cpu or tensorflow`);
  await initBackend(backend as BackendName);
  const dir = await mkdtemp(join(tmpdir(), 'polytune-bench-cc-'));
  try {
    await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 1, write: () => {} });
    await writeFile(join(dir, 'cc.jsonl'), ccTuningJsonl(makeWordProblems(2, 3)));
    const modelDir = join(dir, 'model');
    const names = new Set((await listModelTensors(modelDir)).keys());
    const model = await LlamaModel.load(modelDir, { trainable: names, maxSeqLen: MAX_SEQ_LEN });
    const tokenizer = await ModelTokenizer.load(modelDir, model.config);
    const records = await readDataSource({ path: join(dir, 'cc.jsonl'), format: 'cctuning' });
    const withEos = tokenizer as ModelTokenizer & { eosId: number };
    const samples = records.map((r) => cctuning.encode!(METHOD, r, withEos, 'slam', MAX_SEQ_LEN));
    const L = model.config.numHiddenLayers;
    const H = model.config.hiddenSize;
    const dm = tf.variable(tf.randomNormal([L, H], 0, 0.02, 'float32', 1), true, 'bench/decision_maker');
    const run: MethodRun<MethodSpecOf<'cctuning'>> = {
      method: METHOD,
      model,
      modules: new Map([['decision_maker.weight', dm]]),
      seed: 1,
    };
    const modelVars = model.trainableNames.map((n) => model.variable(n));
    const languageIndex = new Map([...new Set(samples.map((s) => s.language ?? 'und'))].map((l, i) => [l, i]));
    const padId = tokenizer.padId ?? withEos.eosId;

    const meter = new BufferMeter();
    const sft: RowLoss = (b) => model.nllRowSums(b.inputIds, b.labels);
    const cc: RowLoss = (b) => cctuning.loss!(run, b);
    // The English pass inside the CC-Tuning step, timed and metered on its own.
    let english: Measure = { seconds: 0, peakBytes: 0 };
    cc.prepare = (b) => {
      const base = meter.live;
      const peak = meter.peak;
      meter.peak = base;
      const t0 = performance.now();
      const out = cctuning.prepare!(run, b);
      out.forEach((t) => t.dataSync());
      english = { seconds: (performance.now() - t0) / 1000, peakBytes: meter.peak - base };
      meter.peak = Math.max(peak, meter.peak);
      return out;
    };

    const measure = async (
      loss: RowLoss,
      vars: tf.Variable[],
      step: number,
    ): Promise<Measure & { english: Measure }> => {
      const base = meter.live;
      meter.peak = base;
      const mine = Array.from({ length: B }, (_, i) => (step * B + i) % samples.length);
      const t0 = performance.now();
      const g = await computeStepGradients({
        mine,
        microBatchSize: B,
        samples: { get: (i: number) => samples[i]! } as never,
        sampleRecords: Int32Array.from(samples.keys()),
        padId,
        vars,
        loss,
        languageIndex,
        epoch: 0,
        aborted: () => {},
        step,
        choiceLayers: loss === cc ? L : 0,
      });
      await Promise.all(g.grads!.map((x) => x.data()));
      const seconds = (performance.now() - t0) / 1000;
      const peakBytes = meter.peak - base;
      tf.dispose(g.grads);
      return { seconds, peakBytes, english };
    };
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const reduce = (ms: Measure[]): Measure => ({
      seconds: median(ms.map((m) => m.seconds)),
      peakBytes: Math.max(...ms.map((m) => m.peakBytes)),
    });
    const series = async (loss: RowLoss, vars: tf.Variable[]): Promise<{ step: Measure; english: Measure }> => {
      await measure(loss, vars, 0); // warm-up
      const ms: (Measure & { english: Measure })[] = [];
      for (let s = 1; s <= STEPS; s++) ms.push(await measure(loss, vars, s));
      return { step: reduce(ms), english: reduce(ms.map((m) => m.english)) };
    };
    const rSft = (await series(sft, modelVars)).step;
    const { step: rCc, english: rEn } = await series(cc, [...modelVars, dm]);
    const ratio = (x: Measure) => ({
      time: x.seconds / rSft.seconds,
      memory: x.peakBytes / rSft.peakBytes,
    });
    process.stdout.write(
      JSON.stringify(
        {
          backend: values.backend,
          model: { layers: L, hidden: H, vocab: model.config.vocabSize },
          microBatch: B,
          steps: STEPS,
          sft: rSft,
          cctuning: { ...rCc, ratio: ratio(rCc) },
          englishPass: { ...rEn, ratio: ratio(rEn) },
        },
        null,
        2,
      ) + '\n',
    );
    dm.dispose();
    model.dispose();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
