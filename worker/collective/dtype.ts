/**
 * The collective's wire codes for what a chunk is and how its numbers are stored: a leaf module
 * (it imports nothing), so that the header codec, the SIMD kernels and the scalar codec all take
 * their types from here and none of them imports another for a type (`chunk-header.ts` and
 * `simd-kernels.ts` imported each other before).
 */

/** Wire codes, as `ChunkHeader.kind` in collective.proto. */
export enum ChunkKind {
  ReduceScatter = 1,
  AllGather = 2,
}

/** Wire codes, as `ChunkDtype` in collective.proto. */
export enum ChunkDtype {
  Float32 = 1,
  Float16 = 2,
  BFloat16 = 3,
}

/** The 16-bit dtypes (compressed gradients). */
export type Dtype16 = ChunkDtype.Float16 | ChunkDtype.BFloat16;

export function bytesPerElement(dtype: ChunkDtype): number {
  return dtype === ChunkDtype.Float32 ? 4 : 2;
}
