/**
 * The one place that pairs each method name with its contract (contract.ts) and builds the spec's
 * `method` block from them: a zod union discriminated on `name`. Adding a method is one entry here
 * (and its file beside this one), one `TrainingMethod` in worker/methods/, and its tests.
 *
 * Everything else dispatches through `methodContract(name)`: no chain of `name ===` outside this
 * table and the worker's registry.
 */
import { z } from 'zod';
import type { SpecIssue } from '../errors.js';
import { resolveProblemSets } from '../eval-spec.js';
import { expectedTensorShapes, type LlamaConfig } from '../model-config.js';
import type { MethodContract } from './contract.js';
import { freezeContract, freezeSchema } from './freeze.js';
import { fullContract, fullSchema } from './full.js';
import { cctuningContract, cctuningSchema } from './cctuning.js';
import { lingualiftContract, lingualiftSchema } from './lingualift.js';
import { pruneContract, pruneSchema } from './prune.js';
import { slamContract, slamSchema } from './slam.js';

export const METHOD_NAMES = ['slam', 'freeze', 'full', 'lingualift', 'cctuning', 'prune'] as const;
export type MethodName = (typeof METHOD_NAMES)[number];

/** The spec's `method` block (and a stage's, `spec.stages[].method`). */
export const methodSchema = z.discriminatedUnion(
  'name',
  [slamSchema, freezeSchema, fullSchema, lingualiftSchema, cctuningSchema, pruneSchema],
  { message: `must be one of ${METHOD_NAMES.join(', ')}` },
);
export type MethodSpec = z.infer<typeof methodSchema>;
/** The block of the method called `N`. */
export type MethodSpecOf<N extends MethodName> = Extract<MethodSpec, { name: N }>;

const METHOD_TABLE: { readonly [N in MethodName]: MethodContract<MethodSpecOf<N>> } = {
  slam: slamContract,
  freeze: freezeContract,
  full: fullContract,
  lingualift: lingualiftContract,
  cctuning: cctuningContract,
  prune: pruneContract,
};

/** Methods a TrainJob can name; the others (prune: a job kind) are refused at submit with a clear message. */
export const SUPPORTED_METHODS: readonly MethodName[] = METHOD_NAMES.filter(
  (n) => METHOD_TABLE[n].refusal === undefined,
);

/** The contract of `method`'s name, typed for that block. */
export function methodContract<M extends MethodSpec>(method: M): MethodContract<M> {
  return METHOD_TABLE[method.name] as unknown as MethodContract<M>;
}

/**
 * Rules the schema alone cannot state, for a block at `path` (`spec.method`, `spec.stages[1].method`):
 * a name that is not a training method (prune) is refused at `path.name`, else the method's own rules.
 */
export function methodIssues(method: MethodSpec, path: string): SpecIssue[] {
  const c = methodContract(method);
  if (c.refusal !== undefined) return [{ path: `${path}.name`, message: c.refusal }];
  return c.issues(method, path);
}

/** Checks of a block against the model's depth (`numLayers` from config.json). */
export function methodModelIssues(method: MethodSpec, numLayers: number, path: string): SpecIssue[] {
  return methodContract(method).modelIssues(method, numLayers, path);
}

/** The trainable tensor names among `allNames` (the model's tensors), in the model's order. */
export function trainableTensorNames(method: MethodSpec, numLayers: number, allNames: readonly string[]): string[] {
  return methodContract(method).trainableTensorNames(method, numLayers, allNames);
}

/**
 * The block as it counts before the worker resolves what is left open (`layers: auto` counts the
 * analysis's `k` layers): `MethodContract.forCounting`, or the block as it is.
 */
export function methodForCounting(method: MethodSpec, numLayers: number): MethodSpec {
  const c = methodContract(method);
  return c.forCounting ? c.forCounting(method, numLayers) : method;
}

/**
 * Parameters of the model and of what the method trains, from config.json's shapes (before the
 * worker resolves what is left open, such as `layers: auto`: see `methodForCounting`).
 */
export function parameterCounts(method: MethodSpec, config: LlamaConfig): { trainable: number; total: number } {
  const shapes = expectedTensorShapes(config);
  const numel = (name: string): number => shapes.get(name)!.reduce((a, b) => a * b, 1);
  const names = [...shapes.keys()];
  const c = methodContract(method);
  const counted = methodForCounting(method, config.numHiddenLayers);
  return {
    trainable: c.trainableTensorNames(counted, config.numHiddenLayers, names).reduce((n, name) => n + numel(name), 0),
    total: names.reduce((n, name) => n + numel(name), 0),
  };
}

/** "541.1M of 6.74B parameters (8.0%)". */
export function describeTrainable(counts: { trainable: number; total: number }): string {
  const human = (n: number): string =>
    n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(1)}K`;
  return (
    `${human(counts.trainable)} of ${human(counts.total)} parameters ` +
    `(${((100 * counts.trainable) / counts.total).toFixed(1)}%)`
  );
}

/** Frozen parameters a block holds besides the model (its contract's `frozenParameters`; 0 when unreadable). */
export async function methodFrozenParameters(method: MethodSpec): Promise<number> {
  const c = methodContract(method);
  return c.frozenParameters ? c.frozenParameters(method).catch(() => 0) : 0;
}

/** Checks of a stage's block against the stages before it (its contract's `stageIssues`). */
export function methodStageIssues(method: MethodSpec, earlier: readonly MethodSpec[], path: string): SpecIssue[] {
  const c = methodContract(method);
  return c.stageIssues ? c.stageIssues(method, earlier, path) : [];
}

/** Checks of the files a block names (its contract's `fileIssues`). */
export async function methodFileIssues(method: MethodSpec, config: LlamaConfig, path: string): Promise<SpecIssue[]> {
  const c = methodContract(method);
  return c.fileIssues ? c.fileIssues(method, config, path) : [];
}

/**
 * The block with its relative paths (the layer analysis's probe sets, the method's own: its
 * contract's `resolvePaths`) resolved against `baseDir`.
 */
export function resolveMethodPaths(method: MethodSpec, baseDir: string): MethodSpec {
  const own = methodContract(method).resolvePaths;
  if (own) method = own(method, baseDir);
  if (!('analysis' in method) || !method.analysis) return method;
  return {
    ...method,
    analysis: { ...method.analysis, probe: resolveProblemSets(method.analysis.probe, baseDir) },
  } as MethodSpec;
}
