/**
 * What a step that ran out of time was waiting for, as a CollectiveError naming the ranks: a pure
 * function of the step's counters, in the order the step needs things (its shard's pieces, then
 * the other shards, then its own input, then credit to send).
 */
import { CollectiveError } from '../../common/errors.js';

/** The counters of a step, as the engine keeps them. */
export interface StepProgress {
  readonly step: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly timeoutMs: number;
  readonly windowChunks: number;
  /** Elements of the input appended, of `length`. */
  readonly ready: number;
  readonly length: number;
  /** By sender: pieces of this rank's shard received. */
  readonly rsRecv: readonly number[];
  /** By owner: chunks of its reduced shard received. */
  readonly agRecv: readonly number[];
  /** By destination: chunks sent, and chunks it has acknowledged. */
  readonly rsNext: readonly number[];
  readonly rsAcked: readonly number[];
  /** Chunks of shard `r`. */
  chunksOf(shard: number): number;
}

export function diagnoseTimeout(p: StepProgress): CollectiveError {
  const n = p.worldSize;
  const missing = (counts: readonly number[], want: (r: number) => number): { ranks: number[]; detail: string[] } => {
    const ranks: number[] = [];
    const detail: string[] = [];
    for (let r = 0; r < n; r++) {
      if (r === p.rank) continue;
      if (counts[r]! < want(r)) {
        ranks.push(r);
        detail.push(`${r} (${counts[r]}/${want(r)} chunks)`);
      }
    }
    return { ranks, detail };
  };
  const pre = `all-reduce step ${p.step} timed out after ${p.timeoutMs} ms: rank ${p.rank}`;
  const myChunks = p.chunksOf(p.rank);
  const rs = missing(p.rsRecv, () => myChunks);
  if (rs.ranks.length > 0) {
    return new CollectiveError(`${pre} is missing its shard's pieces from ranks ${rs.detail.join(', ')}`, {
      step: p.step,
      missingRanks: rs.ranks,
    });
  }
  const ag = missing(p.agRecv, (r) => p.chunksOf(r));
  if (ag.ranks.length > 0) {
    return new CollectiveError(`${pre} is missing the reduced shards of ranks ${ag.detail.join(', ')}`, {
      step: p.step,
      missingRanks: ag.ranks,
    });
  }
  if (p.ready < p.length) {
    return new CollectiveError(`${pre}: only ${p.ready} of ${p.length} input elements were appended`, { step: p.step });
  }
  const unacked = [];
  for (let r = 0; r < n; r++) if (r !== p.rank && p.rsAcked[r]! < p.rsNext[r]! - p.windowChunks + 1) unacked.push(r);
  return new CollectiveError(
    `${pre} while sending${unacked.length ? ` (no credit from ranks ${unacked.join(', ')})` : ''}`,
    {
      step: p.step,
      missingRanks: unacked,
    },
  );
}
