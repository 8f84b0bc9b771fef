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
  /** Update `params[i]` in place from `grads[i]` with learning rate `lr`. */
  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void;
  /** The state to checkpoint, by name (`exp_avg.<i>`, ...), plus the step count. */
  state(): { step: number; tensors: Map<string, Float32Array> };
  /** Restore what `state()` returned. */
  load(state: { step: number; tensors: Map<string, Float32Array> }): void;
}

export class Sgd implements Optimizer {
  readonly name = 'sgd';
  private t = 0;
  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void {
    params.forEach((p, i) => {
      const g = grads[i]!;
      for (let j = 0; j < p.length; j++) p[j] = p[j]! - lr * g[j]!;
    });
    this.t++;
  }
  state(): { step: number; tensors: Map<string, Float32Array> } {
    return { step: this.t, tensors: new Map() };
  }
  load(state: { step: number }): void {
    this.t = state.step;
  }
}

export class AdamW implements Optimizer {
  readonly name = 'adamw';
  private t = 0;
  private m: Float32Array[] = [];
  private v: Float32Array[] = [];
  constructor(
    private readonly beta1: number,
    private readonly beta2: number,
    private readonly eps: number,
    private readonly weightDecay: number,
  ) {}

  step(params: readonly Float32Array[], grads: readonly Float32Array[], lr: number): void {
    if (this.m.length === 0) {
      this.m = params.map((p) => new Float32Array(p.length));
      this.v = params.map((p) => new Float32Array(p.length));
    }
    this.t++;
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = this;
    const bc1 = 1 - b1 ** this.t;
    const bc2Sqrt = Math.sqrt(1 - b2 ** this.t);
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

  state(): { step: number; tensors: Map<string, Float32Array> } {
    const tensors = new Map<string, Float32Array>();
    this.m.forEach((m, i) => tensors.set(`exp_avg.${i}`, m));
    this.v.forEach((v, i) => tensors.set(`exp_avg_sq.${i}`, v));
    return { step: this.t, tensors };
  }

  load(state: { step: number; tensors: Map<string, Float32Array> }): void {
    this.t = state.step;
    const count = [...state.tensors.keys()].filter((k) => k.startsWith('exp_avg.')).length;
    this.m = Array.from({ length: count }, (_, i) => state.tensors.get(`exp_avg.${i}`)!);
    this.v = Array.from({ length: count }, (_, i) => state.tensors.get(`exp_avg_sq.${i}`)!);
  }
}

export function createOptimizer(spec: OptimizerSpec): Optimizer {
  return spec.name === 'sgd' ? new Sgd() : new AdamW(spec.betas[0], spec.betas[1], spec.eps, spec.weightDecay);
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
