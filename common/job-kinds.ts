/**
 * The kinds of job the coordinator runs, and parsing of any of them:
 *
 * | kind | does | spec |
 * |---|---|---|
 * | `TrainJob` | trains (common/jobspec.ts, common/stages.ts) | model, method, data, training (or stages), ..., `eval` |
 * | `EvalJob` | scores a model on MGSM/MSVAMP by greedy generation (worker/eval/) | model, eval, workers, output |
 * | `LayerAnalysis` | finds the language-specific layers (worker/methods/layer-analysis.ts) | model, analysis, workers, output |
 * | `PruneJob` | Wanda pruning calibrated on translation (worker/prune/run-prune.ts) | model, prune, workers, output, `eval` |
 *
 * Each kind is one row of `JOB_KIND_TABLE`: its schema and parser, its checks against the file
 * system, its number of steps and its one-line description; the worker's half of a row (how a rank
 * runs it) is in worker/job-kinds.ts. Code that depends on the kind looks it up here
 * (`jobKindOf(spec)`) instead of testing `kind`; a new kind is a new row in each table.
 *
 * `parseJobSpec` stays the single-stage TrainJob parser; a TrainJob with `spec.stages` is parsed by
 * common/stages.ts.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { JobSpecError, type SpecIssue } from './errors.js';
import { loadTrainingSet } from './data-mixture.js';
import { isFile } from './fs-checks.js';
import { planSteps } from './data-plan.js';
import {
  analysisIssues,
  analysisSchema,
  evalSchema,
  expandProblemSets,
  problemSetFileIssues,
  problemSetIssues,
  resolveProblemSets,
  type ProblemSet,
} from './eval-spec.js';
import {
  readSpecText,
  specMapping,
  specSchema,
  trainJobFromObject,
  validateJobSpecFiles,
  zodIssues,
  type JobSpec,
  type ParseOptions,
} from './jobspec.js';
import { readLlamaConfig, type LlamaConfig } from './model-config.js';
import { readChoiceRecords } from './choice-records.js';
import { readDataSource } from './records.js';
import {
  apiVersionSchema,
  metadataSchema,
  outputDirString,
  pathString,
  templateIssues,
  workersIssues,
  workersSchema,
  resolveSpecPath,
} from './spec-primitives.js';
import {
  isStaged,
  stagedJobFromObject,
  stagedSpecSchema,
  stageJobSpec,
  validateStagedJobFiles,
  type StagedJobSpec,
  type TrainJobSpec,
} from './stages.js';
import { memoryFitIssues } from './memory-plan.js';
import { CCTUNING_FILE, transformWithPrefixMessage } from './methods/cctuning.js';
import {
  describeTrainable,
  LINGUALIFT_MODULES_FILE,
  methodFrozenParameters,
  parameterCounts,
  trainedModelIssues,
} from './methods/index.js';
import {
  calibrationFileIssues,
  pruneIssues,
  pruneModelIssues,
  pruneRule,
  pruneSchema,
  resolvePrunePaths,
} from './prune-spec.js';

export const JOB_KINDS = ['TrainJob', 'EvalJob', 'LayerAnalysis', 'PruneJob'] as const;
export type JobKind = (typeof JOB_KINDS)[number];

const nonEmpty = pathString;

const common = { apiVersion: apiVersionSchema, metadata: metadataSchema };
const model = z.strictObject({ path: nonEmpty });
/**
 * `min`: the job goes on in a re-formed world of at least `min` (it starts over: evaluation and analysis are
 * deterministic).
 */
const workers = workersSchema;
const output = z.strictObject({ dir: outputDirString });

/**
 * An EvalJob's model: `encoder` is LinguaLIFT's encoder directory, for a model whose
 * `lingualift.safetensors` does not name it (or names one moved since). @default its metadata's
 */
const evalModel = z.strictObject({ path: nonEmpty, encoder: nonEmpty.optional() });
const evalJobSchema = z.strictObject({
  ...common,
  kind: z.literal('EvalJob'),
  spec: z.strictObject({ model: evalModel, eval: evalSchema, workers, output }),
});
const layerAnalysisSchema = z.strictObject({
  ...common,
  kind: z.literal('LayerAnalysis'),
  spec: z.strictObject({ model, analysis: analysisSchema, workers, output }),
});

