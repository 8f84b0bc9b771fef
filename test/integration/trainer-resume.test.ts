/**
 * Exact resume, at the trainer's level, on a real nats-server: a job interrupted and taken up again
 * (from a checkpoint, from a surviving rank's memory, on another number of ranks) ends with the
 * trainable tensors of an uninterrupted run; a corrupt checkpoint is refused for the one before;
 * a non-finite step is skipped on every rank.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { JobSpec } from '../../common/jobspec.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { checkpointName, listCheckpoints } from '../../worker/train/checkpoint.js';
import { LlamaModel } from '../../worker/model/llama.js';
import {
  releaseHolder,
  train,
  type StateHolder,
  type StepReport,
  type TrainerOptions,
} from '../../worker/train/trainer.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { expectSameTensors, tensorMap } from '../helpers/tensors.js';
import { tinySlamSpec, tinyTrainDir } from '../helpers/train-job.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';

let dir: string;
const nats = natsScope();
const STEPS = 6;

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-resume-', 3, 2, 9);
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spec(outDir: string, workers: number): JobSpec {
  return tinySlamSpec(dir, {
    name: 'resume-test',
    out: outDir,
    steps: STEPS,
    workers,
    optimizer: '{ name: adamw, lr: 1.0e-2, weightDecay: 0.01 }',
    training: ['schedule: { name: cosine, warmupRatio: 0.2 }'],
    checkpoint: '{ everySteps: 2, keep: 3 }',
  });
}

interface RankRun {
  holder?: StateHolder;
  /** Abort every rank once each rank given a `stopAfter` has reported that step. */
  stopAfter?: number;
  /** Replace the reduced buffer of one collective call (by sequence number). */
  poison?: { seq: number; index: number };
  evaluate?: TrainerOptions['evaluate'];
  /** Lengths of the plain all-reduce calls (state agreement, not gradients), recorded. */
  calls?: number[];
}

/** One generation of a job: `ranks.length` ranks in this process, each with its own connection. */
async function generation(
  outDir: string,
  gen: number,
  job: string,
  ranks: RankRun[],
  resume: boolean,
): Promise<{ reports: StepReport[][]; errors: unknown[] }> {
  const server = await nats.start();
  const reports: StepReport[][] = ranks.map(() => []);
  const errors: unknown[] = ranks.map(() => undefined);
  const controllers = ranks.map(() => new AbortController());
  let stopped = 0;
  await Promise.all(
    ranks.map(async (run, rank) => {
      const nc = await nats.connect(server);
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: gen,
        rank,
        worldSize: ranks.length,
        timeoutMs: 20_000,
      });
      const opts: TrainerOptions = {
        spec: spec(outDir, ranks.length),
        rank,
        worldSize: ranks.length,
        resume,
        holder: run.holder,
        evaluate: run.evaluate,
        signal: controllers[rank]!.signal,
        allReduce: (seq, data, o) => {
          run.calls?.push(data.length);
          return ar.allReduce(seq, data, controllers[rank]!.signal, o);
        },
        beginAllReduce: (seq, length, o) => {
          const h = ar.begin(seq, length, controllers[rank]!.signal, o);
          const result = h.result.then((out) => {
            if (run.poison?.seq === seq) out[run.poison.index] = NaN;
            return out;
          });
          return { append: (d: Float32Array) => h.append(d), result };
        },
        onStep: (r) => {
          reports[rank]!.push(r);
          // Stopping every rank at the same step boundary, as a re-formed world does.
          if (run.stopAfter === r.step && ++stopped === ranks.filter((x) => x.stopAfter !== undefined).length) {
            controllers.forEach((c) => c.abort(new Error('re-forming')));
          }
        },
      };
      try {
        await train(opts);
      } catch (e) {
        errors[rank] = e;
      } finally {
        await ar.close();
      }
    }),
  );
  return { reports, errors };
}

const trainable = (outDir: string): Promise<Map<string, Float32Array>> =>
  tensorMap(join(outDir, 'final', 'trainable.safetensors'));

