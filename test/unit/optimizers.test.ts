import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdamW, clipGradNorm, Sgd } from '../../worker/train/optimizers.js';
import { learningRate } from '../../worker/train/schedule.js';

// Made by scripts/golden-optimizers.py with PyTorch's AdamW, SGD and clip_grad_norm_.
const golden = JSON.parse(readFileSync(new URL('../golden/optimizers.json', import.meta.url), 'utf8')) as {
  p0: number[];
  grads: number[][];
  adamw: number[][];
  adamwNorms: number[];
  sgd: number[][];
  schedule: { total: number; warmupRatio: number; cosine: number[]; linear: number[] };
};

function expectClose(actual: ArrayLike<number>, expected: number[], rel = 1e-6): void {
  expected.forEach((e, i) => expect(Math.abs(actual[i]! - e)).toBeLessThanOrEqual(rel * Math.max(1, Math.abs(e))));
}

describe('optimizers against PyTorch', () => {
  it('AdamW with clipping matches torch.optim.AdamW + clip_grad_norm_', () => {
    const p = Float32Array.from(golden.p0);
    const opt = new AdamW([5], 0.9, 0.95, 1e-8, 0.1);
    golden.grads.forEach((g, s) => {
      const grad = Float32Array.from(g);
      expect(clipGradNorm([grad], 1.0)).toBeCloseTo(golden.adamwNorms[s]!, 5);
      opt.step([p], [grad], 0.01);
      expectClose(p, golden.adamw[s]!);
    });
  });

  it('SGD matches torch.optim.SGD', () => {
    const p = Float32Array.from(golden.p0);
    const opt = new Sgd();
    golden.grads.forEach((g, s) => {
      opt.step([p], [Float32Array.from(g)], 0.1);
      expectClose(p, golden.sgd[s]!);
    });
  });

  it('AdamW state copied into another optimizer continues identically', () => {
    const a = new AdamW([5], 0.9, 0.95, 1e-8, 0.1);
    const pa = Float32Array.from(golden.p0);
    a.step([pa], [Float32Array.from(golden.grads[0]!)], 0.01);
    const b = new AdamW([5], 0.9, 0.95, 1e-8, 0.1);
    b.stepCount = a.stepCount;
    a.buffers.forEach((buf, i) => b.buffers[i]!.set(buf));
    expect(b.bufferNames).toEqual(['exp_avg.0', 'exp_avg_sq.0']);
    const pb = Float32Array.from(pa);
    a.step([pa], [Float32Array.from(golden.grads[1]!)], 0.01);
    b.step([pb], [Float32Array.from(golden.grads[1]!)], 0.01);
    expect([...pb]).toEqual([...pa]);
  });
});

describe('schedules against HF transformers formulas', () => {
  it.each(['cosine', 'linear'] as const)('%s with warm-up', (name) => {
    const { total, warmupRatio } = golden.schedule;
    for (let s = 0; s < total; s++) {
      expect(learningRate(2, { name, warmupRatio }, s, total)).toBeCloseTo(2 * golden.schedule[name][s]!, 12);
    }
  });
  it('constant with warm-up', () => {
    expect([0, 1, 2, 3].map((s) => learningRate(1, { name: 'constant', warmupRatio: 0.5 }, s, 4))).toEqual([
      0, 0.5, 1, 1,
    ]);
  });
});
