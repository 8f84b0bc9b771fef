/**
 * The job spec: its schema, its types, and parsing from YAML or JSON text. Every error names the
 * field path (`spec.training.optimizer.lr: must be > 0`); unknown fields are errors.
 *
 * Checks that need the file system (files exist, the model's depth) live in `validateJobSpecFiles`,
 * so that a client can parse a spec without the data, and the coordinator checks what it will use.
 */
import { join } from 'node:path';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { JobSpecError, type SpecIssue } from './errors.js';
import { evalSchema, problemSetFileIssues, problemSetIssues, resolveProblemSets } from './eval-spec.js';
import { isFile } from './fs-checks.js';
import {
  methodFileIssues,
  methodIssues,
  methodModelIssues,
  methodSchema,
  resolveMethodPaths,
} from './methods/index.js';
import { readLlamaConfig, type LlamaConfig } from './model-config.js';
import {
  apiVersionSchema,
  intInRange,
  languageCode,
  metadataSchema,
  nonNegativeAtMost,
  nonNegativeIntAtMost,
  outputDirString,
  pathString,
  positiveAtMost,
  positiveIntAtMost,
  SPEC_LIMITS,
  templateIssues,
  workersIssues,
  workersSchema,
  resolveSpecPath,
} from './spec-primitives.js';

// The method block and its names live in common/methods/ (one file a method); re-exported for the
// spec's readers, and `methodSchema` for blocks that reuse it (a stage's method).
export {
  ATTENTION_MODULES,
  FFN_MODULES,
  LAYER_MODULES,
  METHOD_NAMES,
  SUPPORTED_METHODS,
  methodSchema,
} from './methods/index.js';
export type { LayerModule, MethodName, MethodSpec } from './methods/index.js';

export const DATA_FORMATS = [
  'alpaca',
  'tokenized',
  'mgsm-tsv',
  'msvamp',
  'parallel',
  'cctuning',
  'codeswitch',
] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

export { CHAT_TEMPLATE_NAME, PROMPT_TEMPLATES } from './spec-primitives.js';

const dataSourceSchema = z.strictObject({
  path: pathString,
  format: z.enum(DATA_FORMATS, { message: `must be one of ${DATA_FORMATS.join(', ')}` }),
  /** ISO 639-1 code of the records' language; for `parallel`, of `path` (the source side). */
  language: languageCode.optional(),
  /** `parallel` only: the line-aligned target file (English for question translation). */
  target: pathString.optional(),
  /**
   * `parallel` only: a file of answers line-aligned with `path` and `target`; the records are then
   * (`path` prompt, `target` its English version, answer), as CC-Tuning trains on.
   */
  answers: pathString.optional(),
  /**
   * `codeswitch` only: the bilingual dictionary (TSV: source word, target word, language) the text
   * is code-switched with on the fly (common/codeswitch.ts); absent, `path` holds pre-built
   * code-switched JSON Lines (`codeswitched`, `text`).
   */
  dictionary: pathString.optional(),
  /** `codeswitch` with a dictionary: the share of the dictionary's words replaced. @default 0.3 */
  ratio: z.number().gt(0, 'must be > 0').max(1, 'must be <= 1').optional(),
  /**
   * `codeswitch` with a dictionary: the JSON Lines field with the English text (an alpaca file's
   * `question`, say); absent, `path` is plain text, one text a line.
   */
  field: z.string().min(1).max(64).optional(),
  /** Samples per epoch from this source, as a multiple of its records (common/data-mixture.ts). */
  weight: nonNegativeAtMost(SPEC_LIMITS.weight).default(1),
});

const optimizerSchema = z.discriminatedUnion(
  'name',
  [
    z.strictObject({
      name: z.literal('adamw'),
      lr: positiveAtMost(SPEC_LIMITS.lr),
      betas: z
        .tuple([z.number().min(0).lt(1, 'must be < 1'), z.number().min(0).lt(1, 'must be < 1')])
        .default([0.9, 0.999]),
      eps: z.number().positive('must be > 0').max(1, 'must be <= 1').default(1e-8),
      weightDecay: nonNegativeAtMost(SPEC_LIMITS.weightDecay).default(0),
    }),
    z.strictObject({
      name: z.literal('sgd'),
      lr: positiveAtMost(SPEC_LIMITS.lr),
    }),
  ],
  { message: 'must have name adamw or sgd' },
);

const scheduleSchema = z.strictObject({
  name: z.enum(['constant', 'linear', 'cosine'], { message: 'must be one of constant, linear, cosine' }),
  warmupRatio: z.number().min(0, 'must be >= 0').max(1, 'must be <= 1').default(0),
});

