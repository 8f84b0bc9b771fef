/**
 * TrainJobs of several stages (`spec.stages`), as the two-stage systems SLAM compares against
 * (question translation first, then the answers): each stage gives its own `method`, `data` and
 * `training`, the same blocks and schemas as a single-stage TrainJob's; `model`, `workers`,
 * `collective`, `checkpoint`, `output` and `eval` are the job's.
 *
 * A stage runs as the single-stage TrainJob `stageJobSpec` derives from the job, so everything
 * that trains, checks, plans or resumes a TrainJob works on a stage unchanged:
 *
 *   stage k's model.path  = the job's model (k = 0), else output.dir/<stage k-1>/final
 *   stage k's output.dir  = output.dir/<stage k>   (its final/, checkpoints/, analysis/, eval/)
 *
 * The job's steps are the stages' steps end to end: stage k's step s is the job's step
 * `stageOffsets[k] + s`, which is what progress and the ledger count, so committing every job step
 * once is committing every step of every stage once. `output.dir/final/` is the last stage's final
 * model (the same files, hard-linked; worker/train/stages.ts).
 */
import { join } from 'node:path';
import { z } from 'zod';
import { JobSpecError, type SpecIssue } from './errors.js';
import {
  crossFieldIssues,
  dataSchema,
  methodSchema,
  resolvePaths,
  specSchema,
  trainingSchema,
  validateJobSpecFiles,
  zodIssues,
  type JobSpec,
  type ParseOptions,
} from './jobspec.js';
import type { LlamaConfig } from './model-config.js';
import { methodStageIssues } from './methods/index.js';
import { DNS_LABEL, DNS_LABEL_MESSAGE, resolveSpecPath } from './spec-primitives.js';

/** What a stage cannot be called: the names of what a stage and the job write under output.dir. */
export const RESERVED_STAGE_NAMES = ['final', 'checkpoints', 'analysis', 'eval'] as const;
/** The blocks each stage gives instead of the job. */
export const STAGE_BLOCKS = ['method', 'data', 'training'] as const;

/** Stages a job may have. */
export const MAX_STAGES = 64;

export const stageSchema = z.strictObject({
  name: z.string().regex(DNS_LABEL, DNS_LABEL_MESSAGE),
  method: methodSchema,
  data: dataSchema,
  training: trainingSchema,
});

export const stagedSpecSchema = specSchema.extend({
  spec: specSchema.shape.spec.omit({ method: true, data: true, training: true }).extend({
    stages: z
      .array(stageSchema)
      .min(1, 'must list at least one stage')
      .max(MAX_STAGES, `must list at most ${MAX_STAGES} stages`),
  }),
});

/** A TrainJob with `spec.stages`. */
export type StagedJobSpec = z.infer<typeof stagedSpecSchema>;
export type StageSpec = StagedJobSpec['spec']['stages'][number];
/** Any TrainJob: one stage (`JobSpec`, what the trainer runs) or several. */
export type TrainJobSpec = JobSpec | StagedJobSpec;

export function isStaged(spec: TrainJobSpec): spec is StagedJobSpec {
  return 'stages' in spec.spec;
}

/** Stage `index` as the single-stage TrainJob that runs it (see the module header). */
export function stageJobSpec(spec: StagedJobSpec, index: number): JobSpec {
  const { stages, ...job } = spec.spec;
  const stage = stages[index];
  if (!stage) throw new RangeError(`stage ${index}: the job has ${stages.length} stages`);
  const previous = stages[index - 1];
  return {
    apiVersion: spec.apiVersion,
    kind: spec.kind,
    metadata: spec.metadata,
    spec: {
      ...job,
      model: { path: previous ? join(job.output.dir, previous.name, 'final') : job.model.path },
      method: stage.method,
      data: stage.data,
      training: stage.training,
      output: { dir: join(job.output.dir, stage.name) },
    },
  };
}

/** Where stage `name`'s final model is written. */
export function stageFinalDir(spec: StagedJobSpec, name: string): string {
  return join(spec.spec.output.dir, name, 'final');
}

/** `spec.method.layers[0]` of stage `i` as `spec.stages[i].method.layers[0]`; job-level paths unchanged. */
function stagePath(path: string, i: number): string {
  for (const block of STAGE_BLOCKS) {
    if (path === `spec.${block}` || path.startsWith(`spec.${block}.`) || path.startsWith(`spec.${block}[`)) {
      return `spec.stages[${i}].${path.slice('spec.'.length)}`;
    }
  }
  return path;
}

