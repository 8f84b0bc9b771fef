/** Coordinator pieces that need no server: error mapping, records, job ids, the registry, the proto loader. */
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { JobSpecError, UserError } from '../../common/errors.js';
import {
  CoordinatorStoppingError,
  JobConflictError,
  JobNotFoundError,
  WorkerIdInUseError,
} from '../../coordinator/errors.js';
import { CoordinatorCallError, fromGrpcError, toGrpcStatus } from '../../coordinator/grpc-errors.js';
import { fromWireState, isTerminal, JobState, newJobRecord, toWireJob } from '../../coordinator/job-record.js';
import { newJobId } from '../../coordinator/scheduler.js';
import { WorkerRegistry, type RegistryEvent, type WorkerLink } from '../../coordinator/worker-registry.js';
import type { JobSpec } from '../../common/jobspec.js';
import { loadCollectiveProto, loadCoordinatorProto, protoDir } from '../../proto/index.js';
import type { CoordinatorMessage, Hello__Output } from '../../proto/index.js';

const spec = {
  apiVersion: 'polytune/v1',
  kind: 'TrainJob',
  metadata: { name: 'unit' },
  spec: { output: { dir: '/runs/unit' }, workers: { count: 2 } },
} as unknown as JobSpec;

describe('grpc-errors', () => {
  it('maps each domain error to one status code', () => {
    expect(toGrpcStatus(new JobSpecError([{ path: 'spec.x', message: 'bad' }])).code).toBe(status.INVALID_ARGUMENT);
    expect(toGrpcStatus(new UserError('no')).code).toBe(status.INVALID_ARGUMENT);
    expect(toGrpcStatus(new JobNotFoundError('j')).code).toBe(status.NOT_FOUND);
    expect(toGrpcStatus(new JobConflictError('j')).code).toBe(status.ABORTED);
    expect(toGrpcStatus(new CoordinatorStoppingError()).code).toBe(status.UNAVAILABLE);
    expect(toGrpcStatus(new Error('boom'))).toMatchObject({ code: status.INTERNAL, details: 'boom' });
  });

  it('keeps the field paths in the details', () => {
    const st = toGrpcStatus(
      new JobSpecError([{ path: 'spec.training.optimizer.lr', message: 'must be > 0' }], 'job.yaml'),
    );
    expect(st.details).toContain('spec.training.optimizer.lr: must be > 0');
  });

  it('client errors carry the code, the server message and the caller stack', () => {
    const stack = new Error('here').stack;
    const e = fromGrpcError(
      'Get',
      Object.assign(new Error('5 NOT_FOUND: job x not found'), { code: status.NOT_FOUND, details: 'job x not found' }),
      stack,
    );
    expect(e).toBeInstanceOf(CoordinatorCallError);
    expect(e).toMatchObject({
      code: status.NOT_FOUND,
      message: 'job x not found',
      method: 'Get',
      isUserMistake: true,
      retryable: false,
    });
    expect(e.stack).toContain('coordinator.test.ts');
    expect(
      fromGrpcError('List', Object.assign(new Error('x'), { code: status.UNAVAILABLE, details: 'down' })).retryable,
    ).toBe(true);
  });
});

describe('job records', () => {
  it('a new record is Pending, with no loss yet', () => {
    const r = newJobRecord('unit-abcde', spec, 4, 1000);
    expect(r).toMatchObject({
      id: 'unit-abcde',
      name: 'unit',
      state: 'Pending',
      generation: 0,
      firstLoss: null,
      outputDir: '/runs/unit',
      createdAt: 1000,
    });
    const wire = toWireJob(r);
    expect(wire).toMatchObject({ state: 'PENDING', hasLoss: false, lastLoss: 0 });
    expect(JSON.parse(wire.specJson!)).toEqual(spec);
  });

  it('states round-trip through the wire names; terminal states are terminal', () => {
    for (const s of Object.values(JobState))
      expect(fromWireState(toWireJob({ ...newJobRecord('a', spec, 1), state: s }).state as string)).toBe(s);
    expect([JobState.Pending, JobState.Running].map(isTerminal)).toEqual([false, false]);
    expect([JobState.Succeeded, JobState.Failed, JobState.Cancelled].map(isTerminal)).toEqual([true, true, true]);
  });

  it('job ids are the name, a dash and 5 random characters', () => {
    const ids = new Set(Array.from({ length: 50 }, () => newJobId('slam-metamath')));
    for (const id of ids) expect(id).toMatch(/^slam-metamath-[a-z0-9]{5}$/);
    expect(ids.size).toBeGreaterThan(45);
    expect(newJobId('x'.repeat(63)).length).toBeLessThanOrEqual(63);
  });
});

