import { describe, expect, it } from 'vitest';
import { epochOrder, globalBatch, microBatches, planSteps, rankShare, stepPosition } from '../../common/data-plan.js';
import type { JobSpec } from '../../common/jobspec.js';

const training = (over: Partial<JobSpec['spec']['training']>): JobSpec['spec']['training'] => ({
  globalBatchSize: 4,
  microBatchSize: 2,
  optimizer: { name: 'sgd', lr: 0.1 },
  schedule: { name: 'constant', warmupRatio: 0 },
  gradClip: 1,
  seed: 42,
  maxNonFiniteSteps: 3,
  gradientCheckpointing: false,
  tf32: false,
  ...over,
});

describe('data plan', () => {
  it('counts steps per epoch with a short last batch, and maxSteps overrides epochs', () => {
    expect(planSteps(10, training({ epochs: 3 }))).toEqual({
      numSamples: 10,
      globalBatchSize: 4,
      stepsPerEpoch: 3,
      totalSteps: 9,
    });
    expect(planSteps(10, training({ epochs: 3, maxSteps: 5 })).totalSteps).toBe(5);
  });

  it('without shuffle, step s consumes samples s*B .. (s+1)*B-1', () => {
    const plan = planSteps(10, training({ epochs: 1 }));
    const order = epochOrder(10, 0, false, 42);
    expect([...globalBatch(plan, order, 1)]).toEqual([4, 5, 6, 7]);
    expect([...globalBatch(plan, order, 2)]).toEqual([8, 9]);
  });

  it('shuffles deterministically per (seed, epoch), as a permutation', () => {
    const a = epochOrder(1000, 0, true, 42);
    expect([...a]).toEqual([...epochOrder(1000, 0, true, 42)]);
    expect([...a]).not.toEqual([...epochOrder(1000, 1, true, 42)]);
    expect([...a]).not.toEqual([...epochOrder(1000, 0, true, 43)]);
    expect([...a].sort((x, y) => x - y)).toEqual([...Array(1000).keys()]);
  });

  it('rank shares partition the global batch whatever the world size', () => {
    const batch = Uint32Array.from([5, 3, 9, 1, 7, 2, 8]);
    for (const N of [1, 2, 3, 4, 7]) {
      const parts = Array.from({ length: N }, (_, r) => [...rankShare(batch, r, N)]);
      expect(parts.flat()).toEqual([...batch]);
      const sizes = parts.map((p) => p.length);
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
    }
  });

  it('places steps in epochs and splits micro-batches', () => {
    const plan = planSteps(10, training({ epochs: 2 }));
    expect(stepPosition(plan, 4)).toEqual({ epoch: 1, stepInEpoch: 1 });
    expect(microBatches([1, 2, 3, 4, 5], 2)).toEqual([[1, 2], [3, 4], [5]]);
  });
});
