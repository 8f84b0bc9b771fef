/**
 * Errors shared by coordinator and worker. One class a failure; `retryable` is a field, never a
 * guess from the message. `UserError`s are a user's mistake: CLIs print their message without a
 * stack trace and exit non-zero.
 */
export class PolytuneError extends Error {
  readonly retryable: boolean;
  constructor(message: string, options: { cause?: unknown; retryable?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PolytuneError';
    this.retryable = options.retryable ?? false;
  }
}

/** A mistake in what a user gave us (spec, file, flag). The message names the field or file. */
export class UserError extends PolytuneError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, options);
    this.name = 'UserError';
  }
}

export interface SpecIssue {
  /** The field path, e.g. `spec.training.optimizer.lr` or `spec.data.train[1].path`. */
  readonly path: string;
  readonly message: string;
}

/** A job spec that failed validation; each issue names its field path. */
export class JobSpecError extends UserError {
  readonly issues: readonly SpecIssue[];
  constructor(issues: readonly SpecIssue[], source?: string) {
    const head = source ? `${source}: invalid job spec` : 'invalid job spec';
    super(`${head}\n` + issues.map((i) => `  ${i.path}: ${i.message}`).join('\n'));
    this.name = 'JobSpecError';
    this.issues = issues;
  }
}

/** A model directory that cannot be loaded; names the file and, where known, the tensor. */
export class ModelLoadError extends UserError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, message: string, options: { tensor?: string; cause?: unknown } = {}) {
    super(`${file}${options.tensor ? ` (tensor ${options.tensor})` : ''}: ${message}`, options);
    this.name = 'ModelLoadError';
    this.file = file;
    this.tensor = options.tensor;
  }
}

/** A data file that cannot be read; names the file and line. */
export class DataFormatError extends UserError {
  readonly file: string;
  readonly line: number | undefined;
  constructor(file: string, message: string, line?: number) {
    super(`${file}${line !== undefined ? `:${line}` : ''}: ${message}`);
    this.name = 'DataFormatError';
    this.file = file;
    this.line = line;
  }
}

/** A collective operation that did not complete: missing ranks, timeout, stale generation, bad chunk. */
export class CollectiveError extends PolytuneError {
  readonly step: number;
  readonly missingRanks: readonly number[];
  constructor(message: string, options: { step: number; missingRanks?: readonly number[]; cause?: unknown }) {
    super(message, { cause: options.cause, retryable: true });
    this.name = 'CollectiveError';
    this.step = options.step;
    this.missingRanks = options.missingRanks ?? [];
  }
}

/**
 * Two different chunks at one position of a step, both with a valid MAC: only a holder of the
 * generation's key (a rank) can make one, so a rank is broken or hostile. The step fails; the
 * generation may be re-formed (with a new key), and the re-form limit bounds how often.
 */
export class ChunkConflictError extends CollectiveError {
  readonly sender: number;
  constructor(message: string, options: { step: number; sender: number }) {
    super(message, { step: options.step, missingRanks: [options.sender] });
    this.name = 'ChunkConflictError';
    this.sender = options.sender;
  }
}

/**
 * The all-reduced head of a step (loss sums, token counts) holds what no set of ranks can have
 * sent: a negative or fractional count, more tokens than the global batch holds. The step fails
 * before anything uses it; retryable, as any collective failure.
 */
export class ReducedHeadError extends CollectiveError {
  /** Which entry, e.g. `head[1] (supervised tokens)`. */
  readonly field: string;
  constructor(field: string, message: string, options: { step: number }) {
    super(`step ${options.step}: all-reduced ${field}: ${message}`, { step: options.step });
    this.name = 'ReducedHeadError';
    this.field = field;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** `--backend tensorflow` on a node where TensorFlow found no GPU (worker/backend-tensorflow.ts). */
export class GpuNotFoundError extends UserError {
  /** The package that loaded, with its version. */
  readonly package: string;
  /** CUDA_VISIBLE_DEVICES and the NVIDIA driver, as found. */
  readonly environment: string;
  constructor(message: string, fields: { package: string; environment: string }) {
    super(message);
    this.name = 'GpuNotFoundError';
    this.package = fields.package;
    this.environment = fields.environment;
  }
}

/**
 * What is wrong with text that `JSON.parse` refused, without V8's quote of the text (it shows the
 * first characters of the file: an error must name a file and the problem, never its contents).
 */
export function jsonSyntaxProblem(e: unknown): string {
  const msg = errorMessage(e);
  const at = /at position (\d+)/.exec(msg);
  if (at) return `not valid JSON (at character ${Number(at[1]) + 1})`;
  if (/end of JSON input/i.test(msg)) return 'not valid JSON (it ends too early)';
  return 'not valid JSON';
}
