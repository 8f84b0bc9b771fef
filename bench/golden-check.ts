/**
 * `node dist/bench/golden-check.js [--backend B] [--golden DIR] [--tf32]`: the golden parity of
 * test/unit/model/golden.test.ts (logits, summed NLL and gradients against the PyTorch reference
 * of HF's modeling_llama.py, relative error < 1e-4) without vitest, for a node that has only the
 * worker image (scripts/gpu-check.sh). Also times the backend's start and its first product (on a
 * GPU without native kernels for it, TensorFlow compiles them from PTX there).
 *
 * Prints one JSON object: { backend, device, tf32, backendSeconds, firstOpSeconds, models: [{ name,
 * logits, nllSum, grads }], maxRelErr, pass } and exits 1 when a model is off by 1e-4 or more.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { BackendName, backendInfo, initBackend } from '../worker/backend.js';
import { LlamaModel } from '../worker/model/llama.js';
import { readSafetensors } from '../worker/model/safetensors.js';

const TOL = 1e-4;

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

async function checkModel(dir: string): Promise<{ name: string; logits: number; nllSum: number; grads: number }> {
  const golden = JSON.parse(await readFile(join(dir, 'golden.json'), 'utf8')) as {
    input_ids: number[][];
    labels: number[][];
    grads: string[];
  };
  const expected = new Map(
    (await readSafetensors(join(dir, 'expected.safetensors'))).tensors.map((t) => [t.name, t.data]),
  );
  const model = await LlamaModel.load(dir, { trainable: new Set(golden.grads) });
  try {
    return tf.tidy(() => {
      const ids = tf.tensor2d(golden.input_ids, undefined, 'int32');
      const labels = tf.tensor2d(golden.labels, undefined, 'int32');
      const logits = relErr(model.logits(ids).dataSync(), expected.get('logits')!);
      const vars = model.trainableNames.map((n) => model.variable(n));
      const { value, grads } = tf.variableGrads(() => model.nllSum(ids, labels), vars);
      const nllSum = relErr(value.dataSync(), expected.get('nll_sum')!);
      const g = Math.max(
        ...golden.grads.map((n) => relErr(grads[model.variable(n).name]!.dataSync(), expected.get(`grad.${n}`)!)),
      );
      return { name: dir.split('/').at(-1)!, logits, nllSum, grads: g };
    });
  } finally {
    model.dispose();
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      backend: { type: 'string', default: 'tensorflow' },
      golden: { type: 'string', default: 'test/golden' },
      tf32: { type: 'boolean' },
    },
  });
  if (!(values.backend in BackendName))
    throw new Error(`--backend ${values.backend}: expected wasm, cpu or tensorflow`);
  const t0 = performance.now();
  await initBackend(values.backend as BackendName, {}, { tf32: values.tf32 === true });
  const t1 = performance.now();
  tf.tidy(() => tf.matMul(tf.ones([512, 512]), tf.ones([512, 512]), false, true).dataSync());
  const t2 = performance.now();
  const root = resolve(values.golden);
  const dirs = (await readdir(root, { withFileTypes: true }))
    .filter((d) => d.isDirectory())
    .map((d) => join(root, d.name))
    .sort();
  const models = [];
  for (const d of dirs) models.push(await checkModel(d));
  const maxRelErr = Math.max(...models.flatMap((m) => [m.logits, m.nllSum, m.grads]));
  const info = backendInfo();
  const pass = models.length > 0 && maxRelErr < TOL;
  process.stdout.write(
    JSON.stringify(
      {
        backend: info.backend,
        device: info.device,
        tf32: info.tf32,
        backendSeconds: (t1 - t0) / 1000,
        firstOpSeconds: (t2 - t1) / 1000,
        models,
        maxRelErr,
        tolerance: TOL,
        pass,
      },
      null,
      2,
    ) + '\n',
  );
  return pass ? 0 : 1;
}

process.exitCode = await main();
