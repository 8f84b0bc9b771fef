/**
 * The scheduler: turns Pending jobs into gangs of idle workers, follows their progress and
 * results, and ends jobs (Succeeded, Failed, Cancelled). Every decision is written to the job
 * store before it is acted on; state changes go through the store's compare-and-set. Decisions are
 * taken one at a time (a promise chain), so two of them never interleave in this process.
 *
 * Fault tolerance: a worker lost during a Running job, or a generation that failed retryably (a
 * broken collective), re-forms the world: the job goes back to Pending, the survivors are told to
 * leave the old generation, and the next gang (at least `workers.min` workers, preferring the
 * previous members, who hold the job's state) gets generation + 1. Its ranks agree on the newest
 * state any of them holds and go on from it (worker/train/trainer.ts). A coordinator that starts
 * and finds Running jobs puts them back to Pending the same way. The ledger (ledger.ts) records
 * which steps each generation committed.
 */
import { randomBytes } from 'node:crypto';

import { errorMessage } from '../common/errors.js';
import { jobKindOf, type AnyJobSpec } from '../common/job-kinds.js';
import { silentLogger, type Logger } from '../common/logging.js';
import { COLLECTIVE_KEY_BYTES } from '../common/subjects.js';
import type { Progress__Output, Result__Output } from '../proto/index.js';
import { CoordinatorStoppingError, JobNotFinishedError, JobNotFoundError, PendingLimitError } from './errors.js';
import { isTerminal, JobState, newJobRecord, type JobRecord, type JobStage } from './job-record.js';
import { closeGeneration, openGeneration, recordCompute } from './job-timings.js';
import { completeLedger, recordStep, type Ledger, type LedgerStore } from './ledger.js';
import type { JobStore } from './job-store.js';
import { noopSchedulerMetrics, type SchedulerMetrics } from './coordinator-metrics.js';
import { WorkerStatus, type RegistryEvent, type WorkerInfo, type WorkerRegistry } from './worker-registry.js';

/** @default a job fails after its world was re-formed this many times. */
export const DEFAULT_MAX_REFORMS = 50;

/** @default at most one progress write per job every 500 ms. */
export const DEFAULT_PROGRESS_FLUSH_MS = 500;

/** @default finished jobs are deleted a week (168 h) after they finished. */
export const DEFAULT_RETENTION_HOURS = 168;

/** @default a client may have at most 100 Pending jobs. */
export const DEFAULT_MAX_PENDING_PER_CLIENT = 100;

export interface SchedulerOptions {
  store: JobStore;
  registry: WorkerRegistry;
  /** Sent to workers in their Assignment (`nats_url`). */
  workerNatsUrl: string;
  /** @default DEFAULT_PROGRESS_FLUSH_MS */
  progressFlushMs?: number;
  logger?: Logger;
  /** @default noopSchedulerMetrics */
  metrics?: SchedulerMetrics;
  /** Where committed steps are recorded. @default none (no ledger) */
  ledger?: LedgerStore;
  /** @default DEFAULT_MAX_REFORMS */
  maxReforms?: number;
  /**
   * Checks a stored spec against the file system (roots, files, output dir) before a gang is
   * formed for it: the store is not trusted, and files change. Throws to fail the job. @default none
   */
  revalidate?: (spec: AnyJobSpec, jobId: string) => Promise<void>;
  /** Finished jobs older than this (since they finished) are deleted; 0 keeps them. @default DEFAULT_RETENTION_HOURS */
  retentionHours?: number;
  /** Pending jobs a client may have; 0: no limit. @default DEFAULT_MAX_PENDING_PER_CLIENT */
  maxPendingPerClient?: number;
}

interface PendingProgress {
  generation: number;
  progress: Progress__Output;
}

interface GangState {
  generation: number;
  worldSize: number;
  done: Set<number>;
  rank0?: Result__Output;
}

function randomSuffix(n = 5): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[Math.floor(Math.random() * alphabet.length)];
  return s;
}

/** A job id: the spec's metadata.name, '-', 5 random characters (still a DNS label when the name allows). */
export function newJobId(name: string): string {
  return `${name.slice(0, 57)}-${randomSuffix()}`;
}

