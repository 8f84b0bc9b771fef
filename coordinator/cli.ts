#!/usr/bin/env node
/**
 * The `coordinator` command.
 *
 *   coordinator serve [--listen HOST:PORT] [--nats URL] [--metrics-port N] [--metrics-host HOST]
 *   coordinator submit SPEC.yaml [--coordinator HOST:PORT] [--watch] [--local-workers N] [--backend B] [--resume]
 *                      [--languages] [--dry-run]   (plan-command.ts)
 *   coordinator status [JOB] [-o json|yaml|wide] [--json] [--coordinator HOST:PORT]
 *   coordinator watch JOB... [--languages] [--coordinator HOST:PORT]
 *   coordinator cancel JOB [--coordinator HOST:PORT]
 *   coordinator delete JOB [--coordinator HOST:PORT]
 *   coordinator nats-auth init --out DIR
 *   coordinator plan SPEC.yaml [--model-config DIR|config.json] [--json]   (plan-command.ts)
 *
 * Security flags and their env vars: cli-security.ts.
 *
 * The coordinator address defaults to $POLYTUNE_COORDINATOR, else 127.0.0.1:7070; the NATS URL
 * of `serve` to $POLYTUNE_NATS_URL, else nats://127.0.0.1:4222. Exit codes: 0 ok, 1 the job
 * failed or the coordinator is unreachable, 2 a user's mistake (bad spec, unknown job, bad flag).
 * What a person sees (progress, tables, the status block) is in views/.
 */
import { parseArgs } from 'node:util';
import { ExitCode, flagOrEnv, intFlag, runCli, UsageError } from '../common/cli.js';
import { UserError } from '../common/errors.js';
import { storageRootsGiven } from '../common/storage-roots.js';
import { createLogger } from '../common/logging.js';
import { PromMeter, startMetricsServer, type MetricsServer } from '../common/metrics.js';
import { evalTextTables, parseEvalTable } from '../common/eval-table.js';
import { jobKindOf, validateAnyJobSpecFiles } from '../common/job-kinds.js';
import type { JobEvent__Output, Job__Output } from '../proto/index.js';
import { defaultCoordinatorAddress, JobClient, readSpecFile } from './client.js';
import {
  CLIENT_SECURITY_FLAGS,
  clientSecurity,
  natsAuthInit,
  SECURITY_USAGE,
  SERVE_SECURITY_FLAGS,
  serveSecurity,
} from './cli-security.js';
import { CoordinatorStartError } from './errors.js';
import { CoordinatorCallError } from './grpc-errors.js';
import { fromWireState } from './job-record.js';
import { startLocalCluster, type LocalCluster } from './local-cluster.js';
import { DEFAULT_MAX_PENDING_PER_CLIENT, DEFAULT_RETENTION_HOURS } from './scheduler.js';
import { DEFAULT_LISTEN, DEFAULT_NATS_URL, listenHost, startCoordinator, type CoordinatorOptions } from './server.js';
import { PLAN_USAGE, planCommand, printPlan } from './plan-command.js';
import { computeTotalSteps } from './total-steps.js';
import {
  createProgressView,
  formatDuration,
  isLiveTerminal,
  kindOf,
  layerChoiceLines,
  outputFormat,
  stageText,
  stateLine,
  statusBlock,
  statusTable,
  timingsJson,
} from './views/index.js';
import { stringify as toYaml } from 'yaml';

/** DESIGN.md: the coordinator serves Prometheus metrics on 9464 (`--metrics-port 0` picks a free port). */
const DEFAULT_COORDINATOR_METRICS_PORT = 9464;

const USAGE = `usage:
  coordinator serve [--listen HOST:PORT] [--nats URL] [--metrics-port N] [--metrics-host HOST]
                    [--storage-root DIR]... [--retention-hours N] [--max-pending-per-client N]
  coordinator submit SPEC.yaml [--coordinator HOST:PORT] [--watch] [--local-workers N] [--backend B] [--resume]
                     [--languages] [--dry-run]   (--dry-run: print the memory plan, submit nothing)
  coordinator status [JOB] [-o json|yaml|wide] [--json] [--coordinator HOST:PORT]
  coordinator watch JOB... [--languages] [--coordinator HOST:PORT]
  coordinator cancel JOB [--coordinator HOST:PORT]
  coordinator delete JOB [--coordinator HOST:PORT]     (a finished job: its record and ledger)
  coordinator nats-auth init --out DIR
  ${PLAN_USAGE}

--storage-root DIR (repeatable; or $POLYTUNE_STORAGE_ROOTS, ':'-separated): every path a job's spec names
must be under a storage root (directories it writes strictly inside one), links resolved; a spec naming
another path is refused with its field. Unset, any path is allowed (a warning when not on loopback).

The coordinator address defaults to $POLYTUNE_COORDINATOR, else 127.0.0.1:7070.
On a terminal, --watch and watch redraw one line per job; --languages adds the loss per language.

${SECURITY_USAGE}`;

