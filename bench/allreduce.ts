/**
 * `npm run bench:allreduce -- --ranks 4 --mib 256 --json`
 *
 * Starts a nats-server, forks N rank processes (bench/allreduce-rank.ts) and measures, in one run:
 *   1. the broker's ceiling: plain publish/subscribe of exactly the all-reduce's traffic (same
 *      message size, (N-1)/N·S from each rank to single subscribers, S/N from each rank fanned out
 *      to N-1), receivers only counting bytes;
 *   2. the all-reduce in float32 (as the trainer calls it: the last step's result array takes the
 *      next one's; `--fresh-output` for a new array each step, `--in-place` for allReduceInPlace);
 *   3. the all-reduce with fp16 (and bf16 with `--bf16`) on the wire.
 * For each: the median time over `--iters` iterations (after one warm-up), algbw = S/time, busbw =
 * S·2(N-1)/N/time (nccl-tests), and the bytes the server sent (/varz out_bytes delta, per
 * iteration). Broker efficiency = the all-reduce's broker egress rate / the ceiling's. CPU seconds
 * of the ranks and (from /proc) of the server an iteration, and `cpuModel`: the same ratios from
 * those CPU seconds, which other load on the machine moves much less than wall time. Slow
 * consumers from /varz over the whole run. Every iteration's result is checked on samples against
 * the exact expectation and by a CRC that must agree across ranks.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { startNatsServer, type NatsServer } from '../common/nats-server-process.js';
import type { FromRank, RankSetup, ToRank } from './allreduce-protocol.js';

interface Args {
  ranks: number;
  mib: number;
  iters: number;
  maxPayload: number;
  json: boolean;
  bf16: boolean;
  inPlace: boolean;
  freshOutput: boolean;
  windowChunks: number | undefined;
  skipCeiling: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    ranks: 4,
    mib: 256,
    iters: 5,
    maxPayload: 1024 * 1024,
    json: false,
    bf16: false,
    inPlace: false,
    freshOutput: false,
    windowChunks: undefined,
    skipCeiling: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): number => {
      const x = Number(argv[++i]);
      if (!Number.isFinite(x) || x <= 0) throw new Error(`${k}: expects a positive number`);
      return x;
    };
    if (k === '--ranks') a.ranks = v();
    else if (k === '--mib') a.mib = v();
    else if (k === '--iters') a.iters = v();
    else if (k === '--max-payload') a.maxPayload = v();
    else if (k === '--window') a.windowChunks = v();
    else if (k === '--json') a.json = true;
    else if (k === '--bf16') a.bf16 = true;
    else if (k === '--in-place') a.inPlace = true;
    else if (k === '--fresh-output') a.freshOutput = true;
    else if (k === '--skip-ceiling') a.skipCeiling = true;
    else
      throw new Error(
        `unknown argument ${k} (--ranks N --mib M --iters K --max-payload BYTES ` +
          `--window CHUNKS --bf16 --in-place --fresh-output --skip-ceiling --json)`,
      );
  }
  return a;
}

type Done = Extract<FromRank, { type: 'done' }>;

class Ranks {
  readonly children: ChildProcess[] = [];
  #waiters: Array<{
    type: FromRank['type'];
    got: FromRank[];
    resolve: (m: FromRank[]) => void;
    reject: (e: Error) => void;
  }> = [];

  constructor(n: number) {
    const script = join(dirname(fileURLToPath(import.meta.url)), 'allreduce-rank.js');
    for (let r = 0; r < n; r++) {
      const child = fork(script, [], {
        execArgv: process.env['BENCH_RANK_EXEC_ARGV']?.split(' ').filter(Boolean) ?? [],
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      child.on('message', (m: FromRank) => {
        for (const w of this.#waiters) {
          if (w.type === m.type) {
            w.got.push(m);
            if (w.got.length === n) {
              this.#waiters = this.#waiters.filter((x) => x !== w);
              w.resolve(w.got);
            }
            return;
          }
        }
      });
      child.on('exit', (code, signal) => {
        if (code !== 0 && code !== null)
          for (const w of this.#waiters) w.reject(new Error(`rank ${r} exited with ${code ?? signal}`));
      });
      this.children.push(child);
    }
  }

  async all<T extends FromRank>(type: T['type'], send: (rank: number) => ToRank): Promise<T[]> {
    const p = new Promise<FromRank[]>((resolve, reject) => this.#waiters.push({ type, got: [], resolve, reject }));
    this.children.forEach((c, r) => c.send(send(r)));
    return (await p) as T[];
  }

  stop(): void {
    for (const c of this.children) {
      c.send({ type: 'exit' } satisfies ToRank);
      setTimeout(() => c.kill('SIGKILL'), 5000).unref();
    }
  }
}

async function varz(server: NatsServer): Promise<{ outBytes: number; inBytes: number; slowConsumers: number }> {
  const v = await server.monitor('varz');
  return {
    outBytes: Number(v['out_bytes']),
    inBytes: Number(v['in_bytes']),
    slowConsumers: Number(v['slow_consumers']),
  };
}

/** Clock ticks a second of /proc's CPU times. */
const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); undefined elsewhere. */
function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime, stime (fields 14, 15)
  } catch {
    return undefined;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

interface PhaseResult {
  seconds: number;
  secondsAll: number[];
  brokerOutBytes: number;
  brokerOutGBps: number;
  algbwGBps: number;
  busbwGBps: number;
  slowConsumers: number;
  /** CPU seconds (user + system) of all rank processes in one iteration (median): the ranks' work. */
  rankCpuSeconds: number;
  /** CPU seconds of the busiest rank in one iteration (median). */
  rankCpuSecondsMax: number;
  /** CPU seconds of the nats-server in one iteration (median; Linux /proc), the broker's work. */
  brokerCpuSeconds?: number;
  windowStalls?: number;
  verified?: boolean;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const n = args.ranks;
  const elements = Math.floor((args.mib * 1024 * 1024) / 4);
  const bytes = elements * 4;
  const server = await startNatsServer({ maxPayload: args.maxPayload });
  const ranks = new Ranks(n);
  const log = (s: string): void => {
    if (!args.json) process.stderr.write(s + '\n');
  };
  let job = 0;
  const slowStart = (await varz(server)).slowConsumers;
  try {
    const phase = async (mode: 'allreduce' | 'pubsub', compression: RankSetup['compression']): Promise<PhaseResult> => {
      const name = `bench-${process.pid}-${++job}`;
      const keyHex = randomBytes(32).toString('hex');
      const ready = await ranks.all<Extract<FromRank, { type: 'ready' }>>('ready', (rank) => ({
        type: 'setup',
        mode,
        url: server.url,
        job: name,
        rank,
        worldSize: n,
        elements,
        compression,
        keyHex,
        timeoutMs: 600_000,
        inPlace: args.inPlace,
        freshOutput: args.freshOutput,
        windowChunks: args.windowChunks,
        chunkBytes: args.maxPayload,
      }));
      const times: number[] = [];
      const out: number[] = [];
      const cpu: number[] = [];
      const cpuMax: number[] = [];
      const brokerCpu: number[] = [];
      let slow = 0;
      let verified = true;
      let stalls = 0;
      for (let it = 0; it <= args.iters; it++) {
        const before = await varz(server);
        const broker0 = processCpuSeconds(server.pid);
        const done = await ranks.all<Done>('done', () => ({ type: 'run', step: it }));
        const broker1 = processCpuSeconds(server.pid);
        const after = await varz(server);
        const failed = done.filter((d) => !d.ok);
        if (failed.length > 0)
          throw new Error(`${mode} ${compression}: ${failed.map((d) => `rank ${d.rank}: ${d.error}`).join('; ')}`);
        if (mode === 'allreduce') {
          // Checked after every rank is done: a check on one rank would take CPU from the others' timed work.
          const checks = await ranks.all<Extract<FromRank, { type: 'verified' }>>('verified', () => ({
            type: 'verify',
            step: it,
          }));
          const crcs = new Set(checks.map((d) => d.crc));
          const bad = checks.reduce((k, d) => k + d.mismatches, 0);
          if (crcs.size !== 1 || bad > 0) verified = false;
          stalls = done.reduce((k, d) => k + (d.windowStalls ?? 0), 0);
        }
        const t = (Math.max(...done.map((d) => d.end)) - Math.min(...done.map((d) => d.start))) / 1000;
        slow += after.slowConsumers - before.slowConsumers;
        if (it === 0) continue; // warm-up
        times.push(t);
        out.push(after.outBytes - before.outBytes);
        cpu.push(done.reduce((k, d) => k + (d.cpuSeconds ?? 0), 0));
        cpuMax.push(Math.max(...done.map((d) => d.cpuSeconds ?? 0)));
        if (broker0 !== undefined && broker1 !== undefined) brokerCpu.push(broker1 - broker0);
        log(
          `${mode} ${compression} iter ${it}: ${t.toFixed(3)} s, broker out ${(out.at(-1)! / 2 ** 20).toFixed(0)} MiB` +
            (mode === 'allreduce'
              ? ` (chunk ${ready[0]!.chunkElements} elements, window ${ready[0]!.windowChunks})`
              : ''),
        );
      }
      const seconds = median(times);
      const outBytes = median(out);
      return {
        seconds: round(seconds, 4),
        secondsAll: times.map((t) => round(t, 4)),
        brokerOutBytes: outBytes,
        brokerOutGBps: round(outBytes / seconds / 1e9, 3),
        algbwGBps: round(bytes / seconds / 1e9, 3),
        busbwGBps: round((bytes * 2 * (n - 1)) / n / seconds / 1e9, 3),
        slowConsumers: slow,
        rankCpuSeconds: round(median(cpu), 3),
        rankCpuSecondsMax: round(median(cpuMax), 3),
        ...(brokerCpu.length > 0 ? { brokerCpuSeconds: round(median(brokerCpu), 3) } : {}),
        ...(mode === 'allreduce' ? { verified, windowStalls: stalls } : {}),
      };
    };

    const ceiling = args.skipCeiling ? undefined : await phase('pubsub', 'none');
    const fp32 = await phase('allreduce', 'none');
    const fp16 = await phase('allreduce', 'fp16');
    const bf16 = args.bf16 ? await phase('allreduce', 'bf16') : undefined;
    const slowConsumers = (await varz(server)).slowConsumers - slowStart;
    const result = {
      ranks: n,
      mib: args.mib,
      bytes,
      elements,
      iterations: args.iters,
      maxPayload: args.maxPayload,
      inPlace: args.inPlace,
      freshOutput: args.freshOutput,
      machine: { cores: availableParallelism(), cpu: cpus()[0]?.model ?? '?', node: process.version },
      expectedBrokerOutBytes: 2 * (n - 1) * bytes,
      brokerCeiling: ceiling,
      fp32,
      fp16: { ...fp16, fp32EquivalentAlgbwGBps: fp16.algbwGBps, speedupVsFp32: round(fp32.seconds / fp16.seconds, 3) },
      ...(bf16 ? { bf16: { ...bf16, speedupVsFp32: round(fp32.seconds / bf16.seconds, 3) } } : {}),
      brokerEfficiency: ceiling ? round(fp32.brokerOutGBps / ceiling.brokerOutGBps, 3) : undefined,
      // The same two ratios from CPU seconds (ranks + broker) instead of wall time: what they would
      // be with the cores to this run alone, every process busy; other load on the machine moves
      // the wall-time ratios, much less these.
      cpuModel: cpuModel(ceiling, fp32, fp16, (p) => p.brokerCpuSeconds! + p.rankCpuSeconds),
      // And with a core for every process (a rank a node, the broker on its own, as in a cluster):
      // an iteration takes at least what its busiest process needs, the broker or the busiest rank.
      // A model from the CPU seconds measured here, not a measurement.
      coreEachModel: cpuModel(ceiling, fp32, fp16, (p) => Math.max(p.brokerCpuSeconds!, p.rankCpuSecondsMax)),
      slowConsumers,
    };
    process.stdout.write(JSON.stringify(result, null, args.json ? 2 : 2) + '\n');
  } finally {
    ranks.stop();
    await server.stop();
  }
}

/**
 * The two ratios from an iteration's time as `time` models it from the CPU seconds (undefined without the broker's).
 */
function cpuModel(
  ceiling: PhaseResult | undefined,
  fp32: PhaseResult,
  fp16: PhaseResult,
  time: (p: PhaseResult) => number,
): { brokerEfficiency?: number; fp16SpeedupVsFp32: number } | undefined {
  const total = (p: PhaseResult): number | undefined => (p.brokerCpuSeconds === undefined ? undefined : time(p));
  const t32 = total(fp32);
  const t16 = total(fp16);
  if (t32 === undefined || t16 === undefined) return undefined;
  const tc = ceiling ? total(ceiling) : undefined;
  return {
    ...(tc !== undefined ? { brokerEfficiency: round(tc / t32, 3) } : {}),
    fp16SpeedupVsFp32: round(t32 / t16, 3),
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:allreduce: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
