/** The memory plan (common/memory-plan.ts): its terms, the fit check and the fix it proposes. */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseT5Config, t5EncoderParameters } from '../../common/encoder-config.js';
import { parseJobSpec, type JobSpec } from '../../common/jobspec.js';
import { ENCODER_PRESET_CONFIGS } from '../../worker/commands/init-encoder.js';
import {
  activationBytes,
  fitsDevice,
  GiB,
  layerBytes,
  memoryFitIssues,
  planMemory,
  TAPE_PEAK,
  TAPE_SAVED,
} from '../../common/memory-plan.js';
import { parseLlamaConfig } from '../../common/model-config.js';

const CONFIGS = resolve(import.meta.dirname, '../../configs');
const config7b = parseLlamaConfig(
  JSON.parse(readFileSync(join(CONFIGS, 'models/MetaMath-7B-V1.0/config.json'), 'utf8')),
);

function spec7b(
  over: {
    microBatchSize?: number;
    gradientCheckpointing?: boolean;
    gpu?: number;
    host?: number;
    optimizer?: string;
  } = {},
): JobSpec {
  const workers = [
    `count: 8`,
    ...(over.gpu ? [`gpuMemoryGiB: ${over.gpu}`] : []),
    ...(over.host ? [`hostMemoryGiB: ${over.host}`] : []),
  ];
  return parseJobSpec(`apiVersion: polytune/v1
kind: TrainJob
metadata: { name: plan-test }
spec:
  model: { path: /models/MetaMath-7B-V1.0 }
  method: { name: slam }
  data: { train: [{ path: /data/x.jsonl, format: alpaca }], maxSeqLen: 1024 }
  training:
    epochs: 1
    globalBatchSize: 512
    microBatchSize: ${over.microBatchSize ?? 2}
    gradientCheckpointing: ${over.gradientCheckpointing ?? false}
    optimizer: ${over.optimizer ?? '{ name: adamw, lr: 2.0e-5 }'}
  workers: { ${workers.join(', ')} }
  output: { dir: /runs/x }
`);
}

