/**
 * State agreement at the start of a generation: when a world is re-formed (a lost worker, a failed
 * collective, a restarted coordinator) or a job is resumed, the ranks first agree on the newest
 * state any of them holds, in memory or in a checkpoint, and all take it; then they go on from its
 * step. Two all-reduces in float32 (`exact`): the offers, then (unless every rank already holds
 * the newest step) the chosen state itself.
 */
import type { Logger } from '../../common/logging.js';
import { latestValidCheckpoint, listCheckpoints, type CheckpointLayout, type CheckpointState } from './checkpoint.js';
import type { StateHolder, TrainingState } from './training-state.js';

/** The state vector's head: [step, optimizer step]. */
const STATE_HEAD = 2;

/**
 * The ranks agree on the newest state any of them can restore and all take it. Every rank offers
 * the step it could restore (memory or newest checkpoint) and the step it holds in memory. When
 * every rank holds the newest step in memory (a world re-formed without newcomers), the states are
 * bit-identical and each rank keeps its own: nothing more travels. Else the rank with the highest
 * offer (the lowest such rank) contributes its whole state and the others zeros, so the sum is
 * exactly that state on every rank.
 */
export async function agreeOnState(
  state: TrainingState,
  holder: StateHolder | undefined,
  layout: CheckpointLayout,
  outputDir: string,
  rank: number,
  worldSize: number,
  reduce: (data: Float32Array, options: { exact: true }) => Promise<Float32Array>,
  log: Logger,
): Promise<void> {
  const memory = holder?.state;
  const newestCheckpoint = (await listCheckpoints(outputDir))[0]?.step ?? -1;
  // [restorable step + 1 per rank, step in memory + 1 per rank]
  const offers = new Float32Array(2 * worldSize);
  offers[rank] = 1 + Math.max(memory?.step ?? -1, newestCheckpoint);
  offers[worldSize + rank] = 1 + (memory?.step ?? -1);
  const all = await reduce(offers, { exact: true });
  let source = 0;
  for (let r = 1; r < worldSize; r++) if (all[r]! > all[source]!) source = r;
  if (all[source] === 0) return; // nobody holds anything: start from the model
  if (memory && all.subarray(worldSize).every((m) => m === all[source])) {
    state.step = memory.step;
    state.optimizer.stepCount = memory.optimizer.stepCount;
    const into = [...state.params, ...state.optimizer.buffers];
    [...memory.params, ...memory.optimizer.buffers].forEach((a, i) => into[i]!.set(a));
    log.info('state source for this generation', { step: memory.step, from: 'memory, on every rank' });
    return;
  }

  const buffers = state.optimizer.buffers;
  const total = STATE_HEAD + [...state.params, ...buffers].reduce((n, a) => n + a.length, 0);
  const vec = new Float32Array(total);
  if (rank === source) {
    const fromMemory: CheckpointState | undefined = memory && {
      step: memory.step,
      optimizerStep: memory.optimizer.stepCount,
      params: memory.params,
      buffers: memory.optimizer.buffers,
    };
    // Memory when it is the newest; else the newest checkpoint that verifies, else memory; else
    // (every checkpoint refused, nothing in memory) the model as loaded, at step 0.
    const fromCheckpoint =
      fromMemory && fromMemory.step >= newestCheckpoint
        ? undefined
        : await latestValidCheckpoint(outputDir, layout, log);
    const from = fromCheckpoint ?? fromMemory ?? { step: 0, optimizerStep: 0, params: state.params, buffers };
    vec[0] = from.step;
    vec[1] = from.optimizerStep;
    let off = STATE_HEAD;
    for (const a of [...from.params, ...from.buffers]) {
      vec.set(a, off);
      off += a.length;
    }
    log.info('state source for this generation', {
      step: from.step,
      from: fromCheckpoint ? 'checkpoint' : fromMemory ? 'memory' : 'model',
    });
  }
  const got = await reduce(vec, { exact: true });
  state.step = got[0]!;
  state.optimizer.stepCount = got[1]!;
  let off = STATE_HEAD;
  for (const a of [...state.params, ...buffers]) {
    a.set(got.subarray(off, off + a.length));
    off += a.length;
  }
}
