/**
 * Authenticated chunks: every gradient chunk carries a MAC over its header and payload under a key
 * that only the ranks of one job's generation hold (32 random bytes the coordinator makes for each
 * generation and hands each rank with its assignment, `Assignment.collective_key`). Anyone else who
 * can publish on the job's subjects can no longer forge or alter a chunk: without the key the tag
 * does not verify and the chunk is dropped and counted, never applied. A genuine chunk replayed
 * later is caught by its header (step, generation, kind, sender, shard, position are all under the
 * tag and checked against what the receiver expects: `chunk-validation.ts`); one from another
 * generation fails the tag too (another key).
 *
 * ## The MAC: Poly1305 with a one-time key per chunk (ChaCha20-Poly1305 with an empty plaintext)
 * The tag is RFC 8439's AEAD tag with the message as associated data and nothing to encrypt: a
 * Poly1305 key derived from ChaCha20(key, nonce) for each chunk, over header bytes 0..80 (the
 * nonce included) and the payload. The nonce is 12 random bytes a message, so no two messages
 * under one key share a Poly1305 key (2^-96 a pair; a generation sends far fewer than 2^32
 * messages), whatever a rank's step numbering does. Measured with node:crypto on this machine
 * (AMD EPYC with SHA-NI, AES-NI and AVX-512, 2 cores shared with other work at load average ~10,
 * Node 20, OpenSSL 3; GB/s of message bytes, a new cipher object a message included; two runs:
 * a raw node:crypto loop, then through this class, with the old checksum beside it):
 *
 * | chunk   | HMAC-SHA256 | HMAC-BLAKE2b | AES-GCM (GMAC) | ChaCha20-Poly1305 (chosen)   | hash32 (v3, no key) |
 * |---------|-------------|--------------|----------------|------------------------------|---------------------|
 * | 64 KiB  | 1.18 / 0.70 | 0.71         | 3.75           | 3.85 / seal 2.1, verify 3.4  | 8.6                 |
 * | 256 KiB | 1.46 / 0.58 | 0.71         | 4.01           | 8.13 / seal 4.9, verify 5.2  | 4.6                 |
 * | 1 MiB   | 1.23 / 0.56 | 0.61         | 3.87           | 8.19 / seal 3.8, verify 11.9 | 4.8                 |
 *
 * A rank tags what it sends (L·b an all-reduce) and verifies what it receives (2(N-1)/N·L·b), so
 * HMAC-SHA256 would cost a rank about 2 s a GB sent, as much as the broker's whole egress at the
 * bench's 0.6-1 GB/s ceiling; Poly1305 costs a fifth of that. node:crypto has no keyed BLAKE2
 * (only HMAC over it) and no Blake3. The fixed cost is about 3.7 µs a message (cipher set-up),
 * 0.4 % of a 1 MiB chunk. The unkeyed 32-lane checksum of chunk version 3 (`hash32`, 23 GB/s on
 * a quiet machine, as fast as Poly1305 under this load) is gone from the wire: a valid tag implies
 * an intact message, so it would be a second pass over every byte for nothing. In the all-reduce
 * bench (docs/benchmarks.md, 4 ranks, 64 MiB) a rank's CPU an iteration went from 0.52-0.56 to
 * 0.56-0.57 s in float32 and 0.45-0.46 to 0.52-0.53 s in fp16; broker efficiency from CPU seconds
 * 0.74-0.86 before, 0.77 after (>= 0.7).
 *
 * ## Control messages
 * The peers' hellos (start barrier) and acks (credit) are small JSON messages; a forged hello could
 * fail the barrier or shrink every chunk, a forged ack could make a sender overrun a receiver. They
 * carry an HMAC-SHA256 of their subject and body (`ControlMac`, about 2 µs a message) and are
 * dropped without one. The chunk and control keys are derived from the generation's key with HKDF
 * (one key, one use).
 */
import {
  createCipheriv,
  createHmac,
  createSecretKey,
  hkdfSync,
  randomFillSync,
  timingSafeEqual,
  type CipherGCM,
  type KeyObject,
} from 'node:crypto';

import { COLLECTIVE_KEY_BYTES } from '../../common/subjects.js';
import {
  CHUNK_HEADER_BYTES,
  CHUNK_NONCE_AT,
  CHUNK_NONCE_BYTES,
  CHUNK_TAG_AT,
  CHUNK_TAG_BYTES,
  encodeChunkHeader,
  writeFloat32LE,
  type ChunkHeader,
} from './chunk-header.js';
import { ChunkDtype } from './dtype.js';

const CIPHER = 'chacha20-poly1305';
/** Nonces drawn from the system's CSPRNG this many at a time. */
const NONCES_A_FILL = 1024;

/**
 * Checks a collective key where it is used: a Uint8Array of exactly 32 bytes, not all zeros (an
 * unset key sent as zeros would be a key everyone knows).
 * @throws RangeError naming `field`
 */
export function checkCollectiveKey(key: unknown, field = 'key'): Uint8Array {
  if (!(key instanceof Uint8Array))
    throw new RangeError(`${field}: must be ${COLLECTIVE_KEY_BYTES} bytes, got ${typeof key}`);
  if (key.byteLength !== COLLECTIVE_KEY_BYTES) {
    throw new RangeError(`${field}: must be ${COLLECTIVE_KEY_BYTES} bytes, got ${key.byteLength}`);
  }
  if (key.every((b) => b === 0)) throw new RangeError(`${field}: is all zeros (unset)`);
  return key;
}

