/**
 * Is this chunk one to use? The collective's decisions about an incoming chunk as pure functions
 * of the message, what the receiver expects and (for the MAC) its key: testable without NATS, and
 * the one place that says which chunks are dropped and why.
 *
 * Two stages, in the order the receiver runs them:
 *   1. `screenChunk`, for every message: the subject is this job's and generation's, the header
 *      decodes, the header agrees with the subject and with this rank (generation, sender a peer,
 *      kind and shard as the phase says), then the MAC. What fails is dropped and counted by
 *      reason; nothing a rogue publisher sends without the key gets past it, and a replay from
 *      another generation fails on its header's generation (and on the key).
 *   2. `placeChunk`, for an authentic chunk of the running step: its position (chunk count,
 *      offset, count, dtype) against the vector's layout and the sender's sequence. A gap is a
 *      lost chunk (the step fails at once); a position already received is a duplicate, ignored
 *      when it is the same message (same tag, hence the same bytes) and an attack when it is not
 *      (`duplicateVerdict`): only a holder of the key could have made a second, different chunk.
 * The step is checked by the caller (which knows the steps it ran): an authentic chunk of a
 * finished step is a replay or a late duplicate, dropped as `stale`.
 */
import { parseGradSubject, GradPhase, type ParsedGradSubject } from '../../common/subjects.js';
import { errorMessage } from '../../common/errors.js';
import { decodeChunkHeader, type ChunkHeader } from './chunk-header.js';
import { chunkTag, type ChunkMac } from './chunk-mac.js';
import { ChunkDtype, ChunkKind } from './dtype.js';

/** Why a chunk was dropped (`polytune_collective_rejected_chunks_total{reason}`). */
export const RejectReason = {
  /** Not a well-formed chunk (or not on a gradient subject of this job and generation). */
  malformed: 'malformed',
  /** Well-formed, but its header is not what this rank expects on this subject. */
  header: 'header',
  /** The tag does not verify: not made with this generation's key, or altered. */
  mac: 'mac',
  /**
   * Of another generation (by its header, on this generation's subject: a replay; its MAC would
   * fail too), or authentic and of a step that is over here (a replay, or a late copy).
   */
  stale: 'stale',
  /** Authentic, more than one step ahead of this rank. */
  ahead: 'ahead',
  /** Authentic, the same message as one already received. */
  duplicate: 'duplicate',
  /** Authentic, but its position does not fit the vector's layout. */
  position: 'position',
} as const;
export type RejectReason = (typeof RejectReason)[keyof typeof RejectReason];

/** What a receiver expects of every chunk it is sent. */
export interface Receiver {
  readonly job: string;
  readonly generation: number;
  readonly rank: number;
  readonly worldSize: number;
}

export type Screened =
  | { readonly ok: true; readonly phase: GradPhase; readonly header: ChunkHeader }
  | { readonly ok: false; readonly reason: RejectReason; readonly detail: string; readonly header?: ChunkHeader };

/**
 * Stage 1: subject, header and MAC of one message, in that order (the cheap checks first, so that
 * junk costs no hashing).
 */
export function screenChunk(subject: string, msg: Uint8Array, me: Receiver, mac: ChunkMac): Screened {
  const subj: ParsedGradSubject | undefined = parseGradSubject(subject);
  if (subj === undefined || subj.job !== me.job || subj.generation !== me.generation) {
    return {
      ok: false,
      reason: RejectReason.malformed,
      detail: `not a gradient subject of job ${me.job} generation ${me.generation}`,
    };
  }
  let h: ChunkHeader;
  try {
    h = decodeChunkHeader(msg);
  } catch (e) {
    return { ok: false, reason: RejectReason.malformed, detail: errorMessage(e) };
  }
  if (h.generation !== me.generation) {
    return {
      ok: false,
      reason: RejectReason.stale,
      detail: `generation ${h.generation} on a subject of generation ${me.generation}`,
      header: h,
    };
  }
  const bad = headerMismatch(subj, h, me);
  if (bad !== undefined) return { ok: false, reason: RejectReason.header, detail: bad, header: h };
  if (!mac.verify(msg)) {
    return {
      ok: false,
      reason: RejectReason.mac,
      detail: `tag does not verify (header says rank ${h.rank}, step ${h.step}, chunk ${h.chunk})`,
      header: h,
    };
  }
  return { ok: true, phase: subj.phase, header: h };
}

