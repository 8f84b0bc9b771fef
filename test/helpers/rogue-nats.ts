/**
 * A rogue NATS client on a job's subjects, doing what issue 20's attacker did: it sees every
 * gradient chunk (a subscription to `polytune.<job>.>`) and publishes its own on the same
 * subjects. It has no collective key; what it can compute, it does (a "checksum" = a MAC under a
 * key of its own, the way the version-3 checksum could be re-computed by anyone).
 */
import { randomBytes } from 'node:crypto';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';

import { SUBJECT_ROOT, parseGradSubject } from '../../common/subjects.js';
import {
  CHUNK_HEADER_BYTES,
  ChunkDtype,
  ChunkKind,
  decodeChunkHeader,
  encodeChunkHeader,
} from '../../worker/collective/chunk-header.js';
import { ChunkMac, chunkTag } from '../../worker/collective/chunk-mac.js';

export interface RogueOptions {
  /** Every chunk seen is re-published with `step + 1`, its values × -100, re-sealed without the key. */
  forge?: boolean;
  /** A head chunk (offset 0) is re-published with step + 1 and negative, fractional counts. */
  forgeHead?: boolean;
  /** Every genuine chunk of step s is re-published (its exact bytes) when step s + `replayAfter` shows up. */
  replayAfter?: number;
  /** Every genuine chunk is re-published at once, unchanged (a valid MAC: an identical duplicate). */
  duplicate?: boolean;
  /** Re-published genuine chunks onto this generation's subjects instead (a replay across generations). */
  toGeneration?: number;
  /** ... with their header's generation rewritten to it (which breaks their MAC). */
  rewriteGeneration?: boolean;
}

export interface Rogue {
  readonly forged: number;
  readonly replayed: number;
  readonly duplicated: number;
  /** Genuine chunks seen, by step. */
  readonly seen: ReadonlyMap<number, Uint8Array[]>;
  /** Re-publishes every genuine chunk seen so far (exact bytes, or as `toGeneration` and `rewriteGeneration` say). */
  replayAll(): number;
  stop(): Promise<void>;
}

export function rogueClient(nc: NatsConnection, job: string, options: RogueOptions): Rogue {
  const own = new ChunkMac(randomBytes(32)); // its own "key": what it seals, it can re-compute
  const seenTags = new Set<string>();
  const seen = new Map<number, Array<{ subject: string; data: Uint8Array }>>();
  let forged = 0;
  let replayed = 0;
  let duplicated = 0;

  const retarget = (subject: string, data: Uint8Array): [string, Uint8Array] => {
    const g = options.toGeneration;
    if (g === undefined) return [subject, data];
    const s = subject.split('.');
    s[2] = String(g);
    if (!options.rewriteGeneration) return [s.join('.'), data];
    const copy = Uint8Array.from(data);
    new DataView(copy.buffer).setUint32(4, g, true);
    return [s.join('.'), copy];
  };
  const replay = (m: { subject: string; data: Uint8Array }): void => {
    const [subject, data] = retarget(m.subject, m.data);
    nc.publish(subject, data);
    replayed++;
  };

  const sub: Subscription = nc.subscribe(`${SUBJECT_ROOT}.${job}.>`, {
    callback: (err, msg) => {
      if (err !== null || parseGradSubject(msg.subject) === undefined) return;
      const data = msg.data;
      if (data.byteLength < CHUNK_HEADER_BYTES || own.verify(data)) return; // its own forgeries
      const tag = Buffer.from(chunkTag(data)).toString('base64');
      if (seenTags.has(tag)) return; // its own replays and duplicates
      seenTags.add(tag);
      let h;
      try {
        h = decodeChunkHeader(data);
      } catch {
        return;
      }
      const genuine = Uint8Array.from(data);
      const list = seen.get(h.step) ?? [];
      list.push({ subject: msg.subject, data: genuine });
      seen.set(h.step, list);
      if (options.duplicate) {
        nc.publish(msg.subject, genuine);
        duplicated++;
      }
      if (options.replayAfter !== undefined && list.length === 1) {
        for (const old of seen.get(h.step - options.replayAfter) ?? []) replay(old);
      }
      if (options.forge) {
        const f = Uint8Array.from(data);
        encodeChunkHeader({ ...h, step: h.step + 1 }, f);
        if (h.dtype === ChunkDtype.Float32) {
          const v = new Float32Array(f.buffer, CHUNK_HEADER_BYTES, h.count);
          for (let i = 0; i < v.length; i++) v[i] = v[i]! * -100;
        } else {
          const v = new Uint16Array(f.buffer, CHUNK_HEADER_BYTES, h.count);
          for (let i = 0; i < v.length; i++) v[i] = v[i]! ^ 0x8000;
        }
        own.seal(f);
        nc.publish(msg.subject, f);
        forged++;
      }
      if (options.forgeHead && h.offset === 0 && h.kind === ChunkKind.ReduceScatter && h.dtype === ChunkDtype.Float32) {
        const f = Uint8Array.from(data);
        encodeChunkHeader({ ...h, step: h.step + 1 }, f);
        const v = new Float32Array(f.buffer, CHUNK_HEADER_BYTES, Math.min(8, h.count));
        v.fill(-1e6);
        if (v.length > 1) v[1] = -12345.5;
        own.seal(f);
        nc.publish(msg.subject, f);
        forged++;
      }
    },
  });

  return {
    get forged() {
      return forged;
    },
    get replayed() {
      return replayed;
    },
    get duplicated() {
      return duplicated;
    },
    get seen() {
      return new Map([...seen].map(([step, ms]) => [step, ms.map((m) => m.data)]));
    },
    replayAll() {
      let n = 0;
      for (const ms of seen.values())
        for (const m of ms) {
          replay(m);
          n++;
        }
      return n;
    },
    async stop() {
      sub.unsubscribe();
      await nc.flush();
    },
  };
}
