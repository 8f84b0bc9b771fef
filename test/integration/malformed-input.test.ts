/**
 * Bad input from the network against a real coordinator (real NATS): twenty malformed job specs
 * through Submit and twenty malformed gRPC messages. Each is refused with an error that says what
 * was wrong, nothing is stored or applied, and the coordinator answers the next request.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import { MAX_SPEC_BYTES } from '../../coordinator/request-limits.js';
import type { Coordinator } from '../../coordinator/server.js';
import { loadCoordinatorProto, type CoordinatorMessage__Output, type WorkerMessage } from '../../proto/index.js';
import {
  eventually,
  makeSpecFixture,
  startNats,
  startTestCoordinator,
  type SpecFixture,
} from './coordinator-fixtures.js';

let nats: NatsServer;
let coordinator: Coordinator;
let fixture: SpecFixture;
let client: JobClient;

beforeAll(async () => {
  fixture = makeSpecFixture();
  nats = await startNats();
  coordinator = await startTestCoordinator(nats, { heartbeatTimeoutMs: 30_000 });
  client = new JobClient({ address: coordinator.address, callTimeoutMs: 5_000 });
});

afterAll(async () => {
  client?.close();
  await coordinator?.stop();
  await nats?.stop();
  fixture?.cleanup();
});

async function refusal(p: Promise<unknown>): Promise<{ code: grpc.status; message: string }> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CoordinatorCallError);
    return { code: (e as CoordinatorCallError).code, message: (e as Error).message };
  }
  throw new Error('expected the call to be refused');
}

/** The coordinator still answers: a List comes back. */
async function stillAnswers(): Promise<void> {
  await expect(client.list()).resolves.toBeInstanceOf(Array);
}

describe('twenty malformed job specs through Submit', () => {
  const valid = (): string => fixture.yaml({ name: 'malformed-base' });
  const edit = (from: string | RegExp, to: string): string => {
    const v = valid();
    const out = v.replace(from, to);
    if (out === v) throw new Error(`fixture edit did not apply: ${String(from)}`);
    return out;
  };
  const cases: Array<[string, () => string, RegExp]> = [
    ['empty text', () => '', /spec_yaml: is empty/],
    ['a NUL byte', () => valid() + '\u0000', /spec_yaml: contains a NUL character/],
    [
      'larger than the spec cap',
      () => valid() + `# ${'x'.repeat(MAX_SPEC_BYTES)}\n`,
      /spec_yaml: at most 262144 bytes/,
    ],
    ['not YAML', () => 'apiVersion: [polytune/v1\nkind: {', /invalid job spec|YAML|yaml|parse/i],
    ['a list, not an object', () => '- a\n- b\n', /invalid job spec/],
    ['a scalar', () => '42', /invalid job spec/],
    [
      'wrong apiVersion',
      () => edit('apiVersion: polytune/v1', 'apiVersion: polytune/v9'),
      /apiVersion: must be "polytune\/v1"/,
    ],
    [
      'wrong kind',
      () => edit('kind: TrainJob', 'kind: Deployment'),
      /kind: must be one of TrainJob, EvalJob, LayerAnalysis/,
    ],
    ['bad metadata.name', () => edit('name: malformed-base', 'name: Not_A_DNS_Label'), /metadata\.name/],
    ['unknown top-level field', () => valid() + 'status: {}\n', /status/],
    ['unknown spec field', () => edit('  workers:', '  gpus: 8\n  workers:'), /spec.*gpus|gpus/],
    ['lr of the wrong type', () => edit('lr: 0.1', 'lr: fast'), /spec\.training\.optimizer\.lr/],
    ['negative lr', () => edit('lr: 0.1', 'lr: -1'), /spec\.training\.optimizer\.lr: must be > 0/],
    [
      'microBatchSize 0',
      () => edit('microBatchSize: 1', 'microBatchSize: 0'),
      /spec\.training\.microBatchSize: must be > 0/,
    ],
    ['zero workers', () => edit(/workers: \{ count: \d+ \}/, 'workers: { count: 0 }'), /spec\.workers\.count/],
    ['unknown method', () => edit('name: slam', 'name: magic'), /spec\.method\.name: must be one of/],
    [
      'unknown data format',
      () => edit('format: alpaca', 'format: csv'),
      /spec\.data\.train\[0\]\.format: must be one of/,
    ],
    [
      'a data file that does not exist',
      () => edit(fixture.dataFile, `${fixture.dataFile}.missing`),
      /spec\.data\.train\[0\]\.path/,
    ],
    [
      'a model dir that does not exist',
      () => edit(`path: ${fixture.modelDir}`, `path: ${fixture.modelDir}-missing`),
      /spec\.model\.path/,
    ],
    [
      'an alias bomb (billion laughs)',
      () => {
        const lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
        for (let i = 1; i < 10; i++)
          lines.push(
            `${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9)
              .fill(`*${String.fromCharCode(96 + i)}`)
              .join(',')}]`,
          );
        return lines.join('\n') + '\n';
      },
      /invalid job spec|alias|Excessive/i,
    ],
  ];

  it.each(cases)(
    '%s: INVALID_ARGUMENT naming what is wrong; the coordinator answers the next call',
    async (_name, make, expected) => {
      const r = await refusal(client.submitText(make(), 'bad.yaml'));
      expect(r.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r.message).toMatch(expected);
      await stillAnswers();
    },
  );

  it('stored none of them', async () => {
    expect(await coordinator.store.list()).toEqual([]);
    expect(cases).toHaveLength(20);
  });
});