function dedupe(issues: readonly SpecIssue[]): SpecIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = `${i.path}\n${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * Parses a TrainJob mapping that has `spec.stages`; relative paths resolve against `baseDir`.
 * Throws `JobSpecError` naming each problem's path (`spec.stages[1].method.layers: ...`).
 */
export function stagedJobFromObject(raw: Record<string, unknown>, options: ParseOptions = {}): StagedJobSpec {
  const rawSpec = raw['spec'];
  const top: SpecIssue[] = [];
  if (rawSpec !== null && typeof rawSpec === 'object') {
    for (const block of STAGE_BLOCKS) {
      if (block in rawSpec) {
        top.push({
          path: `spec.${block}`,
          message: `is not allowed with spec.stages: each stage gives its own ${STAGE_BLOCKS.join(', ')}`,
        });
      }
    }
  }
  if (top.length > 0) throw new JobSpecError(top, options.source);
  const parsed = stagedSpecSchema.safeParse(raw);
  if (!parsed.success) throw new JobSpecError(zodIssues(parsed.error), options.source);
  const spec = parsed.data;
  const issues: SpecIssue[] = [];
  const names = new Map<string, number>();
  spec.spec.stages.forEach((stage, i) => {
    if ((RESERVED_STAGE_NAMES as readonly string[]).includes(stage.name)) {
      issues.push({
        path: `spec.stages[${i}].name`,
        message: `"${stage.name}" is reserved (${RESERVED_STAGE_NAMES.join(', ')} are written under output.dir)`,
      });
    }
    const first = names.get(stage.name);
    if (first !== undefined)
      issues.push({
        path: `spec.stages[${i}].name`,
        message: `"${stage.name}" is already the name of spec.stages[${first}]`,
      });
    else names.set(stage.name, i);
    issues.push(...crossFieldIssues(stageJobSpec(spec, i)).map((x) => ({ ...x, path: stagePath(x.path, i) })));
  });
  if (issues.length > 0) throw new JobSpecError(dedupe(issues), options.source);
  const baseDir = options.baseDir ?? process.cwd();
  // Each stage's paths resolved as a single-stage job's are; the job's blocks are the same in each.
  const resolved = spec.spec.stages.map((_, i) => resolvePaths(stageJobSpec(spec, i), baseDir));
  // What a stage takes from the ones before it (resolved, so paths compare as the workers see them).
  const methods = resolved.map((s) => s.spec.method);
  const handed = methods.flatMap((m, i) => methodStageIssues(m, methods.slice(0, i), `spec.stages[${i}].method`));
  if (handed.length > 0) throw new JobSpecError(handed, options.source);
  // Stage 0's model and eval are the job's; its output.dir is the job's with the stage's name.
  const job = resolved[0]!.spec;
  const outputDir = spec.spec.output.dir;
  return {
    ...spec,
    spec: {
      ...spec.spec,
      model: job.model,
      output: { dir: resolveSpecPath(outputDir, baseDir) },
      ...(job.eval ? { eval: job.eval } : {}),
      stages: spec.spec.stages.map((stage, i) => ({
        ...stage,
        method: resolved[i]!.spec.method,
        data: resolved[i]!.spec.data,
      })),
    },
  };
}

/**
 * `validateJobSpecFiles` of every stage, each on the job's model (a later stage's model is the
 * earlier one's output, of the same architecture, which does not exist yet): the model directory,
 * each stage's layers against its depth, each stage's data files. Errors name the stage's path.
 */
export async function validateStagedJobFiles(
  spec: StagedJobSpec,
  source?: string,
): Promise<{ numLayers: number; config: LlamaConfig; stages: JobSpec[] }> {
  const issues: SpecIssue[] = [];
  let found: { numLayers: number; config: LlamaConfig } | undefined;
  const stages = spec.spec.stages.map((_, i) => {
    const s = stageJobSpec(spec, i);
    return { ...s, spec: { ...s.spec, model: spec.spec.model } };
  });
  for (const [i, s] of stages.entries()) {
    try {
      found = await validateJobSpecFiles(s, source);
    } catch (e) {
      if (!(e instanceof JobSpecError)) throw e;
      issues.push(...e.issues.map((x) => ({ ...x, path: stagePath(x.path, i) })));
    }
  }
  if (issues.length > 0 || !found) throw new JobSpecError(dedupe(issues), source);
  return { ...found, stages };
}

/** The job step each stage starts at, and the job's total: the stages' steps end to end. */
export function stageOffsets(stageSteps: readonly number[]): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const n of stageSteps) {
    offsets.push(total);
    total += n;
  }
  return { offsets, total };
}