const out = (line: string): void => {
  process.stdout.write(line + '\n');
};

type Flags = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }>;

function parse(
  args: string[],
  options: Flags,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({
      args,
      options: { ...options, help: { type: 'boolean' } },
      strict: true,
      allowPositionals: true,
    });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n${USAGE}`);
  }
}

function stateName(job: Job__Output): string {
  return fromWireState(job.state) ?? job.state;
}

/** The view flags of submit and watch. */
const VIEW_FLAGS = { languages: { type: 'boolean' } } as const satisfies Flags;

/** The JSON form of `status --json`. */
function jobJson(job: Job__Output): Record<string, unknown> {
  return {
    id: job.id,
    name: job.name,
    kind: kindOf(job),
    state: stateName(job),
    step: job.step,
    totalSteps: job.totalSteps,
    lastLoss: job.hasLoss ? job.lastLoss : null,
    firstLoss: job.hasLoss ? job.firstLoss : null,
    tokensPerSecond: job.tokensPerSecond,
    elapsedSeconds: job.elapsedSeconds,
    epoch: job.epoch,
    generation: job.generation,
    workers: job.workers,
    error: job.error || null,
    outputDir: job.outputDir,
    createdAt: job.createdAt ? new Date(job.createdAt).toISOString() : null,
    updatedAt: job.updatedAt ? new Date(job.updatedAt).toISOString() : null,
    startedAt: job.startedAt ? new Date(job.startedAt).toISOString() : null,
    finishedAt: job.finishedAt ? new Date(job.finishedAt).toISOString() : null,
    lossByLanguage: job.lossByLanguage ?? {},
    ...(Object.keys(job.layerChoices ?? {}).length
      ? { layerChoices: Object.fromEntries(Object.entries(job.layerChoices).map(([l, c]) => [l, c.counts])) }
      : {}),
    ...(job.stageCount > 0
      ? { stage: { index: job.stageIndex, count: job.stageCount, name: job.stageName, text: stageText(job) } }
      : {}),
    ...(job.ledgerJson ? { ledger: JSON.parse(job.ledgerJson) as unknown } : {}),
    ...(job.chosenLayers?.length ? { chosenLayers: job.chosenLayers } : {}),
    ...(job.evalJson ? { eval: JSON.parse(job.evalJson) as unknown } : {}),
    timings: timingsJson(job),
  };
}

const fmtLoss = (x: number): string => (Number.isFinite(x) ? x.toFixed(4) : String(x));

function summary(job: Job__Output): string[] {
  const s = stateName(job);
  const seconds =
    job.wallSeconds || (job.startedAt && job.finishedAt ? (job.finishedAt - job.startedAt) / 1000 : job.elapsedSeconds);
  const lost = job.generations.length > 1 ? `, ${formatDuration(job.reformSeconds)} re-forming` : '';
  const compute = formatDuration(job.computeSeconds);
  const lines = [`job ${job.id} ${s} in ${formatDuration(seconds)} (compute ${compute}${lost})`];
  if (job.hasLoss)
    lines.push(`  loss ${fmtLoss(job.firstLoss)} -> ${fmtLoss(job.lastLoss)} over ${job.step}/${job.totalSteps} steps`);
  const stage = stageText(job);
  if (stage) lines.push(`  ${stage}`);
  if (s === 'Succeeded') lines.push(`  output: ${job.outputDir}`);
  if (job.chosenLayers?.length) lines.push(`  chosen layers: ${job.chosenLayers.join(', ')}`);
  const choices = layerChoiceLines(job);
  if (choices.length) lines.push('  Decision Maker choices:', ...choices.map((l) => `    ${l}`));
  if (job.evalJson) {
    const table = parseEvalTable(job.evalJson);
    lines.push(...(table ? evalTextTables(table) : ['  evaluation: the coordinator sent a table that does not parse']));
  }
  if (job.error) lines.push(`  error: ${job.error}`);
  return lines;
}

/**
 * Follows jobs to their end in one progress view (views/progress-view.ts), then prints each one's
 * summary; the exit code says how they ended (the worst of them).
 */
async function follow(
  client: JobClient,
  jobIds: readonly string[],
  signal: AbortSignal,
  extraEnd?: Promise<string>,
  languages = false,
): Promise<number> {
  const view = createProgressView({ live: isLiveTerminal(), write: out, languages });
  const abort = new AbortController();
  const onAbort = (): void => abort.abort();
  signal.addEventListener('abort', onAbort, { once: true });
  let endReason: string | undefined;
  void extraEnd?.then((reason) => {
    endReason = reason;
    abort.abort();
  });
  const lasts = new Map<string, Job__Output>();
  try {
    await Promise.all(
      jobIds.map(async (jobId) => {
        for await (const ev of client.watch(jobId, abort.signal) as AsyncIterable<JobEvent__Output>) {
          const job = ev.job;
          if (!job) continue;
          view.update(ev.kind, job);
          lasts.set(jobId, job);
        }
      }),
    );
  } finally {
    view.done();
    signal.removeEventListener('abort', onAbort);
  }
  if (signal.aborted) {
    for (const jobId of jobIds) process.stderr.write(`interrupted; job ${jobId} keeps its state on the coordinator\n`);
    return 130;
  }
  if (endReason) {
    // Give the coordinator a moment to record the loss of the worker, then report what it says.
    await new Promise((r) => setTimeout(r, 500));
    for (const jobId of jobIds) {
      const job = await client.get(jobId).catch(() => undefined);
      if (job) lasts.set(jobId, job);
    }
    process.stderr.write(`error: ${endReason}\n`);
  }
  let code: number = ExitCode.ok;
  for (const jobId of jobIds) {
    const last = lasts.get(jobId);
    if (!last) {
      code = ExitCode.failure;
      continue;
    }
    for (const line of summary(last)) out(line);
    if (stateName(last) !== 'Succeeded') code = ExitCode.failure;
  }
  return code;
}

async function serve(args: string[], signal: AbortSignal): Promise<number> {
  const { values: v } = parse(args, {
    listen: { type: 'string' },
    nats: { type: 'string' },
    'metrics-port': { type: 'string' },
    'metrics-host': { type: 'string' },
    ...STORE_FLAGS,
    ...SERVE_SECURITY_FLAGS,
  });
  if (v.help) return (out(USAGE), 0);
  const logger = createLogger('coordinator');
  const metricsPort = intFlag(
    'metrics-port',
    v['metrics-port'] as string | undefined,
    DEFAULT_COORDINATOR_METRICS_PORT,
  );
  const listen = (v.listen as string | undefined) ?? DEFAULT_LISTEN;
  // Metrics are served where the gRPC port is, unless told otherwise: `--listen 127.0.0.1:7070`
  // keeps them off the network too (issue 20).
  const metricsHost = flagOrEnv(v, 'metrics-host', 'POLYTUNE_METRICS_HOST') ?? listenHost(listen);
  // The entry point wires prom-client (STYLE.md); the coordinator records through the MetricMeter.
  const meter = new PromMeter({ logger: logger.child('metrics') });
  const coordinator = await startCoordinator({
    listen,
    natsUrl: (v.nats as string | undefined) ?? process.env['POLYTUNE_NATS_URL'] ?? DEFAULT_NATS_URL,
    logger,
    meter,
    ...storeOptions(v),
    ...serveSecurity(v),
  });
  let metrics: MetricsServer;
  try {
    metrics = await startMetricsServer({
      meter,
      port: metricsPort,
      host: metricsHost,
      logger: logger.child('metrics'),
    });
  } catch (e) {
    await coordinator.stop();
    throw new CoordinatorStartError(
      `cannot serve metrics on ${metricsHost} port ${metricsPort}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  logger.info('metrics at /metrics', { url: metrics.url });
  await new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
  await coordinator.stop();
  await metrics.close();
  return 0;
}