const pruneJobSchema = z.strictObject({
  ...common,
  kind: z.literal('PruneJob'),
  spec: z.strictObject({ model, prune: pruneSchema, workers, eval: evalSchema.optional(), output }),
});

export type EvalJobSpec = z.infer<typeof evalJobSchema>;
export type LayerAnalysisJobSpec = z.infer<typeof layerAnalysisSchema>;
export type PruneJobSpec = z.infer<typeof pruneJobSchema>;
/** A TrainJob is `JobSpec` (common/jobspec.ts) or, with `spec.stages`, `StagedJobSpec` (common/stages.ts). */
export type AnyJobSpec = TrainJobSpec | EvalJobSpec | LayerAnalysisJobSpec | PruneJobSpec;
/** The spec of kind `K`. */
export type JobSpecOf<K extends JobKind> = Extract<AnyJobSpec, { kind: K }>;

/** Checks of a `spec.eval` block (also used for a TrainJob's). */
export function evalBlockIssues(ev: z.infer<typeof evalSchema>, at: string, onTrainJob: boolean): SpecIssue[] {
  const issues = [...problemSetIssues(ev.sets, `${at}.sets`), ...templateIssues(ev.template, `${at}.template`)];
  if (!onTrainJob && ev.everySteps !== undefined)
    issues.push({ path: `${at}.everySteps`, message: 'is only allowed on a TrainJob' });
  return issues;
}

const minIssues = (w: { count: number; min?: number | undefined }): SpecIssue[] => workersIssues(w);

/** What a submit checks on the file system, and the parameters the job trains (0 of 0 when none). */
export interface ValidatedFiles {
  readonly numLayers: number;
  readonly parameters: { readonly trainable: number; readonly total: number };
}

/** The settings of a job's collective (worker/collective/). */
export interface CollectiveSettings {
  readonly compression: 'none' | 'fp16' | 'bf16';
  readonly timeoutSeconds: number;
}

/** One row of the table: what the coordinator, the CLI and the worker's set-up need of a kind. */
export interface JobKindSpec<S extends AnyJobSpec> {
  /** The zod schema of the whole object (apiVersion, kind, metadata, spec). */
  readonly schema: z.ZodType;
  /** The schema, the rules across fields and relative paths resolved; throws `JobSpecError`. */
  readonly parse: (raw: Record<string, unknown>, options: ParseOptions) => S;
  /** Checks against the file system (model directory, data and problem files, layers against the depth). */
  readonly validateFiles: (spec: S, source?: string) => Promise<ValidatedFiles>;
  /** The job's "steps", for progress (reads its data files; throws `DataFormatError` on bad data). */
  readonly totalSteps: (spec: S) => Promise<number>;
  /** What `coordinator submit` prints after "submitted JOB: ". */
  readonly describe: (spec: S, parameters: ValidatedFiles['parameters']) => string;
  /**
   * What a step of the kind is, for `status` and `watch` (`layer 3/8`), and the unit of its rate
   * (a TrainJob's is the tokens/s its rank 0 reports; the others' are steps over time).
   */
  readonly units: { readonly step: string; readonly rate: string };
  /** The collective's settings: a TrainJob's spec says; the others sum exact counts in float32. */
  readonly collective: (spec: S) => CollectiveSettings;
  /**
   * A job running below `workers.count` takes idle workers in (a re-formed world hands them the
   * state); a kind without state to hand over starts over instead and is left alone.
   */
  readonly growsWorld: boolean;
  /** `submit --resume` goes on from the job's checkpoints; a kind without them ignores it. */
  readonly resumable: boolean;
  /** The names of the job's stages, in order (common/stages.ts); none for a job of one stage. */
  readonly stageNames: (spec: S) => readonly string[];
}

async function countProblems(sets: readonly ProblemSet[]): Promise<number> {
  let n = 0;
  for (const src of expandProblemSets(sets)) {
    const records =
      src.format === 'choice'
        ? await readChoiceRecords(src.path)
        : await readDataSource({ path: src.path, format: src.format, language: src.language });
    n += Math.min(records.length, src.limit ?? records.length);
  }
  return n;
}

async function singleStageSteps(spec: JobSpec): Promise<number> {
  const set = await loadTrainingSet(spec.spec.data, spec.spec.training.seed);
  return planSteps(set.samples.length, spec.spec.training).totalSteps;
}

