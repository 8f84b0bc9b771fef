/**
 * The one place where domain errors become gRPC statuses (server side) and statuses become
 * errors (client side).
 */
import { Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { JobSpecError, PolytuneError, UserError, errorMessage } from '../common/errors.js';
import {
  AuthenticationError,
  CoordinatorStoppingError,
  JobConflictError,
  JobNotFinishedError,
  JobNotFoundError,
  JoinDeadlineError,
  PendingLimitError,
  RequestValidationError,
  WorkerIdInUseError,
  WorkerProtocolError,
} from './errors.js';

/** The status a handler answers with for `e`. Unknown errors are INTERNAL with their message. */
export function toGrpcStatus(e: unknown): Partial<StatusObject> & { code: status; details: string } {
  const details = errorMessage(e);
  let code: status;
  if (e instanceof JobSpecError) code = status.INVALID_ARGUMENT;
  else if (e instanceof JobNotFoundError) code = status.NOT_FOUND;
  else if (e instanceof JobConflictError) code = status.ABORTED;
  else if (e instanceof JobNotFinishedError) code = status.FAILED_PRECONDITION;
  else if (e instanceof PendingLimitError) code = status.RESOURCE_EXHAUSTED;
  else if (e instanceof WorkerProtocolError) code = status.INVALID_ARGUMENT;
  else if (e instanceof RequestValidationError) code = status.INVALID_ARGUMENT;
  else if (e instanceof AuthenticationError) code = status.UNAUTHENTICATED;
  else if (e instanceof WorkerIdInUseError) code = status.ALREADY_EXISTS;
  else if (e instanceof JoinDeadlineError) code = status.DEADLINE_EXCEEDED;
  else if (e instanceof CoordinatorStoppingError) code = status.UNAVAILABLE;
  else if (e instanceof UserError) code = status.INVALID_ARGUMENT;
  else code = status.INTERNAL;
  return { code, details, metadata: new Metadata() };
}

/** A failed call to the coordinator, as the client sees it: gRPC code, the server's message, the caller's stack. */
export class CoordinatorCallError extends PolytuneError {
  readonly code: status;
  readonly method: string;
  constructor(method: string, code: status, details: string, options: { cause?: unknown } = {}) {
    super(details || status[code] || `gRPC status ${code}`, {
      ...options,
      retryable: code === status.UNAVAILABLE || code === status.ABORTED || code === status.DEADLINE_EXCEEDED,
    });
    this.name = 'CoordinatorCallError';
    this.code = code;
    this.method = method;
  }

  /** True for mistakes in what the user sent (bad spec, unknown job): print the message, no stack. */
  get isUserMistake(): boolean {
    const c = this.code;
    return c === status.INVALID_ARGUMENT || c === status.NOT_FOUND || c === status.FAILED_PRECONDITION;
  }
}

function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number';
}

/**
 * Turns a grpc-js error into a `CoordinatorCallError` whose stack is the caller's (`callerStack`
 * captured before the call), the way grpc-js's `callErrorFromStatus` does.
 */
export function fromGrpcError(method: string, e: unknown, callerStack?: string): CoordinatorCallError {
  const err = isServiceError(e)
    ? new CoordinatorCallError(method, e.code, e.details, { cause: e })
    : new CoordinatorCallError(method, status.UNKNOWN, errorMessage(e), { cause: e });
  if (callerStack) err.stack = `${err.name}: ${err.message}\n${callerStack.split('\n').slice(1).join('\n')}`;
  return err;
}
