/**
 * `npm run bench:model -- [--json] [--steps N] [--checkpointing] [--no-torch]`: the model on the wasm backend,
 * for a LLaMA of about 50M parameters (vocab 32000, hidden 512, 6 layers, GQA 8/4, intermediate
 * 1408) written on the fly in BF16 as two shards with an index. `--checkpointing` trains with
 * gradient checkpointing (`training.gradientCheckpointing`); the layers computed again in the
 * backward pass are overhead, not counted in the step's FLOPs.
 *
 * The parent writes the checkpoint to a temporary directory and runs the measurements in a fresh
 * child process, so that the peak resident memory it reports (the kernel's maxRSS) belongs to the
 * load alone. It prints one JSON object:
 *
 *   loadSeconds, float32Bytes, rssBeforeLoadBytes, peakRssBytes,
 *   peakRssOverF32         the load's peak resident memory over the float32 size of the tensors
 *                          (target <= 1.3): (peak RSS - RSS before loading) / float32 size, both
 *                          RSS read in the same process, the baseline after tfjs and its wasm
 *                          runtime are up, so what is measured is what loading costs
 *   runtimeRssOverF32      the baseline, RSS before loading / float32 size: Node, tfjs and the wasm
 *                          runtime, about 79 MB whatever the model (32 MB of it the node binary's
 *                          own pages), 0.39 of this 50M-parameter model, 0.003 of a 7B one
 *   processPeakRssOverF32  the process's whole peak RSS / float32 size: the sum of the two
 *   trainPeakRssOverF32    peak RSS over the whole run (forward and training steps included) /
 *                          float32 size: the activations the tape saves for the backward pass,
 *                          and a packed copy XNNPACK keeps of every weight used as a product's
 *                          right operand (0.67x here); the wasm heap never shrinks
 *   forwardTokensPerSecond  forward + loss over every position, no gradient
 *   trainTokensPerSecond    a SLAM step (up/down projections of layers 0-1 train): loss + gradients
 *   trainGflops, matmulGflops, trainOverMatmul (target >= 0.5)
 *                          these of the first kernel set in `byKernels`
 *   byKernels               the same speed figures for each set of product kernels (issue 18):
 *                          `openblas` (worker/native, when the addon loads) and `xnnpack` (the
 *                          wasm backend's own), measured in the same process on the same model
 *   torch                   the same figures from PyTorch on one thread (bench/model_torch.py, the
 *                          same shape and SLAM step), or why it was skipped (no python3 with torch;
 *                          --no-torch)
 *   openblasOverXnnpack*, trainOverTorch, forwardOverTorch, matmulOverTorch   the ratios
 *
 * The kernel sets and PyTorch take turns, one round each (a matmul, a forward, a training step,
 * a matmul), --steps rounds after a warm-up round, and medians are taken: on a shared machine all
 * see the same load, so the ratios hold better than the absolute figures.
 *
 * FLOPs are counted, not guessed from 6·params·tokens: only the products a SLAM step computes
 * (see `slamStepFlops`); element-wise work is not counted.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, nativeStatus } from '../worker/backend.js';
import { setupNativeKernels } from '../worker/native/index.js';
import { expectedTensorShapes, type LlamaConfig } from '../common/model-config.js';
import { LlamaModel } from '../worker/model/llama.js';
import { SeededRandom } from '../worker/model/presets.js';
import { BENCH_MODEL_CONFIG as CONFIG, writeBenchModel } from './bench-model.js';

const BATCH = 4;
const SEQ = 128;
const SLAM_LAYERS = [0, 1];

/**
 * FLOPs of the products of one SLAM step (2 per multiply-add), B rows of T tokens, M supervised:
 *   forward: every projection 2·N·in·out, attention q·kᵀ and p·v 2·2·B·T²·nH·D (full square:
 *            masked scores are computed too), the loss head 2·M·H·V;
 *   backward: the head's dh = p·W 2·M·H·V; in every layer above the lowest trainable one, the
 *            input gradient of each projection (2·N·in·out) and of attention (4 products);
 *            in the lowest trainable layer only what reaches its trainable tensors (down_proj's
 *            input gradient when up_proj trains, the attention there is not differentiated);
 *            and each trainable weight's gradient 2·N·in·out.
 */
