/**
 * The spec blocks of evaluation (`spec.eval` on a TrainJob or an EvalJob) and of the layer
 * analysis (`spec.analysis` of a LayerAnalysis job, `spec.method.analysis` of a TrainJob with
 * `method.layers: auto`), their checks, path resolution and expansion into concrete files.
 *
 * A set of problems is either one file:
 *
 *     { path: data/mgsm_sw.tsv, format: mgsm-tsv, language: sw }
 *
 * or a benchmark directory in its published layout, one file per language:
 *
 *     { mgsm: ../../shared/data/mgsm, languages: [en, de, sw], limit: 20 }     # mgsm_<lang>.tsv
 *     { msvamp: ../../shared/data/msvamp, languages: [en, zh] }                # test_<Language>.json
 *
 * `languages` defaults to every language of the benchmark; `limit` keeps the first N problems of
 * each language (MGSM's files are line-parallel: the i-th line is the same problem everywhere).
 */
import { join } from 'node:path';
import { z } from 'zod';
import type { SpecIssue } from './errors.js';
import { isFile } from './fs-checks.js';
import {
  languageCode,
  nonEmptyString,
  nonNegativeIntAtMost,
  pathString,
  positiveIntAtMost,
  resolveSpecPath,
  SPEC_LIMITS,
} from './spec-primitives.js';

/** MGSM's languages (`mgsm_<lang>.tsv`). */
export const MGSM_LANGUAGES = ['bn', 'de', 'en', 'es', 'fr', 'ja', 'ru', 'sw', 'te', 'th', 'zh'] as const;
/** MSVAMP's file names by language (no Telugu). */
export const MSVAMP_FILES: Readonly<Record<string, string>> = {
  bn: 'test_Bengali.json',
  de: 'test_German.json',
  en: 'test_English.json',
  es: 'test_Spanish.json',
  fr: 'test_French.json',
  ja: 'test_Japanese.json',
  ru: 'test_Russian.json',
  sw: 'test_Swahili.json',
  th: 'test_Thai.json',
  zh: 'test_Chinese.json',
};

/**
 * `choice`: classification sets as the pruning paper scores XNLI and MARC (worker/eval/choice.ts):
 * JSON Lines of `prompt`, `choices` (candidate labels) and `label` (an index or one of the choices).
 */
export const EVAL_FORMATS = ['mgsm-tsv', 'msvamp', 'choice'] as const;
export type EvalFormat = (typeof EVAL_FORMATS)[number];

/** @default greedy generation up to 600 new tokens (MathOctopus, QAlign). */
export const DEFAULT_EVAL_MAX_NEW_TOKENS = 600;
/** @default the top 6 language-specific layers (SLAM: layers 0-5). */
export const DEFAULT_ANALYSIS_K = 6;
/** @default a neuron is active for a language when it fires on at least half of its prompt tokens. */
export const DEFAULT_ANALYSIS_THRESHOLD = 0.5;

const language = languageCode;
const nonEmpty = pathString;
const batchSize = positiveIntAtMost(SPEC_LIMITS.microBatchSize);

export const problemSetSchema = z.strictObject({
  /** One file of problems. */
  path: nonEmpty.optional(),
  format: z.enum(EVAL_FORMATS, { message: `must be one of ${EVAL_FORMATS.join(', ')}` }).optional(),
  language: language.optional(),
  /** With `path`: the set's name in the report. @default the format's benchmark (mgsm, msvamp, choice) */
  benchmark: nonEmptyString(64).optional(),
  /** A directory of MGSM files (`mgsm_<lang>.tsv`). */
  mgsm: nonEmpty.optional(),
  /** A directory of MSVAMP files (`test_<Language>.json`). */
  msvamp: nonEmpty.optional(),
  /** With `mgsm`/`msvamp`: the languages to take. @default all of the benchmark's */
  languages: z.array(language).min(1, 'must name at least one language').optional(),
  /** The first N problems of each language. @default all */
  limit: positiveIntAtMost(SPEC_LIMITS.problemsPerLanguage).optional(),
});
export type ProblemSet = z.infer<typeof problemSetSchema>;

