/**
 * Optimizers over plain Float32Arrays, applied after the all-reduce. Every rank runs the same
 * code on the same reduced gradients, so every rank ends a step with bit-identical parameters;
 * and the state is plain arrays, so a checkpoint holds it exactly.
 *
 * AdamW follows torch.optim.AdamW (decoupled weight decay, bias correction as PyTorch computes it).
 */
import type { OptimizerSpec } from '../../common/jobspec.js';

export interface Optimizer {
  readonly name: string;
  /** Optimizer steps taken (AdamW's bias correction depends on it). */
  stepCount: number;
  /** The state arrays, in a fixed order (`bufferNames`); updated in place, so a holder sees them. */
  readonly buffers: readonly Float32Array[];
  /** Names for checkpoints: `exp_avg.<i>`, `exp_avg_sq.<i>` for AdamW, none for SGD. */
  readonly bufferNames: readonly string[];
  /** Update `params[i]` in place from `grads[i]` with learning rate `lr`. */
  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void;
}

export class Sgd implements Optimizer {
  readonly name = 'sgd';
  stepCount = 0;
  readonly buffers: readonly Float32Array[] = [];
  readonly bufferNames: readonly string[] = [];
  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void {
    params.forEach((p, i) => {
      const g = grads[i]!;
      for (let j = 0; j < p.length; j++) p[j] = p[j]! - lr * g[j]!;
    });
    this.stepCount++;
  }
}

export class AdamW implements Optimizer {
  readonly name = 'adamw';
  stepCount = 0;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  readonly buffers: readonly Float32Array[];
  readonly bufferNames: readonly string[];

  /** `sizes`: the element count of each parameter tensor. */
  constructor(
    sizes: readonly number[],
    private readonly beta1: number,
    private readonly beta2: number,
    private readonly eps: number,
    private readonly weightDecay: number,
  ) {
    this.m = sizes.map((n) => new Float32Array(n));
    this.v = sizes.map((n) => new Float32Array(n));
    this.buffers = [...this.m, ...this.v];
    this.bufferNames = [...sizes.map((_, i) => `exp_avg.${i}`), ...sizes.map((_, i) => `exp_avg_sq.${i}`)];
  }

  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void {
    this.stepCount++;
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = this;
    const bc1 = 1 - b1 ** this.stepCount;
    const bc2Sqrt = Math.sqrt(1 - b2 ** this.stepCount);
    const stepSize = lr / bc1;
    const decay = 1 - lr * wd;
    params.forEach((p, i) => {
      const g = grads[i]!;
      const m = this.m[i]!;
      const v = this.v[i]!;
      for (let j = 0; j < p.length; j++) {
        const gj = g[j]!;
        m[j] = b1 * m[j]! + (1 - b1) * gj;
        v[j] = b2 * v[j]! + (1 - b2) * gj * gj;
        const denom = Math.sqrt(v[j]!) / bc2Sqrt + eps;
        p[j] = p[j]! * decay - stepSize * (m[j]! / denom);
      }
    });
  }
}

/** The optimizer a spec names, for parameters of the given element counts. */
export function createOptimizer(spec: OptimizerSpec, sizes: readonly number[]): Optimizer {
  return spec.name === 'sgd' ? new Sgd() : new AdamW(sizes, spec.betas[0], spec.betas[1], spec.eps, spec.weightDecay);
}

/**
 * Clip by global L2 norm, as torch.nn.utils.clip_grad_norm_: when the norm exceeds `maxNorm`,
 * scale by maxNorm / (norm + 1e-6). Returns the norm before clipping. `maxNorm` 0 turns it off.
 */
export function clipGradNorm(grads: readonly Float32Array[], maxNorm: number): number {
  let sq = 0;
  for (const g of grads) for (let j = 0; j < g.length; j++) sq += g[j]! * g[j]!;
  const norm = Math.sqrt(sq);
  if (maxNorm > 0 && norm > maxNorm) {
    const scale = maxNorm / (norm + 1e-6);
    for (const g of grads) for (let j = 0; j < g.length; j++) g[j] = g[j]! * scale;
  }
  return norm;
}