/**
 * The stage a progress report names, when it is one of the job's (same count, same name at that
 * index): `{ stage }` to record, else nothing (the record keeps the stage it has).
 */
export function stageOf(r: JobRecord, p: Progress__Output): { stage?: JobStage } {
  const names = jobKindOf(r.spec).stageNames(r.spec);
  const index = p.stageIndex ?? 0;
  if (names.length === 0 || p.stageCount !== names.length || names[index] !== p.stageName) return {};
  return { stage: { index, count: names.length, name: names[index] } };
}

export class Scheduler {
  private readonly store: JobStore;
  private readonly registry: WorkerRegistry;
  private readonly workerNatsUrl: string;
  private readonly flushMs: number;
  private readonly logger: Logger;
  private readonly metrics: SchedulerMetrics;
  private readonly ledgerStore: LedgerStore | undefined;
  private readonly maxReforms: number;
  private readonly revalidate: SchedulerOptions['revalidate'];
  private readonly retentionMs: number;
  private readonly maxPendingPerClient: number;
  private retentionTimer: NodeJS.Timeout | undefined;
  /** Steps reported by rank 0 and not yet written to the ledger, per job. */
  private readonly ledgerQueue = new Map<string, { generation: number; worldSize: number; completed: number }[]>();
  private readonly ledgers = new Map<string, Ledger>();
  private chain: Promise<void> = Promise.resolve();
  private scheduleQueued = false;
  private stopping = false;
  private unsubscribe: (() => void) | undefined;
  private readonly pendingProgress = new Map<string, PendingProgress>();
  private readonly flushTimers = new Map<string, NodeJS.Timeout>();
  private readonly lastFlush = new Map<string, number>();
  private readonly firstLoss = new Map<string, { generation: number; loss: number }>();
  private readonly gangs = new Map<string, GangState>();

  constructor(options: SchedulerOptions) {
    this.store = options.store;
    this.registry = options.registry;
    this.workerNatsUrl = options.workerNatsUrl;
    this.flushMs = options.progressFlushMs ?? DEFAULT_PROGRESS_FLUSH_MS;
    this.logger = options.logger ?? silentLogger;
    this.metrics = options.metrics ?? noopSchedulerMetrics;
    this.ledgerStore = options.ledger;
    this.maxReforms = options.maxReforms ?? DEFAULT_MAX_REFORMS;
    this.revalidate = options.revalidate;
    this.retentionMs = (options.retentionHours ?? DEFAULT_RETENTION_HOURS) * 3_600_000;
    this.maxPendingPerClient = options.maxPendingPerClient ?? DEFAULT_MAX_PENDING_PER_CLIENT;
  }

  /** Recovers jobs left Running by a previous coordinator, then listens to the registry. */
  async start(): Promise<void> {
    for (const job of await this.store.list()) {
      if (job.state !== JobState.Running) continue;
      const { changed } = await this.store.update(job.id, (r) => {
        if (r.state !== JobState.Running) return null;
        // Its workers' streams died with the old coordinator; they join again and, being the
        // previous members, are preferred for the next generation.
        return {
          ...r,
          state: JobState.Pending,
          reforms: r.reforms + 1,
          error: 'coordinator restarted',
          updatedAt: Date.now(),
          // It ended at the last write before the restart, its last sign of life (job-timings.ts).
          generations: closeGeneration(r.generations, r.updatedAt, 'coordinator restarted'),
        };
      });
      if (changed)
        this.logger.warn('job was Running under a previous coordinator; back to Pending', {
          job: job.id,
          generation: job.generation,
        });
    }
    this.unsubscribe = this.registry.on((e) => this.onRegistryEvent(e));
    this.kick();
    if (this.retentionMs > 0) {
      // A sweep now, then every tenth of the retention (at most hourly, at most every second).
      const every = Math.min(3_600_000, Math.max(1_000, this.retentionMs / 10));
      const sweep = (): void => {
        this.serial(() => this.deleteExpired()).catch((e: unknown) =>
          this.logger.warn('retention sweep failed', { error: errorMessage(e) }),
        );
      };
      sweep();
      this.retentionTimer = setInterval(sweep, every);
      this.retentionTimer.unref();
    }
  }

