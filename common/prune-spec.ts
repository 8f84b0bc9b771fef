/**
 * The `spec.prune` block of a PruneJob (translation-calibrated Wanda pruning: Kim et al. 2024,
 * METHODS.md), its checks, and the calibration plan both roles derive from it: which records of
 * which source make calibration sample n.
 *
 *     prune:
 *       sparsity: 0.3                 # per output row, in [0, 1); or pattern: "2:4" (N of every M inputs zeroed)
 *       modules: [q_proj, ..., down_proj]   # default: all seven projections
 *       layers: [0, 1]                # default: all
 *       calibration:                  # translation demonstrations from line-aligned pairs
 *         sources: [{ path, target, format: parallel, language }]   # or format: tokenized
 *         samples: 100
 *         shots: 4
 *         maxSeqLen: 1024
 *       contrast: { sources: [...] }  # optional: norms scaled s_base * (s_base / s_other);
 *                                     # samples, shots, maxSeqLen: calibration's unless given
 *       features: { topK: 20 }
 *
 * Calibration samples: the `samples` are split over the sources in order (the first `samples mod
 * sources` get one more). A `parallel` source's sample n is the demonstration of its pairs
 * n*shots .. n*shots+shots-1, `"{Src}: {src}</s>{Tgt}: {tgt}</s>"` repeated (the authors'
 * `get_mt`, without the one pair it skips between samples); a `tokenized` source's sample n is its
 * record n's `input_ids` (labels are not used). Every sample is cut at `maxSeqLen` tokens.
 */
import { z } from 'zod';
import type { SpecIssue } from './errors.js';
import { isFile } from './fs-checks.js';
import type { LlamaConfig } from './model-config.js';
import { ATTENTION_MODULES, FFN_MODULES } from './methods/layer-selection.js';
import { readDataSource } from './records.js';
import {
  languageCode,
  nonNegativeInt,
  pathString,
  positiveIntAtMost,
  resolveSpecPath,
  SPEC_LIMITS,
} from './spec-primitives.js';

/** The projections Wanda prunes (`find_layers`: every nn.Linear of a decoder layer), in HF order. */
export const PRUNE_MODULES = [...ATTENTION_MODULES, ...FFN_MODULES] as const;
export type PruneModule = (typeof PRUNE_MODULES)[number];

/** @default the paper's sparsity. */
export const DEFAULT_SPARSITY = 0.3;
/** @default the paper's 100 four-shot demonstrations. */
export const DEFAULT_CALIBRATION_SAMPLES = 100;
export const DEFAULT_SHOTS = 4;
/** @default the paper's analysis: the 20 largest dimensions. */
export const DEFAULT_TOP_K = 20;
/** Calibration samples of one set: each holds its hidden state on its rank for the whole job. */
const MAX_CALIBRATION_SAMPLES = 100_000;
const MAX_SHOTS = 256;

export const CALIBRATION_FORMATS = ['parallel', 'tokenized'] as const;

const calibrationSourceSchema = z.strictObject({
  path: pathString,
  format: z.enum(CALIBRATION_FORMATS, { message: `must be one of ${CALIBRATION_FORMATS.join(', ')}` }),
  /** `parallel`: the language of `path` (the source side). */
  language: languageCode.optional(),
  /** `parallel`: the line-aligned target file. */
  target: pathString.optional(),
  /** `parallel`: the target's language. @default en */
  targetLanguage: languageCode.optional(),
});
export type CalibrationSource = z.infer<typeof calibrationSourceSchema>;

const sourcesSchema = z
  .array(calibrationSourceSchema)
  .min(1, 'must list at least one source')
  .max(SPEC_LIMITS.dataSources);
const samplesSchema = positiveIntAtMost(MAX_CALIBRATION_SAMPLES);
const shotsSchema = positiveIntAtMost(MAX_SHOTS);
const maxSeqLenSchema = positiveIntAtMost(SPEC_LIMITS.maxSeqLen);

export const calibrationSchema = z.strictObject({
  sources: sourcesSchema,
  samples: samplesSchema.default(DEFAULT_CALIBRATION_SAMPLES),
  shots: shotsSchema.default(DEFAULT_SHOTS),
  maxSeqLen: maxSeqLenSchema.default(1024),
});
export type CalibrationSpec = z.infer<typeof calibrationSchema>;

