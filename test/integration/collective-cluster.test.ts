/** The collective across a 3-server NATS cluster (routes on loopback): ranks on different servers. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { GradientAllReduce } from '../../worker/collective/index.js';
import { bytes, compressedReference, sumInRankOrder, vector, TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName, type NatsCluster } from '../helpers/nats-server.js';

const scope = natsScope();
let cluster: NatsCluster;

beforeAll(async () => {
  cluster = await scope.startCluster(3, { maxPayload: 64 * 1024 });
});
afterAll(() => scope.cleanup());

describe('GradientAllReduce on a 3-server cluster', () => {
  it.each([
    [4, 'none', 200_003],
    [3, 'fp16', 70_001],
    [8, 'none', 1],
  ] as const)(
    '%i ranks spread over the servers, %s, %i elements: ready(), then bit-identical results',
    async (n, compression, length) => {
      const job = uniqueJobName('cluster');
      // rank r connects to server r % 3 only, so traffic must cross routes
      const ncs = await Promise.all(Array.from({ length: n }, (_, r) => scope.connect(cluster.servers[r % 3]!.url)));
      const ranks = await Promise.all(
        ncs.map((nc, rank) =>
          GradientAllReduce.create({
            key: TEST_COLLECTIVE_KEY,
            nc,
            job,
            generation: 3,
            rank,
            worldSize: n,
            timeoutMs: 20_000,
            compression,
          }),
        ),
      );
      await Promise.all(ranks.map((ar) => ar.ready({ timeoutMs: 10_000 })));
      for (let step = 0; step < 2; step++) {
        const inputs = ranks.map((_, r) => vector(r + 17 * step + length, length));
        const results = await Promise.all(ranks.map((ar, r) => ar.allReduce(step, inputs[r]!)));
        const expected = compression === 'none' ? sumInRankOrder(inputs) : compressedReference(inputs, compression);
        for (const res of results) expect(bytes(res).equals(bytes(expected))).toBe(true);
      }
      for (const ar of ranks) expect(ar.stats.lostChunks + ar.stats.droppedInvalid).toBe(0);
      let slow = 0;
      for (const s of cluster.servers) slow += Number((await s.monitor('varz'))['slow_consumers']);
      expect(slow).toBe(0);
      await Promise.all(ranks.map((ar) => ar.close()));
    },
  );
});
