/**
 * The data plan: which samples each optimizer step consumes, and which of them each rank takes.
 *
 * DESIGN.md's rules: the order of samples depends only on the spec (seed, shuffle, epoch), never
 * on the world size; step s of an epoch consumes the same global batch however many workers share
 * it; with `shuffle: false`, step s consumes samples s·B … (s+1)·B − 1 in file order. An epoch has
 * ceil(n / B) steps; its last global batch may be smaller. `maxSteps`, when given, is the total
 * number of steps, cycling through epochs as needed (as HF's `max_steps` does).
 */
import { JobSpecError } from './errors.js';
import type { JobSpec } from './jobspec.js';
import { SPEC_LIMITS } from './spec-primitives.js';

export interface StepPlan {
  readonly numSamples: number;
  readonly globalBatchSize: number;
  readonly stepsPerEpoch: number;
  readonly totalSteps: number;
}

export function planSteps(numSamples: number, training: JobSpec['spec']['training']): StepPlan {
  if (numSamples <= 0) throw new RangeError('the training data holds no samples');
  const B = training.globalBatchSize;
  const stepsPerEpoch = Math.ceil(numSamples / B);
  const totalSteps = training.maxSteps ?? stepsPerEpoch * (training.epochs ?? 1);
  if (totalSteps > SPEC_LIMITS.steps) {
    const message = `makes ${totalSteps} steps; at most ${SPEC_LIMITS.steps}`;
    throw new JobSpecError([{ path: 'spec.training.epochs', message }]);
  }
  return { numSamples, globalBatchSize: B, stepsPerEpoch, totalSteps };
}

/**
 * mulberry32: a small, fast, seedable 32-bit PRNG, identical on every platform (integer
 * arithmetic only), so every rank computes the same permutation.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 32-bit seed for an epoch, mixed from the job seed (splitmix-style) so epochs differ. */
function epochSeed(seed: number, epoch: number): number {
  let z = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** The order in which an epoch visits the samples: identity, or a seeded Fisher-Yates shuffle. */
export function epochOrder(numSamples: number, epoch: number, shuffle: boolean, seed: number): Uint32Array {
  const order = new Uint32Array(numSamples);
  for (let i = 0; i < numSamples; i++) order[i] = i;
  if (!shuffle) return order;
  const rand = mulberry32(epochSeed(seed, epoch));
  for (let i = numSamples - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

/** Where a global step sits: its epoch and its index within the epoch. */
export function stepPosition(plan: StepPlan, step: number): { epoch: number; stepInEpoch: number } {
  return { epoch: Math.floor(step / plan.stepsPerEpoch), stepInEpoch: step % plan.stepsPerEpoch };
}

/** The sample indices of one global batch, given that epoch's order. */
export function globalBatch(plan: StepPlan, order: Uint32Array, stepInEpoch: number): Uint32Array {
  const start = stepInEpoch * plan.globalBatchSize;
  return order.subarray(start, Math.min(start + plan.globalBatchSize, plan.numSamples));
}

/**
 * A rank's contiguous share of a global batch: [floor(r·n/N), floor((r+1)·n/N)). Shares differ in
 * size by at most one; the union over ranks is the whole batch. With n >= N (the spec guarantees
 * globalBatchSize >= workers, but a short last batch can be smaller) a rank may get none.
 */
export function rankShare<T extends { subarray(a: number, b: number): T; length: number }>(
  batch: T,
  rank: number,
  worldSize: number,
): T {
  const n = batch.length;
  return batch.subarray(Math.floor((rank * n) / worldSize), Math.floor(((rank + 1) * n) / worldSize));
}

/** Split a list into consecutive micro-batches of at most `size`. */
export function microBatches<T>(items: ArrayLike<T>, size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size)
    out.push(Array.from({ length: Math.min(size, items.length - i) }, (_, k) => items[i + k]!));
  return out;
}
