/** The all-reduced head's sanity check (worker/train/reduced-head.ts). */
import { describe, expect, it } from 'vitest';

import { CollectiveError, ReducedHeadError } from '../../common/errors.js';
import { PromMeter } from '../../common/metrics.js';
import { checkReducedHead, headLength } from '../../worker/train/reduced-head.js';
import { createWorkerMetrics } from '../../worker/worker-metrics.js';

const bounds = { step: 7, languages: 2, maxTokens: 1000 };
/** [nll sum, supervised, tokens, nll per language (2), supervised per language (2)], then gradients. */
const head = (...v: number[]): Float32Array => Float32Array.from([...v, 0.5, -0.25]);

describe('checkReducedHead', () => {
  it('passes what honest ranks send, a non-finite NLL included (the trainer skips that step itself)', () => {
    expect(headLength(2)).toBe(7);
    expect(() => checkReducedHead(head(123.5, 60, 200, 100, 23.5, 40, 20), bounds)).not.toThrow();
    expect(() => checkReducedHead(head(0, 0, 0, 0, 0, 0, 0), bounds)).not.toThrow();
    expect(() => checkReducedHead(head(NaN, 60, 200, NaN, 1, 40, 20), bounds)).not.toThrow();
    expect(() => checkReducedHead(head(Infinity, 60, 1000, 1, 1, 40, 20), bounds)).not.toThrow();
  });

  it('checks the choices per language and layer as counts of at most the global batch', () => {
    const cb = { ...bounds, choiceLayers: 2, maxSamples: 6 };
    expect(headLength(2, 2)).toBe(11);
    expect(() => checkReducedHead(head(1, 60, 200, 0, 1, 40, 20, 0, 6, 3, 1), cb)).not.toThrow();
    expect(() => checkReducedHead(head(1, 60, 200, 0, 1, 40, 20, 0, 7, 3, 1), cb)).toThrow(
      /head\[8\] \(choices of layer 1, language 0\)/,
    );
    expect(() => checkReducedHead(head(1, 60, 200, 0, 1, 40, 20, 0, 1, -1, 1), cb)).toThrow(ReducedHeadError);
    expect(() => checkReducedHead(head(1, 60, 200, 0, 1, 40, 20, 0, 1, 0.5, 1), cb)).toThrow(ReducedHeadError);
  });

  it('fails the step, retryable, naming the entry, on what no set of ranks can send', () => {
    const bad = (h: Float32Array, field: RegExp): void => {
      let err: unknown;
      try {
        checkReducedHead(h, bounds);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ReducedHeadError);
      expect(err).toBeInstanceOf(CollectiveError);
      expect((err as ReducedHeadError).retryable).toBe(true);
      expect((err as ReducedHeadError).step).toBe(7);
      expect((err as ReducedHeadError).field).toMatch(field);
      expect((err as Error).message).toMatch(/^step 7: all-reduced head/);
    };
    bad(head(1, -12345.5, 200, 0, 0, 0, 0), /head\[1\] \(supervised tokens\)/); // issue 20's forged count
    bad(head(1, -1, 200, 0, 0, 0, 0), /head\[1\]/);
    bad(head(1, 10.5, 200, 0, 0, 0, 0), /head\[1\]/);
    bad(head(1, NaN, 200, 0, 0, 0, 0), /head\[1\]/);
    bad(head(1, 10, 1001, 0, 0, 0, 0), /head\[2\] \(tokens\)/); // more than the global batch holds
    bad(head(1, 10, Infinity, 0, 0, 0, 0), /head\[2\]/);
    bad(head(1, 300, 200, 0, 0, 0, 0), /head\[1\]/); // supervised > tokens
    bad(head(-1e6, 10, 200, 0, 0, 0, 0), /head\[0\] \(nll sum\)/);
    bad(head(1, 10, 200, -0.5, 0, 0, 0), /head\[3\] \(nll sum of language 0\)/);
    bad(head(1, 10, 200, 0, 0, -3, 0), /head\[5\] \(supervised tokens of language 0\)/);
    bad(head(1, 10, 200, 0, 0, 0, 2.5), /head\[6\]/);
    bad(new Float32Array(3), /^head$/);
  });

  it('keeps what it passes countable: the worker metrics never see a negative count', () => {
    const h = head(1, -12345.5, 200, 0, 0, 0, 0);
    const metrics = createWorkerMetrics(new PromMeter());
    // What the trainer would have reported without the check: prom-client throws.
    expect(() =>
      metrics.step('j', {
        loss: 1,
        tokensPerSecond: 1,
        supervisedTokens: h[1]!,
        stepSeconds: 1,
        computeSeconds: 0,
        allReduceSeconds: 0,
        optimizerSeconds: 0,
        allReduceBytes: 0,
        skipped: false,
      }),
    ).toThrow(/not possible to decrease a counter/);
    expect(() => checkReducedHead(h, bounds)).toThrow(ReducedHeadError);
  });
});
