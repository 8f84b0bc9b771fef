/** The IPC messages between `bench/allreduce.ts` and its rank processes, and the ranks' input. */
import type { Compression } from '../worker/collective/wire-codec.js';

export interface RankSetup {
  readonly type: 'setup';
  readonly mode: 'allreduce' | 'pubsub';
  readonly url: string;
  readonly job: string;
  readonly rank: number;
  readonly worldSize: number;
  readonly elements: number;
  readonly compression: Compression;
  /** The collective key (hex), the same for every rank of a phase, as a generation's. */
  readonly keyHex: string;
  readonly timeoutMs: number;
  readonly inPlace: boolean;
  /** A new result array each step instead of reusing the last one. */
  readonly freshOutput: boolean;
  readonly maxChunkBytes?: number;
  readonly windowChunks?: number;
  /** pubsub: bytes a message, and how many payload bytes each rank sends to each subject. */
  readonly chunkBytes?: number;
}
export interface RankRun {
  readonly type: 'run';
  readonly step: number;
}
/** Checks the last result; asked once every rank is done, so that no check runs in a timed window. */
export interface RankVerify {
  readonly type: 'verify';
  readonly step: number;
}
export type ToRank = RankSetup | RankRun | RankVerify | { readonly type: 'exit' };
export type FromRank =
  | { type: 'ready'; rank: number; chunkElements: number; windowChunks: number }
  | { type: 'started'; rank: number; step: number }
  | {
      type: 'done';
      rank: number;
      step: number;
      ok: boolean;
      error?: string;
      missingRanks?: number[];
      start: number;
      end: number;
      cpuSeconds?: number;
      windowStalls?: number;
    }
  | { type: 'verified'; rank: number; step: number; crc: number; checked: number; mismatches: number };

/**
 * Input of rank r at element i: multiples of 1/1024, exact in float32, binary16 and their sums up to 8 ranks in
 * float32.
 */
export function benchValue(i: number, rank: number): number {
  return ((((i * 7 + rank * 13) ^ (i >>> 10)) & 1023) - 512) / 1024;
}
