/**
 * The client side of JobService, for the CLI and tests: promise-returning calls, each with a
 * deadline, errors as `CoordinatorCallError` with the caller's stack.
 *
 * Submit contract (see also proto SubmitRequest): `submitSpecFile` parses the spec file locally
 * (fast errors with field paths), which resolves relative paths against the file's directory, and
 * sends the parsed spec as JSON. The coordinator validates it again against its own file system.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { UserError } from '../common/errors.js';
import { parseAnyJobSpec, type AnyJobSpec } from '../common/job-kinds.js';
import { channelCredentials, channelTlsOptions, type ClientTls } from '../common/tls.js';
import {
  loadCoordinatorProto,
  type JobEvent__Output,
  type JobServiceClient,
  type Job__Output,
  type ListJobsResponse__Output,
  type SubmitResponse__Output,
} from '../proto/index.js';
import { fromGrpcError } from './grpc-errors.js';
import { DEFAULT_CLIENT_MAX_RECEIVE_MESSAGE_BYTES } from './request-limits.js';

export const DEFAULT_COORDINATOR_ADDRESS = '127.0.0.1:7070';
/** Env var that overrides the default coordinator address. */
export const COORDINATOR_ENV = 'POLYTUNE_COORDINATOR';
/** @default 15 s for a unary call. */
export const DEFAULT_CALL_TIMEOUT_MS = 15_000;
/** @default 5 s to connect to the coordinator before a call fails with UNAVAILABLE. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

export interface JobClientOptions {
  /** @default $POLYTUNE_COORDINATOR or DEFAULT_COORDINATOR_ADDRESS */
  address?: string;
  /** @default DEFAULT_CALL_TIMEOUT_MS */
  callTimeoutMs?: number;
  /** TLS to the coordinator (CA, optional client certificate). @default plaintext */
  tls?: ClientTls;
  /** Sent as `authorization: Bearer <token>` on every call. @default none */
  token?: string;
  /** @default DEFAULT_CLIENT_MAX_RECEIVE_MESSAGE_BYTES */
  maxReceiveMessageBytes?: number;
}

export function defaultCoordinatorAddress(): string {
  return process.env[COORDINATOR_ENV] || DEFAULT_COORDINATOR_ADDRESS;
}

/**
 * Reads and parses a spec file; relative paths are resolved against the file's directory. Throws JobSpecError /
 * UserError.
 */
export async function readSpecFile(path: string): Promise<AnyJobSpec> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new UserError(`${path}: cannot read the job spec (${(e as NodeJS.ErrnoException).code ?? String(e)})`, {
      cause: e,
    });
  }
  return parseAnyJobSpec(text, { source: path, baseDir: dirname(resolve(path)) });
}

export interface SubmitResult {
  readonly jobId: string;
  readonly trainableParameters: number;
  readonly totalParameters: number;
}

export class JobClient {
  readonly address: string;
  private readonly client: JobServiceClient;
  private readonly callTimeoutMs: number;
  private readonly token: string | undefined;

  constructor(options: JobClientOptions = {}) {
    this.address = options.address ?? defaultCoordinatorAddress();
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.token = options.token;
    const proto = loadCoordinatorProto();
    this.client = new proto.JobService(this.address, channelCredentials(options.tls), {
      ...channelTlsOptions(options.tls),
      'grpc.max_receive_message_length': options.maxReceiveMessageBytes ?? DEFAULT_CLIENT_MAX_RECEIVE_MESSAGE_BYTES,
    });
  }