/**
 * Seals and verifies chunk messages (header and payload in place) under one generation's key. The
 * key is held as a KeyObject and never shown: `toString`, `toJSON` and util.inspect print nothing
 * of it, so that logging this object cannot leak it.
 */
export class ChunkMac {
  readonly #key: KeyObject;
  readonly #nonces = Buffer.allocUnsafe(NONCES_A_FILL * CHUNK_NONCE_BYTES);
  #nextNonce = NONCES_A_FILL;

  /** `key`: the generation's collective key (the chunk key is derived from it). */
  constructor(key: Uint8Array) {
    this.#key = createSecretKey(deriveKey(checkCollectiveKey(key), 'chunks'));
  }

  /** Writes a fresh nonce and the tag of a complete message (header and payload in place). */
  seal(msg: Uint8Array): void {
    if (msg.byteLength < CHUNK_HEADER_BYTES)
      throw new RangeError(`seal: message of ${msg.byteLength} bytes is shorter than the header`);
    if (this.#nextNonce === NONCES_A_FILL) {
      randomFillSync(this.#nonces);
      this.#nextNonce = 0;
    }
    const at = this.#nextNonce++ * CHUNK_NONCE_BYTES;
    msg.set(this.#nonces.subarray(at, at + CHUNK_NONCE_BYTES), CHUNK_NONCE_AT);
    msg.set(this.#tag(msg), CHUNK_TAG_AT);
  }

  /** True when the message's tag is the MAC of its header and payload under this key. */
  verify(msg: Uint8Array): boolean {
    if (msg.byteLength < CHUNK_HEADER_BYTES) return false;
    return timingSafeEqual(this.#tag(msg), chunkTag(msg));
  }

  #tag(msg: Uint8Array): Buffer {
    const nonce = msg.subarray(CHUNK_NONCE_AT, CHUNK_NONCE_AT + CHUNK_NONCE_BYTES);
    // Typed as GCM's cipher: the same AEAD interface (setAAD without a plaintext length, getAuthTag).
    const c = createCipheriv(CIPHER, this.#key, nonce, { authTagLength: CHUNK_TAG_BYTES }) as unknown as CipherGCM;
    c.setAAD(msg.subarray(0, CHUNK_TAG_AT));
    if (msg.byteLength > CHUNK_HEADER_BYTES) c.setAAD(msg.subarray(CHUNK_HEADER_BYTES));
    c.final();
    return c.getAuthTag();
  }

  toString(): string {
    return '[ChunkMac]';
  }

  toJSON(): string {
    return '[ChunkMac]';
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return '[ChunkMac]';
  }
}

/** The message's tag (a view of its bytes). */
export function chunkTag(msg: Uint8Array): Uint8Array {
  return msg.subarray(CHUNK_TAG_AT, CHUNK_TAG_AT + CHUNK_TAG_BYTES);
}

/** Header followed by float32 payload, as one sealed message (tests and tools; the engine builds its own). */
export function encodeFloat32Chunk(h: ChunkHeader, data: Float32Array, mac: ChunkMac): Uint8Array {
  if (h.dtype !== ChunkDtype.Float32 || data.length !== h.count)
    throw new RangeError('encodeFloat32Chunk: header does not describe data');
  const buf = new Uint8Array(CHUNK_HEADER_BYTES + data.length * 4);
  encodeChunkHeader(h, buf);
  writeFloat32LE(data, buf.subarray(CHUNK_HEADER_BYTES));
  mac.seal(buf);
  return buf;
}

function deriveKey(key: Uint8Array, use: 'chunks' | 'control'): Buffer {
  return Buffer.from(hkdfSync('sha256', key, 'polytune collective', `polytune ${use} v1`, 32));
}

/** Hex characters of a control message's tag, which leads its text. */
const CONTROL_TAG_CHARS = 64;

/**
 * Seals and opens the collective's control messages (hello, ack): the text on the wire is the hex
 * HMAC-SHA256 of subject and body, then the body (JSON). Holds its key as the chunks' does.
 */
export class ControlMac {
  readonly #key: KeyObject;

  /** `key`: the generation's collective key (the control key is derived from it). */
  constructor(key: Uint8Array) {
    this.#key = createSecretKey(deriveKey(checkCollectiveKey(key), 'control'));
  }

  seal(subject: string, body: string): string {
    return this.#tag(subject, body) + body;
  }

  /** The body of a message sealed for `subject`, or undefined when its tag does not verify. */
  open(subject: string, text: string): string | undefined {
    if (text.length < CONTROL_TAG_CHARS) return undefined;
    const body = text.slice(CONTROL_TAG_CHARS);
    const got = Buffer.from(text.slice(0, CONTROL_TAG_CHARS), 'latin1');
    const want = Buffer.from(this.#tag(subject, body), 'latin1');
    return got.length === want.length && timingSafeEqual(got, want) ? body : undefined;
  }

  #tag(subject: string, body: string): string {
    return createHmac('sha256', this.#key).update(subject).update('\0').update(body).digest('hex');
  }

  toString(): string {
    return '[ControlMac]';
  }

  toJSON(): string {
    return '[ControlMac]';
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return '[ControlMac]';
  }
}