async function submit(args: string[], signal: AbortSignal): Promise<number> {
  const { values: v, positionals } = parse(args, {
    coordinator: { type: 'string' },
    watch: { type: 'boolean' },
    'local-workers': { type: 'string' },
    backend: { type: 'string' },
    resume: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    ...VIEW_FLAGS,
    ...CLIENT_SECURITY_FLAGS,
  });
  if (v.help) return (out(USAGE), 0);
  const file = positionals[0];
  if (file === undefined || positionals.length > 1) throw new UsageError(`submit takes one SPEC.yaml\n${USAGE}`);
  // Fast, local errors with field paths before anything starts.
  const spec = await readSpecFile(file);
  if (v['dry-run']) return printPlan(spec, { specFile: file });
  const localWorkers =
    v['local-workers'] === undefined ? 0 : intFlag('local-workers', v['local-workers'] as string, 0, 1);
  if (localWorkers > 0 && localWorkers !== spec.spec.workers.count) {
    throw new UserError(
      `--local-workers ${localWorkers}: the job asks for spec.workers.count = ${spec.spec.workers.count} workers`,
    );
  }
  // An embedded cluster is this machine: its files and data are checked here too, before any process starts.
  if (localWorkers > 0) {
    await validateAnyJobSpecFiles(spec, file);
    await computeTotalSteps(spec);
  }
  let cluster: LocalCluster | undefined;
  let client: JobClient | undefined;
  try {
    if (localWorkers > 0) {
      cluster = await startLocalCluster({
        workers: localWorkers,
        backend: v.backend as string | undefined,
        logger: createLogger('local-cluster', { level: 'error' }),
      });
      out(`local cluster: coordinator ${cluster.coordinatorAddress}, nats ${cluster.natsUrl}, ${localWorkers} workers`);
    }
    // The embedded local cluster runs without security; a remote coordinator gets the flags.
    client = new JobClient(
      cluster
        ? { address: cluster.coordinatorAddress }
        : { address: (v.coordinator as string | undefined) ?? defaultCoordinatorAddress(), ...clientSecurity(v) },
    );
    const { jobId, ...counts } = await client.submitSpec(spec, file, { resume: v.resume === true });
    out(
      `submitted ${jobId}: ` +
        `${jobKindOf(spec).describe(spec, { trainable: counts.trainableParameters, total: counts.totalParameters })}`,
    );
    if (!v.watch && !cluster) return 0;
    const crashed = cluster?.workerExited.then(
      (w) => `local worker ${w.index} exited (code ${w.code ?? 'none'}, signal ${w.signal ?? 'none'})`,
    );
    return await follow(client, [jobId], signal, crashed, v.languages === true);
  } finally {
    client?.close();
    await cluster?.stop();
  }
}

