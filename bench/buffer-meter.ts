/**
 * Live tensor bytes by data buffer and their peak, for the benchmarks (bench/memory.ts,
 * bench/cctuning-step.ts): the engine's own registrations, so a peak inside a backward pass is seen.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Engine internals the meter reads: the data buffers it registers, with their bytes. */
interface EngineInternals {
  state: { tensorInfo: Map<tf.DataId, { backend: unknown; bytes: number }> };
  trackTensor(a: tf.Tensor, backend: unknown): void;
  removeDataId(dataId: tf.DataId, backend: unknown): void;
}

/**
 * Live bytes by data buffer, and their peak: wraps the engine instance's `trackTensor` (a buffer
 * registered) and `removeDataId` (a buffer freed). For this benchmark only.
 */
export class BufferMeter {
  live = 0;
  peak = 0;
  constructor() {
    const eng = tf.engine() as unknown as EngineInternals;
    const track = eng.trackTensor.bind(eng);
    const remove = eng.removeDataId.bind(eng);
    eng.trackTensor = (a, backend) => {
      const had = eng.state.tensorInfo.has(a.dataId);
      track(a, backend);
      const info = eng.state.tensorInfo.get(a.dataId);
      if (!had && info) this.add(info.bytes);
    };
    eng.removeDataId = (dataId, backend) => {
      const info = eng.state.tensorInfo.get(dataId);
      const gone = info !== undefined && info.backend === backend;
      remove(dataId, backend);
      if (gone) this.add(-info.bytes);
    };
  }
  private add(bytes: number): void {
    this.live += bytes;
    if (this.live > this.peak) this.peak = this.live;
  }
}
