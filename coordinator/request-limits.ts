/**
 * Bounds on everything the coordinator receives over gRPC, and the checks that enforce them.
 * Nothing from the network reaches the scheduler or the store before it passed these.
 *
 * - Whole messages: `grpc.max_receive_message_length` (`DEFAULT_MAX_RECEIVE_MESSAGE_BYTES`) on the
 *   server; a bigger message fails with RESOURCE_EXHAUSTED before it is decoded.
 * - JobService fields: `spec_yaml` at most `MAX_SPEC_BYTES`, names and reasons bounded, job ids
 *   of the shape the coordinator makes (a DNS-1123 label, which is also a safe KV key and subject
 *   token: no `.`, `*`, `>`).
 * - WorkerService messages: `checkWorkerMessage` (types, lengths, ranges); membership (the worker
 *   is in that job's gang, at that generation) is checked by the server against the registry.
 */
import { isJobName } from '../common/subjects.js';
import { DNS_LABEL, SPEC_LIMITS } from '../common/spec-primitives.js';
import { MAX_STAGES } from '../common/stages.js';
import type { Hello__Output, Progress__Output, Result__Output } from '../proto/index.js';
import { RequestValidationError } from './errors.js';

/** @default 512 KiB: the largest message the server decodes. */
export const DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 512 * 1024;
/** @default 16 MiB: the largest message a client decodes (List can carry many specs). */
export const DEFAULT_CLIENT_MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024;
/** A job spec (YAML or JSON text) is at most this many bytes. */
export const MAX_SPEC_BYTES = 256 * 1024;
export const MAX_SOURCE_NAME_LENGTH = 1024;
export const MAX_REASON_LENGTH = 1024;
export const MAX_WORKER_ID_LENGTH = 253;
export const MAX_HOSTNAME_LENGTH = 255;
export const MAX_BACKEND_LENGTH = 32;
export const MAX_OUTPUT_DIR_LENGTH = 4096;
/** A worker's error text is cut to this many characters (kept, not refused: it explains a failure). */
export const MAX_RESULT_ERROR_LENGTH = 4096;
/** Worker ids: letters, digits, `.`, `_`, `:`, `-`, starting with a letter or digit (pod names, host-pid). */
const WORKER_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;
const BACKEND = /^[a-z0-9_-]+$/;

const isControl = (ch: string): boolean => {
  const c = ch.codePointAt(0) ?? 0;
  return c < 0x20 || c === 0x7f;
};
const hasControlCharacters = (s: string): boolean => [...s].some(isControl);

function checkString(field: string, v: unknown, max: number): string {
  if (typeof v !== 'string') throw new RequestValidationError(field, `must be a string, got ${typeof v}`);
  if (v.length > max) throw new RequestValidationError(field, `at most ${max} characters, got ${v.length}`);
  return v;
}

/** A job id as the coordinator makes them; also what `Get`, `Cancel`, `Watch` accept. */
export function checkJobId(v: unknown, field = 'job_id'): string {
  const id = checkString(field, v, 63);
  if (id === '') throw new RequestValidationError(field, 'is required');
  if (!isJobName(id))
    throw new RequestValidationError(field, `"${id}" is not a job id (lower-case letters, digits and "-", at most 63)`);
  return id;
}

export function checkSubmit(req: { specYaml?: unknown; sourceName?: unknown }): {
  specYaml: string;
  sourceName: string;
} {
  const specYaml = checkString('spec_yaml', req.specYaml, Number.MAX_SAFE_INTEGER);
  const bytes = Buffer.byteLength(specYaml, 'utf8');
  if (bytes > MAX_SPEC_BYTES)
    throw new RequestValidationError('spec_yaml', `at most ${MAX_SPEC_BYTES} bytes, got ${bytes}`);
  if (specYaml.trim() === '') throw new RequestValidationError('spec_yaml', 'is empty');
  if (specYaml.includes('\u0000')) throw new RequestValidationError('spec_yaml', 'contains a NUL character');
  const sourceName = checkString('source_name', req.sourceName ?? '', MAX_SOURCE_NAME_LENGTH);
  if (hasControlCharacters(sourceName)) throw new RequestValidationError('source_name', 'contains control characters');
  return { specYaml, sourceName };
}

