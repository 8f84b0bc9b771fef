/** The training samples as token ids, encoded on first use and kept: a rank touches only its shares. */
import { UserError } from '../../common/errors.js';
import type { DataRecord } from '../../common/records.js';
import type { EncodedSample } from '../data/encode.js';

export class SampleCache {
  private readonly cache = new Map<number, EncodedSample>();
  truncated = 0;
  constructor(
    private readonly records: readonly DataRecord[],
    /** The method's encoding (its `encode`, or the prompt template's `encodeRecord`). */
    private readonly encode: (record: DataRecord) => EncodedSample,
    private readonly vocabSize: number,
  ) {}

  get(index: number): EncodedSample {
    let s = this.cache.get(index);
    if (!s) {
      s = this.encode(this.records[index]!);
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
