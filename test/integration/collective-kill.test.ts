/**
 * A rank killed mid-collective (a real process, SIGKILL): the other ranks get a CollectiveError
 * naming it within the deadline plus one second, and keep the parameters of the last completed
 * step. The killed rank runs `dist/bench/allreduce-rank.js` (built by `npm run build`, as in
 * `npm test`'s pretest); the survivors run in this process.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CollectiveError } from '../../common/errors.js';
import { GradientAllReduce } from '../../worker/collective/index.js';
import { benchValue, type FromRank, type ToRank } from '../../bench/allreduce-protocol.js';
import { bytes, TEST_COLLECTIVE_KEY } from '../helpers/collective.js';
import { natsScope, uniqueJobName, type NatsServer } from '../helpers/nats-server.js';

const RANK_SCRIPT = join(import.meta.dirname, '../../dist/bench/allreduce-rank.js');
const scope = natsScope();
let server: NatsServer;
let child: ChildProcess | undefined;

beforeAll(async () => {
  server = await scope.start({ maxPayload: 64 * 1024 });
});
afterAll(async () => {
  child?.kill('SIGKILL');
  await scope.cleanup();
});

function input(rank: number, length: number): Float32Array {
  const x = new Float32Array(length);
  for (let i = 0; i < length; i++) x[i] = benchValue(i, rank);
  return x;
}

describe('a rank killed mid-collective', () => {
  it(
    'the others get a CollectiveError naming it within the deadline ' +
      '+ 1 s; their parameters stay those of the last completed step',
    async () => {
      expect(existsSync(RANK_SCRIPT), `${RANK_SCRIPT}: run npm run build first`).toBe(true);
      const n = 3;
      const killed = 2;
      // The deadline also bounds step 0, which a loaded machine must finish in it.
      const timeoutMs = 3000;
      // 4 MB in 64 KiB chunks; the survivors' step 1 is paced (20 pieces, 20 ms apart), so the kill
      // lands mid-collective whatever the size.
      const length = 1_000_000;
      const job = uniqueJobName('kill');
      const messages: FromRank[] = [];
      const next = (type: FromRank['type']): Promise<FromRank> =>
        new Promise((resolve, reject) => {
          const timer = setInterval(() => {
            const i = messages.findIndex((m) => m.type === type);
            if (i >= 0) {
              clearInterval(timer);
              resolve(messages.splice(i, 1)[0]!);
            }
            if (child?.exitCode != null) {
              clearInterval(timer);
              reject(new Error(`rank ${killed} exited`));
            }
          }, 2);
        });
      child = fork(RANK_SCRIPT, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      child.on('message', (m: FromRank) => messages.push(m));
      const send = (m: ToRank): void => {
        child!.send(m);
      };
      send({
        type: 'setup',
        mode: 'allreduce',
        url: server.url,
        job,
        rank: killed,
        worldSize: n,
        elements: length,
        compression: 'none',
        keyHex: Buffer.from(TEST_COLLECTIVE_KEY).toString('hex'),
        timeoutMs,
        inPlace: false,
        freshOutput: false,
      });
      const ncs = await Promise.all([0, 1].map(() => scope.connect(server)));
      const ranks = await Promise.all(
        ncs.map((nc, rank) =>
          GradientAllReduce.create({ key: TEST_COLLECTIVE_KEY, nc, job, generation: 1, rank, worldSize: n, timeoutMs }),
        ),
      );
      await Promise.all(ranks.map((ar) => ar.ready({ timeoutMs: 10_000 })));
      await next('ready');

      // Step 0 completes; the survivors "apply" it to their parameters.
      const params = ranks.map(() => new Float32Array(length));
      const inputs = ranks.map((_, r) => input(r, length)); // made first: the ranks start together
      send({ type: 'run', step: 0 });
      const step0 = await Promise.all(ranks.map((ar, r) => ar.allReduce(0, inputs[r]!)));
      step0.forEach((g, r) => params[r]!.set(g));
      expect((await next('done')) as { ok: boolean }).toMatchObject({ ok: true });
      const saved = params.map((p) => Float32Array.from(p));

      // Step 1: the survivors produce their gradients in pieces (the overlap API), so the child can
      // only get a window ahead; it is killed once its first pieces have arrived.
      const grads = ranks.map((_, r) => input(r, length));
      const gradCopies = grads.map((g) => Float32Array.from(g));
      const received0 = ranks[0]!.stats.messagesReceived;
      const started = Date.now();
      send({ type: 'run', step: 1 });
      const outcomes = ranks.map(async (ar, r) => {
        const h = ar.begin(1, length);
        const result = h.result.then(
          (g) => {
            params[r]!.set(g);
            return undefined;
          },
          (e: unknown) => e,
        );
        for (let at = 0; at < length; at += length / 20) {
          h.append(grads[r]!.subarray(at, at + length / 20));
          await new Promise((res) => setTimeout(res, 20));
        }
        return result;
      });
      while (ranks[0]!.stats.messagesReceived === received0 && Date.now() - started < 5000)
        await new Promise((r) => setTimeout(r, 1));
      const receivedAtKill = ranks[0]!.stats.messagesReceived - received0;
      child.kill('SIGKILL');
      const errors = await Promise.all(outcomes);
      const elapsed = Date.now() - started;

      expect(receivedAtKill).toBeGreaterThan(0); // mid-collective: some of its pieces had arrived
      expect(elapsed).toBeLessThan(timeoutMs + 1000);
      for (const e of errors) {
        expect(e).toBeInstanceOf(CollectiveError);
        expect((e as CollectiveError).missingRanks).toContain(killed);
        expect((e as CollectiveError).step).toBe(1);
      }
      params.forEach((p, r) => expect(bytes(p).equals(bytes(saved[r]!))).toBe(true));
      grads.forEach((g, r) => expect(bytes(g).equals(bytes(gradCopies[r]!))).toBe(true));
    },
  );
});