/** `spec.data` (a TrainJob's, or a stage's). */
export const dataSchema = z.strictObject({
  train: z
    .array(dataSourceSchema)
    .min(1, 'must list at least one file')
    .max(SPEC_LIMITS.dataSources, `must list at most ${SPEC_LIMITS.dataSources} files`),
  template: z.string().default('slam'),
  /** `language`: every language brought to the sample count of the largest (data-mixture.ts). */
  balance: z.enum(['none', 'language'], { message: 'must be one of none, language' }).default('none'),
  maxSeqLen: positiveIntAtMost(SPEC_LIMITS.maxSeqLen).default(1024),
  shuffle: z.boolean().default(true),
});

/** `spec.training` (a TrainJob's, or a stage's). */
export const trainingSchema = z.strictObject({
  epochs: positiveIntAtMost(SPEC_LIMITS.epochs).optional(),
  maxSteps: positiveIntAtMost(SPEC_LIMITS.steps).optional(),
  globalBatchSize: positiveIntAtMost(SPEC_LIMITS.globalBatchSize),
  microBatchSize: positiveIntAtMost(SPEC_LIMITS.microBatchSize).default(4),
  optimizer: optimizerSchema,
  schedule: scheduleSchema.default({ name: 'constant', warmupRatio: 0 }),
  gradClip: nonNegativeAtMost(SPEC_LIMITS.gradClip).default(1.0),
  seed: intInRange(SPEC_LIMITS.seedMin, SPEC_LIMITS.seedMax).default(42),
  /** Steps in a row with a non-finite loss or gradient that are skipped before the job fails. */
  maxNonFiniteSteps: nonNegativeIntAtMost(SPEC_LIMITS.nonFiniteSteps).default(3),
  /**
   * Each decoder layer keeps only its input for the backward pass and is computed again there
   * (HF's gradient_checkpointing): activation memory of one layer instead of all, for one more
   * forward pass a step. The same gradients, bit for bit.
   */
  gradientCheckpointing: z.boolean().default(false),
  /**
   * TF32 matmuls on Ampere and newer GPUs (`NVIDIA_TF32_OVERRIDE`, worker --tf32): faster,
   * ~1e-3 relative error. As HF's `tf32`.
   */
  tf32: z.boolean().default(false),
});

/** A TrainJob's workers: their count, and the memory each has (common/memory-plan.ts refuses what cannot fit). */
export const trainWorkersSchema = workersSchema.extend({
  /** Memory of each worker's GPU and of its process on the host, in GiB. */
  gpuMemoryGiB: positiveAtMost(4096).optional(),
  hostMemoryGiB: positiveAtMost(65536).optional(),
});

export const specSchema = z.strictObject({
  apiVersion: apiVersionSchema,
  kind: z.literal('TrainJob', { message: 'must be "TrainJob"' }),
  metadata: metadataSchema,
  spec: z.strictObject({
    model: z.strictObject({ path: pathString }),
    method: methodSchema,
    data: dataSchema,
    training: trainingSchema,
    workers: trainWorkersSchema,
    collective: z
      .strictObject({
        compression: z.enum(['none', 'fp16', 'bf16'], { message: 'must be one of none, fp16, bf16' }).default('none'),
        /**
         * The deadline of one all-reduce, from its start (it includes waiting for the slowest peer's
         * compute). A lost worker is noticed sooner, by the coordinator's heartbeats; this bounds what
         * heartbeats cannot see, such as a NATS outage.
         */
        timeoutSeconds: z
          .number()
          .positive('must be > 0')
          .max(SPEC_LIMITS.timeoutSeconds, `must be <= ${SPEC_LIMITS.timeoutSeconds} (Node's timer limit)`)
          .default(300),
      })
      .default({ compression: 'none', timeoutSeconds: 300 }),
    checkpoint: z
      .strictObject({
        everySteps: nonNegativeIntAtMost(SPEC_LIMITS.steps).default(0),
        keep: positiveIntAtMost(SPEC_LIMITS.checkpointsKept).default(3),
      })
      .default({ everySteps: 0, keep: 3 }),
    output: z.strictObject({ dir: outputDirString }),
    /** Evaluation every `eval.everySteps` steps and at the end (common/eval-spec.ts, worker/eval/). */
    eval: evalSchema.optional(),
  }),
});

export type JobSpec = z.infer<typeof specSchema>;
export type DataSource = JobSpec['spec']['data']['train'][number];
export type OptimizerSpec = JobSpec['spec']['training']['optimizer'];
export type ScheduleSpec = JobSpec['spec']['training']['schedule'];

