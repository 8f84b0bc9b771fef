/**
 * Error feedback for compressed all-reduces: what narrowing to 16 bits lost, `v − widen(narrow(v))`,
 * is kept and added before narrowing at the next step (Seide et al. 2014; Karimireddy et al. 2019).
 * Two residuals: the sender's, by element of the whole vector (for the pieces it sends), and the
 * owner's, by element of its own shard (for the reduced chunks it publishes). Each has an input
 * (last step's) and an output (this step's) array; the outputs become the inputs only when a step
 * succeeds (`commit`), so a failed step leaves them as they were.
 */
import { shardBounds } from './chunk-validation.js';

export class ErrorFeedback {
  readonly length: number;
  /** The shard's first element (the owner residuals' index 0). */
  readonly shardStart: number;
  senderIn: Float32Array;
  senderOut: Float32Array;
  ownerIn: Float32Array;
  ownerOut: Float32Array;

  constructor(length: number, worldSize: number, rank: number) {
    const [s, e] = shardBounds(length, worldSize, rank);
    this.length = length;
    this.shardStart = s;
    this.senderIn = new Float32Array(length);
    this.senderOut = new Float32Array(length);
    this.ownerIn = new Float32Array(e - s);
    this.ownerOut = new Float32Array(e - s);
  }

  /** The sender residuals of elements [offset, offset + count): in, out. */
  sender(offset: number, count: number): [Float32Array, Float32Array] {
    return [this.senderIn.subarray(offset, offset + count), this.senderOut.subarray(offset, offset + count)];
  }

  /** The owner residuals of the vector's elements [offset, offset + count) (in this rank's shard): in, out. */
  owner(offset: number, count: number): [Float32Array, Float32Array] {
    const at = offset - this.shardStart;
    return [this.ownerIn.subarray(at, at + count), this.ownerOut.subarray(at, at + count)];
  }

  /** The step succeeded: its residuals are the next step's. */
  commit(): void {
    [this.senderIn, this.senderOut] = [this.senderOut, this.senderIn];
    [this.ownerIn, this.ownerOut] = [this.ownerOut, this.ownerIn];
  }
}