export function slamStepFlops(
  c: LlamaConfig,
  B: number,
  T: number,
  M: number,
  layers: readonly number[],
  withBackward = true,
): number {
  const N = B * T;
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const attnProj = H * q + 2 * H * kv + q * H;
  const mlp = 3 * H * I;
  const attnScores = 2 * 2 * B * T * T * c.numAttentionHeads * c.headDim;
  let f = c.numHiddenLayers * (2 * N * (attnProj + mlp) + attnScores) + 2 * M * H * c.vocabSize;
  if (!withBackward) return f;
  const lowest = Math.min(...layers);
  f += 2 * M * H * c.vocabSize;
  for (let l = lowest + 1; l < c.numHiddenLayers; l++) f += 2 * N * (attnProj + mlp) + 2 * attnScores;
  f += 2 * N * H * I; // lowest layer: down_proj's input gradient (up_proj trains below it)
  f += layers.length * 2 * (2 * N * H * I); // weight gradients of up_proj and down_proj
  return f;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** The two kernel sets a run compares: OpenBLAS (worker/native) and the wasm backend's own. */
const KERNEL_SETS = ['openblas', 'xnnpack'] as const;
type KernelSet = (typeof KERNEL_SETS)[number];

/** A kernel set's timings, seconds: each list a sample a round; wall clock and the process's CPU time. */
interface Samples {
  forward: number[];
  train: number[];
  matmul: number[];
  cpu: { forward: number[]; train: number[]; matmul: number[] };
}

const emptySamples = (): Samples => ({
  forward: [],
  train: [],
  matmul: [],
  cpu: { forward: [], train: [], matmul: [] },
});

async function child(
  dir: string,
  steps: number,
  gradientCheckpointing: boolean,
  torch: boolean,
): Promise<Record<string, unknown>> {
  await initBackend('wasm');
  const native = nativeStatus();
  const sets: KernelSet[] = native?.kernels === 'openblas' ? [...KERNEL_SETS] : ['xnnpack'];
  const useKernels = (k: KernelSet): void => {
    setupNativeKernels({ enabled: k === 'openblas' });
  };
  const rssBefore = process.memoryUsage().rss;
  const trainable = new Set(
    SLAM_LAYERS.flatMap((l) => ['up_proj', 'down_proj'].map((m) => `model.layers.${l}.mlp.${m}.weight`)),
  );
  const t0 = performance.now();
  const model = await LlamaModel.load(dir, { trainable, gradientCheckpointing });
  const loadSeconds = (performance.now() - t0) / 1000;
  const peakRss = process.resourceUsage().maxRSS * 1024;
  const c = model.config;
  const params = [...expectedTensorShapes(c).values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  const f32Bytes = params * 4;

  // A plain matmul of the step's commonest shape: [tokens, hidden] x [hidden, intermediate].
  const N = BATCH * SEQ;
  const a = tf.randomNormal([N, c.hiddenSize]);
  const b = tf.randomNormal([c.hiddenSize, c.intermediateSize]);
  const mm = (): void => tf.tidy(() => void tf.matMul(a, b).dataSync());
  const rng = new SeededRandom(2);
  const idsData = Int32Array.from({ length: N }, () => 3 + (rng.nextUint32() % (c.vocabSize - 3)));
  const ids = tf.tensor2d(idsData, [BATCH, SEQ], 'int32');
  const labels = ids.clone();
  const M = BATCH * (SEQ - 1);
  const vars = model.trainableNames.map((n) => model.variable(n));
  const forward = (): void => tf.tidy(() => void model.nllSum(ids, labels).dataSync());
  const train = (): void =>
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
      value.dataSync();
      for (const g of Object.values(grads)) g.dataSync();
    });
  /** Wall seconds and CPU seconds (user + system, every thread of the process) of f. */
  const timeIt = (f: () => void): [number, number] => {
    const c = process.cpuUsage();
    const s = performance.now();
    f();
    const wall = (performance.now() - s) / 1000;
    const cpu = process.cpuUsage(c);
    return [wall, (cpu.user + cpu.system) / 1e6];
  };
  const peer = torch ? await startTorchPeer() : undefined;
  const samples = new Map<KernelSet | 'torch', Samples>();
  for (const k of [...sets, ...(peer?.ok ? ['torch' as const] : [])]) samples.set(k, emptySamples());
  // The machine may be shared: the kernel sets (and PyTorch) take turns, a round each, so that
  // all see the same conditions; medians are taken. Round 0 is the warm-up.
  let leaked = 0;
  for (let round = 0; round <= steps; round++) {
    for (const k of sets) {
      useKernels(k);
      const m1 = timeIt(mm);
      const fwd = timeIt(forward);
      const before = tf.memory().numTensors;
      const step = timeIt(train);
      if (round > 0) leaked += tf.memory().numTensors - before;
      const m2 = timeIt(mm);
      if (round === 0) continue;
      const sk = samples.get(k)!;
      sk.forward.push(fwd[0]);
      sk.train.push(step[0]);
      sk.matmul.push(m1[0], m2[0]);
      sk.cpu.forward.push(fwd[1]);
      sk.cpu.train.push(step[1]);
      sk.cpu.matmul.push(m1[1], m2[1]);
    }
    if (peer?.ok) {
      const t = await peer.round();
      if (round > 0) {
        const sk = samples.get('torch')!;
        sk.forward.push(t.forward);
        sk.train.push(t.train);
        sk.matmul.push(t.matmul);
        sk.cpu.forward.push(t.cpu.forward);
        sk.cpu.train.push(t.cpu.train);
        sk.cpu.matmul.push(t.cpu.matmul);
      }
    }
  }
  peer?.close();
  useKernels(sets[0]!);
  const trainPeakRss = process.resourceUsage().maxRSS * 1024;
  tf.dispose([a, b, ids, labels]);
  model.dispose();
  const flopsTrain = slamStepFlops(c, BATCH, SEQ, M, SLAM_LAYERS);
  const flopsForward = slamStepFlops(c, BATCH, SEQ, M, SLAM_LAYERS, false);
  const flopsMatmul = 2 * N * c.hiddenSize * c.intermediateSize;
  const figures = (x: Samples): Record<string, unknown> => ({ ...speeds(x), cpu: speeds(x.cpu) });
  /** The speed figures of one set of samples (wall clock, or CPU seconds: a core's worth of work). */
  const speeds = (x: Pick<Samples, 'forward' | 'train' | 'matmul'>): Record<string, number> => {
    const fwd = median(x.forward);
    const step = median(x.train);
    const matmulGflops = flopsMatmul / median(x.matmul) / 1e9;
    const trainGflops = flopsTrain / step / 1e9;
    const forwardGflops = flopsForward / fwd / 1e9;
    return {
      forwardTokensPerSecond: round(N / fwd),
      forwardGflops: round(forwardGflops),
      trainTokensPerSecond: round(N / step),
      trainStepSeconds: round(step),
      trainGflops: round(trainGflops),
      matmulGflops: round(matmulGflops),
      trainOverMatmul: round(trainGflops / matmulGflops),
      forwardOverMatmul: round(forwardGflops / matmulGflops),
    };
  };
  const kernels: Record<string, Record<string, unknown>> = {};
  for (const k of sets) kernels[k] = figures(samples.get(k)!);
  const main = kernels[sets[0]!]! as Record<string, number>;
  const torchSamples = samples.get('torch');
  const torchFigures = torchSamples && peer?.ok ? { ...peer.info, ...figures(torchSamples) } : undefined;
  type Figures = Record<string, unknown> | undefined;
  const cpuOf = (x: Figures): Figures => x?.['cpu'] as Figures;
  const ratio = (x: Figures, y: Figures, key: string): number | undefined =>
    x && y ? round(Number(x[key]) / Number(y[key])) : undefined;
  /** Each ratio from wall clock and from CPU seconds (the per-core figure, robust to a shared machine). */
  const both = (x: Figures, y: Figures, key: string): { wall: number; cpu: number } | undefined => {
    const wall = ratio(x, y, key);
    const cpu = ratio(cpuOf(x), cpuOf(y), key);
    return wall === undefined || cpu === undefined ? undefined : { wall, cpu };
  };
  const ratios: Record<string, { wall: number; cpu: number } | undefined> = {
    openblasOverXnnpackTrain: both(kernels['openblas'], kernels['xnnpack'], 'trainTokensPerSecond'),
    openblasOverXnnpackForward: both(kernels['openblas'], kernels['xnnpack'], 'forwardTokensPerSecond'),
    openblasOverXnnpackMatmul: both(kernels['openblas'], kernels['xnnpack'], 'matmulGflops'),
    trainOverTorch: both(main, torchFigures, 'trainTokensPerSecond'),
    forwardOverTorch: both(main, torchFigures, 'forwardTokensPerSecond'),
    matmulOverTorch: both(main, torchFigures, 'matmulGflops'),
  };
  return {
    backend: tf.getBackend(),
    kernels: sets[0],
    nativeThreads: native?.kernels === 'openblas' ? native.threads : null,
    ...(native?.kernels === 'xnnpack' ? { nativeUnavailable: native.reason } : {}),
    gradientCheckpointing,
    parameters: params,
    batch: BATCH,
    seqLen: SEQ,
    slamLayers: SLAM_LAYERS.join(','),
    rounds: steps,
    loadSeconds: round(loadSeconds),
    float32Bytes: f32Bytes,
    rssBeforeLoadBytes: rssBefore,
    peakRssBytes: peakRss,
    peakRssOverF32: round((peakRss - rssBefore) / f32Bytes),
    runtimeRssOverF32: round(rssBefore / f32Bytes),
    processPeakRssOverF32: round(peakRss / f32Bytes),
    trainPeakRssBytes: trainPeakRss,
    trainPeakRssOverF32: round(trainPeakRss / f32Bytes),
    ...main,
    tensorsLeakedPerStep: leaked / (steps * sets.length),
    byKernels: kernels,
    torch: torchFigures ?? { skipped: !torch ? '--no-torch' : peer?.ok === false ? peer.reason : 'unknown' },
    ...Object.fromEntries(Object.entries(ratios).filter(([, v]) => v !== undefined)),
  };
}

