/**
 * The building blocks every job spec schema shares, defined once: the name rule (a DNS-1123
 * label, also a NATS subject token), language codes, bounded integers, the `workers` block and the
 * prompt-template check, and `SPEC_LIMITS`, the upper bound of every number a spec may hold.
 *
 * Why bounds: a spec crosses a trust boundary (any client with the token) and each number sizes
 * work on the coordinator or the workers. Unbounded, `data.train[].weight: 1e6` made one submit
 * allocate 1.3-3 GB and block the coordinator's event loop for seconds (workers were declared
 * lost), and `collective.timeoutSeconds` above 2,147,483 overflowed Node's 32-bit timer so every
 * all-reduce timed out at once. The limits below are far above any real job (LLaMA-2 7B on 4096
 * GPUs with 128k-token sequences) and far below what hurts.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import type { SpecIssue } from './errors.js';

/** The upper bound of every number in a spec (README "Job spec: limits"). */
export const SPEC_LIMITS = {
  /** `data.train[].weight`: a source repeated at most 1000 times an epoch. */
  weight: 1000,
  /** Samples of one epoch after the mixture (weights, balance): 10 million (40 MB of indices). */
  epochSamples: 10_000_000,
  /** `data.train`: sources of one job. */
  dataSources: 1024,
  /** `collective.timeoutSeconds`: Node's timers hold at most 2^31 - 1 ms. */
  timeoutSeconds: 2_147_483,
  /** `workers.count` and `workers.min`. */
  workers: 4096,
  /** `data.maxSeqLen`, `analysis.maxSeqLen`: 128k tokens. */
  maxSeqLen: 131_072,
  /** `training.microBatchSize`, eval/analysis `batchSize`. */
  microBatchSize: 4096,
  /** `training.globalBatchSize`: 1M samples a step. */
  globalBatchSize: 1_048_576,
  /** `training.epochs`. */
  epochs: 10_000,
  /** `training.maxSteps`, `checkpoint.everySteps`, `eval.everySteps`: 100 million steps. */
  steps: 100_000_000,
  /** `method.transformSamples` (CC-Tuning): prompt pairs the Transform Matrix is solved on. */
  transformSamples: 100_000,
  /** `checkpoint.keep`. */
  checkpointsKept: 1000,
  /** `training.maxNonFiniteSteps`. */
  nonFiniteSteps: 1_000_000,
  /** A literal prompt template: 64 KiB of UTF-8. */
  templateBytes: 64 * 1024,
  /** `eval.maxNewTokens`. */
  maxNewTokens: 131_072,
  /** Problem sets of an `eval` or `analysis` block. */
  problemSets: 256,
  /** `limit` of a problem set: problems per language. */
  problemsPerLanguage: 10_000_000,
  /** `analysis.k`: layers chosen. */
  layers: 4096,
  /** `eval.stop`: strings, each at most `stopStringChars` characters. */
  stopStrings: 64,
  stopStringChars: 1024,
  /** A path in a spec. */
  pathChars: 4096,
  /** Optimizer `lr`, `gradClip`, `weightDecay`. */
  lr: 1000,
  gradClip: 1e6,
  weightDecay: 1000,
  /** `training.seed`: a 32-bit seed (signed or unsigned). */
  seedMin: -2_147_483_648,
  seedMax: 4_294_967_295,
} as const;

/** A Kubernetes-style name: lower-case alphanumerics and `-`, 1-63, alphanumeric at both ends. */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
export const MAX_JOB_NAME_LENGTH = 63;
export const DNS_LABEL_MESSAGE = 'must be a DNS-1123 label: lower-case letters, digits and "-", at most 63';

/** An ISO 639 code such as `sw` or `yue`. */
export const LANGUAGE_CODE = /^[a-z]{2,3}$/;
export const languageCode = z.string().regex(LANGUAGE_CODE, 'must be an ISO 639 code such as "sw"');

/** An integer in 1..max (`must be <= max` names the bound). */
export function intInRange(min: number, max: number): z.ZodNumber {
  return z.number().int('must be an integer').min(min, `must be >= ${min}`).max(max, `must be <= ${max}`);
}