  /** Deletes finished jobs that finished more than the retention ago. */
  private async deleteExpired(): Promise<void> {
    if (this.stopping) return;
    const cutoff = Date.now() - this.retentionMs;
    for (const job of await this.store.list()) {
      if (!isTerminal(job.state) || (job.finishedAt || job.updatedAt) > cutoff) continue;
      await this.removeJob(job.id);
      const finishedAt = new Date(job.finishedAt || job.updatedAt).toISOString();
      this.logger.info('job deleted: past the retention', { job: job.id, finishedAt });
    }
  }

  private async removeJob(jobId: string): Promise<void> {
    this.dropJobState(jobId);
    await this.store.delete(jobId);
    await this.ledgerStore?.delete(jobId);
  }

  /**
   * Deletes a finished job's record and ledger, and returns it as it was; `JobNotFinishedError` for an unfinished one.
   */
  async delete(jobId: string): Promise<JobRecord> {
    return this.serial(async () => {
      const { record } = await this.store.mustGet(jobId);
      if (!isTerminal(record.state)) throw new JobNotFinishedError(jobId, record.state);
      await this.removeJob(jobId);
      this.logger.info('job deleted', { job: jobId });
      return record;
    });
  }

  /** Throws `PendingLimitError` when `client` has as many Pending jobs as it may. */
  async checkPendingLimit(client: string | undefined): Promise<void> {
    if (client === undefined || this.maxPendingPerClient <= 0) return;
    const jobs = await this.store.list();
    const pending = jobs.filter((j) => j.state === JobState.Pending && j.submittedBy === client).length;
    if (pending >= this.maxPendingPerClient) throw new PendingLimitError(client, this.maxPendingPerClient);
  }

  /** Runs `fn` after every decision queued before it. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Stores a new Pending job for an already validated spec. */
  async submit(
    spec: AnyJobSpec,
    numLayers: number,
    totalSteps: number,
    resume = false,
    submittedBy?: string,
  ): Promise<JobRecord> {
    if (this.stopping) throw new CoordinatorStoppingError();
    await this.checkPendingLimit(submittedBy);
    for (;;) {
      const record = newJobRecord(newJobId(spec.metadata.name), spec, numLayers, Date.now(), resume, submittedBy);
      record.totalSteps = totalSteps;
      try {
        await this.store.create(record);
      } catch (e) {
        if (await this.store.get(record.id)) continue; // id collision: draw another suffix
        throw e;
      }
      this.logger.info('job submitted', { job: record.id, workers: spec.spec.workers.count, totalSteps });
      this.kick();
      return record;
    }
  }

  /** Cancels a job that has not finished; a finished job is returned as it is. */
  async cancel(jobId: string, reason = 'cancelled by user'): Promise<JobRecord> {
    return this.serial(async () => {
      const { record, changed } = await this.store.update(jobId, (r) => {
        if (isTerminal(r.state)) return null;
        const generations = closeGeneration(r.generations, Date.now(), reason);
        return { ...r, state: JobState.Cancelled, error: reason, finishedAt: Date.now(), generations };
      });
      if (changed) {
        this.logger.info('job cancelled', { job: jobId, reason });
        this.endGang(record, reason, undefined);
      }
      return record;
    });
  }

  /** Asks for a scheduling pass; passes asked for while one is queued are merged. */
  kick(): void {
    if (this.scheduleQueued || this.stopping) return;
    this.scheduleQueued = true;
    this.serial(async () => {
      this.scheduleQueued = false;
      await this.schedulePass();
    }).catch((e: unknown) => this.logger.error('scheduling pass failed', { error: errorMessage(e) }));
  }

