import { describe, expect, it } from 'vitest';

import { UserError } from '../../common/errors.js';
import {
  allGatherSubject,
  assertJobName,
  ctlSubject,
  generationPrefix,
  gradWildcard,
  isJobName,
  KvBucket,
  parseGradSubject,
  reduceScatterSubject,
  toJobName,
} from '../../common/subjects.js';

describe('NATS subjects', () => {
  it('builds the documented subjects', () => {
    expect(generationPrefix('slam-7b', 3)).toBe('polytune.slam-7b.3');
    expect(reduceScatterSubject('slam-7b', 3, 2)).toBe('polytune.slam-7b.3.grad.rs.2');
    expect(allGatherSubject('slam-7b', 3, 0)).toBe('polytune.slam-7b.3.grad.ag.0');
    expect(gradWildcard('j', 0)).toBe('polytune.j.0.grad.>');
    expect(ctlSubject('j', 1, 'start')).toBe('polytune.j.1.ctl.start');
    expect(KvBucket).toEqual({ jobs: 'polytune_jobs', ledger: 'polytune_ledger' });
  });

  it('accepts DNS-1123 labels only', () => {
    for (const ok of ['a', 'slam-metamath-7b', '0', 'a'.repeat(63)]) expect(isJobName(ok)).toBe(true);
    for (const bad of ['', 'A', 'a.b', 'a*', 'a>', '-a', 'a-', 'a_b', 'a b', 'a'.repeat(64)]) {
      expect(isJobName(bad)).toBe(false);
      expect(() => assertJobName(bad)).toThrow(UserError);
      expect(() => reduceScatterSubject(bad, 0, 0)).toThrow(/metadata\.name/);
    }
  });

  it('maps arbitrary strings onto job names', () => {
    expect(toJobName('slam-7b')).toBe('slam-7b');
    expect(toJobName('My_Job.yaml')).toBe('my-job-yaml');
    expect(toJobName('--x--')).toBe('x');
    expect(toJobName('***')).toBe('job');
    expect(isJobName(toJobName('x'.repeat(100) + '-'))).toBe(true);
  });

  it('rejects bad generations, ranks and topics', () => {
    expect(() => generationPrefix('j', -1)).toThrow(RangeError);
    expect(() => generationPrefix('j', 1.5)).toThrow(RangeError);
    expect(() => reduceScatterSubject('j', 0, 70000)).toThrow(RangeError);
    expect(() => ctlSubject('j', 0, 'a.b')).toThrow(RangeError);
    expect(() => ctlSubject('j', 0, '>')).toThrow(RangeError);
  });

  it('parses grad subjects and refuses others', () => {
    expect(parseGradSubject('polytune.j-1.12.grad.rs.3')).toEqual({ job: 'j-1', generation: 12, phase: 'rs', rank: 3 });
    expect(parseGradSubject(allGatherSubject('x', 0, 7))).toEqual({ job: 'x', generation: 0, phase: 'ag', rank: 7 });
    for (const bad of [
      'polytune.j.1.grad.xx.3',
      'polytune.j.1.ctl.rs.3',
      'polytune.J.1.grad.rs.3',
      'polytune.j.01.grad.rs.3',
      'polytune.j.1.grad.rs',
      'other.j.1.grad.rs.3',
      'polytune.j.1.grad.rs.99999',
      'polytune.j.1.grad.rs.3.4',
    ])
      expect(parseGradSubject(bad)).toBeUndefined();
  });
});