async function status(args: string[]): Promise<number> {
  const { values: v, positionals } = parse(args, {
    coordinator: { type: 'string' },
    json: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
    ...CLIENT_SECURITY_FLAGS,
  });
  if (v.help) return (out(USAGE), 0);
  const format = outputFormat(v.output as string | undefined, v.json as boolean | undefined);
  const client = new JobClient({
    address: (v.coordinator as string | undefined) ?? defaultCoordinatorAddress(),
    ...clientSecurity(v),
  });
  try {
    const id = positionals[0];
    if (id !== undefined) {
      const job = await client.get(id);
      if (format === 'json') out(JSON.stringify(jobJson(job), null, 2));
      else if (format === 'yaml') process.stdout.write(toYaml(jobJson(job)));
      else for (const line of statusBlock(job, Date.now())) out(line);
      return 0;
    }
    const jobs = await client.list();
    const { corruptKeys } = await client.listPage(1);
    if (corruptKeys.length > 0) {
      const n = corruptKeys.length;
      const keys = corruptKeys.join(', ');
      process.stderr.write(`warning: ${n} key(s) of the job store hold no job record and were skipped: ${keys}\n`);
    }
    if (format === 'json') out(JSON.stringify(jobs.map(jobJson), null, 2));
    else if (format === 'yaml') process.stdout.write(toYaml(jobs.map(jobJson)));
    else if (jobs.length === 0) out('no jobs');
    else for (const line of statusTable(jobs, format === 'wide', Date.now())) out(line);
    return 0;
  } finally {
    client.close();
  }
}

async function watch(args: string[], signal: AbortSignal): Promise<number> {
  const { values: v, positionals } = parse(args, {
    coordinator: { type: 'string' },
    ...VIEW_FLAGS,
    ...CLIENT_SECURITY_FLAGS,
  });
  if (v.help) return (out(USAGE), 0);
  if (positionals.length === 0) throw new UsageError(`watch takes a JOB (or several)\n${USAGE}`);
  const client = new JobClient({
    address: (v.coordinator as string | undefined) ?? defaultCoordinatorAddress(),
    ...clientSecurity(v),
  });
  try {
    return await follow(client, [...new Set(positionals)], signal, undefined, v.languages === true);
  } finally {
    client.close();
  }
}