/** Every stage's optimizer steps, in order (a single-stage job: one entry). */
export async function trainJobStageSteps(spec: TrainJobSpec): Promise<number[]> {
  if (!isStaged(spec)) return [await singleStageSteps(spec)];
  const steps: number[] = [];
  for (let i = 0; i < spec.spec.stages.length; i++) steps.push(await singleStageSteps(stageJobSpec(spec, i)));
  return steps;
}

const NO_PARAMETERS = { trainable: 0, total: 0 } as const;
const FLOAT32_COLLECTIVE: CollectiveSettings = { compression: 'none', timeoutSeconds: 300 };

/**
 * The model's config.json for the kinds without a method (EvalJob, LayerAnalysis, PruneJob); a
 * problem reading it goes to `issues` at spec.model.path.
 */
async function modelConfig(
  spec: EvalJobSpec | LayerAnalysisJobSpec | PruneJobSpec,
  issues: SpecIssue[],
): Promise<LlamaConfig | undefined> {
  try {
    return await readLlamaConfig(spec.spec.model.path);
  } catch (e) {
    issues.push({ path: 'spec.model.path', message: (e as Error).message });
    return undefined;
  }
}

function resolver(options: ParseOptions): (p: string) => string {
  const baseDir = options.baseDir ?? process.cwd();
  return (p) => resolveSpecPath(p, baseDir);
}

const trainJob: JobKindSpec<TrainJobSpec> = {
  schema: z.union([specSchema, stagedSpecSchema]),
  parse: (raw, options) => {
    const spec = raw['spec'];
    const staged = spec !== null && typeof spec === 'object' && 'stages' in spec;
    return staged ? stagedJobFromObject(raw, options) : trainJobFromObject(raw, options);
  },
  validateFiles: async (spec, source) => {
    if (!isStaged(spec)) {
      const { numLayers, config } = await validateJobSpecFiles(spec, source);
      // A job that cannot fit the memory spec.workers states is refused with the numbers and the fix.
      const memory = memoryFitIssues(config, spec, await methodFrozenParameters(spec.spec.method));
      if (memory.length > 0) throw new JobSpecError(memory, source);
      return { numLayers, parameters: parameterCounts(spec.spec.method, config) };
    }
    // Each stage trains its own tensors: the one that trains the most is reported.
    const { numLayers, config, stages } = await validateStagedJobFiles(spec, source);
    const memory: SpecIssue[] = [];
    for (const s of stages) memory.push(...memoryFitIssues(config, s, await methodFrozenParameters(s.spec.method)));
    if (memory.length > 0) throw new JobSpecError(memory, source);
    const counts = stages.map((s) => parameterCounts(s.spec.method, config));
    return { numLayers, parameters: counts.reduce((a, b) => (b.trainable > a.trainable ? b : a)) };
  },
  totalSteps: async (spec) => (await trainJobStageSteps(spec)).reduce((a, b) => a + b, 0),
  describe: (spec, parameters) => {
    if (!isStaged(spec)) return `${spec.spec.method.name} trains ${describeTrainable(parameters)}`;
    const stages = spec.spec.stages.map((s) => `${s.name} (${s.method.name})`).join(', ');
    return `${spec.spec.stages.length} stages: ${stages}; a stage trains at most ${describeTrainable(parameters)}`;
  },
  units: { step: 'step', rate: 'tok/s' },
  collective: (spec) => spec.spec.collective,
  growsWorld: true,
  resumable: true,
  stageNames: (spec) => (isStaged(spec) ? spec.spec.stages.map((s) => s.name) : []),
};

