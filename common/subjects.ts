/**
 * The NATS contract: every subject and KV bucket polytune uses, each paired with what travels on
 * it (the way tfjs pairs a kernel name with its inputs). Build subjects only through these
 * functions; they validate their tokens so that nothing can smuggle `.`, `*` or `>` into a subject.
 *
 * ```
 * polytune.<job>.<generation>.grad.rs.<toRank>     reduce-scatter: a chunk of the receiver's shard   GradChunk
 * polytune.<job>.<generation>.grad.ag.<fromRank>   all-gather: a chunk of the sender's reduced shard GradChunk
 * polytune.<job>.<generation>.ctl.<topic>          peer control (small JSON)                         CtlMessage
 * polytune.<job>.<generation>.ctl.hello            start barrier of the collective                   HelloMessage
 * polytune.<job>.<generation>.ctl.ack.<fromRank>   the collective's flow-control credit              AckMessage
 * ```
 *
 * A generation is the coordinator's counter of world re-formations: a message from an older
 * generation is dropped. Per-generation subjects let the server do the filtering: a worker only
 * subscribes to its own generation.
 */
import { UserError } from './errors.js';
import { DNS_LABEL, MAX_JOB_NAME_LENGTH } from './spec-primitives.js';

export { MAX_JOB_NAME_LENGTH };

export const SUBJECT_ROOT = 'polytune';

/** Bytes of a generation's collective key (`Assignment.collective_key`), which MACs the messages below. */
export const COLLECTIVE_KEY_BYTES = 32;

/** JetStream KV buckets. */
export const KvBucket = {
  /** job specs and their status, keyed by job name. */
  jobs: 'polytune_jobs',
  /** the data ledger and checkpoint records. */
  ledger: 'polytune_ledger',
} as const;
export type KvBucket = (typeof KvBucket)[keyof typeof KvBucket];

/** Kinds of gradient message (subject token after `grad`). */
export const GradPhase = {
  /** reduce-scatter: a rank's piece of another rank's shard, sent to the shard's owner. */
  reduceScatter: 'rs',
  /** all-gather: an owner's reduced shard, sent to everyone. */
  allGather: 'ag',
} as const;
export type GradPhase = (typeof GradPhase)[keyof typeof GradPhase];

/**
 * Payload of `grad.*` subjects: a binary chunk header followed by raw little-endian numbers.
 * The layout lives in `worker/collective/chunk-header.ts` (mirrors `proto/polytune/v1/collective.proto`).
 */
export type GradChunkPayload = Uint8Array;

/** Payload of `ctl.*` subjects: a small JSON object with a `type` discriminator. */
export interface CtlMessage {
  readonly type: string;
  readonly from: number;
  readonly [field: string]: unknown;
}

/**
 * `ctl.hello`: a rank announces itself and whom it has heard from. Once a rank's hello has reached
 * a peer, that peer's subscriptions (made before its hello subscription) are known on this rank's
 * server, so it can publish to it: the barrier `GradientAllReduce.ready()` waits for that.
 */
export interface HelloMessage extends CtlMessage {
  readonly type: 'hello';
  /** Ranks this rank has received a hello from (itself excluded). */
  readonly heard: readonly number[];
  /** True once this rank has passed the barrier. */
  readonly ready: boolean;
  /** Settings every rank must share (compression, prefix, world size, chunk size). */
  readonly worldSize: number;
  readonly compression: string;
  readonly exactPrefix: number;
  readonly chunkElements: number;
}

/**
 * `ctl.ack.<from>`: the sender's progress in one all-reduce step, the credit of the collective's
 * sliding windows. Cumulative counts, so a lost or reordered ack is harmless.
 */
export interface AckMessage extends CtlMessage {
  readonly type: 'ack';
  readonly step: number;
  /** Chunks of `from`'s own shard reduced so far: every sender may have that many plus its window in flight. */
  readonly reduced: number;
  /** By owner rank: chunks of that owner's reduced shard received so far. */
  readonly received: readonly number[];
}

const TOPIC_TOKEN = /^[A-Za-z0-9_-]+$/;

/** True when `name` is a DNS-1123 label: lower-case alphanumerics and `-`, 1-63 chars, alphanumeric at both ends. */
export function isJobName(name: string): boolean {
  return name.length <= MAX_JOB_NAME_LENGTH && DNS_LABEL.test(name);
}