/**
 * The contrast set: as `calibration`, each of samples, shots and maxSeqLen defaulting to
 * calibration's (the authors' `get_loaders` builds both sets with one `nsamples`, `shots` and
 * `max_length`).
 */
const contrastSchema = z.strictObject({
  sources: sourcesSchema,
  samples: samplesSchema.optional(),
  shots: shotsSchema.optional(),
  maxSeqLen: maxSeqLenSchema.optional(),
});

const PATTERN = /^([1-9][0-9]*):([1-9][0-9]*)$/;

export const pruneSchema = z
  .strictObject({
    /** Share of each output row's weights zeroed, in [0, 1). @default DEFAULT_SPARSITY when no pattern */
    sparsity: z.number().min(0, 'must be in [0, 1)').lt(1, 'must be in [0, 1)').optional(),
    /** "N:M": the N lowest-scored of every M consecutive input columns are zeroed (2:4, 4:8). */
    pattern: z.string().regex(PATTERN, 'must be "N:M" such as "2:4"').optional(),
    modules: z
      .array(z.enum(PRUNE_MODULES, { message: `must be one of ${PRUNE_MODULES.join(', ')}` }))
      .min(1, 'must name at least one module')
      .default([...PRUNE_MODULES]),
    layers: z.array(nonNegativeInt).min(1, 'must name at least one layer').optional(),
    calibration: calibrationSchema,
    contrast: contrastSchema.optional(),
    features: z
      .strictObject({ topK: positiveIntAtMost(1_000_000).default(DEFAULT_TOP_K) })
      .default({ topK: DEFAULT_TOP_K }),
  })
  // Parsed, the contrast set is complete: what it does not say, calibration says.
  .transform(({ contrast, ...p }) => ({
    ...p,
    ...(contrast
      ? {
          contrast: {
            sources: contrast.sources,
            samples: contrast.samples ?? p.calibration.samples,
            shots: contrast.shots ?? p.calibration.shots,
            maxSeqLen: contrast.maxSeqLen ?? p.calibration.maxSeqLen,
          } satisfies CalibrationSpec,
        }
      : {}),
  }));
export type PruneSpec = z.output<typeof pruneSchema>;

/** How each row is pruned: the lowest `fraction` of it, or N of every M. */
export type PruneRule =
  | { readonly kind: 'fraction'; readonly sparsity: number }
  | { readonly kind: 'nm'; readonly n: number; readonly m: number };

export function pruneRule(p: PruneSpec): PruneRule {
  const m = p.pattern !== undefined ? PATTERN.exec(p.pattern) : null;
  if (m) return { kind: 'nm', n: Number(m[1]), m: Number(m[2]) };
  return { kind: 'fraction', sparsity: p.sparsity ?? DEFAULT_SPARSITY };
}

function calibrationIssues(c: CalibrationSpec, at: string): SpecIssue[] {
  const issues: SpecIssue[] = [];
  c.sources.forEach((s, i) => {
    const p = `${at}.sources[${i}]`;
    if (s.format === 'parallel') {
      if (s.target === undefined)
        issues.push({ path: `${p}.target`, message: 'is required for format parallel (the line-aligned target file)' });
      if (s.language === undefined)
        issues.push({ path: `${p}.language`, message: 'is required for format parallel (the language of path)' });
    } else {
      for (const k of ['target', 'language', 'targetLanguage'] as const)
        if (s[k] !== undefined) issues.push({ path: `${p}.${k}`, message: 'is only allowed for format parallel' });
    }
  });
  if (c.samples < c.sources.length)
    issues.push({ path: `${at}.samples`, message: `must be at least the number of sources (${c.sources.length})` });
  return issues;
}