  /** Call metadata: the bearer token, when there is one (per call, so it also works on plaintext channels). */
  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.token !== undefined) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  private unary<Res>(
    method: string,
    invoke: (
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, res?: Res) => void,
    ) => unknown,
  ): Promise<Res> {
    const callerStack = new Error().stack;
    return new Promise((resolvePromise, reject) => {
      invoke(this.metadata(), { deadline: Date.now() + this.callTimeoutMs }, (err, res) => {
        if (err || res === undefined) reject(fromGrpcError(method, err ?? new Error('empty response'), callerStack));
        else resolvePromise(res);
      });
    });
  }

  /**
   * Sends a spec (text already holding absolute paths). Returns the job id. With `resume`, the job
   * goes on from the newest valid checkpoint in its output.dir.
   */
  async submitText(specText: string, sourceName = '', options: { resume?: boolean } = {}): Promise<string> {
    return (await this.submit(specText, sourceName, options)).jobId;
  }

  /** Sends a parsed spec (as JSON): the job id and what the method trains. */
  submitSpec(spec: AnyJobSpec, sourceName = '', options: { resume?: boolean } = {}): Promise<SubmitResult> {
    return this.submit(JSON.stringify(spec), sourceName, options);
  }

  private async submit(specText: string, sourceName: string, options: { resume?: boolean }): Promise<SubmitResult> {
    const res = await this.unary<SubmitResponse__Output>('Submit', (m, o, cb) =>
      this.client.Submit({ specYaml: specText, sourceName, resume: options.resume ?? false }, m, o, cb),
    );
    return {
      jobId: res.jobId,
      trainableParameters: Number(res.trainableParameters),
      totalParameters: Number(res.totalParameters),
    };
  }

  get(jobId: string): Promise<Job__Output> {
    return this.unary<Job__Output>('Get', (m, o, cb) => this.client.Get({ jobId }, m, o, cb));
  }

  /** One page of jobs, newest first, without their specs; `nextPageToken` is '' on the last page. */
  listPage(pageSize = 0, pageToken = ''): Promise<ListJobsResponse__Output> {
    return this.unary<ListJobsResponse__Output>('List', (m, o, cb) =>
      this.client.List({ pageSize, pageToken }, m, o, cb),
    );
  }

  /** Every job, newest first, page by page (without their specs: `get` has them). */
  async list(pageSize = 0): Promise<Job__Output[]> {
    const jobs: Job__Output[] = [];
    let token = '';
    do {
      const page = await this.listPage(pageSize, token);
      jobs.push(...page.jobs);
      token = page.nextPageToken;
    } while (token);
    return jobs;
  }

  /** Deletes a finished job (record and ledger); returns it as it was. */
  delete(jobId: string): Promise<Job__Output> {
    return this.unary<Job__Output>('Delete', (m, o, cb) => this.client.Delete({ jobId }, m, o, cb));
  }

  cancel(jobId: string, reason = ''): Promise<Job__Output> {
    return this.unary<Job__Output>('Cancel', (m, o, cb) => this.client.Cancel({ jobId, reason }, m, o, cb));
  }

  /**
   * The job's events: a snapshot, then changes, ending after a terminal state. The stream has no
   * overall deadline (jobs run for hours); the connection must come up within
   * `DEFAULT_CONNECT_TIMEOUT_MS`. Stop early with `signal`.
   */
  async *watch(jobId: string, signal?: AbortSignal): AsyncGenerator<JobEvent__Output> {
    const callerStack = new Error().stack;
    await new Promise<void>((resolvePromise, reject) => {
      this.client.waitForReady(Date.now() + DEFAULT_CONNECT_TIMEOUT_MS, (e) =>
        e
          ? reject(
              fromGrpcError(
                'Watch',
                Object.assign(e, {
                  code: grpc.status.UNAVAILABLE,
                  details: `coordinator ${this.address} unreachable: ${e.message}`,
                }),
                callerStack,
              ),
            )
          : resolvePromise(),
      );
    });
    const call = this.client.Watch({ jobId }, this.metadata());
    const onAbort = (): void => call.cancel();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const ev of call as AsyncIterable<JobEvent__Output>) yield ev;
    } catch (e) {
      if (signal?.aborted && (e as Partial<grpc.ServiceError>).code === grpc.status.CANCELLED) return;
      throw fromGrpcError('Watch', e, callerStack);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      call.cancel();
    }
  }

  close(): void {
    this.client.close();
  }
}