/** An integer in 1..max. */
export function positiveIntAtMost(max: number): z.ZodNumber {
  return z.number().int('must be an integer').positive('must be > 0').max(max, `must be <= ${max}`);
}

/** An integer in 0..max. */
export function nonNegativeIntAtMost(max: number): z.ZodNumber {
  return z.number().int('must be an integer').nonnegative('must be >= 0').max(max, `must be <= ${max}`);
}

/** A number in (0, max]. */
export function positiveAtMost(max: number): z.ZodNumber {
  return z.number().positive('must be > 0').max(max, `must be <= ${max}`);
}

/** A number in [0, max]. */
export function nonNegativeAtMost(max: number): z.ZodNumber {
  return z.number().nonnegative('must be >= 0').max(max, `must be <= ${max}`);
}

/** A string of 1..max characters. */
export function nonEmptyString(max: number): z.ZodString {
  return z.string().min(1, 'must not be empty').max(max, `must be at most ${max} characters`);
}

/** A positive integer, at most 2^31 - 1 (use a tighter bound where one is known). */
export const positiveInt = positiveIntAtMost(2_147_483_647);
/** A non-negative integer, at most 2^31 - 1. */
export const nonNegativeInt = nonNegativeIntAtMost(2_147_483_647);

/**
 * A spec's path as every later reader sees it: relative paths against `baseDir` (the spec file's
 * folder), and every path, absolute ones too, normalised (`a/link/../b` is `a/b`). The storage-root
 * check and the worker that opens the file must read the same string: left as written, a root
 * check that normalises would pass `root/link/../x` while the operating system, following `link`
 * first, opens a file outside the root.
 */
export function resolveSpecPath(p: string, baseDir: string): string {
  return resolve(baseDir, p);
}

/** A non-empty path of at most `SPEC_LIMITS.pathChars` characters. */
export const pathString = nonEmptyString(SPEC_LIMITS.pathChars);

export const apiVersionSchema = z.literal('polytune/v1', { message: 'must be "polytune/v1"' });
export const metadataSchema = z.strictObject({
  name: z.string().max(MAX_JOB_NAME_LENGTH, DNS_LABEL_MESSAGE).regex(DNS_LABEL, DNS_LABEL_MESSAGE),
});

/** `spec.workers`: the gang size and the fewest workers a re-formed world may go on with. */
export const workersSchema = z.strictObject({
  count: positiveIntAtMost(SPEC_LIMITS.workers),
  min: positiveIntAtMost(SPEC_LIMITS.workers).optional(),
});

/** The named prompt templates; a literal template must contain `{question}`. */
export const PROMPT_TEMPLATES = {
  /** SLAM (LLaMA-Factory's `default`). */
  slam: 'Human: {question}\nAssistant: ',
  /** MetaMath / Alpaca. */
  alpaca:
    'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
    '### Instruction:\n{question}\n\n### Response:\n',
} as const;

/** The template name that means "the model's own chat template" (tokenizer_config.json). */
export const CHAT_TEMPLATE_NAME = 'chat';

/** A template is a named one, `chat`, or a literal of at most 64 KiB holding `{question}`. */
export function templateIssues(template: string, at: string): SpecIssue[] {
  const bytes = Buffer.byteLength(template, 'utf8');
  if (bytes > SPEC_LIMITS.templateBytes) {
    return [{ path: at, message: `must be at most ${SPEC_LIMITS.templateBytes} bytes (it has ${bytes})` }];
  }
  if (template in PROMPT_TEMPLATES || template === CHAT_TEMPLATE_NAME || template.includes('{question}')) return [];
  const names = [...Object.keys(PROMPT_TEMPLATES), CHAT_TEMPLATE_NAME].join(', ');
  return [{ path: at, message: `must be one of ${names} or a literal containing {question}` }];
}

/** `workers.min <= workers.count`. */
export function workersIssues(w: { count: number; min?: number | undefined }, at = 'spec.workers'): SpecIssue[] {
  if (w.min === undefined || w.min <= w.count) return [];
  return [{ path: `${at}.min`, message: `must be <= ${at}.count (${w.count})` }];
}
