/**
 * The polytune gRPC contract, loaded at run time from `proto/polytune/v1/*.proto` with
 * @grpc/proto-loader. Types for the messages are generated into `proto/gen/` by
 * `proto/generate.sh` with the same options as `LOADER_OPTIONS` here.
 *
 * The .proto files are not copied by tsc: they are found from the repository (package) root,
 * which works both from source (`proto/index.ts`, vitest) and from the build (`dist/proto/index.js`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType as CoordinatorProto } from './gen/coordinator.js';
import type { ProtoGrpcType as CollectiveProto } from './gen/collective.js';

/** Options shared by the runtime loader and the type generator (`proto/generate.sh`). */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

const PACKAGE_NAME = 'polytune';

/**
 * The directory holding `polytune/v1/*.proto`: `POLYTUNE_PROTO_DIR` if set, else `proto/` under
 * the nearest ancestor of this module whose package.json is named "polytune".
 */
export function protoDir(): string {
  const fromEnv = process.env['POLYTUNE_PROTO_DIR'];
  if (fromEnv) return fromEnv;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        const name = (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown }).name;
        if (name === PACKAGE_NAME && existsSync(join(dir, 'proto', 'polytune', 'v1', 'coordinator.proto'))) {
          return join(dir, 'proto');
        }
      } catch {
        // not our package.json; keep walking up
      }
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error(
        `cannot find proto/polytune/v1/coordinator.proto above ` +
          `${fileURLToPath(import.meta.url)}; set POLYTUNE_PROTO_DIR`,
      );
    }
    dir = parent;
  }
}

let coordinatorCache: CoordinatorProto['polytune']['v1'] | undefined;
let collectiveCache:
  { definition: protoLoader.PackageDefinition; proto: CollectiveProto['polytune']['v1'] } | undefined;

/** The `polytune.v1` package of coordinator.proto: service constructors and definitions. */
export function loadCoordinatorProto(): CoordinatorProto['polytune']['v1'] {
  if (!coordinatorCache) {
    const definition = protoLoader.loadSync('polytune/v1/coordinator.proto', {
      ...LOADER_OPTIONS,
      includeDirs: [protoDir()],
    });
    coordinatorCache = (grpc.loadPackageDefinition(definition) as unknown as CoordinatorProto).polytune.v1;
  }
  return coordinatorCache;
}

/** The `polytune.v1` package of collective.proto (ChunkHeader), for encoding and validation. */
export function loadCollectiveProto(): CollectiveProto['polytune']['v1'] {
  if (!collectiveCache) {
    const definition = protoLoader.loadSync('polytune/v1/collective.proto', {
      ...LOADER_OPTIONS,
      includeDirs: [protoDir()],
    });
    collectiveCache = {
      definition,
      proto: (grpc.loadPackageDefinition(definition) as unknown as CollectiveProto).polytune.v1,
    };
  }
  return collectiveCache.proto;
}

export { JobState } from './gen/polytune/v1/JobState.js';
export type { JobState__Output } from './gen/polytune/v1/JobState.js';
export type { Job, Job__Output } from './gen/polytune/v1/Job.js';
export type { GenerationTiming, GenerationTiming__Output } from './gen/polytune/v1/GenerationTiming.js';
export type { JobEvent, JobEvent__Output } from './gen/polytune/v1/JobEvent.js';
export type { SubmitRequest, SubmitRequest__Output } from './gen/polytune/v1/SubmitRequest.js';
export type { SubmitResponse, SubmitResponse__Output } from './gen/polytune/v1/SubmitResponse.js';
export type { GetJobRequest, GetJobRequest__Output } from './gen/polytune/v1/GetJobRequest.js';
export type { ListJobsRequest, ListJobsRequest__Output } from './gen/polytune/v1/ListJobsRequest.js';
export type { ListJobsResponse, ListJobsResponse__Output } from './gen/polytune/v1/ListJobsResponse.js';
export type { CancelJobRequest, CancelJobRequest__Output } from './gen/polytune/v1/CancelJobRequest.js';
export type { DeleteJobRequest, DeleteJobRequest__Output } from './gen/polytune/v1/DeleteJobRequest.js';
export type { WatchRequest, WatchRequest__Output } from './gen/polytune/v1/WatchRequest.js';
export type { JobServiceClient, JobServiceHandlers } from './gen/polytune/v1/JobService.js';
export type { WorkerServiceClient, WorkerServiceHandlers } from './gen/polytune/v1/WorkerService.js';
export type { WorkerMessage, WorkerMessage__Output } from './gen/polytune/v1/WorkerMessage.js';
export type { CoordinatorMessage, CoordinatorMessage__Output } from './gen/polytune/v1/CoordinatorMessage.js';
export type { Hello, Hello__Output } from './gen/polytune/v1/Hello.js';
export type { Capabilities, Capabilities__Output } from './gen/polytune/v1/Capabilities.js';
export type { Progress, Progress__Output } from './gen/polytune/v1/Progress.js';
export type { Result, Result__Output } from './gen/polytune/v1/Result.js';
export type { Assignment, Assignment__Output } from './gen/polytune/v1/Assignment.js';
export type { CancelAssignment, CancelAssignment__Output } from './gen/polytune/v1/CancelAssignment.js';
export type { Ack, Ack__Output } from './gen/polytune/v1/Ack.js';
export type { Refusal, Refusal__Output } from './gen/polytune/v1/Refusal.js';
export { ChunkDtype } from './gen/polytune/v1/ChunkDtype.js';
export type { ChunkHeader, ChunkHeader__Output } from './gen/polytune/v1/ChunkHeader.js';