describe('exact resume', () => {
  let clean: Map<string, Float32Array>;
  let cleanLosses: number[];

  beforeAll(async () => {
    const r = await generation(join(dir, 'clean'), 1, uniqueJobName('clean'), [{}], false);
    expect(r.errors).toEqual([undefined]);
    cleanLosses = r.reports[0]!.map((x) => x.loss);
    clean = await trainable(join(dir, 'clean'));
  }, 120_000);

  it('from a checkpoint, on 3 ranks, of a job begun on 2', async () => {
    const out = join(dir, 'ckpt');
    const job = uniqueJobName('ckpt');
    const first = await generation(out, 1, job, [{ stopAfter: 3 }, {}], false);
    expect(first.reports[0]!.map((r) => r.step)).toEqual([1, 2, 3]);
    expect((await listCheckpoints(out)).map((c) => c.step)).toEqual([2]);
    const second = await generation(out, 2, job, [{}, {}, {}], true);
    expect(second.errors).toEqual([undefined, undefined, undefined]);
    expect(second.reports[2]!.map((r) => r.step)).toEqual([3, 4, 5, 6]);
    second.reports[0]!.forEach((r, i) => expect(r.loss).toBeCloseTo(cleanLosses[2 + i]!, 4));
    expectSameTensors(clean, await trainable(out));
  }, 120_000);

  it("from a surviving rank's memory, with a new rank that holds nothing", async () => {
    const out = join(dir, 'memory');
    const job = uniqueJobName('memory');
    const survivor: StateHolder = { state: undefined };
    const holders: StateHolder[] = [{ state: undefined }, survivor, { state: undefined }];
    const loads = vi.spyOn(LlamaModel, 'load');
    await generation(out, 1, job, [{ holder: holders[0] }, { holder: survivor, stopAfter: 3 }], false);
    expect(survivor.state?.step).toBe(3);
    expect(loads).toHaveBeenCalledTimes(2);
    // The checkpoint at step 2 is older than the survivor's memory at step 3: memory wins. The
    // survivor keeps its loaded model; only the new rank loads one.
    const second = await generation(out, 2, job, [{ holder: holders[2] }, { holder: survivor }], true);
    expect(loads).toHaveBeenCalledTimes(3);
    loads.mockRestore();
    expect(second.errors).toEqual([undefined, undefined]);
    expect(second.reports[0]!.map((r) => r.step)).toEqual([4, 5, 6]);
    expectSameTensors(clean, await trainable(out));
    holders.forEach(releaseHolder);
  }, 120_000);

  it("a world re-formed without newcomers keeps every rank's own state: only the offers travel", async () => {
    const out = join(dir, 'no-newcomer');
    const job = uniqueJobName('no-newcomer');
    const holders: StateHolder[] = [{ state: undefined }, { state: undefined }];
    await generation(
      out,
      1,
      job,
      [
        { holder: holders[0], stopAfter: 3 },
        { holder: holders[1], stopAfter: 3 },
      ],
      false,
    );
    expect(holders.map((h) => h.state?.step)).toEqual([3, 3]);
    const calls: number[][] = [[], []];
    const second = await generation(
      out,
      2,
      job,
      [
        { holder: holders[0], calls: calls[0] },
        { holder: holders[1], calls: calls[1] },
      ],
      true,
    );
    expect(second.errors).toEqual([undefined, undefined]);
    expect(second.reports[0]!.map((r) => r.step)).toEqual([4, 5, 6]);
    expect(calls).toEqual([[4], [4]]); // [restorable, in memory] x 2 ranks; no state vector
    expectSameTensors(clean, await trainable(out));
    holders.forEach(releaseHolder);
  }, 120_000);

  it('runs the final evaluation again when the world re-forms after the last step', async () => {
    const out = join(dir, 'final-eval');
    const job = uniqueJobName('final-eval');
    const survivor: StateHolder = { state: undefined };
    const lost = async (ctx: { step: number; totalSteps: number }): Promise<void> => {
      if (ctx.step === ctx.totalSteps) throw new Error('lost during the final evaluation');
    };
    const first = await generation(out, 1, job, [{ holder: survivor, evaluate: lost }], false);
    expect(String(first.errors[0])).toContain('lost during the final evaluation');
    expect(survivor.state?.step).toBe(STEPS);
    const evaluated: number[] = [];
    const second = await generation(
      out,
      2,
      job,
      [{ holder: survivor, evaluate: async (ctx) => void evaluated.push(ctx.step) }],
      true,
    );
    expect(second.errors).toEqual([undefined]);
    expect(second.reports[0]).toEqual([]);
    expect(evaluated).toEqual([STEPS]);
    expectSameTensors(clean, await trainable(out));
    releaseHolder(survivor);
  }, 120_000);

  it('refuses a corrupt checkpoint by its sum and takes the one before', async () => {
    const out = join(dir, 'corrupt');
    const job = uniqueJobName('corrupt');
    await generation(out, 1, job, [{ stopAfter: 5 }], false);
    expect((await listCheckpoints(out)).map((c) => c.step)).toEqual([4, 2]);
    const newest = join(out, 'checkpoints', checkpointName(4), 'trainable.safetensors');
    const bytes = await readFile(newest);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    await writeFile(newest, bytes);
    const second = await generation(out, 2, job, [{}, {}], true);
    expect(second.errors).toEqual([undefined, undefined]);
    expect(second.reports[0]!.map((r) => r.step)).toEqual([3, 4, 5, 6]);
    expectSameTensors(clean, await trainable(out));
  }, 120_000);

  it('skips a step whose reduced loss is not finite, on every rank alike', async () => {
    const out = join(dir, 'nan');
    // Sequence 1 is the all-reduce of step 2 (sequence 0 is step 1's): its loss becomes NaN.
    const r = await generation(
      out,
      1,
      uniqueJobName('nan'),
      [{ poison: { seq: 1, index: 0 } }, { poison: { seq: 1, index: 0 } }],
      false,
    );
    expect(r.errors).toEqual([undefined, undefined]);
    for (const reports of r.reports) {
      expect(reports.map((x) => x.skipped)).toEqual([false, true, false, false, false, false]);
      expect(reports.at(-1)!.nonFiniteSteps).toBe(1);
    }
  }, 120_000);
});