describe('memory plan', () => {
  it(
    'counts a layer as the tape does: 25 hidden-sized, 2 ' + 'heads x T and 5 FFN-sized floats a token (LLaMA-2 7B)',
    () => {
      const T = 1024;
      const saved = layerBytes(config7b, { batch: 1, seqLen: T }, TAPE_SAVED);
      expect(saved).toBe(4 * T * (25 * 4096 + 2 * 32 * T + 5 * 11008));
      const peak = layerBytes(config7b, { batch: 2, seqLen: T }, TAPE_PEAK);
      expect(peak).toBe(4 * 2 * T * (58 * 4096 + 4 * 32 * T + 11 * 11008));
    },
  );

  it('7B at micro-batch 2 x 1024 without checkpointing needs far more than 80 GiB; with it, well under', () => {
    const off = planMemory(config7b, spec7b());
    // The tape alone keeps about 60 GB at the end of the forward pass (the issue's figure).
    expect(activationBytes(config7b, { batch: 2, seqLen: 1024 }, false).saved / 1e9).toBeCloseTo(58.4, 0);
    expect(off.gpu.peak).toBeGreaterThan(120 * GiB);
    const on = planMemory(config7b, spec7b({ gradientCheckpointing: true }));
    expect(on.gpu.peak).toBeLessThan(40 * GiB);
    expect(on.gpu.weights).toBe(4 * on.parameters.total);
    expect(on.parameters.trainable).toBe(6 * 2 * 4096 * 11008);
    // The trainable transposes: all of them without checkpointing, one layer's with it.
    expect(off.gpu.trainableTransposes).toBe(4 * on.parameters.trainable);
    expect(on.gpu.trainableTransposes).toBe(4 * 2 * 4096 * 11008);
    // 64 samples a rank in micro-batches of 2: the sum of accumulated and new gradients is 3 copies.
    expect(on.microBatchesPerStep).toBe(32);
    expect(on.gpu.gradientSum).toBe(3 * 4 * on.parameters.trainable);
  });

  it(
    'host: the load buffers (the largest tensor twice, not the model), master copies, AdamW ' +
      'moments and the all-reduce vectors (SGD keeps no moments)',
    () => {
      const p = planMemory(config7b, spec7b());
      const G = 4 * p.parameters.trainable;
      expect(p.host.masterCopies).toBe(G);
      expect(p.host.optimizer).toBe(2 * G);
      // The embedding, 32001 x 4096 floats, is the largest tensor; the read scratch is 6 MiB.
      expect(p.host.loadBuffers).toBe(2 * 4 * 32001 * 4096 + 6 * 1024 * 1024);
      expect(p.host.peak / 1e9).toBeGreaterThan(12);
      expect(p.host.peak / 1e9).toBeLessThan(13);
      expect(planMemory(config7b, spec7b({ optimizer: '{ name: sgd, lr: 0.1 }' })).host.optimizer).toBe(0);
    },
  );

  it('a job that does not fit gets the numbers and the fix, with the field path', () => {
    const issues = memoryFitIssues(config7b, spec7b({ gpu: 80 }));
    expect(issues).toHaveLength(1);
    expect(issues[0]!.path).toBe('spec.workers.gpuMemoryGiB');
    expect(issues[0]!.message).toMatch(/needs \d+\.\d GiB of GPU memory a worker \(weights 25\.1 GiB, activations/);
    expect(issues[0]!.message).toMatch(/set spec\.training\.gradientCheckpointing: true \(\d+\.\d GiB\)/);
    // Checkpointing on but the micro-batch too large for 40 GiB: lower it.
    const big = memoryFitIssues(config7b, spec7b({ gpu: 40, gradientCheckpointing: true, microBatchSize: 8 }));
    expect(big[0]!.message).toMatch(/lower spec\.training\.microBatchSize to [1-3] /);
    // A device too small for the weights: no setting helps.
    const tiny = memoryFitIssues(config7b, spec7b({ gpu: 24 }));
    expect(tiny[0]!.message).toMatch(/use a larger GPU or train fewer tensors/);
    // Host memory: refused with its own path.
    const host = memoryFitIssues(config7b, spec7b({ gpu: 80, gradientCheckpointing: true, host: 12 }));
    expect(host.map((i) => i.path)).toEqual(['spec.workers.hostMemoryGiB']);
    expect(host[0]!.message).toMatch(/needs 11\.6 GiB of host memory a worker \(load buffers 1\.0 GiB/);
    expect(memoryFitIssues(config7b, spec7b({ gpu: 80, gradientCheckpointing: true, host: 16 }))).toEqual([]);
  });

  it('fits keeps a 10% margin', () => {
    expect(fitsDevice(72 * GiB, 80)).toBe(true);
    expect(fitsDevice(72 * GiB + 1, 80)).toBe(false);
  });

  it('refuses nonsense device sizes in the spec with the field path', () => {
    expect(() => spec7b({ gpu: -1 })).toThrow(/spec\.workers\.gpuMemoryGiB: must be > 0/);
  });
});

describe('a method with frozen parameters of its own (LinguaLIFT encoder)', () => {
  it('counts them with the weights, on the device and on the host at load', () => {
    const spec = parseJobSpec(
      `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: t }
spec:
  model: { path: m }
  method: { name: lingualift, encoder: { path: e } }
  data: { train: [{ path: d.jsonl, format: alpaca }] }
  training: { maxSteps: 1, globalBatchSize: 2, optimizer: { name: sgd, lr: 0.1 } }
  workers: { count: 1 }
  output: { dir: o }
`,
      { baseDir: '/b' },
    );
    const n = t5EncoderParameters(parseT5Config(ENCODER_PRESET_CONFIGS.tiny));
    const without = planMemory(config7b, spec);
    const withEncoder = planMemory(config7b, spec, { methodParameters: n });
    expect(withEncoder.gpu.methodWeights).toBe(4 * n);
    expect(withEncoder.gpu.weights - without.gpu.weights).toBe(4 * n);
    expect(withEncoder.gpu.peak - without.gpu.peak).toBe(4 * n);
    // The encoder goes to the device tensor by tensor too: the host's load buffers do not grow.
    expect(withEncoder.host.loadBuffers).toBe(without.host.loadBuffers);
  });
});