const evalJob: JobKindSpec<EvalJobSpec> = {
  schema: evalJobSchema,
  parse: (raw, options) => {
    const parsed = evalJobSchema.safeParse(raw);
    if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
    const s = parsed.data.spec;
    const issues = [...evalBlockIssues(s.eval, 'spec.eval', false), ...minIssues(s.workers)];
    if (issues.length > 0) throw new JobSpecError(issues, options.source);
    const abs = resolver(options);
    return {
      ...parsed.data,
      spec: {
        ...s,
        model: { path: abs(s.model.path), ...(s.model.encoder !== undefined ? { encoder: abs(s.model.encoder) } : {}) },
        eval: { ...s.eval, sets: resolveProblemSets(s.eval.sets, options.baseDir ?? process.cwd()) },
        output: { dir: abs(s.output.dir) },
      },
    };
  },
  validateFiles: async (spec, source) => {
    const issues: SpecIssue[] = [];
    const numLayers = (await modelConfig(spec, issues))?.numHiddenLayers ?? 0;
    // A LinguaLIFT model's final/: its encoder (spec.model.encoder, or the one its file names).
    issues.push(...(await trainedModelIssues(spec.spec.model.path, spec.spec.model.encoder, 'spec.model')));
    issues.push(...(await problemSetFileIssues(spec.spec.eval.sets, 'spec.eval.sets')));
    const ccFile = join(spec.spec.model.path, CCTUNING_FILE);
    if (spec.spec.eval.ccTransform && !(await isFile(ccFile)))
      issues.push({
        path: 'spec.eval.ccTransform',
        message: `${ccFile}: no such file (a CC-Tuning job's final/ has it)`,
      });
    const llFile = join(spec.spec.model.path, LINGUALIFT_MODULES_FILE);
    if (spec.spec.eval.ccTransform && (await isFile(llFile)))
      issues.push({ path: 'spec.eval.ccTransform', message: transformWithPrefixMessage(llFile) });
    if (issues.length > 0) throw new JobSpecError(issues, source);
    return { numLayers, parameters: NO_PARAMETERS };
  },
  totalSteps: (spec) => countProblems(spec.spec.eval.sets),
  describe: (spec) => spec.kind,
  units: { step: 'problem', rate: 'problems/s' },
  collective: () => FLOAT32_COLLECTIVE,
  growsWorld: false,
  resumable: false,
  stageNames: () => [],
};

const layerAnalysis: JobKindSpec<LayerAnalysisJobSpec> = {
  schema: layerAnalysisSchema,
  parse: (raw, options) => {
    const parsed = layerAnalysisSchema.safeParse(raw);
    if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
    const s = parsed.data.spec;
    const issues = [...analysisIssues(s.analysis, 'spec.analysis'), ...minIssues(s.workers)];
    if (issues.length > 0) throw new JobSpecError(issues, options.source);
    const abs = resolver(options);
    return {
      ...parsed.data,
      spec: {
        ...s,
        model: { path: abs(s.model.path) },
        analysis: { ...s.analysis, probe: resolveProblemSets(s.analysis.probe, options.baseDir ?? process.cwd()) },
        output: { dir: abs(s.output.dir) },
      },
    };
  },
  validateFiles: async (spec, source) => {
    const issues: SpecIssue[] = [];
    const numLayers = (await modelConfig(spec, issues))?.numHiddenLayers ?? 0;
    issues.push(...(await problemSetFileIssues(spec.spec.analysis.probe, 'spec.analysis.probe')));
    if (numLayers > 0 && spec.spec.analysis.k > numLayers) {
      issues.push({ path: 'spec.analysis.k', message: `must be <= the model's depth (${numLayers} layers)` });
    }
    if (issues.length > 0) throw new JobSpecError(issues, source);
    return { numLayers, parameters: NO_PARAMETERS };
  },
  totalSteps: (spec) => countProblems(spec.spec.analysis.probe),
  describe: (spec) => spec.kind,
  units: { step: 'prompt', rate: 'prompts/s' },
  collective: () => FLOAT32_COLLECTIVE,
  growsWorld: false,
  resumable: false,
  stageNames: () => [],
};