function hello(id: string): Hello__Output {
  return {
    workerId: id,
    hostname: 'h',
    backend: 'cpu',
    pid: 1,
    capabilities: { cores: 2, memoryBytes: 1, backend: 'cpu' },
  };
}

function link(): WorkerLink & { sent: CoordinatorMessage[]; closed: string[] } {
  const sent: CoordinatorMessage[] = [];
  const closed: string[] = [];
  return { sent, closed, send: (m) => (sent.push(m), true), close: (r) => void closed.push(r) };
}

describe('worker registry', () => {
  it('tracks idle and busy workers; draining ones come back after their result or the timeout', async () => {
    const reg = new WorkerRegistry({ heartbeatTimeoutMs: 60_000, drainTimeoutMs: 100 });
    const events: string[] = [];
    reg.on((e: RegistryEvent) => events.push(`${e.type}:${e.worker.id}`));
    reg.join(hello('a'), link());
    reg.join(hello('b'), link());
    expect(reg.idle().map((w) => w.id)).toEqual(['a', 'b']);
    reg.assign('a', { jobId: 'j', generation: 1, rank: 0 });
    expect(reg.idle().map((w) => w.id)).toEqual(['b']);
    reg.release('a', { drain: true });
    expect(reg.get('a')?.status).toBe('draining');
    await new Promise((r) => setTimeout(r, 1_200));
    expect(reg.get('a')?.status).toBe('idle');
    expect(events).toEqual(['joined:a', 'joined:b', 'idle:a']);
    reg.close();
  });

  it(
    'loses a silent worker and closes its link; a second Hello ' +
      'with the same id replaces the first once its stream closed',
    async () => {
      const reg = new WorkerRegistry({ heartbeatTimeoutMs: 200 });
      const lost: string[] = [];
      reg.on((e) => {
        if (e.type === 'lost') lost.push(`${e.worker.id}: ${e.reason}`);
      });
      let open = true;
      const l1 = { ...link(), isOpen: () => open };
      reg.join(hello('a'), l1);
      // A live worker's id is refused, not evicted (issue 20).
      expect(() => reg.join(hello('a'), link())).toThrow(WorkerIdInUseError);
      expect(l1.closed).toEqual([]);
      open = false;
      const l2 = link();
      reg.join(hello('a'), l2);
      expect(l1.closed).toHaveLength(1);
      expect(lost[0]).toContain('replaced');
      // The old link's end does not remove the new registration.
      reg.leave('a', l1, 'stream closed');
      expect(reg.get('a')).toBeDefined();
      await new Promise((r) => setTimeout(r, 600));
      expect(reg.get('a')).toBeUndefined();
      expect(lost[1]).toMatch(/^a: no heartbeat/);
      expect(l2.closed).toEqual(['heartbeat timeout']);
      reg.close();
    },
  );

  it(
    'refuses a second Hello under a live id, and takes it once ' +
      'the first has been silent past the heartbeat timeout',
    () => {
      const reg = new WorkerRegistry({ heartbeatTimeoutMs: 60_000 });
      const l1 = link();
      const first = reg.join(hello('b'), l1);
      expect(() => reg.join(hello('b'), link())).toThrow(/worker id "b" is already connected/);
      expect(reg.get('b')).toBe(first);
      first.lastSeen = Date.now() - 61_000; // silent, and the monitor has not run yet
      const second = reg.join(hello('b'), link());
      expect(reg.get('b')).toBe(second);
      expect(l1.closed).toEqual(['replaced by a new connection']);
      reg.close();
    },
  );
});

describe('proto loader', () => {
  it('finds the .proto files from the source tree and loads both services and the chunk header', () => {
    expect(protoDir()).toMatch(/proto$/);
    const v1 = loadCoordinatorProto();
    expect(Object.keys(v1.JobService.service)).toEqual(['Submit', 'Get', 'List', 'Cancel', 'Watch', 'Delete']);
    expect(Object.keys(v1.WorkerService.service)).toEqual(['Join']);
    const c = loadCollectiveProto();
    expect((c.ChunkHeader.type as { field: { name: string }[] }).field.map((f) => f.name)).toEqual([
      'step',
      'rank',
      'shard',
      'chunk',
      'chunks',
      'offset',
      'count',
      'dtype',
    ]);
  });
});
