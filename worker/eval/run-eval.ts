/**
 * Evaluation as a job (`kind: EvalJob`) and as a TrainJob's hook (`spec.eval`): both read the
 * problems once and call `evaluate` on every rank together (it uses the collective).
 */
import type { EvalSpec } from '../../common/eval-spec.js';
import type { EvalJobSpec } from '../../common/job-kinds.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { UserError } from '../../common/errors.js';
import { ccTransformHooks, loadCcTransform } from '../methods/cctuning.js';
import { transformWithPrefixMessage } from '../../common/methods/cctuning.js';
import { LINGUALIFT_MODULES_FILE } from '../../common/methods/index.js';
import { join } from 'node:path';
import { isFile } from '../../common/fs-checks.js';
import type { PromptPrefixer } from '../model/generate.js';
import type { ForwardHooks, PromptHooks } from '../model/hooks.js';
import { loadLingualift } from '../methods/lingualift.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { evalName, evaluate, type ReduceFn } from './evaluate.js';
import type { EvalReport } from './report.js';
import { readProblems, type Problem } from './problems.js';

export interface EvalJobOptions {
  readonly spec: EvalJobSpec;
  readonly rank: number;
  readonly worldSize: number;
  readonly reduce: ReduceFn;
  /** Roots the paths read must lie under (a LinguaLIFT model's encoder named by its file). @default none */
  readonly storageRoots?: readonly string[];
  /** Problems scored across the job so far (rank 0's share scaled to the whole) and the total. */
  readonly onProgress?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
}

/** Runs an EvalJob's rank: `output.dir/eval/final.{json,md}` and this rank's predictions. */
export async function runEvalJob(options: EvalJobOptions): Promise<EvalReport> {
  const s = options.spec.spec;
  const problems = await readProblems(s.eval.sets);
  const model = await LlamaModel.load(s.model.path);
  let lingualift: Awaited<ReturnType<typeof loadLingualift>>;
  try {
    const tokenizer = await ModelTokenizer.load(s.model.path, model.config);
    const llFile = join(s.model.path, LINGUALIFT_MODULES_FILE);
    if (s.eval.ccTransform && (await isFile(llFile))) throw new UserError(transformWithPrefixMessage(llFile));
    const cc = s.eval.ccTransform ? await loadCcTransform(s.model.path, model.config) : undefined;
    // A LinguaLIFT model's final/ carries its alignment layer: the encoder's prefix goes before each prompt.
    lingualift = await loadLingualift(s.model.path, model.config, tokenizer, {
      ...(s.model.encoder !== undefined ? { encoder: s.model.encoder } : {}),
      ...(options.storageRoots ? { storageRoots: options.storageRoots } : {}),
    });
    return await evaluate({
      model,
      tokenizer,
      ...(cc ? { hooksFor: (prompts, lastColumn) => ccTransformHooks(model, cc, prompts, lastColumn).hooks } : {}),
      ...(lingualift ? { prefixer: lingualift.prefixer } : {}),
      spec: s.eval,
      problems,
      rank: options.rank,
      worldSize: options.worldSize,
      reduce: options.reduce,
      outputDir: s.output.dir,
      name: evalName(0, true),
      step: 0,
      ...(options.onProgress
        ? {
            onProgress: (done: number, share: number) =>
              options.onProgress!(Math.round((problems.length * done) / Math.max(1, share)), problems.length),
          }
        : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      logger: options.logger ?? silentLogger,
    });
  } finally {
    lingualift?.dispose();
    model.dispose();
  }
}

/** What the trainer hands its evaluation hook after each optimizer step (every rank calls it). */
export interface EvalHookContext {
  /** Optimizer steps completed. */
  readonly step: number;
  readonly totalSteps: number;
  readonly model: LlamaModel;
  readonly tokenizer: ModelTokenizer;
  /** The trained method's forward hooks (its modules in use), for generation. */
  readonly hooks?: ForwardHooks;
  /** The method's inference-time transform from the live model, for `eval.ccTransform`. */
  readonly transformHooks?: () => PromptHooks;
  /** The trained method's prefix of each prompt (its modules in use), for generation. */
  readonly prefixer?: PromptPrefixer;
  readonly reduce: ReduceFn;
}

export type EvalHook = (ctx: EvalHookContext) => Promise<void>;

export interface EvalHookOptions {
  readonly spec: EvalSpec;
  readonly outputDir: string;
  readonly rank: number;
  readonly worldSize: number;
  readonly onReport?: (report: EvalReport) => void;
  readonly signal?: AbortSignal;
  readonly logger?: Logger;
}

/** A TrainJob's `spec.eval`: evaluates every `everySteps` steps and after the last step. */
export function createEvalHook(options: EvalHookOptions): EvalHook {
  let problems: Problem[] | undefined;
  const every = options.spec.everySteps ?? 0;
  return async (ctx) => {
    const final = ctx.step === ctx.totalSteps;
    if (!final && !(every > 0 && ctx.step % every === 0)) return;
    problems ??= await readProblems(options.spec.sets);
    if (options.spec.ccTransform && !ctx.transformHooks)
      throw new UserError('spec.eval.ccTransform: the method has no inference-time transform (needs method cctuning)');
    const report = await evaluate({
      model: ctx.model,
      tokenizer: ctx.tokenizer,
      ...(ctx.hooks ? { hooks: ctx.hooks } : {}),
      ...(options.spec.ccTransform ? { hooksFor: ctx.transformHooks!() } : {}),
      ...(ctx.prefixer ? { prefixer: ctx.prefixer } : {}),
      spec: options.spec,
      problems,
      rank: options.rank,
      worldSize: options.worldSize,
      reduce: ctx.reduce,
      outputDir: options.outputDir,
      name: evalName(ctx.step, final),
      step: ctx.step,
      ...(options.signal ? { signal: options.signal } : {}),
      logger: options.logger ?? silentLogger,
    });
    options.onReport?.(report);
  };
}