/** Rules across the block's fields; paths start at `at` (`spec.prune`). */
export function pruneIssues(p: PruneSpec, at: string): SpecIssue[] {
  const issues: SpecIssue[] = [];
  if (p.sparsity !== undefined && p.pattern !== undefined)
    issues.push({ path: `${at}.pattern`, message: 'give either sparsity or pattern, not both' });
  const rule = pruneRule(p);
  if (rule.kind === 'nm' && rule.n >= rule.m)
    issues.push({ path: `${at}.pattern`, message: `N must be < M (it zeroes N of every M inputs), got ${p.pattern}` });
  const dupModule = p.modules.find((m, i) => p.modules.indexOf(m) !== i);
  if (dupModule) issues.push({ path: `${at}.modules`, message: `names "${dupModule}" twice` });
  const dupLayer = p.layers?.find((l, i) => p.layers!.indexOf(l) !== i);
  if (dupLayer !== undefined) issues.push({ path: `${at}.layers`, message: `names layer ${dupLayer} twice` });
  issues.push(...calibrationIssues(p.calibration, `${at}.calibration`));
  if (p.contrast) issues.push(...calibrationIssues(p.contrast, `${at}.contrast`));
  return issues;
}

/** Input columns of a projection (the dimension an N:M group runs along). */
export function pruneModuleColumns(c: LlamaConfig, m: PruneModule): number {
  if (m === 'o_proj') return c.numAttentionHeads * c.headDim;
  if (m === 'down_proj') return c.intermediateSize;
  return c.hiddenSize;
}

/** The block against the model: layers within its depth, an N:M pattern that divides every module's columns. */
export function pruneModelIssues(p: PruneSpec, c: LlamaConfig, at: string): SpecIssue[] {
  const issues: SpecIssue[] = [];
  p.layers?.forEach((l, i) => {
    if (l >= c.numHiddenLayers)
      issues.push({
        path: `${at}.layers[${i}]`,
        message: `layer ${l} does not exist (the model has ${c.numHiddenLayers})`,
      });
  });
  const rule = pruneRule(p);
  if (rule.kind === 'nm') {
    for (const m of p.modules) {
      const cols = pruneModuleColumns(c, m);
      if (cols % rule.m !== 0)
        issues.push({ path: `${at}.pattern`, message: `${p.pattern} does not divide ${m}'s ${cols} input columns` });
    }
  }
  return issues;
}

/** Relative paths resolved against `baseDir`. */
export function resolvePrunePaths(p: PruneSpec, baseDir: string): PruneSpec {
  const abs = (x: string): string => resolveSpecPath(x, baseDir);
  const set = (c: CalibrationSpec): CalibrationSpec => ({
    ...c,
    sources: c.sources.map((s) => ({
      ...s,
      path: abs(s.path),
      ...(s.target !== undefined ? { target: abs(s.target) } : {}),
    })),
  });
  return { ...p, calibration: set(p.calibration), ...(p.contrast ? { contrast: set(p.contrast) } : {}) };
}

/** Samples each source gives, in order: `samples` split evenly, the first ones one more. */
export function samplesPerSource(c: CalibrationSpec): number[] {
  const k = c.sources.length;
  return c.sources.map((_, i) => Math.floor(c.samples / k) + (i < c.samples % k ? 1 : 0));
}

/** Records a source needs: pairs (`shots` a sample) or tokenized records (one a sample). */
export function recordsNeeded(c: CalibrationSpec, i: number): number {
  const share = samplesPerSource(c)[i]!;
  return c.sources[i]!.format === 'parallel' ? share * c.shots : share;
}

/** Each file exists and holds enough records for its share of the samples; `at` is `spec.prune.calibration`. */
export async function calibrationFileIssues(c: CalibrationSpec, at: string): Promise<SpecIssue[]> {
  const issues: SpecIssue[] = [];
  for (const [i, s] of c.sources.entries()) {
    const p = `${at}.sources[${i}]`;
    const missing: string[] = [];
    for (const f of [s.path, s.target]) if (f !== undefined && !(await isFile(f))) missing.push(f);
    if (missing.length > 0) {
      for (const f of missing)
        issues.push({ path: `${p}.${f === s.path ? 'path' : 'target'}`, message: `${f}: no such file` });
      continue;
    }
    let have: number;
    try {
      have = (await readDataSource({ path: s.path, format: s.format, language: s.language, target: s.target })).length;
    } catch (e) {
      issues.push({ path: `${p}.path`, message: (e as Error).message });
      continue;
    }
    const need = recordsNeeded(c, i);
    if (have < need) {
      const what =
        s.format === 'parallel'
          ? `${need} pairs (${samplesPerSource(c)[i]} samples x ${c.shots} shots)`
          : `${need} records`;
      issues.push({ path: `${at}.samples`, message: `needs ${what} from sources[${i}], which has ${have}` });
    }
  }
  return issues;
}
