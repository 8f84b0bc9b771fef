/**
 * What a rank is given to run a job of any kind (worker/job-kinds.ts), and what it hands back: a
 * leaf module of types, so that the kinds' runners (eval, layer analysis, training and its stages)
 * and the table that names them import it without importing each other.
 */
import type { Logger } from '../common/logging.js';
import type { EvalReport } from './eval/report.js';
import type { StateHolder, StepReport } from './train/trainer.js';

/** One call of the generation's collective: numbered by the caller, strictly increasing. */
export interface NumberedCollective {
  allReduce(call: number, data: Float32Array, options?: { exact?: boolean }): Promise<Float32Array>;
  begin(
    call: number,
    length: number,
    options?: { output?: Float32Array },
  ): { append(data: Float32Array): void; readonly result: Promise<Float32Array> };
}

/** Which stage of a job of several stages (common/stages.ts) a report belongs to. */
export interface StagePosition {
  /** 0-based. */
  readonly index: number;
  readonly count: number;
  readonly name: string;
}

/** A step as the job counts it: a stage's step s is the job's `offset + s`. */
export interface JobStepPosition {
  readonly step: number;
  readonly totalSteps: number;
  readonly stage?: StagePosition;
}

export interface KindContext {
  readonly rank: number;
  readonly worldSize: number;
  /** The next collective call of this generation (numbered from `calls`), always float32. */
  readonly reduce: (data: Float32Array) => Promise<Float32Array>;
  readonly signal: AbortSignal;
  readonly logger: Logger;
  /** Rank 0's progress: done of total (problems or prompts), and what the job record should show. */
  readonly progress: (done: number, total: number, extra?: { chosenLayers?: number[]; evalJson?: string }) => void;
  readonly onEvalReport?: (report: EvalReport) => void;
  /** The generation's collective, for a runner that numbers its own calls (the trainer). */
  readonly collective: NumberedCollective;
  /** The next free call number of this generation; whoever uses numbers moves it past them. */
  readonly calls: { next: number };
  /**
   * The storage roots this worker confines paths to (common/storage-roots.ts), for paths a job
   * reads that its spec does not name (a LinguaLIFT model's encoder, from its file). @default none
   */
  readonly storageRoots?: readonly string[];
  /** Go on from the newest state the ranks hold (a re-formed world, or `submit --resume`). */
  readonly resume: boolean;
  /** This rank's state of the job, kept across its generations (worker/run-worker.ts). */
  readonly holder: StateHolder;
  /** A trainer step, with its place in the job. */
  readonly onStep: (report: StepReport, position: JobStepPosition) => void;
  readonly onCheckpoint: (info: {
    readonly step: number;
    readonly seconds: number;
    readonly error?: string;
    readonly final?: true;
  }) => void;
}

export interface KindResult {
  /** Steps of the job: optimizer steps, problems or prompts. */
  readonly steps: number;
  readonly outputDir: string;
  readonly firstLoss?: number;
  readonly finalLoss?: number;
  readonly chosenLayers?: number[];
  readonly evalJson?: string;
}