  private async schedulePass(): Promise<void> {
    if (this.stopping) return;
    const pending = (await this.store.list())
      .filter((j) => j.state === JobState.Pending)
      .sort((a, b) => a.createdAt - b.createdAt);
    for (const job of pending) {
      const { count, min } = job.spec.spec.workers;
      // A job starts with its whole gang; a re-formed one goes on with at least `min`, previous
      // members first (they hold its state).
      const need = job.generation === 0 ? count : (min ?? count);
      const idle = this.registry
        .idle()
        .sort((a, b) => Number(job.workers.includes(b.id)) - Number(job.workers.includes(a.id)));
      if (idle.length < need) continue;
      if (!(await this.stillValid(job))) continue;
      const gang = idle.slice(0, count);
      const worldSize = gang.length;
      const generation = job.generation + 1;
      const workers = gang.map((w) => w.id);
      gang.forEach((w, rank) => this.registry.assign(w.id, { jobId: job.id, generation, rank }));
      let record: JobRecord;
      try {
        const res = await this.store.update(job.id, (r) => {
          if (r.state !== JobState.Pending || r.generation !== job.generation) return null;
          const fromStep = job.spec.kind === 'TrainJob' ? r.step : 0; // the other kinds start over
          const generations = openGeneration(r.generations, { generation, worldSize, fromStep }, Date.now());
          if (r.generation > 0) return { ...r, state: JobState.Running, generation, workers, error: '', generations };
          return {
            ...r,
            state: JobState.Running,
            generation,
            workers,
            startedAt: Date.now(),
            error: '',
            generations,
            step: 0,
            epoch: 0,
            firstLoss: null,
            lastLoss: null,
            tokensPerSecond: 0,
            elapsedSeconds: 0,
          };
        });
        if (!res.changed) {
          for (const w of gang) this.registry.release(w.id);
          continue;
        }
        record = res.record;
      } catch (e) {
        for (const w of gang) this.registry.release(w.id);
        throw e;
      }
      this.gangs.set(job.id, { generation, worldSize, done: new Set() });
      const specJson = JSON.stringify(record.spec);
      this.logger.info('gang formed', { job: job.id, generation, workers });
      // metrics: job.updatedAt is when the job last became Pending (submitted, or put back).
      this.metrics.gangFormed(job.id, generation, (Date.now() - job.updatedAt) / 1000);
      // The generation's collective key (worker/collective/chunk-mac.ts): in memory and in the
      // assignments only. A coordinator restart puts a Running job back to Pending, so the next
      // gang gets a new generation and a new key; nothing needs it from the store.
      const collectiveKey = randomBytes(COLLECTIVE_KEY_BYTES);
      gang.forEach((w, rank) => {
        this.registry.send(w.id, {
          assignment: {
            jobId: job.id,
            generation,
            rank,
            worldSize,
            specJson,
            natsUrl: this.workerNatsUrl,
            totalSteps: record.totalSteps,
            resume: generation > 1 || record.resume,
            collectiveKey,
          },
        });
      });
    }
    await this.growWorlds();
  }

  /** Re-checks a Pending job's spec against the file system; a job that fails it is set Failed. */
  private async stillValid(job: JobRecord): Promise<boolean> {
    if (!this.revalidate) return true;
    try {
      await this.revalidate(job.spec, job.id);
      return true;
    } catch (e) {
      const error = `refused before running: ${errorMessage(e)}`;
      const { changed } = await this.store.update(job.id, (r) =>
        r.state === JobState.Pending ? { ...r, state: JobState.Failed, error, finishedAt: Date.now() } : null,
      );
      if (changed) this.logger.warn('job failed: its spec no longer passes', { job: job.id, error });
      return false;
    }
  }

  /**
   * A job running below `workers.count` (it lost workers and went on with `min`) whose kind
   * `growsWorld` (a TrainJob: common/job-kinds.ts) takes idle
   * workers in: its world is re-formed with them, and they receive the current state from the
   * others as every new generation does. One job per pass; the re-form asks for the next pass.
   */
  private async growWorlds(): Promise<void> {
    const idle = this.registry.idle();
    if (idle.length === 0) return;
    const running = (await this.store.list()).filter(
      (j) =>
        j.state === JobState.Running &&
        jobKindOf(j.spec).growsWorld &&
        j.workers.length < j.spec.spec.workers.count &&
        // A member that finished its part is idle too, but no newcomer; a finishing job is left alone.
        idle.some((w) => !j.workers.includes(w.id)) &&
        (this.gangs.get(j.id)?.done.size ?? 0) === 0,
    );
    const job = running.sort((a, b) => a.createdAt - b.createdAt)[0];
    if (job) await this.reform(job.id, job.generation, 'growing the world: idle workers join', '');
  }