export function checkReason(v: unknown): string {
  const r = checkString('reason', v ?? '', MAX_REASON_LENGTH);
  return [...r].map((ch) => (isControl(ch) && ch !== '\n' && ch !== '\t' ? ' ' : ch)).join('');
}

function checkCount(field: string, v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v))
    throw new RequestValidationError(field, `must be an integer, got ${String(v)}`);
  if (v < min || v > max) throw new RequestValidationError(field, `must be in ${min}..${max}, got ${v}`);
  return v;
}

function checkFiniteNonNegative(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
    throw new RequestValidationError(field, `must be a finite number >= 0, got ${String(v)}`);
  return v;
}

/** A loss may be NaN or ±Inf (a divergence, reported as such); it must be a number. */
function checkLoss(field: string, v: unknown): number {
  if (typeof v !== 'number') throw new RequestValidationError(field, `must be a number, got ${typeof v}`);
  return v;
}

export type CheckedWorkerMessage =
  | { type: 'hello'; hello: Hello__Output }
  | { type: 'heartbeat' }
  | { type: 'progress'; progress: Progress__Output }
  | { type: 'result'; result: Result__Output };

const KINDS = ['hello', 'heartbeat', 'progress', 'result'] as const;

/** Which kind a raw message claims to be ('' when none), for error reports. */
export function workerMessageKind(msg: unknown): string {
  const k = (msg as { msg?: unknown } | null)?.msg;
  return typeof k === 'string' && (KINDS as readonly string[]).includes(k) ? k : '';
}

export function checkHello(h: Hello__Output | null | undefined): Hello__Output {
  if (!h || typeof h !== 'object') throw new RequestValidationError('hello', 'is missing');
  const workerId = checkString('hello.worker_id', h.workerId, MAX_WORKER_ID_LENGTH);
  if (workerId === '') throw new RequestValidationError('hello.worker_id', 'is required');
  if (!WORKER_ID.test(workerId))
    throw new RequestValidationError(
      'hello.worker_id',
      `"${workerId.slice(0, 64)}" may hold only letters, digits, ".", "_", ":", "-"`,
    );
  checkString('hello.hostname', h.hostname, MAX_HOSTNAME_LENGTH);
  for (const [field, b] of [
    ['hello.backend', h.backend],
    ['hello.capabilities.backend', h.capabilities?.backend ?? ''],
  ] as const) {
    const backend = checkString(field, b, MAX_BACKEND_LENGTH);
    if (backend !== '' && !BACKEND.test(backend))
      throw new RequestValidationError(field, `"${backend}" is not a backend name`);
  }
  checkCount('hello.pid', h.pid, 0, 0xffffffff);
  if (h.capabilities) {
    checkCount('hello.capabilities.cores', h.capabilities.cores, 0, 1 << 16);
    checkCount('hello.capabilities.memory_bytes', h.capabilities.memoryBytes);
  }
  return h;
}