/** A raw Join stream: sends what it is told, collects what comes back and how it ended. */
interface RawStream {
  send(msg: WorkerMessage): void;
  received: CoordinatorMessage__Output[];
  ended: Promise<{ code: grpc.status; details: string }>;
  close(): void;
}

function rawJoin(): RawStream {
  const proto = loadCoordinatorProto();
  const c = new proto.WorkerService(coordinator.address, grpc.credentials.createInsecure());
  const call = c.Join();
  const received: CoordinatorMessage__Output[] = [];
  call.on('data', (m: CoordinatorMessage__Output) => received.push(m));
  const ended = new Promise<{ code: grpc.status; details: string }>((resolve) => {
    call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details }));
    call.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
  });
  return {
    send: (m) => call.write(m),
    received,
    ended,
    close: () => {
      call.cancel();
      c.close();
    },
  };
}

/** A Join stream of raw bytes (for what protobuf itself cannot decode). */
function rawBytesJoin(): {
  send(b: Buffer): void;
  ended: Promise<{ code: grpc.status; details: string }>;
  close(): void;
} {
  const Ctor = grpc.makeGenericClientConstructor(
    {
      Join: {
        path: '/polytune.v1.WorkerService/Join',
        requestStream: true,
        responseStream: true,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    },
    'WorkerService',
  );
  const c = new Ctor(coordinator.address, grpc.credentials.createInsecure());
  const call = (c as unknown as { Join(): grpc.ClientDuplexStream<Buffer, Buffer> }).Join();
  call.on('data', () => undefined);
  const ended = new Promise<{ code: grpc.status; details: string }>((resolve) => {
    call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details }));
  });
  return {
    send: (b) => call.write(b),
    ended,
    close: () => {
      call.cancel();
      c.close();
    },
  };
}

const hello = (workerId: string): WorkerMessage => ({
  hello: {
    workerId,
    hostname: 'h',
    backend: 'cpu',
    pid: 1,
    capabilities: { cores: 1, memoryBytes: 1, backend: 'cpu' },
  },
});
const progress = (jobId: string, generation: number, extra: Record<string, unknown> = {}): WorkerMessage => ({
  progress: {
    jobId,
    generation,
    step: 1,
    totalSteps: 4,
    loss: 2.5,
    tokensPerSecond: 10,
    epoch: 0,
    supervisedTokens: 5,
    elapsedSeconds: 1,
    ...extra,
  },
});

