/**
 * `coordinator plan SPEC.yaml [--model-config PATH] [--json]` and `coordinator submit SPEC.yaml
 * --dry-run`: the memory plan of a TrainJob (common/memory-plan.ts) per worker, from the model's
 * config.json and the spec, printed before anything starts. The coordinator refuses the same job
 * at submit when `spec.workers.gpuMemoryGiB` / `hostMemoryGiB` are stated and the plan exceeds them.
 *
 * `--model-config` reads config.json from another place than `spec.model.path` (a directory or the
 * file itself): a laptop without the weights can plan a cluster job. Without it, when the model
 * directory is not here, `models/<its name>/config.json` beside the spec is used if there is one
 * (the paper configs' models are in `configs/models/`), and the plan says so. Exit 0 when the plan
 * fits the stated devices (or none is stated), 1 when not.
 */
import { access, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ExitCode, UsageError } from '../common/cli.js';
import { UserError } from '../common/errors.js';
import type { AnyJobSpec } from '../common/job-kinds.js';
import type { JobSpec } from '../common/jobspec.js';
import { isStaged, stageJobSpec } from '../common/stages.js';
import { formatMemoryPlan, memoryFitIssues, planMemory } from '../common/memory-plan.js';
import { methodFrozenParameters } from '../common/methods/index.js';
import { parseLlamaConfig, readLlamaConfig, type LlamaConfig } from '../common/model-config.js';
import { readSpecFile } from './client.js';

export const PLAN_USAGE = 'coordinator plan SPEC.yaml [--model-config DIR|config.json] [--json]';

const out = (line: string): void => {
  process.stdout.write(line + '\n');
};

/** config.json from `path` (a directory or the file), else from the spec's model directory. */
async function modelConfig(spec: AnyJobSpec, path: string | undefined): Promise<LlamaConfig> {
  if (path === undefined) {
    try {
      return await readLlamaConfig(spec.spec.model.path);
    } catch (e) {
      const hint = 'plan from another copy with --model-config DIR';
      throw new UserError(`spec.model.path: ${(e as Error).message} (${hint})`, { cause: e });
    }
  }
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch (e) {
    throw new UserError(`--model-config ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
  }
  if (isDir) return readLlamaConfig(path);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UserError(`--model-config ${path}: not a JSON file (${(e as Error).message})`, { cause: e });
  }
  return parseLlamaConfig(raw, path);
}

/** `models/<name of spec.model.path>/config.json` beside the spec, when the model directory has no config.json here. */
async function configBesideSpec(spec: AnyJobSpec, specFile: string | undefined): Promise<string | undefined> {
  if (specFile === undefined) return undefined;
  const exists = (p: string): Promise<boolean> =>
    access(p).then(
      () => true,
      () => false,
    );
  if (await exists(join(spec.spec.model.path, 'config.json'))) return undefined;
  const copy = join(dirname(resolve(specFile)), 'models', basename(spec.spec.model.path), 'config.json');
  return (await exists(copy)) ? copy : undefined;
}

/** Prints the plan of a parsed spec; the exit code says whether it fits the devices it states. */
export async function printPlan(
  spec: AnyJobSpec,
  options: { modelConfig?: string; json?: boolean; specFile?: string } = {},
): Promise<number> {
  if (spec.kind !== 'TrainJob') {
    out(`${spec.kind}: nothing trains; a worker holds the float32 model (see the TrainJob plan for its size)`);
    return ExitCode.ok;
  }
  const beside = options.modelConfig === undefined ? await configBesideSpec(spec, options.specFile) : undefined;
  if (beside && !options.json) out(`model: ${beside} (${spec.spec.model.path} is not on this machine)`);
  const config = await modelConfig(spec, options.modelConfig ?? beside);
  // Each stage of a staged job has its own method and training: a plan each (the same model shapes).
  const jobs: Array<{ name?: string; job: JobSpec }> = isStaged(spec)
    ? spec.spec.stages.map((st, i) => ({ name: st.name, job: stageJobSpec(spec, i) }))
    : [{ job: spec }];
  const plans = await Promise.all(
    jobs.map(async ({ name, job }) => {
      const methodParameters = await methodFrozenParameters(job.spec.method);
      return {
        name,
        plan: planMemory(config, job, { methodParameters }),
        issues: memoryFitIssues(config, job, methodParameters),
      };
    }),
  );
  const issues = plans.flatMap((p) => p.issues);
  if (options.json)
    out(JSON.stringify(plans.length === 1 ? { plan: plans[0]!.plan, issues } : { stages: plans, issues }, null, 2));
  else {
    for (const p of plans) {
      if (p.name !== undefined) out(`stage ${p.name}:`);
      for (const line of formatMemoryPlan(p.plan, spec.spec.workers)) out(line);
      for (const i of p.issues) out(`${i.path}: ${i.message}`);
    }
  }
  return issues.length > 0 ? ExitCode.failure : ExitCode.ok;
}

/** `coordinator plan`. */
export async function planCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: { 'model-config': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean' } },
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nusage: ${PLAN_USAGE}`);
  }
  if (parsed.values.help) return (out(`usage: ${PLAN_USAGE}`), ExitCode.ok);
  const file = parsed.positionals[0];
  if (file === undefined || parsed.positionals.length > 1)
    throw new UsageError(`plan takes one SPEC.yaml\nusage: ${PLAN_USAGE}`);
  return printPlan(await readSpecFile(file), {
    modelConfig: parsed.values['model-config'],
    json: parsed.values.json,
    specFile: file,
  });
}