/** `a.b[2].c` from a zod path. */
function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out === '' ? String(p) : `.${String(p)}`;
  return out || '(root)';
}

export function zodIssues(error: z.ZodError): SpecIssue[] {
  const issues: SpecIssue[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) issues.push({ path: formatPath([...issue.path, key]), message: 'unknown field' });
    } else if (issue.code === 'invalid_type') {
      const missing = issue.message.endsWith('received undefined');
      issues.push({
        path: formatPath(issue.path),
        message: missing
          ? 'is required'
          : `must be ${issue.expected}` + issue.message.replace(/^.*(, received \w+)$/, '$1'),
      });
    } else {
      issues.push({ path: formatPath(issue.path), message: issue.message });
    }
  }
  return issues;
}

/** Rules across fields that the schema alone cannot state. */
export function crossFieldIssues(spec: JobSpec): SpecIssue[] {
  const issues: SpecIssue[] = [];
  const s = spec.spec;
  const t = s.training;
  if (t.epochs === undefined && t.maxSteps === undefined) {
    issues.push({ path: 'spec.training.epochs', message: 'one of epochs or maxSteps is required' });
  }
  issues.push(...workersIssues(s.workers));
  if (t.globalBatchSize < s.workers.count) {
    issues.push({
      path: 'spec.training.globalBatchSize',
      message: `must be >= spec.workers.count (${s.workers.count}): every worker takes part of each global batch`,
    });
  }
  issues.push(...methodIssues(s.method, 'spec.method'));
  if (s.eval !== undefined) {
    issues.push(
      ...problemSetIssues(s.eval.sets, 'spec.eval.sets'),
      ...templateIssues(s.eval.template, 'spec.eval.template'),
    );
    if (s.eval.ccTransform && (s.method.name !== 'cctuning' || s.method.transformSamples === 0)) {
      issues.push({
        path: 'spec.eval.ccTransform',
        message:
          s.method.name === 'cctuning'
            ? 'needs a Transform Matrix: spec.method.transformSamples must be > 0'
            : `needs method cctuning (the Decision Maker and the Transform Matrix), not ${s.method.name}`,
      });
    }
  }
  issues.push(...templateIssues(s.data.template, 'spec.data.template'));
  s.data.train.forEach((src, i) => {
    if (src.format === 'parallel' && src.target === undefined) {
      issues.push({
        path: `spec.data.train[${i}].target`,
        message: 'is required for format parallel (the line-aligned target file)',
      });
    }
    if (src.format !== 'parallel' && src.target !== undefined) {
      issues.push({ path: `spec.data.train[${i}].target`, message: 'is only allowed for format parallel' });
    }
    if (src.format !== 'parallel' && src.answers !== undefined) {
      issues.push({ path: `spec.data.train[${i}].answers`, message: 'is only allowed for format parallel' });
    }
    const paired = src.format === 'cctuning' || (src.format === 'parallel' && src.answers !== undefined);
    if (s.method.name === 'cctuning' && !paired) {
      issues.push({
        path: `spec.data.train[${i}].format`,
        message: 'method cctuning needs records with the English prompt: format cctuning, or parallel with answers',
      });
    }
    for (const key of ['dictionary', 'ratio', 'field'] as const) {
      if (src.format !== 'codeswitch' && src[key] !== undefined)
        issues.push({ path: `spec.data.train[${i}].${key}`, message: 'is only allowed for format codeswitch' });
    }
    if (src.format === 'codeswitch' && src.dictionary === undefined) {
      for (const key of ['ratio', 'field'] as const) {
        if (src[key] !== undefined) {
          issues.push({
            path: `spec.data.train[${i}].${key}`,
            message: 'needs a dictionary (without one, path holds pre-built code-switched records)',
          });
        }
      }
    }
  });
  return issues;
}

export interface ParseOptions {
  /** Names the source in errors, e.g. the file name. */
  source?: string;
  /** Relative paths in the spec are resolved against this directory. @default process.cwd() */
  baseDir?: string;
}

/** YAML (or JSON) text as a mapping; JobSpecError naming the source when it is not one. */
export function readSpecText(text: string, source?: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (e) {
    const msg = e instanceof YAMLParseError ? (e.message.split('\n')[0] ?? e.message) : String(e);
    throw new JobSpecError([{ path: '(root)', message: `not valid YAML: ${msg}` }], source);
  }
  return specMapping(raw, source);
}

/** `raw` as a spec's top-level mapping; JobSpecError naming the source when it is not one. */
export function specMapping(raw: unknown, source?: string): Record<string, unknown> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new JobSpecError(
      [{ path: '(root)', message: 'must be a mapping (apiVersion, kind, metadata, spec)' }],
      source,
    );
  }
  return raw as Record<string, unknown>;
}