/** @throws UserError naming what is wrong with the job name. */
export function assertJobName(name: string): void {
  if (!isJobName(name)) {
    throw new UserError(
      `metadata.name: ${JSON.stringify(name)} is not a DNS-1123 label ` +
        `(lower-case letters, digits and '-', at most ` +
        `${MAX_JOB_NAME_LENGTH}, starting and ending with a letter or digit)`,
    );
  }
}

/**
 * Maps any string onto a valid job name (lower-cases, replaces other characters with `-`, trims,
 * truncates). For deriving names from user input such as file names; validated names pass unchanged.
 */
export function toJobName(input: string): string {
  if (isJobName(input)) return input;
  let s = input
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+/, '')
    .slice(0, MAX_JOB_NAME_LENGTH)
    .replace(/-+$/, '');
  if (s === '') s = 'job';
  return s;
}

function assertGeneration(generation: number): void {
  if (!Number.isSafeInteger(generation) || generation < 0) {
    throw new RangeError(`generation: must be a non-negative integer, got ${generation}`);
  }
}

function assertRank(rank: number, what = 'rank'): void {
  if (!Number.isInteger(rank) || rank < 0 || rank > 0xffff)
    throw new RangeError(`${what}: must be 0..65535, got ${rank}`);
}

/** `polytune.<job>.<generation>` */
export function generationPrefix(job: string, generation: number): string {
  assertJobName(job);
  assertGeneration(generation);
  return `${SUBJECT_ROOT}.${job}.${generation}`;
}

/** `polytune.<job>.<generation>.grad.>`: everything of one generation's gradient traffic (for monitoring). */
export function gradWildcard(job: string, generation: number): string {
  return `${generationPrefix(job, generation)}.grad.>`;
}

/** `polytune.<job>.<generation>.grad.rs.<toRank>`: reduce-scatter chunks for `toRank`'s shard. */
export function reduceScatterSubject(job: string, generation: number, toRank: number): string {
  assertRank(toRank, 'toRank');
  return `${generationPrefix(job, generation)}.grad.${GradPhase.reduceScatter}.${toRank}`;
}

/** `polytune.<job>.<generation>.grad.ag.<fromRank>`: `fromRank`'s reduced shard, for everyone. */
export function allGatherSubject(job: string, generation: number, fromRank: number): string {
  assertRank(fromRank, 'fromRank');
  return `${generationPrefix(job, generation)}.grad.${GradPhase.allGather}.${fromRank}`;
}

/** `polytune.<job>.<generation>.ctl.<topic>`; topic is one token of `[A-Za-z0-9_-]`. */
export function ctlSubject(job: string, generation: number, topic: string): string {
  if (!TOPIC_TOKEN.test(topic))
    throw new RangeError(`topic: must match ${TOPIC_TOKEN.source}, got ${JSON.stringify(topic)}`);
  return `${generationPrefix(job, generation)}.ctl.${topic}`;
}

/** `polytune.<job>.<generation>.ctl.hello`: the collective's start barrier. */
export function helloSubject(job: string, generation: number): string {
  return ctlSubject(job, generation, 'hello');
}

/** `polytune.<job>.<generation>.ctl.ack.<fromRank>`: `fromRank`'s flow-control acks, for every peer. */
export function ackSubject(job: string, generation: number, fromRank: number): string {
  assertRank(fromRank, 'fromRank');
  return `${ctlSubject(job, generation, 'ack')}.${fromRank}`;
}

export interface ParsedGradSubject {
  readonly job: string;
  readonly generation: number;
  readonly phase: GradPhase;
  readonly rank: number;
}

/** Parses a `grad` subject; `undefined` when it is not one (wrong shape, bad token). */
export function parseGradSubject(subject: string): ParsedGradSubject | undefined {
  const t = subject.split('.');
  if (t.length !== 6 || t[0] !== SUBJECT_ROOT || t[3] !== 'grad') return undefined;
  const [, job, gen, , phase, rank] = t as [string, string, string, string, string, string];
  if (!isJobName(job) || !/^(0|[1-9][0-9]*)$/.test(gen) || !/^(0|[1-9][0-9]*)$/.test(rank)) return undefined;
  if (phase !== GradPhase.reduceScatter && phase !== GradPhase.allGather) return undefined;
  const generation = Number(gen);
  const r = Number(rank);
  if (!Number.isSafeInteger(generation) || r > 0xffff) return undefined;
  return { job, generation, phase, rank: r };
}
