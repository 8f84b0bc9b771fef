/**
 * End to end, with real processes from dist/ (built by `npm test`'s pretest): `coordinator submit
 * --local-workers 2 --watch` starts nats-server, a coordinator and two workers, trains a tiny
 * LLaMA with SLAM, and stops them all. Then: the outputs are what DESIGN.md says; a spec with a
 * mistake is refused with its field path; a killed submit leaves no process behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../../worker/model/safetensors.js';

const ROOT = resolve(import.meta.dirname, '../..');
const COORDINATOR = join(ROOT, 'dist/coordinator/cli.js');
const WORKER = join(ROOT, 'dist/worker/cli.js');
let dir: string;

function run(args: string[], timeoutMs = 240_000): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8', timeout: timeoutMs, env: ENV });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function specText(name: string, extra = ''): string {
  return `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ${name} }
spec:
  model: { path: model }
  method: { name: slam, layers: [0, 1, 2, 3, 4, 5] }
  data:
    train: [{ path: data.jsonl, format: alpaca }]
    maxSeqLen: 96
  training:
    maxSteps: 4
    globalBatchSize: 8
    microBatchSize: 2
    optimizer: { name: adamw, lr: 3.0e-3 }
    schedule: { name: cosine, warmupRatio: 0 }
  workers: { count: 2 }
  checkpoint: { everySteps: 2, keep: 2 }
  output: { dir: out-${name} }
${extra}`;
}

/** Every process this test started carries MARKER in its environment, and so do their children. */
const MARKER = `POLYTUNE_E2E_MARKER=${process.pid}-${Date.now()}`;
const ENV = { ...process.env, POLYTUNE_LOG_LEVEL: 'warn', [MARKER.split('=')[0]!]: MARKER.split('=')[1]! };

/** Pids of the live processes (zombies aside) whose environment holds MARKER. */
function markedProcesses(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${entry}/stat`, 'utf8'))) continue;
      if (readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0').includes(MARKER)) pids.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-e2e-'));
  const init = run([WORKER, 'init-model', '--preset', 'tiny', '--out', join(dir, 'model')]);
  expect(init.code, init.stderr).toBe(0);
  const data = run([
    join(ROOT, 'dist/scripts/quickstart-data.js'),
    '--out',
    join(dir, 'data.jsonl'),
    '--per-language',
    '4',
  ]);
  expect(data.code, data.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('coordinator submit --local-workers', () => {
  it('trains with SLAM on 2 worker processes and writes the outputs', async () => {
    await writeFile(join(dir, 'job.yaml'), specText('e2e-slam'));
    const r = run([COORDINATOR, 'submit', 'job.yaml', '--local-workers', '2', '--watch']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/step 4\/4/);
    // The watch view shows the loss per language of each step, e.g. "de 10.21 en 10.25 ...".
    expect(r.stdout).toMatch(
      /step \d+\/4 .*tok\/s.*\b(bn|de|en|es|fr|ja|ru|sw|th|zh) \d+\.\d\d \b(bn|de|en|es|fr|ja|ru|sw|th|zh) \d+\.\d\d/,
    );

    const out = join(dir, 'out-e2e-slam');
    const input = new Map(
      (await readSafetensors(join(dir, 'model', 'model.safetensors'))).tensors.map((t) => [t.name, t.data]),
    );
    const final = new Map(
      (await readSafetensors(join(out, 'final', 'model.safetensors'))).tensors.map((t) => [t.name, t.data]),
    );
    const trained = (await readSafetensors(join(out, 'final', 'trainable.safetensors'))).tensors
      .map((t) => t.name)
      .sort();
    expect(trained).toEqual(
      [0, 1, 2, 3, 4, 5]
        .flatMap((l) => [`model.layers.${l}.mlp.down_proj.weight`, `model.layers.${l}.mlp.up_proj.weight`])
        .sort(),
    );
    for (const [name, x] of input) {
      const y = final.get(name)!;
      expect(
        Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(Buffer.from(x.buffer, x.byteOffset, x.byteLength)),
        name,
      ).toBe(!trained.includes(name));
    }
    const manifest = JSON.parse(await readFile(join(out, 'checkpoints', 'step-00000002', 'manifest.json'), 'utf8')) as {
      files: Record<string, { sha256: string }>;
    };
    expect(Object.keys(manifest.files).sort()).toEqual([
      'optimizer.safetensors',
      'state.json',
      'trainable.safetensors',
    ]);
    expect(markedProcesses()).toEqual([]);
  }, 300_000);

  it('refuses a spec with a mistake, naming the field, without a stack trace', async () => {
    await writeFile(
      join(dir, 'bad.yaml'),
      specText('e2e-bad').replace('lr: 3.0e-3', 'lr: -1').replace('maxSeqLen: 96', 'maxSeqLen: 96\n    tempalte: slam'),
    );
    const r = run([COORDINATOR, 'submit', 'bad.yaml', '--local-workers', '2', '--watch']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('spec.training.optimizer.lr: must be > 0');
    expect(r.stderr).toContain('spec.data.tempalte: unknown field');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('leaves no process behind when the submitting process is killed', async () => {
    await writeFile(join(dir, 'long.yaml'), specText('e2e-killed').replace('maxSteps: 4', 'maxSteps: 1000'));
    const child: ChildProcess = spawn(
      process.execPath,
      [COORDINATOR, 'submit', 'long.yaml', '--local-workers', '2', '--watch'],
      {
        cwd: dir,
        env: ENV,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let seen = '';
    await new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no progress within 120 s:\n${seen}`)), 120_000);
      child.stdout!.on('data', (b: Buffer) => {
        seen += b.toString();
        if (/step 1\//.test(seen)) {
          clearTimeout(t);
          res();
        }
      });
    });
    expect(markedProcesses().length).toBeGreaterThanOrEqual(3);
    child.kill('SIGKILL');
    const deadline = Date.now() + 15_000;
    while (markedProcesses().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    expect(markedProcesses()).toEqual([]);
  }, 200_000);
});