  private onRegistryEvent(e: RegistryEvent): void {
    switch (e.type) {
      case 'joined':
      case 'idle':
        this.kick();
        return;
      case 'lost':
        this.serial(() => this.onWorkerLost(e.worker, e.reason)).catch((err: unknown) =>
          this.logger.error('handling a lost worker failed', { worker: e.worker.id, error: errorMessage(err) }),
        );
        return;
    }
  }

  private async onWorkerLost(worker: WorkerInfo, reason: string): Promise<void> {
    const ref = worker.job;
    if (!ref || worker.status !== WorkerStatus.Busy) return;
    await this.reform(ref.jobId, ref.generation, `worker ${worker.id} (rank ${ref.rank}) lost: ${reason}`, worker.id);
  }

  /**
   * Re-forms a Running job's world: back to Pending for a new gang, the other members told to leave
   * this generation and freed at once; or Failed after too many re-forms.
   */
  private async reform(jobId: string, generation: number, reason: string, except: string): Promise<void> {
    // NATS may be the part that was lost (workers fail fast when it goes): keep trying until the
    // store answers again, rather than leave the job Running without a world.
    const { record, changed } = await this.untilStored(
      () =>
        this.store.update(jobId, (r) => {
          if (r.state !== JobState.Running || r.generation !== generation) return null;
          if (r.reforms >= this.maxReforms) {
            return {
              ...r,
              state: JobState.Failed,
              error: `${reason}; the world was re-formed ${r.reforms} times already`,
              finishedAt: Date.now(),
              generations: closeGeneration(r.generations, Date.now(), reason),
            };
          }
          return {
            ...r,
            state: JobState.Pending,
            reforms: r.reforms + 1,
            error: reason,
            updatedAt: Date.now(),
            generations: closeGeneration(r.generations, Date.now(), reason),
          };
        }),
      `re-forming ${jobId}`,
    );
    if (!changed) return;
    if (record.state === JobState.Failed) {
      this.logger.warn('job failed: too many re-forms', { job: jobId, reason });
      this.endGang(record, record.error, except);
      return;
    }
    this.logger.warn('re-forming the world', { job: jobId, generation, reason, reforms: record.reforms });
    await this.flushProgress(jobId);
    this.gangs.delete(jobId);
    for (const id of record.workers) {
      if (id === except) continue;
      const w = this.registry.get(id);
      if (!w?.job || w.job.jobId !== jobId || w.job.generation !== generation || w.status !== WorkerStatus.Busy)
        continue;
      this.registry.send(id, { cancel: { jobId, reason: `generation ${generation} ends: ${reason}` } });
      this.registry.release(id);
    }
    this.kick();
  }

