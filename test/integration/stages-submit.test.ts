/** Submitting a job of several stages to a real coordinator (real gRPC, real nats-server with JetStream). */
import { status } from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAnyJobSpec, type AnyJobSpec } from '../../common/job-kinds.js';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { Coordinator } from '../../coordinator/server.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';

describe('coordinator Submit of spec.stages', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient;
  let fx: SpecFixture;

  /** Two stages on the fixture's 2-layer model and data file; `second` is stage 2's method. */
  const twoStages = (
    second = '{ name: freeze, layers: [1], modules: [q_proj] }',
    extra = '',
  ): string => `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: two-stages }
spec:
  model: { path: ${fx.modelDir} }
  stages:
    - name: translate
      method: { name: slam, layers: [0] }
      data: { train: [{ path: ${fx.dataFile}, format: alpaca }] }
      training: { epochs: 1, globalBatchSize: 2, microBatchSize: 1, optimizer: { name: sgd, lr: 0.1 } }${extra}
    - name: answer
      method: ${second}
      data: { train: [{ path: ${fx.dataFile}, format: alpaca }] }
      training: { epochs: 2, globalBatchSize: 4, microBatchSize: 1, optimizer: { name: sgd, lr: 0.1 } }
  workers: { count: 2 }
  output: { dir: ${fx.dir}/out }
`;

  beforeEach(async () => {
    fx = makeSpecFixture();
    nats = await startNats();
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address, callTimeoutMs: 5_000 });
  });

  afterEach(async () => {
    client.close();
    await coord?.stop();
    await nats.stop();
    fx.cleanup();
  });

  async function refusal(text: string): Promise<CoordinatorCallError> {
    const err = await client.submitText(text, 'two.yaml').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CoordinatorCallError);
    expect((err as CoordinatorCallError).code).toBe(status.INVALID_ARGUMENT);
    expect((err as CoordinatorCallError).isUserMistake).toBe(true);
    return err as CoordinatorCallError;
  }

  it("refuses a stage's mistake naming its path: a layer past the model's depth, an unknown field", async () => {
    const deep = await refusal(twoStages('{ name: freeze, layers: [2] }'));
    expect(deep.message).toContain(
      "spec.stages[1].method.layers[0]: layer 2 is past the model's depth (2 layers: 0-1)",
    );
    expect(deep.message).not.toContain('spec.stages[0]');
    const unknown = await refusal(twoStages(undefined, '\n      epochz: 1'));
    expect(unknown.message).toContain('spec.stages[0].epochz: unknown field');
    const both = await refusal(twoStages().replace('  stages:', '  method: { name: full }\n  stages:'));
    expect(both.message).toContain('spec.method: is not allowed with spec.stages');
    expect(await client.list()).toEqual([]);
  });

  it(
    'takes a valid one: steps of both stages end to end, ' + 'stage 1/2 on the record, what the largest stage trains',
    async () => {
      const res = await client.submitSpec(parseAnyJobSpec(twoStages()), 'two.yaml');
      expect(res.trainableParameters).toBeGreaterThan(0);
      expect(res.totalParameters).toBeGreaterThan(res.trainableParameters);
      const job = await client.get(res.jobId);
      // 8 samples: 4 steps of 2 in stage 1, then 2 epochs of 2 steps of 4.
      expect(Number(job.totalSteps)).toBe(8);
      expect({ index: job.stageIndex, count: job.stageCount, name: job.stageName }).toEqual({
        index: 0,
        count: 2,
        name: 'translate',
      });
      const resumed = await client.get(
        (await client.submitSpec(JSON.parse(job.specJson) as AnyJobSpec, 'two.yaml', { resume: true })).jobId,
      );
      expect(resumed.stageCount).toBe(0); // unknown until the workers say where they go on
    },
  );
});