/** Why the header does not fit the subject it came on and the receiving rank; undefined when it does. */
export function headerMismatch(subj: ParsedGradSubject, h: ChunkHeader, me: Receiver): string | undefined {
  if (h.generation !== me.generation) return `generation ${h.generation} on a subject of generation ${me.generation}`;
  if (h.rank >= me.worldSize || h.rank === me.rank) return `sender rank ${h.rank} not a peer`;
  if (subj.phase === GradPhase.reduceScatter) {
    if (h.kind !== ChunkKind.ReduceScatter || h.shard !== me.rank || subj.rank !== me.rank) {
      return "not a reduce-scatter chunk of this rank's shard";
    }
  } else if (h.kind !== ChunkKind.AllGather || h.shard !== h.rank || subj.rank !== h.rank) {
    return "not an all-gather chunk of the sender's shard";
  }
  return undefined;
}

/** The layout of the running step, as `placeChunk` needs it. */
export interface StepLayout {
  readonly step: number;
  /** Elements in the vector. */
  readonly length: number;
  /** Elements a chunk. */
  readonly chunkElements: number;
  readonly worldSize: number;
  /** This rank. */
  readonly rank: number;
  /** The dtype of the chunk starting at element `offset`. */
  dtypeAt(offset: number): ChunkDtype;
}

export type Placement =
  /** Use it: the next chunk of its sender's stream. */
  | { readonly action: 'accept'; readonly offset: number; readonly count: number }
  /** A chunk of a position already received: compare with it (`duplicateVerdict`). */
  | { readonly action: 'duplicate' }
  /** Drop it and count it. */
  | { readonly action: 'drop'; readonly reason: RejectReason; readonly detail: string }
  /** The step cannot succeed: a peer disagrees on the vector, or a chunk was lost. */
  | { readonly action: 'fail'; readonly detail: string; readonly lost: number };

export function shardBounds(length: number, worldSize: number, shard: number): [number, number] {
  return [Math.floor((shard * length) / worldSize), Math.floor(((shard + 1) * length) / worldSize)];
}

/**
 * Stage 2: where an authentic chunk of the running step goes. `expected` is the next chunk index
 * of its (phase, sender) stream.
 */
export function placeChunk(h: ChunkHeader, phase: GradPhase, layout: StepLayout, expected: number): Placement {
  if (h.totalLength !== layout.length) {
    return {
      action: 'fail',
      lost: 0,
      detail:
        `rank ${h.rank} reduces a vector of ${h.totalLength} ` +
        `elements, rank ${layout.rank} one of ${layout.length}`,
    };
  }
  const ce = layout.chunkElements;
  if (h.chunkElements !== ce) {
    return {
      action: 'fail',
      lost: 0,
      detail:
        `rank ${h.rank} sends chunks of ${h.chunkElements} elements, rank ${layout.rank} expects ${ce}` +
        ' (different max_payload? call ready() first)',
    };
  }
  const [start, end] = shardBounds(layout.length, layout.worldSize, h.shard);
  const chunks = Math.ceil((end - start) / ce);
  if (h.chunks !== chunks) {
    return {
      action: 'drop',
      reason: RejectReason.position,
      detail: `chunks=${h.chunks} does not cover a shard of ${end - start} in chunks of ${ce}`,
    };
  }
  const offset = start + h.chunk * ce;
  const count = Math.min(ce, end - offset);
  if (h.offset !== offset || h.count !== count) {
    return {
      action: 'drop',
      reason: RejectReason.position,
      detail: `chunk ${h.chunk} should hold elements ${offset}..${offset + count}`,
    };
  }
  const dtype = layout.dtypeAt(offset);
  if (h.dtype !== dtype)
    return { action: 'drop', reason: RejectReason.position, detail: `dtype ${h.dtype} where ${dtype} is expected` };
  if (h.chunk < expected) return { action: 'duplicate' };
  if (h.chunk > expected) {
    const lost = h.chunk - expected;
    const what = phase === GradPhase.reduceScatter ? 'pieces of shard' : 'reduced shard';
    return {
      action: 'fail',
      lost,
      detail:
        `lost ${lost} chunk(s) from rank ${h.rank} (${what} ` +
        `${h.shard}: got chunk ${h.chunk}, expected ${expected})`,
    };
  }
  return { action: 'accept', offset, count };
}

/** The key under which a received position's tag is kept: phase, sender and chunk index. */
export function positionKey(phase: GradPhase, h: ChunkHeader): string {
  return `${phase}:${h.rank}:${h.chunk}`;
}

/** The message's tag as a short string, to keep for `duplicateVerdict`. */
export function tagOf(msg: Uint8Array): string {
  return Buffer.from(chunkTag(msg)).toString('base64');
}

/**
 * A second authentic chunk at a position already received: the same message again (same tag,
 * and a tag different messages share only by a forgery of the MAC) is `identical` and ignored;
 * anything else is `conflicting`, an attack by a key holder (or a broken peer), which fails the step.
 * `kept` is undefined when the first one's tag was not kept (it is, for every accepted chunk).
 */
export function duplicateVerdict(kept: string | undefined, tag: string): 'identical' | 'conflicting' {
  return kept !== undefined && kept === tag ? 'identical' : 'conflicting';
}
