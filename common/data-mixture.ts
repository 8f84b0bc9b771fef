/**
 * The training set of a job: its records, and the list of samples an epoch visits (each a record
 * index), after the mixture rules of the spec:
 *
 * - `data.train[i].weight` (default 1): the source contributes round(weight × n) samples per
 *   epoch: whole copies of every record, and for the fraction a seeded choice of distinct records.
 *   0.5 halves a source, 2 doubles it.
 * - `data.balance: language`: then every language is brought to the count of the largest one the
 *   same way (records without a language count as one language, "und").
 *
 * Both depend only on the spec (seed included), so every rank and the coordinator compute the same
 * list; the data plan (data-plan.ts) then shuffles it per epoch. With neither rule the samples are
 * the records in file order, as DESIGN.md says for `shuffle: false`.
 */
import { mulberry32 } from './data-plan.js';
import type { JobSpec } from './jobspec.js';
import { readDataSource, type DataRecord } from './records.js';

export interface TrainingSet {
  readonly records: readonly DataRecord[];
  /** Record index of each sample of an epoch. */
  readonly samples: Uint32Array;
}

/** ISO 639-2 "undetermined": the language of records that name none. */
export const UNKNOWN_LANGUAGE = 'und';

/** `count` picks from `items`: whole copies, then a seeded choice of distinct items for the rest. */
function resample(items: readonly number[], count: number, rand: () => number): number[] {
  const out: number[] = [];
  const copies = Math.floor(count / items.length);
  for (let c = 0; c < copies; c++) out.push(...items);
  const rest = [...items];
  for (let k = 0; k < count - copies * items.length; k++) {
    const j = k + Math.floor(rand() * (rest.length - k));
    [rest[k], rest[j]] = [rest[j]!, rest[k]!];
    out.push(rest[k]!);
  }
  return out;
}

export function mixSamples(
  sources: readonly { readonly records: readonly DataRecord[]; readonly weight: number }[], balance: 'none' | 'language', seed: number,
): Uint32Array {
  const rand = mulberry32((seed ^ 0x5bd1e995) >>> 0);
  let offset = 0;
  let samples: number[] = [];
  for (const src of sources) {
    const indices = src.records.map((_, i) => offset + i);
    offset += src.records.length;
    samples.push(...(src.weight === 1 ? indices : resample(indices, Math.round(src.weight * indices.length), rand)));
  }
  if (balance === 'language') {
    const all = sources.flatMap((s) => s.records);
    const byLanguage = new Map<string, number[]>();
    for (const i of samples) {
      const lang = all[i]!.language ?? UNKNOWN_LANGUAGE;
      byLanguage.set(lang, [...(byLanguage.get(lang) ?? []), i]);
    }
    const target = Math.max(...[...byLanguage.values()].map((l) => l.length));
    samples = [...byLanguage.keys()].sort().flatMap((lang) => resample(byLanguage.get(lang)!, target, rand));
  }
  return Uint32Array.from(samples);
}

/** Reads the spec's training files and applies its mixture. Throws DataFormatError naming file:line. */
export async function loadTrainingSet(data: JobSpec['spec']['data'], seed: number): Promise<TrainingSet> {
  const sources: { records: DataRecord[]; weight: number }[] = [];
  for (const src of data.train) sources.push({ records: await readDataSource(src), weight: src.weight });
  const samples = mixSamples(sources, data.balance, seed);
  if (samples.length === 0) throw new RangeError('the training data mixture holds no samples (every weight is 0?)');
  return { records: sources.flatMap((s) => s.records), samples };
}