/**
 * Parse and validate a job spec from YAML or JSON text. Relative paths (model, data, output) are
 * resolved against `baseDir`. Throws `JobSpecError` listing every problem with its field path.
 */
export function parseJobSpec(text: string, options: ParseOptions = {}): JobSpec {
  return trainJobFromObject(readSpecText(text, options.source), options);
}

/** `parseJobSpec` of an already read mapping. */
export function trainJobFromObject(raw: Record<string, unknown>, options: ParseOptions = {}): JobSpec {
  const parsed = specSchema.safeParse(raw);
  if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
  const spec = parsed.data;
  const issues = crossFieldIssues(spec);
  if (issues.length > 0) throw new JobSpecError(issues, options.source);
  return resolvePaths(spec, options.baseDir ?? process.cwd());
}

export function resolvePaths(spec: JobSpec, baseDir: string): JobSpec {
  const abs = (p: string): string => resolveSpecPath(p, baseDir);
  const s = spec.spec;
  return {
    ...spec,
    spec: {
      ...s,
      model: { path: abs(s.model.path) },
      data: {
        ...s.data,
        train: s.data.train.map((src) => ({
          ...src,
          path: abs(src.path),
          ...(src.target ? { target: abs(src.target) } : {}),
          ...(src.answers ? { answers: abs(src.answers) } : {}),
          ...(src.dictionary ? { dictionary: abs(src.dictionary) } : {}),
        })),
      },
      output: { dir: abs(s.output.dir) },
      method: resolveMethodPaths(s.method, baseDir),
      ...(s.eval ? { eval: { ...s.eval, sets: resolveProblemSets(s.eval.sets, baseDir) } } : {}),
    },
  };
}

/**
 * Checks against the file system, for the coordinator before it accepts a job: the model directory
 * holds a config.json of a supported architecture, weights and tokenizer.json; every layer index is
 * below the model's depth; every data file exists. Throws `JobSpecError`.
 */
export async function validateJobSpecFiles(
  spec: JobSpec,
  source?: string,
): Promise<{ numLayers: number; config: LlamaConfig }> {
  const issues: SpecIssue[] = [];
  const s = spec.spec;
  const dir = s.model.path;
  let config: LlamaConfig | undefined;
  const configPath = join(dir, 'config.json');
  if (!(await isFile(configPath))) {
    issues.push({ path: 'spec.model.path', message: `${configPath}: no such file (expected an HF model directory)` });
  } else {
    try {
      config = await readLlamaConfig(dir);
    } catch (e) {
      issues.push({ path: 'spec.model.path', message: (e as Error).message });
    }
    const weights =
      (await isFile(join(dir, 'model.safetensors'))) || (await isFile(join(dir, 'model.safetensors.index.json')));
    if (!weights)
      issues.push({ path: 'spec.model.path', message: `${dir}: no model.safetensors or model.safetensors.index.json` });
    if (!(await isFile(join(dir, 'tokenizer.json')))) {
      issues.push({ path: 'spec.model.path', message: `${join(dir, 'tokenizer.json')}: no such file` });
    }
  }
  const numLayers = config?.numHiddenLayers ?? 0;
  issues.push(...methodModelIssues(s.method, numLayers, 'spec.method'));
  if (config) issues.push(...(await methodFileIssues(s.method, config, 'spec.method')));
  for (const [i, src] of s.data.train.entries()) {
    if (!(await isFile(src.path)))
      issues.push({ path: `spec.data.train[${i}].path`, message: `${src.path}: no such file` });
    if (src.target !== undefined && !(await isFile(src.target))) {
      issues.push({ path: `spec.data.train[${i}].target`, message: `${src.target}: no such file` });
    }
    if (src.answers !== undefined && !(await isFile(src.answers))) {
      issues.push({ path: `spec.data.train[${i}].answers`, message: `${src.answers}: no such file` });
    }
    if (src.dictionary !== undefined && !(await isFile(src.dictionary))) {
      issues.push({ path: `spec.data.train[${i}].dictionary`, message: `${src.dictionary}: no such file` });
    }
  }
  if (s.method.analysis)
    issues.push(...(await problemSetFileIssues(s.method.analysis.probe, 'spec.method.analysis.probe')));
  if (s.eval) issues.push(...(await problemSetFileIssues(s.eval.sets, 'spec.eval.sets')));
  if (issues.length > 0 || !config) throw new JobSpecError(issues, source);
  return { numLayers, config };
}