describe('twenty malformed gRPC messages', () => {
  const streams: Array<{ close(): void }> = [];
  afterAll(() => {
    for (const s of streams) s.close();
  });
  const open = (): RawStream => {
    const s = rawJoin();
    streams.push(s);
    return s;
  };

  // Protocol violations end the stream with INVALID_ARGUMENT.
  const fatal: Array<[string, (s: RawStream) => void, RegExp]> = [
    [
      'a Result before Hello',
      (s) => s.send({ result: { jobId: 'x-12345', generation: 1, ok: true } }),
      /first message on Join must be Hello, got result/,
    ],
    [
      'a Progress before Hello',
      (s) => s.send(progress('x-12345', 1)),
      /first message on Join must be Hello, got progress/,
    ],
    ['an empty message first', (s) => s.send({}), /first message on Join must be Hello, got an empty message/],
    ['a Hello without worker_id', (s) => s.send(hello('')), /bad Hello: hello\.worker_id: is required/],
    [
      'a Hello whose worker_id has a slash and spaces',
      (s) => s.send(hello('../etc passwd')),
      /hello\.worker_id: .* may hold only/,
    ],
    [
      'a Hello whose worker_id is 10 000 characters',
      (s) => s.send(hello('w'.repeat(10_000))),
      /hello\.worker_id: at most 253 characters/,
    ],
    [
      'a Hello with a bogus backend',
      (s) => s.send({ hello: { workerId: 'w-backend', backend: 'cpu; rm -rf /', pid: 1 } }),
      /hello\.backend: .* is not a backend name/,
    ],
    [
      'a second Hello',
      (s) => {
        s.send(hello('w-twice'));
        s.send(hello('w-twice'));
      },
      /a second Hello/,
    ],
  ];

  it.each(fatal)(
    '%s: the stream ends with INVALID_ARGUMENT; the coordinator answers the next call',
    async (_name, act, expected) => {
      const s = open();
      act(s);
      const end = await s.ended;
      expect(end.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(end.details).toMatch(expected);
      await stillAnswers();
    },
  );

  it(
    'bytes that are not a WorkerMessage (wrong wire types, ' + 'garbage): the stream fails, the coordinator answers',
    async () => {
      // Field 1 (hello, a message) sent as a varint; then pure garbage.
      for (const bytes of [Buffer.from([0x08, 0x96, 0x01]), Buffer.from('ffffffffffffffffffff', 'hex')]) {
        const s = rawBytesJoin();
        streams.push(s);
        s.send(bytes);
        const end = await s.ended;
        expect(end.code).not.toBe(grpc.status.OK);
        expect(end.details).toMatch(/pars|deserializ|decod|invalid/i);
        await stillAnswers();
      }
    },
  );

  it('a message larger than the receive limit: RESOURCE_EXHAUSTED, the coordinator answers', async () => {
    const s = open();
    s.send({ hello: { workerId: 'huge', hostname: 'h'.repeat(2 * 1024 * 1024), backend: 'cpu', pid: 1 } });
    const end = await s.ended;
    expect(end.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const r = await refusal(client.submitText('x'.repeat(1024 * 1024)));
    expect(r.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    await stillAnswers();
    expect(coordinator.registry.get('huge')).toBeUndefined();
  });

  it('job ids that cannot exist in Get, Cancel and Watch; an over-long cancel reason: INVALID_ARGUMENT', async () => {
    for (const id of ['', '>', 'a.b', '*', '../../etc/passwd', 'UPPER', 'x'.repeat(64)]) {
      const r = await refusal(client.get(id));
      expect(r.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r.message).toMatch(/job_id: /);
    }
    expect((await refusal(client.cancel('a.>'))).code).toBe(grpc.status.INVALID_ARGUMENT);
    const watchAll = async (): Promise<void> => {
      for await (const ev of client.watch('>')) void ev;
    };
    const w = await refusal(watchAll());
    expect(w.code).toBe(grpc.status.INVALID_ARGUMENT);
    const id = await client.submitText(fixture.yaml({ name: 'reason-job', workers: 1 }));
    expect((await refusal(client.cancel(id, 'r'.repeat(5_000)))).message).toMatch(/reason: at most 1024 characters/);
    expect((await client.get(id)).state).toBe('PENDING');
    expect((await refusal(client.get('no-such-job-abcde'))).code).toBe(grpc.status.NOT_FOUND);
    await client.cancel(id);
  });

  it(
    'messages about jobs, gangs and generations the worker is not in ' +
      'are refused; the stream stays open and good messages still count',
    async () => {
      // A job with one worker, whose generation is moved to 4 before the worker joins, so that it runs generation 5.
      const jobId = await client.submitText(fixture.yaml({ name: 'gang-job', workers: 1 }));
      await coordinator.store.update(jobId, (r) => ({ ...r, generation: 4 }));
      const other = await client.submitText(fixture.yaml({ name: 'other-job', workers: 2 }));
      const s = open();
      s.send(hello('w-gang'));
      const assignment = await eventually(
        () => s.received.find((m) => m.msg === 'assignment')?.assignment ?? undefined,
        10_000,
        'assignment',
      );
      expect(assignment.jobId).toBe(jobId);
      expect(assignment.generation).toBe(5);
      const before = s.received.length;

      const bad: Array<[WorkerMessage, RegExp]> = [
        [progress('no-such-job-zzzzz', 5), /progress\.job_id: job no-such-job-zzzzz not found/],
        [progress('../../x', 5), /progress\.job_id: .* is not a job id/],
        [
          progress(other, 1),
          new RegExp(
            `progress\\.job_id: worker w-gang is not in the gang of job ${other} \\(it is assigned ${jobId}\\)`,
          ),
        ],
        [progress(jobId, 4), /progress\.generation: 4 is stale \(worker w-gang is in generation 5/],
        [progress(jobId, 9), /progress\.generation: 9 is not the current generation 5/],
        [progress(jobId, 0), /progress\.generation: must be in 1\.\./],
        [progress(jobId, 5, { step: 7 }), /progress\.step: 7 is beyond total_steps 4/],
        [progress(jobId, 5, { tokensPerSecond: -1 }), /progress\.tokens_per_second: must be a finite number >= 0/],
        [progress(jobId, 5, { elapsedSeconds: Infinity }), /progress\.elapsed_seconds: must be a finite number >= 0/],
        [progress(jobId, 5, { step: 2 ** 60, totalSteps: 2 ** 61 }), /progress\.step: must be an integer/],
        [{ result: { jobId, generation: 4, ok: true, steps: 4 } }, /result\.generation: 4 is stale/],
        [{ result: { jobId: other, generation: 1, ok: true } }, /result\.job_id: worker w-gang is not in the gang/],
        [
          { result: { jobId, generation: 5, ok: true, outputDir: '/'.repeat(5000) } },
          /result\.output_dir: at most 4096 characters/,
        ],
      ];
      for (const [msg] of bad) s.send(msg);
      const refusals = await eventually(
        () => {
          const r = s.received.slice(before).filter((m) => m.msg === 'refusal');
          return r.length >= bad.length ? r : undefined;
        },
        10_000,
        'refusals',
      );
      const errors = refusals.map((r) => r.refusal?.error ?? '');
      bad.forEach(([, expected], i) =>
        expect(
          errors.some((e) => expected.test(e)),
          `refusal ${i}: ${String(expected)} in\n${errors.join('\n')}`,
        ).toBe(true),
      );
      // None of it was applied; the stream is still open and a good message is.
      expect((await client.get(jobId)).step).toBe(0);
      expect((await client.get(jobId)).state).toBe('RUNNING');
      expect((await client.get(other)).state).toBe('PENDING');
      s.send(progress(jobId, 5, { step: 2 }));
      await eventually(
        async () => ((await client.get(jobId)).step === 2 ? true : undefined),
        5_000,
        'good progress applied',
      );
      s.send({
        result: { jobId, generation: 5, ok: true, steps: 4, firstLoss: 2.5, finalLoss: 1.5, outputDir: '/tmp/out' },
      });
      await eventually(
        async () => ((await client.get(jobId)).state === 'SUCCEEDED' ? true : undefined),
        5_000,
        'job succeeded',
      );
      await stillAnswers();
    },
  );
});
