/**
 * The training samples as token ids, encoded on first use and kept: a rank touches only its shares.
 * A record that changes per epoch (code-switched text, common/records.ts `materialiseRecord`) is
 * encoded afresh each epoch: the cache holds one epoch's samples.
 */
import { UserError } from '../../common/errors.js';
import { materialiseRecord, type DataRecord } from '../../common/records.js';
import type { EncodedSample } from '../data/encode.js';

export class SampleCache {
  private readonly cache = new Map<number, EncodedSample>();
  private epoch = 0;
  private readonly perEpoch: boolean;
  truncated = 0;
  constructor(
    private readonly records: readonly DataRecord[],
    /** The method's encoding (its `encode`, or the prompt template's `encodeRecord`). */
    private readonly encode: (record: DataRecord) => EncodedSample,
    private readonly vocabSize: number,
    /** The job's seed: the code-switching draws of a record depend on it, the epoch and the index. @default 0 */
    private readonly seed = 0,
  ) {
    this.perEpoch = records.some((r) => r.kind === 'text' && r.codeSwitch !== undefined);
  }

  /** Sample of record `index` in `epoch` (epochs only matter for records that change per epoch). */
  get(index: number, epoch = 0): EncodedSample {
    if (this.perEpoch && epoch !== this.epoch) {
      this.cache.clear();
      this.epoch = epoch;
    }
    let s = this.cache.get(index);
    if (!s) {
      s = this.encode(materialiseRecord(this.records[index]!, this.seed, this.epoch, index));
      const V = this.vocabSize;
      const bad = s.inputIds.find((t) => t >= V) ?? s.labels.find((t) => t >= V);
      if (bad !== undefined)
        throw new UserError(`training sample ${index}: token id ${bad} is outside the model's vocabulary [0, ${V})`);
      if (s.truncated) this.truncated++;
      this.cache.set(index, s);
    }
    return s;
  }
}