  /** Retries a store write every second while the store is unreachable (up to 5 minutes). */
  private async untilStored<T>(write: () => Promise<T>, what: string): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await write();
      } catch (e) {
        if (this.stopping || attempt >= 300 || e instanceof JobNotFoundError) throw e;
        if (attempt === 1) this.logger.warn('the job store is unreachable; retrying', { what, error: errorMessage(e) });
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** Sends Cancel to the gang's workers still on this job (except `except`) and frees them. */
  private endGang(record: JobRecord, reason: string, except: string | undefined): void {
    this.dropJobState(record.id);
    for (const id of record.workers) {
      if (id === except) continue;
      const w = this.registry.get(id);
      if (!w?.job || w.job.jobId !== record.id || w.job.generation !== record.generation) continue;
      if (w.status !== WorkerStatus.Busy) continue;
      this.registry.send(id, { cancel: { jobId: record.id, reason } });
      this.registry.release(id, { drain: true });
    }
  }

  private dropJobState(jobId: string): void {
    const t = this.flushTimers.get(jobId);
    if (t) clearTimeout(t);
    this.flushTimers.delete(jobId);
    this.pendingProgress.delete(jobId);
    this.lastFlush.delete(jobId);
    this.firstLoss.delete(jobId);
    this.gangs.delete(jobId);
    this.ledgerQueue.delete(jobId);
    this.ledgers.delete(jobId);
  }

  /** Worker `workerId` reports progress; rank 0's updates the job (throttled). */
  onProgress(workerId: string, p: Progress__Output): void {
    const w = this.registry.get(workerId);
    if (!w?.job || w.status !== WorkerStatus.Busy || w.job.jobId !== p.jobId || w.job.generation !== p.generation)
      return;
    const jobId = p.jobId;
    // Every rank's report counts for the ledger: the rank that completed a step may be the one that
    // dies next, and its peers then go on from its state (repeats are merged by recordStep).
    const queue = this.ledgerQueue.get(jobId) ?? [];
    queue.push({ generation: p.generation, worldSize: this.gangs.get(jobId)?.worldSize ?? 0, completed: p.step });
    this.ledgerQueue.set(jobId, queue);
    if (w.job.rank !== 0) return;
    if (!this.firstLoss.has(jobId) || this.firstLoss.get(jobId)?.generation !== p.generation) {
      this.firstLoss.set(jobId, { generation: p.generation, loss: p.loss });
    }
    // A report that carries the chosen layers or an evaluation is not lost to the throttle.
    const prev = this.pendingProgress.get(jobId)?.progress;
    const merged = prev
      ? {
          ...p,
          chosenLayers: p.chosenLayers?.length ? p.chosenLayers : prev.chosenLayers,
          evalJson: p.evalJson || prev.evalJson,
        }
      : p;
    this.pendingProgress.set(jobId, { generation: p.generation, progress: merged });
    if (this.flushTimers.has(jobId)) return;
    const wait = Math.max(0, (this.lastFlush.get(jobId) ?? 0) + this.flushMs - Date.now());
    const timer = setTimeout(() => {
      this.flushTimers.delete(jobId);
      this.serial(() => this.flushProgress(jobId)).catch((e: unknown) =>
        this.logger.error('progress write failed', { job: jobId, error: errorMessage(e) }),
      );
    }, wait);
    timer.unref();
    this.flushTimers.set(jobId, timer);
  }

  private async flushProgress(jobId: string): Promise<void> {
    await this.flushLedger(jobId);
    const pending = this.pendingProgress.get(jobId);
    if (!pending) return;
    this.pendingProgress.delete(jobId);
    this.lastFlush.set(jobId, Date.now());
    const p = pending.progress;
    const first = this.firstLoss.get(jobId);
    const finite = (x: number | undefined): number | null => (x !== undefined && Number.isFinite(x) ? x : null);
    await this.store.update(jobId, (r) => {
      if (r.state !== JobState.Running || r.generation !== pending.generation) return null;
      return {
        ...r,
        step: p.step,
        totalSteps: p.totalSteps || r.totalSteps,
        epoch: p.epoch,
        // A non-finite loss (divergence) is kept out of JSON, where it would become null.
        lastLoss: finite(p.loss) ?? r.lastLoss,
        firstLoss: r.firstLoss ?? finite(first?.generation === pending.generation ? first.loss : p.loss),
        tokensPerSecond: p.tokensPerSecond,
        elapsedSeconds: p.elapsedSeconds,
        generations: recordCompute(r.generations, pending.generation, p.elapsedSeconds),
        ...(p.chosenLayers?.length ? { chosenLayers: [...p.chosenLayers] } : {}),
        ...(p.evalJson ? { evalJson: p.evalJson } : {}),
        ...stageOf(r, p),
        lossByLanguage: Object.fromEntries(
          Object.entries(p.lossByLanguage ?? {}).filter(([, v]) => Number.isFinite(v)),
        ),
        ...(Object.keys(p.layerChoices ?? {}).length
          ? { layerChoices: Object.fromEntries(Object.entries(p.layerChoices).map(([l, c]) => [l, [...c.counts]])) }
          : {}),
      };
    });
  }

  private async flushLedger(jobId: string): Promise<void> {
    const queue = this.ledgerQueue.get(jobId);
    if (!this.ledgerStore || !queue || queue.length === 0) return;
    this.ledgerQueue.delete(jobId);
    let ledger = this.ledgers.get(jobId) ?? (await this.ledgerStore.get(jobId));
    for (const q of queue) ledger = recordStep(ledger, q.generation, q.worldSize, q.completed);
    await this.ledgerStore.put(jobId, ledger);
    this.ledgers.set(jobId, ledger);
  }

  /** The job succeeded after `steps`: steps run while no report reached this coordinator are recorded (ledger.ts). */
  private async completeLedger(jobId: string, steps: number): Promise<void> {
    if (!this.ledgerStore || steps <= 0) return;
    const ledger = this.ledgers.get(jobId) ?? (await this.ledgerStore.get(jobId));
    const completed = completeLedger(ledger, steps);
    if (completed === ledger) return;
    await this.ledgerStore.put(jobId, completed);
    this.ledgers.set(jobId, completed);
  }

  /** Worker `workerId` reports the end of its assignment. */
  onResult(workerId: string, res: Result__Output): Promise<void> {
    return this.serial(() => this.handleResult(workerId, res));
  }

  private async handleResult(workerId: string, res: Result__Output): Promise<void> {
    const w = this.registry.get(workerId);
    if (!w?.job || w.job.jobId !== res.jobId || w.job.generation !== res.generation) return;
    const ref = w.job;
    const wasBusy = w.status === WorkerStatus.Busy;
    this.registry.release(workerId);
    if (!wasBusy) return; // a cancelled worker confirming it stopped
    const gang = this.gangs.get(res.jobId);
    if (!res.ok && res.retryable) {
      await this.reform(
        res.jobId,
        ref.generation,
        `rank ${ref.rank} (worker ${workerId}): ${res.error || 'generation failed'}`,
        workerId,
      );
      return;
    }
    if (!res.ok) {
      const error = `rank ${ref.rank} (worker ${workerId}): ${res.error || 'failed without a message'}`;
      const { record, changed } = await this.store.update(res.jobId, (r) => {
        if (r.state !== JobState.Running || r.generation !== ref.generation) return null;
        const generations = closeGeneration(r.generations, Date.now(), error);
        return { ...r, state: JobState.Failed, error, finishedAt: Date.now(), generations };
      });
      if (changed) {
        this.logger.warn('job failed', { job: res.jobId, error });
        this.endGang(record, `job failed: ${error}`, workerId);
      }
      return;
    }
    if (!gang || gang.generation !== ref.generation) return;
    gang.done.add(ref.rank);
    if (ref.rank === 0) gang.rank0 = res;
    const current = await this.store.get(res.jobId);
    if (!current) return;
    if (gang.done.size < current.record.workers.length || !gang.rank0) return;
    const r0 = gang.rank0;
    await this.flushProgress(res.jobId);
    await this.completeLedger(res.jobId, r0.steps);
    const { changed } = await this.store.update(res.jobId, (r) => {
      if (r.state !== JobState.Running || r.generation !== ref.generation) return null;
      return {
        ...r,
        state: JobState.Succeeded,
        step: r0.steps || r.step,
        lastLoss: r0.steps > 0 && Number.isFinite(r0.finalLoss) ? r0.finalLoss : r.lastLoss,
        // The job's first loss: a later generation's Result has its own first step's, not the job's.
        firstLoss:
          ref.generation > 1 && r.firstLoss !== null
            ? r.firstLoss
            : r0.steps > 0 && Number.isFinite(r0.firstLoss)
              ? r0.firstLoss
              : r.firstLoss,
        outputDir: r0.outputDir || r.outputDir,
        ...(r0.chosenLayers?.length ? { chosenLayers: [...r0.chosenLayers] } : {}),
        ...(r0.evalJson ? { evalJson: r0.evalJson } : {}),
        finishedAt: Date.now(),
        generations: closeGeneration(r.generations, Date.now()),
      };
    });
    this.dropJobState(res.jobId);
    if (changed) this.logger.info('job succeeded', { job: res.jobId, steps: r0.steps, finalLoss: r0.finalLoss });
  }

  /** Stops scheduling, writes pending progress, waits for decisions in flight. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.unsubscribe?.();
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    for (const t of this.flushTimers.values()) clearTimeout(t);
    this.flushTimers.clear();
    const jobs = [...this.pendingProgress.keys()];
    await this.serial(async () => {
      for (const id of jobs) {
        try {
          await this.flushProgress(id);
        } catch (e) {
          this.logger.warn('progress write at shutdown failed', { job: id, error: errorMessage(e) });
        }
      }
    });
  }
}
