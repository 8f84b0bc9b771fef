import { describe, expect, it } from 'vitest';
import { completeLedger, EMPTY_LEDGER, ledgerGaps, recordStep, type Ledger } from '../../coordinator/ledger.js';

const run = (ledger: Ledger, generation: number, worldSize: number, from: number, to: number): Ledger => {
  for (let c = from + 1; c <= to; c++) ledger = recordStep(ledger, generation, worldSize, c);
  return ledger;
};

describe('ledger', () => {
  it('records contiguous steps of a generation as one range, merging repeated reports', () => {
    let l = run(EMPTY_LEDGER, 1, 2, 0, 5);
    l = recordStep(l, 1, 2, 3); // a slower rank reports an older step
    expect(l).toEqual({ committed: [{ from: 0, to: 5, generation: 1, worldSize: 2 }], rolledBack: [] });
    expect(ledgerGaps(l, 5)).toEqual({ missing: [], repeated: [] });
  });

  it('a new generation going on from an earlier step rolls back what came after', () => {
    let l = run(EMPTY_LEDGER, 1, 3, 0, 7);
    l = run(l, 2, 2, 5, 9);
    expect(l.committed).toEqual([
      { from: 0, to: 5, generation: 1, worldSize: 3 },
      { from: 5, to: 9, generation: 2, worldSize: 2 },
    ]);
    expect(l.rolledBack).toEqual([{ from: 5, to: 7, generation: 1, worldSize: 3 }]);
    expect(ledgerGaps(l, 9)).toEqual({ missing: [], repeated: [] });
  });

  it('steps run while the coordinator was away are committed, unreported', () => {
    let l = run(EMPTY_LEDGER, 1, 2, 0, 4);
    l = run(l, 2, 2, 9, 12);
    expect(l.committed).toEqual([
      { from: 0, to: 4, generation: 1, worldSize: 2 },
      { from: 4, to: 9, generation: 1, worldSize: 2, unreported: true },
      { from: 9, to: 12, generation: 2, worldSize: 2 },
    ]);
    expect(ledgerGaps(l, 12)).toEqual({ missing: [], repeated: [] });
  });

  it('finds missing and repeated steps', () => {
    const l: Ledger = {
      committed: [
        { from: 0, to: 3, generation: 1, worldSize: 1 },
        { from: 2, to: 4, generation: 2, worldSize: 1 },
      ],
      rolledBack: [],
    };
    expect(ledgerGaps(l, 6)).toEqual({ missing: [4, 5], repeated: [2] });
  });

  it('a job that finished while the coordinator was away: its result commits the unreported tail', () => {
    const l = run(EMPTY_LEDGER, 1, 2, 0, 9);
    const done = completeLedger(l, 16);
    expect(done.committed).toEqual([
      { from: 0, to: 9, generation: 1, worldSize: 2 },
      { from: 9, to: 16, generation: 1, worldSize: 2, unreported: true },
    ]);
    expect(ledgerGaps(done, 16)).toEqual({ missing: [], repeated: [] });
    expect(completeLedger(done, 16)).toBe(done);
    expect(completeLedger(run(EMPTY_LEDGER, 1, 2, 0, 16), 16).committed).toHaveLength(1);
    expect(completeLedger(EMPTY_LEDGER, 16)).toBe(EMPTY_LEDGER);
  });
});
