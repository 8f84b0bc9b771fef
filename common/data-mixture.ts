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
import { JobSpecError } from './errors.js';
import { SPEC_LIMITS } from './spec-primitives.js';
import type { JobSpec } from './jobspec.js';
import { readDataSource, type DataRecord } from './records.js';

export interface TrainingSet {
  readonly records: readonly DataRecord[];
  /** Record index of each sample of an epoch. */
  readonly samples: Uint32Array;
}

/** ISO 639-2 "undetermined": the language of records that name none. */
export const UNKNOWN_LANGUAGE = 'und';

/** A source of the mixture: its records and its weight. */
export interface WeightedSource {
  readonly records: readonly DataRecord[];
  readonly weight: number;
}

/** Samples filled between two yields to the event loop (about a millisecond of work). */
const YIELD_EVERY = 1 << 15;

/**
 * `count` picks from `items` into `out` at `at`: whole copies, then a seeded choice of distinct
 * items for the rest (a partial Fisher-Yates over a copy). Yields (the generator) now and then.
 */
function* resampleInto(
  items: ArrayLike<number>,
  count: number,
  rand: () => number,
  out: Uint32Array,
  at: number,
): Generator<void, number> {
  const n = items.length;
  const copies = Math.floor(count / n);
  for (let c = 0; c < copies; c++) {
    for (let i = 0; i < n; i++) out[at++] = items[i]!;
    if (((c + 1) * n) % YIELD_EVERY < n) yield;
  }
  const extra = count - copies * n;
  if (extra === 0) return at;
  const rest = Uint32Array.from(items as ArrayLike<number>);
  for (let k = 0; k < extra; k++) {
    const j = k + Math.floor(rand() * (n - k));
    const t = rest[k]!;
    rest[k] = rest[j]!;
    rest[j] = t;
    out[at++] = rest[k]!;
    if ((k + 1) % YIELD_EVERY === 0) yield;
  }
  return at;
}

function epochTooLarge(count: number, why: string): JobSpecError {
  return new JobSpecError([
    {
      path: 'spec.data.train',
      message:
        `${why} make ${count} samples an epoch; at most ${SPEC_LIMITS.epochSamples} ` +
        '(lower the weights or split the job)',
    },
  ]);
}

/** The mixture as a generator that yields between chunks of work (see `mixSamplesAsync`). */
function* mixSteps(
  sources: readonly WeightedSource[],
  balance: 'none' | 'language',
  seed: number,
): Generator<void, Uint32Array> {
  const rand = mulberry32((seed ^ 0x5bd1e995) >>> 0);
  // The size first, so that a mixture past the limit is refused before anything is allocated.
  const counts = sources.map((src) =>
    src.weight === 1 ? src.records.length : Math.round(src.weight * src.records.length),
  );
  const total = counts.reduce((a, b) => a + b, 0);
  if (!(total <= SPEC_LIMITS.epochSamples)) throw epochTooLarge(total, 'the weights of spec.data.train');
  let samples = new Uint32Array(total);
  let offset = 0;
  let at = 0;
  for (const [i, src] of sources.entries()) {
    const n = src.records.length;
    if (src.weight === 1) {
      for (let r = 0; r < n; r++) samples[at++] = offset + r;
    } else if (n > 0) {
      const indices = new Uint32Array(n);
      for (let r = 0; r < n; r++) indices[r] = offset + r;
      at = yield* resampleInto(indices, counts[i]!, rand, samples, at);
    }
    offset += n;
    yield;
  }
  if (balance === 'language') {
    const all = sources.flatMap((s) => s.records);
    const byLanguage = new Map<string, number[]>();
    for (let k = 0; k < samples.length; k++) {
      const i = samples[k]!;
      const lang = all[i]!.language ?? UNKNOWN_LANGUAGE;
      let list = byLanguage.get(lang);
      if (!list) byLanguage.set(lang, (list = []));
      list.push(i);
      if ((k + 1) % YIELD_EVERY === 0) yield;
    }
    const target = Math.max(...[...byLanguage.values()].map((l) => l.length));
    const balanced = target * byLanguage.size;
    if (!(balanced <= SPEC_LIMITS.epochSamples)) {
      throw epochTooLarge(balanced, 'spec.data.balance "language" and the weights');
    }
    samples = new Uint32Array(balanced);
    at = 0;
    for (const lang of [...byLanguage.keys()].sort()) {
      at = yield* resampleInto(byLanguage.get(lang)!, target, rand, samples, at);
    }
  }
  return samples;
}

/**
 * Record index of each sample of an epoch. Throws `JobSpecError` (path `spec.data.train`) when
 * the epoch would hold more than `SPEC_LIMITS.epochSamples` samples.
 */
export function mixSamples(
  sources: readonly WeightedSource[],
  balance: 'none' | 'language',
  seed: number,
): Uint32Array {
  const it = mixSteps(sources, balance, seed);
  for (;;) {
    const r = it.next();
    if (r.done) return r.value;
  }
}

/**
 * `mixSamples`, giving the event loop a turn between chunks of work (the coordinator plans while
 * it serves heartbeats).
 */
export async function mixSamplesAsync(
  sources: readonly WeightedSource[],
  balance: 'none' | 'language',
  seed: number,
): Promise<Uint32Array> {
  const it = mixSteps(sources, balance, seed);
  for (;;) {
    const r = it.next();
    if (r.done) return r.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Reads the spec's training files and applies its mixture. Throws DataFormatError naming file:line. */
export async function loadTrainingSet(data: JobSpec['spec']['data'], seed: number): Promise<TrainingSet> {
  const sources: { records: DataRecord[]; weight: number }[] = [];
  for (const src of data.train) sources.push({ records: await readDataSource(src), weight: src.weight });
  const samples = await mixSamplesAsync(sources, data.balance, seed);
  if (samples.length === 0) {
    throw new JobSpecError([{ path: 'spec.data.train', message: 'the mixture holds no samples (every weight is 0?)' }]);
  }
  return { records: sources.flatMap((s) => s.records), samples };
}