export function checkProgress(p: Progress__Output | null | undefined): Progress__Output {
  if (!p || typeof p !== 'object') throw new RequestValidationError('progress', 'is missing');
  checkJobId(p.jobId, 'progress.job_id');
  checkCount('progress.generation', p.generation, 1);
  checkCount('progress.step', p.step);
  checkCount('progress.total_steps', p.totalSteps);
  if (p.totalSteps > 0 && p.step > p.totalSteps)
    throw new RequestValidationError('progress.step', `${p.step} is beyond total_steps ${p.totalSteps}`);
  checkCount('progress.epoch', p.epoch);
  checkCount('progress.supervised_tokens', p.supervisedTokens);
  checkLoss('progress.loss', p.loss);
  checkFiniteNonNegative('progress.tokens_per_second', p.tokensPerSecond);
  checkFiniteNonNegative('progress.elapsed_seconds', p.elapsedSeconds);
  const byLanguage = p.lossByLanguage ?? {};
  if (typeof byLanguage !== 'object' || Object.keys(byLanguage).length > MAX_LANGUAGES) {
    throw new RequestValidationError('progress.loss_by_language', `at most ${MAX_LANGUAGES} languages`);
  }
  for (const [lang, loss] of Object.entries(byLanguage)) {
    if (!/^[a-z]{2,3}$/.test(lang))
      throw new RequestValidationError('progress.loss_by_language', `"${lang.slice(0, 16)}" is not a language code`);
    checkLoss(`progress.loss_by_language.${lang}`, loss);
  }
  const choices = p.layerChoices ?? {};
  if (typeof choices !== 'object' || Object.keys(choices).length > MAX_LANGUAGES) {
    throw new RequestValidationError('progress.layer_choices', `at most ${MAX_LANGUAGES} languages`);
  }
  for (const [lang, c] of Object.entries(choices)) {
    if (!/^[a-z]{2,3}$/.test(lang))
      throw new RequestValidationError('progress.layer_choices', `"${lang.slice(0, 16)}" is not a language code`);
    const counts = c?.counts ?? [];
    if (counts.length > SPEC_LIMITS.layers)
      throw new RequestValidationError(`progress.layer_choices.${lang}`, `at most ${SPEC_LIMITS.layers} layers`);
    counts.forEach((n, l) => checkCount(`progress.layer_choices.${lang}[${l}]`, n));
  }
  // A stage of a job of several stages: its index within the count (at most the spec's bound),
  // its name a DNS label (the scheduler checks both against the job's spec before recording them).
  checkCount('progress.stage_count', p.stageCount ?? 0, 0, MAX_STAGES);
  checkCount('progress.stage_index', p.stageIndex ?? 0, 0, Math.max(0, (p.stageCount ?? 0) - 1));
  const stageName = checkString('progress.stage_name', p.stageName ?? '', 63);
  if ((p.stageCount ?? 0) > 0 ? !DNS_LABEL.test(stageName) : stageName !== '') {
    throw new RequestValidationError(
      'progress.stage_name',
      (p.stageCount ?? 0) > 0 ? 'must be a stage name (a DNS label)' : 'must be empty without stage_count',
    );
  }
  return p;
}

/** Languages a progress report may name (the loss per language); low cardinality on purpose. */
export const MAX_LANGUAGES = 64;

export function checkResult(r: Result__Output | null | undefined): Result__Output {
  if (!r || typeof r !== 'object') throw new RequestValidationError('result', 'is missing');
  checkJobId(r.jobId, 'result.job_id');
  checkCount('result.generation', r.generation, 1);
  if (typeof r.ok !== 'boolean') throw new RequestValidationError('result.ok', 'must be a boolean');
  const error = checkString('result.error', r.error, Number.MAX_SAFE_INTEGER);
  checkString('result.output_dir', r.outputDir, MAX_OUTPUT_DIR_LENGTH);
  checkCount('result.steps', r.steps);
  checkLoss('result.first_loss', r.firstLoss);
  checkLoss('result.final_loss', r.finalLoss);
  if (error.length > MAX_RESULT_ERROR_LENGTH)
    return {
      ...r,
      error:
        `${error.slice(0, MAX_RESULT_ERROR_LENGTH)}… ` +
        `(${error.length - MAX_RESULT_ERROR_LENGTH} more characters cut)`,
    };
  return r;
}

/** Checks the shape of a decoded WorkerMessage. Throws `RequestValidationError` naming the field. */
export function checkWorkerMessage(msg: unknown): CheckedWorkerMessage {
  if (!msg || typeof msg !== 'object') throw new RequestValidationError('msg', 'empty message');
  const m = msg as {
    msg?: unknown;
    hello?: Hello__Output | null;
    heartbeat?: object | null;
    progress?: Progress__Output | null;
    result?: Result__Output | null;
  };
  switch (m.msg) {
    case 'hello':
      return { type: 'hello', hello: checkHello(m.hello) };
    case 'heartbeat':
      return { type: 'heartbeat' };
    case 'progress':
      return { type: 'progress', progress: checkProgress(m.progress) };
    case 'result':
      return { type: 'result', result: checkResult(m.result) };
    default:
      throw new RequestValidationError('msg', 'empty message: none of hello, heartbeat, progress, result is set');
  }
}
