/**
 * Debian's `prometheus` package for tests: `promtool` and a real Prometheus server on loopback.
 *
 * scripts/setup.sh installs the package when `promtool` is missing (apt-get, as root). Where apt
 * is not available at all, the suites that need it skip with a message saying so; where apt is
 * available (this Debian machine, CI) a missing promtool is a failure, not a skip.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  const p = r.stdout.trim();
  return r.status === 0 && p ? p : undefined;
}

export interface PromTools {
  promtool: string;
  prometheus: string;
}

/**
 * The binaries, or a reason to skip. Throws (the test fails) when apt-get exists but the package
 * is not installed: `npm test` runs scripts/setup.sh first, which installs it.
 */
export function findPromTools(): PromTools | { skip: string } {
  const promtool = which('promtool');
  const prometheus = which('prometheus');
  if (promtool && prometheus) return { promtool, prometheus };
  if (!which('apt-get')) {
    return {
      skip:
        "promtool/prometheus not found and no apt-get to install Debian's " +
        '`prometheus` package: skipping (install Prometheus 2.x to run this suite)',
    };
  }
  throw new Error(
    "promtool/prometheus not found: run `bash scripts/setup.sh` as root (it installs Debian's `prometheus` package)",
  );
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runTool(bin: string, args: string[], input?: string): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(input ?? '');
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface PrometheusServer {
  readonly url: string;
  /** GET /api/v1/query; the `data.result` vector. */
  query(expr: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>>;
  stop(): Promise<void>;
}

/**
 * Starts Prometheus on 127.0.0.1 with its TSDB in a temporary directory, scraping `targets` (HOST:PORT) every
 * `scrapeInterval`.
 */
export async function startPrometheus(
  bin: string,
  targets: Record<string, string[]>,
  scrapeInterval = '500ms',
): Promise<PrometheusServer> {
  const dir = mkdtempSync(join(tmpdir(), 'polytune-prometheus-'));
  const port = await freePort();
  const jobs = Object.entries(targets).map(
    ([job, ts]) =>
      `  - job_name: ${job}\n    static_configs:\n      - targets: [${ts.map((t) => `'${t}'`).join(', ')}]`,
  );
  writeFileSync(
    join(dir, 'prometheus.yml'),
    `global:\n  scrape_interval: ${scrapeInterval}\n  scrape_timeout: ${scrapeInterval}\n ` +
      ` evaluation_interval: ${scrapeInterval}\nscrape_configs:\n${jobs.join('\n')}\n`,
  );
  let log = '';
  const child: ChildProcess = spawn(
    bin,
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  child.stderr?.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`prometheus exited (${child.exitCode}) at start: ${log}`);
    }
    const ok = await fetch(`${url}/-/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus not ready after 20 s: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    async query(expr) {
      const r = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`);
      const body = (await r.json()) as {
        status: string;
        error?: string;
        data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
      };
      if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error ?? r.status}`);
      return body.data?.result ?? [];
    },
    stop,
  };
}