const problemSetList = z
  .array(problemSetSchema)
  .min(1, 'must list at least one set')
  .max(SPEC_LIMITS.problemSets, `must list at most ${SPEC_LIMITS.problemSets} sets`);

export const evalSchema = z.strictObject({
  sets: problemSetList,
  /** Prompt template: a named template (`slam`, `alpaca`) or a literal with {question}. */
  template: z.string().default('slam'),
  /** @default DEFAULT_EVAL_MAX_NEW_TOKENS */
  maxNewTokens: positiveIntAtMost(SPEC_LIMITS.maxNewTokens).default(DEFAULT_EVAL_MAX_NEW_TOKENS),
  /** Prompts generated together on one rank (left-padded). */
  batchSize: batchSize.default(8),
  /** Generation also ends at one of these strings (besides EOS). */
  stop: z
    .array(nonEmptyString(SPEC_LIMITS.stopStringChars))
    .max(SPEC_LIMITS.stopStrings, `must list at most ${SPEC_LIMITS.stopStrings} strings`)
    .default([]),
  /** TrainJob only: evaluate every N optimizer steps (0: only at the end). */
  everySteps: nonNegativeIntAtMost(SPEC_LIMITS.steps).optional(),
  /**
   * CC-Tuning's inference (docs/methods.md `## CC-Tuning`): the prompt's own FFN outputs mapped
   * through the Transform Matrix, the Decision Maker's pick injected at the prefill. A TrainJob
   * needs `method: cctuning` with transformSamples > 0; an EvalJob, a model directory with
   * `cctuning.safetensors` (a CC-Tuning job's `final/`). @default false
   */
  ccTransform: z.boolean().default(false),
});
export type EvalSpec = z.infer<typeof evalSchema>;

export const analysisSchema = z.strictObject({
  /** Parallel prompts per language; must include English. */
  probe: problemSetList,
  /** How many layers to choose. @default DEFAULT_ANALYSIS_K */
  k: positiveIntAtMost(SPEC_LIMITS.layers).default(DEFAULT_ANALYSIS_K),
  /**
   * Share of a language's prompt tokens on which a neuron must fire to count as active.
   * @default DEFAULT_ANALYSIS_THRESHOLD
   */
  threshold: z.number().gt(0, 'must be > 0').lte(1, 'must be <= 1').default(DEFAULT_ANALYSIS_THRESHOLD),
  /** Prompts longer than this are cut. */
  maxSeqLen: positiveIntAtMost(SPEC_LIMITS.maxSeqLen).default(512),
  batchSize: batchSize.default(8),
});
export type AnalysisSpec = z.infer<typeof analysisSchema>;

/** A concrete file of problems, after expansion. */
export interface ProblemSource {
  readonly path: string;
  readonly format: EvalFormat;
  readonly language: string;
  /** `mgsm` or `msvamp` (from the format). */
  readonly benchmark: string;
  readonly limit: number | undefined;
}

export function benchmarkOf(format: EvalFormat): string {
  return format === 'mgsm-tsv' ? 'mgsm' : format;
}

