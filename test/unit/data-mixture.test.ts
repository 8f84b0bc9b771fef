import { describe, expect, it } from 'vitest';
import { mixSamples } from '../../common/data-mixture.js';
import type { DataRecord } from '../../common/records.js';

const recs = (n: number, language?: string): DataRecord[] =>
  Array.from({ length: n }, (_, i) => ({ kind: 'text', question: `q${i}`, output: `a${i}`, language }));

const count = (samples: Uint32Array): Map<number, number> => {
  const m = new Map<number, number>();
  for (const s of samples) m.set(s, (m.get(s) ?? 0) + 1);
  return m;
};

describe('data mixture', () => {
  it('without weights or balance, the samples are the records in file order', () => {
    expect([
      ...mixSamples(
        [
          { records: recs(3), weight: 1 },
          { records: recs(2), weight: 1 },
        ],
        'none',
        1,
      ),
    ]).toEqual([0, 1, 2, 3, 4]);
  });

  it('a weight repeats whole copies and takes a seeded choice of distinct records for the fraction', () => {
    const s = mixSamples(
      [
        { records: recs(4), weight: 2.5 },
        { records: recs(4), weight: 0.5 },
      ],
      'none',
      7,
    );
    const first = count(s.filter((i) => i < 4));
    expect([...first.values()].reduce((a, b) => a + b)).toBe(10);
    expect([...first.values()].every((c) => c === 2 || c === 3)).toBe(true);
    const second = [...s.filter((i) => i >= 4)];
    expect(second).toHaveLength(2);
    expect(new Set(second).size).toBe(2);
    expect([
      ...mixSamples(
        [
          { records: recs(4), weight: 2.5 },
          { records: recs(4), weight: 0.5 },
        ],
        'none',
        7,
      ),
    ]).toEqual([...s]);
  });

  it('balance: language brings every language to the count of the largest', () => {
    const s = mixSamples(
      [
        { records: recs(6, 'en'), weight: 1 },
        { records: recs(2, 'sw'), weight: 1 },
        { records: recs(3, 'th'), weight: 1 },
      ],
      'language',
      3,
    );
    const lang = (i: number): string => (i < 6 ? 'en' : i < 8 ? 'sw' : 'th');
    const per = new Map<string, number>();
    for (const i of s) per.set(lang(i), (per.get(lang(i)) ?? 0) + 1);
    expect(Object.fromEntries(per)).toEqual({ en: 6, sw: 6, th: 6 });
    expect(count(s.filter((i) => i >= 6 && i < 8)).get(6)).toBe(3);
  });
});