async function cancel(args: string[]): Promise<number> {
  const { values: v, positionals } = parse(args, { coordinator: { type: 'string' }, ...CLIENT_SECURITY_FLAGS });
  if (v.help) return (out(USAGE), 0);
  const id = positionals[0];
  if (id === undefined) throw new UsageError(`cancel takes a JOB\n${USAGE}`);
  const client = new JobClient({
    address: (v.coordinator as string | undefined) ?? defaultCoordinatorAddress(),
    ...clientSecurity(v),
  });
  try {
    out(stateLine(await client.cancel(id)));
    return 0;
  } finally {
    client.close();
  }
}

/** `serve`'s flags of the job store and the files jobs may touch. */
const STORE_FLAGS: Flags = {
  'storage-root': { type: 'string', multiple: true },
  'retention-hours': { type: 'string' },
  'max-pending-per-client': { type: 'string' },
};

type StoreOptions = Pick<CoordinatorOptions, 'storageRoots' | 'retentionHours' | 'maxPendingPerClient'>;

function storeOptions(v: Record<string, unknown>): StoreOptions {
  const int = (flag: string, fallback: number): number => intFlag(flag, v[flag] as string | undefined, fallback, 0);
  return {
    storageRoots: storageRootsGiven(v['storage-root'] as string[] | undefined),
    retentionHours: int('retention-hours', DEFAULT_RETENTION_HOURS),
    maxPendingPerClient: int('max-pending-per-client', DEFAULT_MAX_PENDING_PER_CLIENT),
  };
}

async function deleteJob(args: string[]): Promise<number> {
  const { values: v, positionals } = parse(args, { coordinator: { type: 'string' }, ...CLIENT_SECURITY_FLAGS });
  if (v.help) return (out(USAGE), 0);
  const id = positionals[0];
  if (id === undefined || positionals.length > 1) throw new UsageError(`delete takes one JOB\n${USAGE}`);
  const address = (v.coordinator as string | undefined) ?? defaultCoordinatorAddress();
  const client = new JobClient({ address, ...clientSecurity(v) });
  try {
    const job = await client.delete(id);
    out(`deleted ${job.id} (${stateName(job)})`);
    return 0;
  } finally {
    client.close();
  }
}

async function natsAuth(args: string[]): Promise<number> {
  const { values: v, positionals } = parse(args, { out: { type: 'string' } });
  if (v.help) return (out(USAGE), 0);
  if (positionals[0] !== 'init' || positionals.length !== 1) throw new UsageError(`nats-auth takes "init"\n${USAGE}`);
  if (!v.out) throw new UsageError(`nats-auth init: --out DIR is required\n${USAGE}`);
  const files = await natsAuthInit(v.out as string);
  for (const [name, path] of Object.entries(files)) out(`${name}: ${path}`);
  return 0;
}

async function main(signal: AbortSignal): Promise<number> {
  const [command, ...rest] = process.argv.slice(2);
  try {
    switch (command) {
      case 'serve':
        return await serve(rest, signal);
      case 'submit':
        return await submit(rest, signal);
      case 'status':
        return await status(rest);
      case 'watch':
        return await watch(rest, signal);
      case 'cancel':
        return await cancel(rest);
      case 'delete':
        return await deleteJob(rest);
      case 'nats-auth':
        return await natsAuth(rest);
      case 'plan':
        return await planCommand(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        out(USAGE);
        return command === undefined ? ExitCode.usage : 0;
      default:
        throw new UsageError(`unknown command "${command}"\n${USAGE}`);
    }
  } catch (e) {
    if (e instanceof CoordinatorStartError) {
      process.stderr.write(`error: ${e.message}\n`);
      return ExitCode.failure;
    }
    if (e instanceof CoordinatorCallError) {
      // The server's message names the field or job; a stack would only hide it.
      if (e.isUserMistake) throw new UserError(e.message, { cause: e });
      process.stderr.write(`error: ${e.method}: ${e.message}\n`);
      return ExitCode.failure;
    }
    throw e;
  }
}

void runCli(main);