/** Checks of a list of sets that the schema cannot state; `at` is the list's field path. */
export function problemSetIssues(sets: readonly ProblemSet[], at: string): SpecIssue[] {
  const issues: SpecIssue[] = [];
  sets.forEach((set, i) => {
    const p = `${at}[${i}]`;
    const kinds = (['path', 'mgsm', 'msvamp'] as const).filter((k) => set[k] !== undefined);
    if (kinds.length !== 1) {
      issues.push({
        path: p,
        message: kinds.length === 0 ? 'needs one of path, mgsm, msvamp' : `must have only one of ${kinds.join(', ')}`,
      });
      return;
    }
    if (set.path !== undefined) {
      if (set.format === undefined) issues.push({ path: `${p}.format`, message: 'is required with path' });
      if (set.language === undefined) issues.push({ path: `${p}.language`, message: 'is required with path' });
      if (set.languages !== undefined)
        issues.push({ path: `${p}.languages`, message: 'is only allowed with mgsm or msvamp (use language)' });
    } else {
      const dirKey = set.mgsm !== undefined ? 'mgsm' : 'msvamp';
      if (set.format !== undefined)
        issues.push({ path: `${p}.format`, message: `is only allowed with path (${dirKey} implies it)` });
      if (set.benchmark !== undefined) issues.push({ path: `${p}.benchmark`, message: 'is only allowed with path' });
      if (set.language !== undefined)
        issues.push({ path: `${p}.language`, message: 'is only allowed with path (use languages)' });
      const known: readonly string[] = dirKey === 'mgsm' ? MGSM_LANGUAGES : Object.keys(MSVAMP_FILES);
      set.languages?.forEach((lang, j) => {
        if (!known.includes(lang))
          issues.push({
            path: `${p}.languages[${j}]`,
            message: `${dirKey} has no "${lang}" (it has ${known.join(', ')})`,
          });
      });
    }
  });
  return issues;
}

/** The concrete files of a list of (path-resolved, checked) sets, in order. */
export function expandProblemSets(sets: readonly ProblemSet[]): ProblemSource[] {
  const out: ProblemSource[] = [];
  for (const set of sets) {
    const limit = set.limit;
    if (set.path !== undefined) {
      const format = set.format ?? 'mgsm-tsv';
      const benchmark = set.benchmark ?? benchmarkOf(format);
      out.push({ path: set.path, format, language: set.language ?? 'und', benchmark, limit });
    } else if (set.mgsm !== undefined) {
      for (const lang of set.languages ?? MGSM_LANGUAGES) {
        out.push({
          path: join(set.mgsm, `mgsm_${lang}.tsv`),
          format: 'mgsm-tsv',
          language: lang,
          benchmark: 'mgsm',
          limit,
        });
      }
    } else if (set.msvamp !== undefined) {
      for (const lang of set.languages ?? Object.keys(MSVAMP_FILES)) {
        out.push({
          path: join(set.msvamp, MSVAMP_FILES[lang] ?? `test_${lang}.json`),
          format: 'msvamp',
          language: lang,
          benchmark: 'msvamp',
          limit,
        });
      }
    }
  }
  return out;
}

export function resolveProblemSets(sets: readonly ProblemSet[], baseDir: string): ProblemSet[] {
  const abs = (p: string): string => resolveSpecPath(p, baseDir);
  return sets.map((s) => ({
    ...s,
    ...(s.path !== undefined ? { path: abs(s.path) } : {}),
    ...(s.mgsm !== undefined ? { mgsm: abs(s.mgsm) } : {}),
    ...(s.msvamp !== undefined ? { msvamp: abs(s.msvamp) } : {}),
  }));
}

/** Checks of an analysis block: the probe has English and no language twice. */
export function analysisIssues(analysis: AnalysisSpec, at: string): SpecIssue[] {
  const issues = problemSetIssues(analysis.probe, `${at}.probe`);
  if (issues.length > 0) return issues;
  const langs = expandProblemSets(analysis.probe).map((s) => s.language);
  if (!langs.includes('en'))
    issues.push({ path: `${at}.probe`, message: 'must include English (en): overlap is measured against it' });
  const dup = langs.find((l, i) => langs.indexOf(l) !== i);
  if (dup !== undefined) issues.push({ path: `${at}.probe`, message: `names language "${dup}" twice` });
  return issues;
}

/** Every file of the sets exists; issues name the set's field path. */
export async function problemSetFileIssues(sets: readonly ProblemSet[], at: string): Promise<SpecIssue[]> {
  const issues: SpecIssue[] = [];
  for (const [i, set] of sets.entries()) {
    for (const src of expandProblemSets([set])) {
      if (!(await isFile(src.path))) {
        const field = set.path !== undefined ? 'path' : set.mgsm !== undefined ? 'mgsm' : 'msvamp';
        issues.push({ path: `${at}[${i}].${field}`, message: `${src.path}: no such file` });
      }
    }
  }
  return issues;
}
