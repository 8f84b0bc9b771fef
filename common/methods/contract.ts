/**
 * What a method is to the code that does not run it (the spec parser, the coordinator): its spec
 * block and the pure functions over it. One `MethodContract` a method, in its own file; the table
 * in method-table.ts pairs each name with its contract, as tfjs's `kernel_names.ts` pairs a kernel
 * with its inputs and attributes. The worker's side (which tensors train, hooks, loss) is
 * `TrainingMethod` in worker/methods/.
 */
import type { z } from 'zod';
import type { SpecIssue } from '../errors.js';
import type { LlamaConfig } from '../model-config.js';

export interface MethodContract<S extends { readonly name: string }> {
  readonly name: S['name'];
  /** The method's block of the spec (`spec.method`): a strict object with `name` as a literal. */
  readonly schema: z.ZodType<S>;
  /** Set: the name is refused at submit with this message at `<path>.name` (a name that belongs elsewhere). */
  readonly refusal?: string;
  /** Rules across this method's fields that its schema alone cannot state; paths start at `path`. */
  issues(method: S, path: string): SpecIssue[];
  /** Checks against the model (its depth, from config.json); paths start at `path`. */
  modelIssues(method: S, numLayers: number, path: string): SpecIssue[];
  /** HF names of the tensors that train, among `allNames` (the model's), in the model's order. */
  trainableTensorNames(method: S, numLayers: number, allNames: readonly string[]): string[];
  /**
   * The block as it will train, for counting parameters before the worker has decided what is
   * left open (`layers: auto` counts the analysis's `k` layers). @default the block as it is
   */
  forCounting?(method: S, numLayers: number): S;
  /** The block with its relative paths resolved against `baseDir`. @default none to resolve */
  resolvePaths?(method: S, baseDir: string): S;
  /**
   * Checks of the files the block names (an encoder), for the coordinator before it accepts a
   * job; paths start at `path`. @default none
   */
  fileIssues?(method: S, config: LlamaConfig, path: string): Promise<SpecIssue[]>;
  /**
   * In a job of stages, checks of the block against the blocks of the stages before it, in order
   * (what an earlier stage hands on: LinguaLIFT's alignment layer); paths start at `path`. @default none
   */
  stageIssues?(method: S, earlier: readonly { readonly name: string }[], path: string): SpecIssue[];
  /** Frozen parameters the method holds besides the model (an encoder), for the memory plan. @default 0 */
  frozenParameters?(method: S): Promise<number>;
}
