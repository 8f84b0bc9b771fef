/**
 * `npm run bench:load-memory -- [--json]`: the host memory a model load takes, against the model's
 * float32 size (issue 13 part 2: no host copy of the whole model on the native backend).
 *
 * The parent writes the 50M-parameter BF16 two-shard model of `bench:model` (bench/bench-model.ts)
 * and loads it in a fresh child process per case, so that each peak belongs to that load alone:
 *
 *   wasm            the wasm path: every chunk written straight into the tensor's heap memory
 *   native-new      the native path (tfjs-node's choices, on the stand-in of test/helpers/backends.ts):
 *                   a host Float32Array a tensor, uploaded (`getInputTensorIds`) as soon as it is made
 *   native-old      the same without the upload step, which is what the loader did before: tfjs-node
 *                   keeps every tensor written from JS values in JS until its first use (the first step)
 *
 * For each: float32Bytes, rssBeforeBytes, peakRssOverF32 ((kernel maxRSS after the load - RSS before)
 * / float32 size), peakArrayBuffersOverF32 (process.memoryUsage().arrayBuffers sampled every 2 ms
 * and after the load, above the value before: JS-held typed arrays; the wasm heap is not counted
 * there), and for the native cases jsHeldPeakOverF32: the most bytes the stand-in counted as written
 * from JS and not yet uploaded, i.e. what tfjs-node holds on the host beside the GPU copy (exact,
 * counted by the backend, not sampled), with largestTensorOverF32 for comparison. On the stand-in
 * the "device" is the cpu backend's own JS memory, so its RSS and arrayBuffers include the model
 * itself; only jsHeldPeak tells the two native cases apart, and the wasm case's arrayBuffers show
 * the real host overhead of a load whose device memory is outside JS.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { expectedTensorShapes, parseLlamaConfig } from '../common/model-config.js';
import { initBackend } from '../worker/backend.js';
import { LlamaModel } from '../worker/model/llama.js';
import { NATIVE_PATH_STANDIN, standIn, useBackend } from '../test/helpers/backends.js';
import { BENCH_MODEL_CONFIG as CONFIG, writeBenchModel } from './bench-model.js';

const CASES = ['wasm', 'native-new', 'native-old'] as const;
type Case = (typeof CASES)[number];

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

async function child(dir: string, which: Case): Promise<Record<string, unknown>> {
  if (which === 'wasm') await initBackend('wasm');
  else {
    await useBackend(NATIVE_PATH_STANDIN);
    // The loader before the upload step: it never called it (the backend still uploads at first use).
    if (which === 'native-old') Object.defineProperty(standIn(), 'getInputTensorIds', { value: undefined });
  }
  const shapes = [...expectedTensorShapes(parseLlamaConfig(CONFIG)).values()].map((s) => s.reduce((a, b) => a * b, 1));
  const f32Bytes = 4 * shapes.reduce((a, b) => a + b, 0);
  const before = process.memoryUsage();
  let abPeak = before.arrayBuffers;
  const sample = (): void => {
    abPeak = Math.max(abPeak, process.memoryUsage().arrayBuffers);
  };
  const timer = setInterval(sample, 2);
  if (which !== 'wasm') standIn().resetPeak();
  const t0 = performance.now();
  const model = await LlamaModel.load(dir, { trainable: new Set(['model.layers.0.mlp.up_proj.weight']) });
  const loadSeconds = (performance.now() - t0) / 1000;
  clearInterval(timer);
  sample();
  const peakRss = process.resourceUsage().maxRSS * 1024;
  const out: Record<string, unknown> = {
    case: which,
    loadSeconds: round(loadSeconds),
    float32Bytes: f32Bytes,
    rssBeforeBytes: before.rss,
    peakRssOverF32: round((peakRss - before.rss) / f32Bytes),
    peakArrayBuffersOverF32: round((abPeak - before.arrayBuffers) / f32Bytes),
  };
  if (which !== 'wasm') {
    out['jsHeldPeakOverF32'] = round(standIn().pendingPeak / f32Bytes);
    out['jsHeldAfterLoadOverF32'] = round(standIn().pendingBytes / f32Bytes);
    out['largestTensorOverF32'] = round((4 * Math.max(...shapes)) / f32Bytes);
  }
  model.dispose();
  return out;
}

function runChild(dir: string, which: Case): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', dir, '--case', which], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let s = '';
    p.stdout.on('data', (d: Buffer) => (s += d.toString()));
    p.on('error', reject);
    p.on('exit', (code) =>
      code === 0
        ? resolve(JSON.parse(s.trim().split('\n').pop()!) as Record<string, unknown>)
        : reject(new Error(`benchmark child (${which}) exited ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { json: { type: 'boolean' }, child: { type: 'string' }, case: { type: 'string' } },
  });
  if (values.child !== undefined) {
    const which = values.case as Case;
    if (!CASES.includes(which)) throw new Error(`--case must be one of ${CASES.join(', ')}`);
    process.stdout.write(JSON.stringify(await child(values.child, which)) + '\n');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'polytune-bench-load-'));
  try {
    const params = await writeBenchModel(dir, CONFIG);
    if (!values.json)
      process.stderr.write(`wrote a ${(params / 1e6).toFixed(1)}M-parameter bf16 model; measuring...\n`);
    const runs: Record<string, unknown>[] = [];
    for (const which of CASES) runs.push(await runChild(dir, which));
    const held = (c: Case): number => runs.find((r) => r['case'] === c)!['jsHeldPeakOverF32'] as number;
    const result = { runs, nativeJsHeldOldOverNew: round(held('native-old') / held('native-new')) };
    process.stdout.write(JSON.stringify(result, null, values.json ? undefined : 2) + '\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
