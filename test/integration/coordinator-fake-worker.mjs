#!/usr/bin/env node
// A stand-in for `worker` in the local-cluster test: the real Join protocol (plain JS, no build
// needed), no training. Accepts the worker's flags; on an assignment it reports progress for
// every step and an ok Result. FAKE_WORKER_PIDFILE: append its pid there. FAKE_WORKER_HANG=1:
// ignore SIGTERM (to test SIGKILL after the grace period). FAKE_WORKER_STEP_MS: time a step takes.
// FAKE_WORKER_FAIL=1: rank 1 fails at step 2. A generation g > 1 starts over at step 1 with losses
// g - 1 higher (so that a view can tell the generations' losses apart).
import { appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const { values } = parseArgs({
  options: {
    coordinator: { type: 'string' },
    nats: { type: 'string' },
    id: { type: 'string' },
    backend: { type: 'string' },
    'local-rank': { type: 'string' },
  },
});
if (process.env.FAKE_WORKER_PIDFILE) appendFileSync(process.env.FAKE_WORKER_PIDFILE, `${process.pid}\n`);
if (process.env.FAKE_WORKER_HANG === '1') process.on('SIGTERM', () => {});
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto');
const def = protoLoader.loadSync('polytune/v1/coordinator.proto', {
  includeDirs: [root],
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(def).polytune.v1;
const client = new pkg.WorkerService(values.coordinator, grpc.credentials.createInsecure());
const stream = client.Join();
stream.on('error', () => {});
stream.on('end', () => {});
stream.write({ hello: { workerId: values.id, hostname: 'fake', backend: values.backend ?? 'cpu', pid: process.pid } });
setInterval(() => stream.write({ heartbeat: {} }), 500);
stream.on('data', (msg) => {
  if (msg.msg !== 'assignment') return;
  const a = msg.assignment;
  let step = 0;
  const t = setInterval(
    () => {
      step++;
      stream.write({
        progress: {
          jobId: a.jobId,
          generation: a.generation,
          step,
          totalSteps: a.totalSteps,
          loss: 5 / step + a.generation - 1,
          tokensPerSecond: 1000,
          epoch: 0,
          supervisedTokens: 10,
          elapsedSeconds: step / 10,
        },
      });
      if (process.env.FAKE_WORKER_FAIL === '1' && a.rank === 1 && step === 2) {
        clearInterval(t);
        stream.write({
          result: { jobId: a.jobId, generation: a.generation, ok: false, error: 'fake failure at step 2' },
        });
        return;
      }
      if (step >= a.totalSteps) {
        clearInterval(t);
        stream.write({
          result: {
            jobId: a.jobId,
            generation: a.generation,
            ok: true,
            outputDir: JSON.parse(a.specJson).spec.output.dir,
            firstLoss: 5 + a.generation - 1,
            finalLoss: 5 / step + a.generation - 1,
            steps: step,
          },
        });
      }
    },
    Number(process.env.FAKE_WORKER_STEP_MS ?? 50),
  );
});
