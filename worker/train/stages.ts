/**
 * A TrainJob of several stages on this rank (common/stages.ts): the stages run in order, each as
 * the single-stage job `stageJobSpec` derives (model = the previous stage's final model, output =
 * output.dir/<stage>), with the existing trainer, in the same generation and collective.
 *
 * Where a generation starts: a fresh job at stage 0. A re-formed world or a resumed job (`resume`)
 * first agrees on the stage: every rank offers the number of leading stages it knows finished
 * (those whose `final/` it finished in memory, and, the files being the proof that outlives the
 * processes, those whose `output.dir/<stage>/final/` exists), and all take the highest. A finished
 * stage is never run again; inside the stage the trainer agrees on the step as it does for any job
 * (memory, else the stage's checkpoints).
 *
 * Between stages every rank waits for rank 0's final outputs of the stage (an all-reduce used as a
 * barrier), since they are the next stage's model: every worker reads it from output.dir, which is
 * therefore on a volume they share (the chart's ReadWriteMany volume, or one machine's disk). The
 * rank's state holder (worker/run-worker.ts) belongs to one stage at a time: entering another
 * stage frees what it holds of the previous one.
 *
 * At the end rank 0 makes `output.dir/final/` the last stage's final model: the same files,
 * hard-linked into a directory renamed into place (copied where the file system cannot link), so
 * it costs no space and a reader never sees half of it.
 */
import { copyFile, link, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { trainJobStageSteps } from '../../common/job-kinds.js';
import { isMarkerOf, readMarker } from '../../common/output-marker.js';
import { stageFinalDir, stageJobSpec, stageOffsets, type StagedJobSpec } from '../../common/stages.js';
import type { KindContext, KindResult } from '../kind-context.js';
import { writeDirAtomically } from './atomic-dir.js';
import { assertFinalReplaceable } from './outputs.js';
import { releaseHolder, type StateHolder } from './trainer.js';
import { runSingleStage } from './train-job.js';

/** What a rank knows of its holder's stages: which stage the holder's state is of, and how many it saw finish. */
interface StageMemory {
  stage: number;
  finished: number;
}
const memories = new WeakMap<StateHolder, StageMemory>();

/**
 * Leading stages whose final model this job wrote (it holds the marker naming the job,
 * common/output-marker.ts) on this rank's file system: another job's `final/` is not this job's stage.
 */
export async function finishedStagesOnDisk(spec: StagedJobSpec): Promise<number> {
  let n = 0;
  for (const stage of spec.spec.stages) {
    if (!isMarkerOf(await readMarker(stageFinalDir(spec, stage.name)), spec.metadata.name)) break;
    n++;
  }
  return n;
}

/** The stage every rank starts from: the highest number of finished stages any rank offers. */
async function agreeOnStage(spec: StagedJobSpec, ctx: KindContext, memory: StageMemory): Promise<number> {
  const offers = new Float32Array(ctx.worldSize);
  offers[ctx.rank] = Math.max(memory.finished, await finishedStagesOnDisk(spec));
  const all = await ctx.reduce(offers);
  return Math.max(...all);
}

/**
 * `dst` becomes a directory of the files of `src` (a final/, marker included), hard-linked (copied
 * where that fails), atomically; a `dst` job `job` did not write is never replaced.
 */
export async function linkDirectory(src: string, dst: string, job: string): Promise<void> {
  await assertFinalReplaceable(dst, job);
  await writeDirAtomically(dst, async (tmp) => {
    for (const name of await readdir(src)) {
      await link(join(src, name), join(tmp, name)).catch(() => copyFile(join(src, name), join(tmp, name)));
    }
  });
}

export async function runStages(spec: StagedJobSpec, ctx: KindContext): Promise<KindResult> {
  const stages = spec.spec.stages;
  const n = stages.length;
  const { offsets, total } = stageOffsets(await trainJobStageSteps(spec));
  let memory = memories.get(ctx.holder);
  if (!memory) memories.set(ctx.holder, (memory = { stage: -1, finished: 0 }));
  const start = ctx.resume ? await agreeOnStage(spec, ctx, memory) : 0;
  if (start > 0) ctx.logger.info('stages already finished', { finished: stages.slice(0, start).map((s) => s.name) });
  let firstLoss = NaN;
  let finalLoss = NaN;
  let chosenLayers: number[] | undefined;
  for (let k = start; k < n; k++) {
    const stage = stages[k]!;
    if (memory.stage !== k) {
      // What the holder keeps is of another stage (other tensors train): it goes.
      releaseHolder(ctx.holder);
      memory.stage = k;
    }
    ctx.logger.info('stage', { stage: `${k + 1}/${n}`, name: stage.name, fromJobStep: offsets[k] });
    const r = await runSingleStage(
      stageJobSpec(spec, k),
      { ...ctx, resume: ctx.resume && k === start },
      {
        offset: offsets[k]!,
        totalSteps: total,
        stage: { index: k, count: n, name: stage.name },
      },
    );
    if (Number.isNaN(firstLoss)) firstLoss = r.firstLoss ?? NaN;
    finalLoss = r.finalLoss ?? NaN;
    chosenLayers = r.chosenLayers ?? chosenLayers;
    // Rank 0 wrote the stage's final model before its share of this sum: past it, every rank can load it.
    await ctx.reduce(new Float32Array(1));
    memory.finished = Math.max(memory.finished, k + 1);
  }
  const last = stages[n - 1]!;
  if (ctx.rank === 0) {
    await linkDirectory(stageFinalDir(spec, last.name), join(spec.spec.output.dir, 'final'), spec.metadata.name);
  }
  return {
    steps: total,
    outputDir: spec.spec.output.dir,
    firstLoss,
    finalLoss,
    ...(chosenLayers ? { chosenLayers } : {}),
  };
}