/** One round of the PyTorch peer: wall seconds, and CPU seconds (time.process_time). */
interface TorchRound {
  forward: number;
  train: number;
  matmul: number;
  cpu: { forward: number; train: number; matmul: number };
}

/** The PyTorch peer (bench/model_torch.py --serve), driven a round at a time. */
type TorchPeer =
  | { ok: true; info: Record<string, unknown>; round(): Promise<TorchRound>; close(): void }
  | { ok: false; reason: string; close(): void };

/** A python3 that imports torch: $POLYTUNE_TORCH_PYTHON, else python3, else Debian's /usr/bin/python3. */
function torchPython(): string | undefined {
  const candidates = [process.env['POLYTUNE_TORCH_PYTHON'], 'python3', '/usr/bin/python3'].filter(
    (x): x is string => !!x,
  );
  return candidates.find((py) => spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0);
}

async function startTorchPeer(): Promise<TorchPeer> {
  const py = torchPython();
  const none = (reason: string): TorchPeer => ({ ok: false, reason, close: () => {} });
  if (py === undefined) return none('no python3 with torch (apt-get install python3-torch libopenblas0-pthread)');
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'model_torch.py');
  // One thread for OpenBLAS too: Debian's torch does not pass its thread count on to it.
  const env = { ...process.env, OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1' };
  const p = spawn(py, [script, '--serve', '--threads', '1'], { stdio: ['pipe', 'pipe', 'inherit'], env });
  const lines: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  let buf = '';
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  const exited = new Promise<string>((resolve) => p.on('exit', (code) => resolve(`the torch peer exited ${code}`)));
  const next = (): Promise<string> => {
    const l = lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    const line = new Promise<string>((resolve) => waiting.push(resolve));
    return Promise.race([line, exited.then((m) => Promise.reject(new Error(m)))]);
  };
  try {
    const info = JSON.parse(await next()) as Record<string, unknown>;
    return {
      ok: true,
      info,
      round: async () => {
        p.stdin.write('round\n');
        return JSON.parse(await next()) as TorchRound;
      },
      close: () => p.stdin.end(),
    };
  } catch (e) {
    p.kill();
    return none(e instanceof Error ? e.message : String(e));
  }
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean' },
      child: { type: 'string' },
      steps: { type: 'string' },
      checkpointing: { type: 'boolean' },
      'no-torch': { type: 'boolean' },
    },
  });
  const steps = Number(values.steps ?? 3);
  if (values.child !== undefined) {
    const out = await child(values.child, steps, values.checkpointing ?? false, !values['no-torch']);
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'polytune-bench-model-'));
  try {
    const params = await writeBenchModel(dir, CONFIG);
    if (!values.json)
      process.stderr.write(`wrote a ${(params / 1e6).toFixed(1)}M-parameter bf16 model to ${dir}; measuring...\n`);
    const out = await new Promise<string>((resolve, reject) => {
      const p = spawn(
        process.execPath,
        [
          fileURLToPath(import.meta.url),
          '--child',
          dir,
          '--steps',
          String(steps),
          ...(values.checkpointing ? ['--checkpointing'] : []),
          ...(values['no-torch'] ? ['--no-torch'] : []),
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let s = '';
      p.stdout.on('data', (d: Buffer) => (s += d.toString()));
      p.on('error', reject);
      p.on('exit', (code) => (code === 0 ? resolve(s) : reject(new Error(`benchmark child exited ${code}`))));
    });
    const result = JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
    if (values.json) process.stdout.write(JSON.stringify(result) + '\n');
    else {
      for (const [k, v] of Object.entries(result)) {
        const text = typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v);
        process.stdout.write(`${k.padEnd(26)} ${text}\n`);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
