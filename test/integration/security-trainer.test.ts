/**
 * Issue 20's attack on a training job, end to end over a real nats-server: a rogue NATS client on
 * the job's subjects forges every gradient chunk it sees (step + 1, values × -100, re-sealed without
 * the key), forges the all-reduced head (negative, fractional token counts), replays the previous
 * step's genuine chunks and duplicates the current ones. The job ends with final weights
 * bit-identical to a clean run's, with the same losses, and the forged head fails nothing.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { GradientAllReduce, RejectReason } from '../../worker/collective/index.js';
import { train, type StepReport } from '../../worker/train/trainer.js';
import { TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName } from '../helpers/nats-server.js';
import { rogueClient, type RogueOptions } from '../helpers/rogue-nats.js';
import { tensorMap } from '../helpers/tensors.js';
import { tinySlamSpec, tinyTrainDir } from '../helpers/train-job.js';

let dir: string;
const nats = natsScope();

beforeAll(async () => {
  dir = await tinyTrainDir('polytune-sec-trainer-', 7, 3, 5);
}, 120_000);
afterEach(() => nats.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function runJob(outDir: string, rogue?: RogueOptions) {
  const workers = 2;
  const server = await nats.start();
  const job = uniqueJobName('sectrain');
  const r = rogue ? rogueClient(await nats.connect(server), job, rogue) : undefined;
  const reports: StepReport[][] = [[], []];
  const rejected: Array<Partial<Record<RejectReason, number>>> = [{}, {}];
  await Promise.all(
    [0, 1].map(async (rank) => {
      const nc = await nats.connect(server);
      const ar = await GradientAllReduce.create({
        key: TEST_COLLECTIVE_KEY,
        nc,
        job,
        generation: 1,
        rank,
        worldSize: workers,
        timeoutMs: 60_000,
        onRejected: (reason) => {
          rejected[rank]![reason] = (rejected[rank]![reason] ?? 0) + 1;
        },
      });
      try {
        await ar.ready({ timeoutMs: 10_000 });
        return await train({
          spec: tinySlamSpec(dir, {
            name: 'sec-trainer',
            out: outDir,
            steps: 4,
            workers,
            layers: [0, 2],
            microBatchSize: 2,
          }),
          rank,
          worldSize: workers,
          allReduce: (step, data, opts) => ar.allReduce(step, data, undefined, opts),
          beginAllReduce: (step, length, opts) => ar.begin(step, length, undefined, opts),
          onStep: (s) => reports[rank]!.push(s),
        });
      } finally {
        await ar.close();
      }
    }),
  );
  await r?.stop();
  return { reports, rejected, rogue: r };
}

describe('a training job under a rogue NATS client without the key', () => {
  it("ends with final weights bit-identical to a clean run's; forged heads fail nothing", async () => {
    const clean = await runJob(join(dir, 'out-clean'));
    const attacked = await runJob(join(dir, 'out-attacked'), {
      forge: true,
      forgeHead: true,
      replayAfter: 1,
      duplicate: true,
    });

    expect(attacked.rogue!.forged).toBeGreaterThan(10);
    expect(attacked.rogue!.replayed).toBeGreaterThan(0);
    const total = (reason: RejectReason): number => attacked.rejected.reduce((n, r) => n + (r[reason] ?? 0), 0);
    expect(total(RejectReason.mac)).toBeGreaterThan(10);
    expect(total(RejectReason.duplicate)).toBeGreaterThan(0);

    expect(attacked.reports[0]!.map((r) => r.loss)).toEqual(clean.reports[0]!.map((r) => r.loss));
    expect(attacked.reports[0]!.map((r) => r.supervisedTokens)).toEqual(
      clean.reports[0]!.map((r) => r.supervisedTokens),
    );
    const a = await tensorMap(join(dir, 'out-clean', 'final', 'trainable.safetensors'));
    const b = await tensorMap(join(dir, 'out-attacked', 'final', 'trainable.safetensors'));
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, x] of a) {
      const y = b.get(name)!;
      expect(
        Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength)),
        name,
      ).toBe(true);
    }
  }, 300_000);
});
