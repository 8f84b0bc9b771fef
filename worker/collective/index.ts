/** Collective operations between a job's workers over core NATS. */
export {
  GradientAllReduce,
  DEFAULT_ALLREDUCE_TIMEOUT_MS,
  DEFAULT_ALLREDUCE_INFLIGHT_BYTES,
  DEFAULT_READY_TIMEOUT_MS,
} from './gradient-allreduce.js';
export type { AllReduceHandle, AllReduceOptions, AllReduceStats, CallOptions } from './gradient-allreduce.js';
export { Compression } from './wire-codec.js';
export {
  CHUNK_HEADER_BYTES,
  ChunkKind,
  ChunkDtype,
  ChunkDecodeError,
  encodeChunkHeader,
  decodeChunkHeader,
} from './chunk-header.js';
export type { ChunkHeader } from './chunk-header.js';
export { checkCollectiveKey, ChunkMac, encodeFloat32Chunk } from './chunk-mac.js';
export { RejectReason } from './chunk-validation.js';
