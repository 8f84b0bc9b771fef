/**
 * The kinds of job the coordinator runs, and parsing of any of them:
 *
 * | kind | does | spec |
 * |---|---|---|
 * | `TrainJob` | trains (common/jobspec.ts) | model, method, data, training, workers, ..., optional `eval` |
 * | `EvalJob` | scores a model on MGSM/MSVAMP by greedy generation (worker/eval/) | model, eval, workers, output |
 * | `LayerAnalysis` | finds the language-specific layers (worker/methods/layer-analysis.ts) | model, analysis, workers, output |
 *
 * `parseJobSpec` stays the TrainJob parser; `parseAnyJobSpec` dispatches on `kind`.
 */
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { JobSpecError, type SpecIssue } from './errors.js';
import {
  analysisIssues, analysisSchema, evalSchema, problemSetFileIssues, problemSetIssues, resolveProblemSets,
} from './eval-spec.js';
import {
  readSpecText, trainJobFromObject, validateJobSpecFiles, zodIssues, type JobSpec, type ParseOptions,
} from './jobspec.js';
import { readLlamaConfig } from './model-config.js';
import {
  apiVersionSchema, metadataSchema, pathString, templateIssues, workersIssues, workersSchema,
} from './spec-primitives.js';

export const JOB_KINDS = ['TrainJob', 'EvalJob', 'LayerAnalysis'] as const;
export type JobKind = (typeof JOB_KINDS)[number];

const nonEmpty = pathString;

const common = { apiVersion: apiVersionSchema, metadata: metadataSchema };
const model = z.strictObject({ path: nonEmpty });
/** `min`: the job goes on in a re-formed world of at least `min` (it starts over: evaluation and analysis are deterministic). */
const workers = workersSchema;
const output = z.strictObject({ dir: nonEmpty });

const evalJobSchema = z.strictObject({
  ...common,
  kind: z.literal('EvalJob'),
  spec: z.strictObject({ model, eval: evalSchema, workers, output }),
});
const layerAnalysisSchema = z.strictObject({
  ...common,
  kind: z.literal('LayerAnalysis'),
  spec: z.strictObject({ model, analysis: analysisSchema, workers, output }),
});

export type EvalJobSpec = z.infer<typeof evalJobSchema>;
export type LayerAnalysisJobSpec = z.infer<typeof layerAnalysisSchema>;
/** A TrainJob is `JobSpec` (common/jobspec.ts). */
export type AnyJobSpec = JobSpec | EvalJobSpec | LayerAnalysisJobSpec;

export function isTrainJob(spec: AnyJobSpec): spec is JobSpec {
  return spec.kind === 'TrainJob';
}

/** Checks of a `spec.eval` block (also used for a TrainJob's). */
export function evalBlockIssues(ev: z.infer<typeof evalSchema>, at: string, onTrainJob: boolean): SpecIssue[] {
  const issues = [...problemSetIssues(ev.sets, `${at}.sets`), ...templateIssues(ev.template, `${at}.template`)];
  if (!onTrainJob && ev.everySteps !== undefined) issues.push({ path: `${at}.everySteps`, message: 'is only allowed on a TrainJob' });
  return issues;
}

const minIssues = (w: { count: number; min?: number | undefined }): SpecIssue[] => workersIssues(w);

/**
 * Parse and validate a job spec of any kind from YAML or JSON text; relative paths resolve against
 * `baseDir`. Throws `JobSpecError` listing every problem with its field path.
 */
export function parseAnyJobSpec(text: string, options: ParseOptions = {}): AnyJobSpec {
  const raw = readSpecText(text, options.source);
  const kind = raw['kind'];
  if (kind === undefined || kind === 'TrainJob') return trainJobFromObject(raw, options);
  if (kind !== 'EvalJob' && kind !== 'LayerAnalysis') {
    throw new JobSpecError([{ path: 'kind', message: `must be one of ${JOB_KINDS.join(', ')}` }], options.source);
  }
  const baseDir = options.baseDir ?? process.cwd();
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));
  if (kind === 'EvalJob') {
    const parsed = evalJobSchema.safeParse(raw);
    if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
    const s = parsed.data.spec;
    const issues = [...evalBlockIssues(s.eval, 'spec.eval', false), ...minIssues(s.workers)];
    if (issues.length > 0) throw new JobSpecError(issues, options.source);
    return {
      ...parsed.data,
      spec: { ...s, model: { path: abs(s.model.path) }, eval: { ...s.eval, sets: resolveProblemSets(s.eval.sets, baseDir) }, output: { dir: abs(s.output.dir) } },
    };
  }
  const parsed = layerAnalysisSchema.safeParse(raw);
  if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
  const s = parsed.data.spec;
  const issues = [...analysisIssues(s.analysis, 'spec.analysis'), ...minIssues(s.workers)];
  if (issues.length > 0) throw new JobSpecError(issues, options.source);
  return {
    ...parsed.data,
    spec: {
      ...s, model: { path: abs(s.model.path) }, analysis: { ...s.analysis, probe: resolveProblemSets(s.analysis.probe, baseDir) }, output: { dir: abs(s.output.dir) },
    },
  };
}

/** `validateJobSpecFiles` for any kind: the model directory, the problem files, k against the depth. */
export async function validateAnyJobSpecFiles(spec: AnyJobSpec, source?: string): Promise<{ numLayers: number }> {
  if (isTrainJob(spec)) return validateJobSpecFiles(spec, source);
  const issues: SpecIssue[] = [];
  let numLayers = 0;
  try {
    numLayers = (await readLlamaConfig(spec.spec.model.path)).numHiddenLayers;
  } catch (e) {
    issues.push({ path: 'spec.model.path', message: (e as Error).message });
  }
  if (spec.kind === 'EvalJob') {
    issues.push(...(await problemSetFileIssues(spec.spec.eval.sets, 'spec.eval.sets')));
  } else {
    issues.push(...(await problemSetFileIssues(spec.spec.analysis.probe, 'spec.analysis.probe')));
    if (numLayers > 0 && spec.spec.analysis.k > numLayers) {
      issues.push({ path: 'spec.analysis.k', message: `must be <= the model's depth (${numLayers} layers)` });
    }
  }
  if (issues.length > 0) throw new JobSpecError(issues, source);
  return { numLayers };
}