const pruneJob: JobKindSpec<PruneJobSpec> = {
  schema: pruneJobSchema,
  parse: (raw, options) => {
    const parsed = pruneJobSchema.safeParse(raw);
    if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
    const s = parsed.data.spec;
    const issues = [
      ...pruneIssues(s.prune, 'spec.prune'),
      ...(s.eval ? evalBlockIssues(s.eval, 'spec.eval', false) : []),
      ...minIssues(s.workers),
    ];
    if (issues.length > 0) throw new JobSpecError(issues, options.source);
    const baseDir = options.baseDir ?? process.cwd();
    const abs = resolver(options);
    return {
      ...parsed.data,
      spec: {
        ...s,
        model: { path: abs(s.model.path) },
        prune: resolvePrunePaths(s.prune, baseDir),
        ...(s.eval ? { eval: { ...s.eval, sets: resolveProblemSets(s.eval.sets, baseDir) } } : {}),
        output: { dir: abs(s.output.dir) },
      },
    };
  },
  validateFiles: async (spec, source) => {
    const issues: SpecIssue[] = [];
    const p = spec.spec.prune;
    const config = await modelConfig(spec, issues);
    if (config) issues.push(...pruneModelIssues(p, config, 'spec.prune'));
    issues.push(...(await calibrationFileIssues(p.calibration, 'spec.prune.calibration')));
    if (p.contrast) issues.push(...(await calibrationFileIssues(p.contrast, 'spec.prune.contrast')));
    if (spec.spec.eval) issues.push(...(await problemSetFileIssues(spec.spec.eval.sets, 'spec.eval.sets')));
    if (issues.length > 0 || !config) throw new JobSpecError(issues, source);
    return { numLayers: config.numHiddenLayers, parameters: NO_PARAMETERS };
  },
  // A step is a decoder layer calibrated (and pruned when selected).
  totalSteps: async (spec) => (await readLlamaConfig(spec.spec.model.path)).numHiddenLayers,
  describe: (spec) => {
    const p = spec.spec.prune;
    const rule = pruneRule(p);
    const how = rule.kind === 'nm' ? `${rule.n}:${rule.m}` : `sparsity ${rule.sparsity}`;
    return `${spec.kind}: ${how} of ${p.modules.join(', ')}, ${p.calibration.samples} calibration samples`;
  },
  units: { step: 'layer', rate: 'layers/s' },
  collective: () => FLOAT32_COLLECTIVE,
  // Deterministic and independent of the world size: a re-formed world starts over and ends with the same model.
  growsWorld: false,
  resumable: false,
  stageNames: () => [],
};

/** The kinds of job, by `kind`. */
export const JOB_KIND_TABLE: { readonly [K in JobKind]: JobKindSpec<JobSpecOf<K>> } = {
  TrainJob: trainJob,
  EvalJob: evalJob,
  LayerAnalysis: layerAnalysis,
  PruneJob: pruneJob,
};

export function isJobKind(kind: unknown): kind is JobKind {
  return typeof kind === 'string' && Object.hasOwn(JOB_KIND_TABLE, kind);
}

/** The table's row for `spec`'s kind, typed for that spec. */
export function jobKindOf<S extends AnyJobSpec>(spec: S): JobKindSpec<S> {
  const kind: unknown = spec.kind;
  // A spec that did not come from `parseAnyJobSpec` (a stored record, a message) may name no kind.
  if (!isJobKind(kind))
    throw new JobSpecError([
      { path: 'kind', message: `must be one of ${JOB_KINDS.join(', ')}, got ${JSON.stringify(kind)}` },
    ]);
  return JOB_KIND_TABLE[kind] as unknown as JobKindSpec<S>;
}

/**
 * Parse and validate a job spec of any kind from YAML or JSON text; relative paths resolve against
 * `baseDir`. A spec without `kind` is read as a TrainJob (whose schema then asks for it). Throws
 * `JobSpecError` listing every problem with its field path.
 */
export function parseAnyJobSpec(text: string, options: ParseOptions = {}): AnyJobSpec {
  return jobSpecFromObject(readSpecText(text, options.source), options);
}

/**
 * `parseAnyJobSpec` of a value already read (a stored record's spec): the same checks, without
 * writing it out as text and reading it back.
 */
export function jobSpecFromObject(value: unknown, options: ParseOptions = {}): AnyJobSpec {
  const raw = specMapping(value, options.source);
  const kind = raw['kind'] ?? 'TrainJob';
  if (!isJobKind(kind))
    throw new JobSpecError([{ path: 'kind', message: `must be one of ${JOB_KINDS.join(', ')}` }], options.source);
  return JOB_KIND_TABLE[kind].parse(raw, options);
}

/** `validateJobSpecFiles` for any kind: the model directory, the data and problem files, layers against the depth. */
export function validateAnyJobSpecFiles(spec: AnyJobSpec, source?: string): Promise<ValidatedFiles> {
  return jobKindOf(spec).validateFiles(spec, source);
}

export type { StagedJobSpec, TrainJobSpec };
