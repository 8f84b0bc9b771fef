/** The coordinator's domain errors. gRPC status codes are chosen for them in `grpc-errors.ts`. */
import { PolytuneError } from '../common/errors.js';

/** No job with this id. */
export class JobNotFoundError extends PolytuneError {
  readonly jobId: string;
  constructor(jobId: string) {
    super(`job ${jobId} not found`);
    this.name = 'JobNotFoundError';
    this.jobId = jobId;
  }
}

/** A concurrent writer kept changing the job record; the update gave up. Retryable. */
export class JobConflictError extends PolytuneError {
  readonly jobId: string;
  constructor(jobId: string, options: { cause?: unknown } = {}) {
    super(`job ${jobId} changed concurrently; try again`, { ...options, retryable: true });
    this.name = 'JobConflictError';
    this.jobId = jobId;
  }
}

/** A job that has not finished cannot be deleted (cancel it first). FAILED_PRECONDITION. */
export class JobNotFinishedError extends PolytuneError {
  readonly jobId: string;
  readonly state: string;
  constructor(jobId: string, state: string) {
    super(
      `job ${jobId} is ${state}: only a finished job can be deleted ` +
        `(cancel it first: coordinator cancel ${jobId})`,
    );
    this.name = 'JobNotFinishedError';
    this.jobId = jobId;
    this.state = state;
  }
}

/** A client has as many Pending jobs as it may have. RESOURCE_EXHAUSTED. */
export class PendingLimitError extends PolytuneError {
  readonly client: string;
  readonly limit: number;
  constructor(client: string, limit: number) {
    super(
      `client ${client} already has ${limit} Pending jobs (the coordinator's --max-pending-per-client): ` +
        'wait for some to start, or cancel some, before submitting more',
      { retryable: true },
    );
    this.name = 'PendingLimitError';
    this.client = client;
    this.limit = limit;
  }
}

/** A worker stream that broke the Join protocol (e.g. did not start with Hello). */
export class WorkerProtocolError extends PolytuneError {
  readonly workerId: string | undefined;
  constructor(message: string, workerId?: string) {
    super(message);
    this.name = 'WorkerProtocolError';
    this.workerId = workerId;
  }
}

/** A Join stream that did not send Hello in time. DEADLINE_EXCEEDED. */
export class JoinDeadlineError extends PolytuneError {
  constructor(message: string) {
    super(message);
    this.name = 'JoinDeadlineError';
  }
}

/**
 * A Join under a worker id whose stream is alive (a heartbeat within the timeout, its stream
 * open). ALREADY_EXISTS: the newcomer is refused, the connected worker keeps its job.
 */
export class WorkerIdInUseError extends PolytuneError {
  readonly workerId: string;
  constructor(workerId: string, lastSeenMsAgo: number) {
    super(
      `worker id "${workerId}" is already connected (last heard from ${lastSeenMsAgo} ms ago); ` +
        'a second worker cannot take its place until that stream is closed or misses its heartbeats',
      { retryable: true },
    );
    this.name = 'WorkerIdInUseError';
    this.workerId = workerId;
  }
}

/** The coordinator is stopping and does not take the request. Retryable. */
export class CoordinatorStoppingError extends PolytuneError {
  constructor() {
    super('coordinator is shutting down', { retryable: true });
    this.name = 'CoordinatorStoppingError';
  }
}

/** The coordinator could not start: NATS unreachable, JetStream off, address in use. */
export class CoordinatorStartError extends PolytuneError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, retryable: true });
    this.name = 'CoordinatorStartError';
  }
}

/** A call without valid credentials (bearer token, client certificate). UNAUTHENTICATED. */
export class AuthenticationError extends PolytuneError {
  constructor(message: string) {
    super(message);
    this.name = 'AuthenticationError';
  }
}

/**
 * A request whose fields are out of bounds (too long, wrong shape, a job id that cannot exist).
 * INVALID_ARGUMENT; `field` names the field (`job_id`, `spec_yaml`, `progress.generation`).
 */
export class RequestValidationError extends PolytuneError {
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'RequestValidationError';
    this.field = field;
  }
}
