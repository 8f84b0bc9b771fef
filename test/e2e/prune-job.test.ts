/**
 * PruneJob end to end with real processes (dist/, built by pretest): a nats-server, a coordinator
 * and 3 workers. The tiny model (8 layers) is pruned at sparsity 0.3 with Swahili-English
 * demonstrations (../shared/data/gsm8k-question-translation), on 1 and 3 workers: the `final/`
 * checkpoints are byte-identical, with exactly floor(columns * 0.3) zeros in every row of every
 * projection and every other weight the input's; `prune-report.json` says so. A worker killed
 * with SIGKILL mid-calibration: the job starts over on the other 2 (the 2-worker case) and ends
 * with the same bytes. A bf16,
 * sharded model comes back bf16 and sharded like its input, survivors bit for bit.
 */
import { cp, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseAnyJobSpec } from '../../common/job-kinds.js';
import { initBackend } from '../../worker/backend.js';
import { runInitModel } from '../../worker/commands/init-model.js';
import { readSafetensors } from '../../worker/model/safetensors.js';
import type { PruneReport } from '../../worker/prune/run-prune.js';
import { processScope, until, type Cluster } from '../helpers/processes.js';

const PAIRS = join(import.meta.dirname, '..', '..', '..', 'shared', 'data', 'gsm8k-question-translation', 'sw-en');
const GOLDEN = join(import.meta.dirname, '..', 'golden');
let dir: string;
const procs = processScope(() => dir);

function specText(name: string, workers: number, min: number, calibration: string, model = 'model'): string {
  return `apiVersion: polytune/v1
kind: PruneJob
metadata: { name: ${name} }
spec:
  model: { path: ${join(dir, model)} }
  prune:
    sparsity: 0.3
    calibration:
      ${calibration}
    features: { topK: 8 }
  workers: { count: ${workers}, min: ${min} }
  output: { dir: ${join(dir, name)} }
`;
}
const [SW, EN] = [join(PAIRS, 'train.sw'), join(PAIRS, 'train.en')];
const SW_EN = `{ path: ${SW}, target: ${EN}, format: parallel, language: sw }`;
const PARALLEL = `sources: [${SW_EN}]
      samples: 24
      shots: 4
      maxSeqLen: 384`;

async function submit(c: Cluster, text: string): Promise<string> {
  const spec = parseAnyJobSpec(text);
  for (let i = 0; ; i++) {
    try {
      return (await c.client.submitSpec(spec, 'job.yaml')).jobId;
    } catch (e) {
      if (i > 50) throw e;
      await new Promise((r) => setTimeout(r, 200)); // the coordinator is still starting
    }
  }
}

async function finished(c: Cluster, id: string): Promise<Awaited<ReturnType<Cluster['client']['get']>>> {
  const job = await until(
    'the job to end',
    async () => {
      const j = await c.client.get(id);
      return ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(j.state as string) ? j : undefined;
    },
    240_000,
  );
  expect(job.state, job.error).toBe('SUCCEEDED');
  expect(job.step).toBe(job.totalSteps);
  return job;
}

/** Every file of `final/` but the marker (it names the job), by name. */
async function finalFiles(name: string): Promise<Map<string, Buffer>> {
  const d = join(dir, name, 'final');
  const out = new Map<string, Buffer>();
  for (const f of (await readdir(d)).sort()) if (f !== '.polytune') out.set(f, await readFile(join(d, f)));
  return out;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-prune-'));
  await initBackend('wasm');
  await runInitModel({ preset: 'tiny', out: join(dir, 'model'), seed: 5, write: () => {} });
  await cp(join(GOLDEN, 'llama-gqa-bf16-sharded'), join(dir, 'bf16'), { recursive: true });
}, 120_000);
afterEach(() => procs.cleanup());
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('PruneJob (real processes)', () => {
  it('1 and 3 workers, and 3 with one SIGKILLed mid-calibration (ending on 2): the same pruned model', async () => {
    const c = await procs.cluster(3);
    for (const w of [1, 3]) await finished(c, await submit(c, specText(`w${w}`, w, w, PARALLEL)));
    const one = await finalFiles('w1');
    expect([...one.keys()]).toEqual([
      'config.json',
      'generation_config.json',
      'model.safetensors',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    const three = await finalFiles('w3');
    expect([...three.keys()]).toEqual([...one.keys()]);
    for (const [f, bytes] of one) expect(three.get(f)!.equals(bytes), `w3/final/${f}`).toBe(true);

    // Exactly floor(cols * 0.3) zeros in every row; every other weight the input's.
    const { tensors: input } = await readSafetensors(join(dir, 'model', 'model.safetensors'));
    const { tensors: pruned } = await readSafetensors(join(dir, 'w1', 'final', 'model.safetensors'));
    for (const t of input) {
      const p = pruned.find((x) => x.name === t.name)!;
      expect(p.shape).toEqual(t.shape);
      if (!/\.(q|k|v|o|gate|up|down)_proj\.weight$/.test(t.name)) {
        expect(Buffer.from(p.data.buffer).equals(Buffer.from(t.data.buffer)), t.name).toBe(true);
        continue;
      }
      // Checked in plain loops, one expect a tensor (an expect a weight took seconds).
      const [rows, cols] = t.shape as [number, number];
      const changed: number[] = [];
      const badRows: string[] = [];
      for (let r = 0; r < rows; r++) {
        let zeros = 0;
        for (let j = r * cols; j < (r + 1) * cols; j++) {
          if (p.data[j] === 0) zeros++;
          else if (!Object.is(p.data[j], t.data[j])) changed.push(j);
        }
        if (zeros !== Math.trunc(cols * 0.3)) badRows.push(`row ${r}: ${zeros} zeros`);
      }
      expect(changed.slice(0, 5), `${t.name}: surviving weights changed`).toEqual([]);
      expect(badRows.slice(0, 5), t.name).toEqual([]);
    }
    const report = JSON.parse(await readFile(join(dir, 'w1', 'prune-report.json'), 'utf8')) as PruneReport;
    expect(report.layers).toHaveLength(8);
    expect(report.calibrationSamples).toBe(24);
    expect(report.layers.every((l) => l.modules.length === 7 && l.features.top.length === 8)).toBe(true);
    expect(report.layers[0]!.modules.find((m) => m.module === 'down_proj')!.sparsity).toBeCloseTo(76 / 256, 12);
    // The plot of the features per layer, SVG and PNG.
    const svg = await readFile(join(dir, 'w1', 'prune-features.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[\s\S]*Large-magnitude features per layer[\s\S]*<\/svg>\s*$/);
    expect((await readFile(join(dir, 'w1', 'prune-features.png'))).subarray(1, 4).toString('ascii')).toBe('PNG');

    // A worker lost mid-calibration: a re-formed world of 2 starts over and ends with the same bytes
    // (which is also the 2-worker case: that world runs the whole job from the input model).
    const id = await submit(c, specText('killed', 3, 2, PARALLEL));
    await until('calibration under way', async () => {
      const j = await c.client.get(id);
      return j.state === 'RUNNING' && j.step >= 1 ? true : undefined;
    });
    c.workers[2]!.kill('SIGKILL');
    const job = await finished(c, id);
    expect(job.generations.length).toBeGreaterThanOrEqual(2);
    expect(job.generations[0]!.worldSize).toBe(3);
    expect(job.generations.at(-1)!.worldSize).toBe(2);
    expect(job.generations.at(-1)!.fromStep).toBe(0);
    const killed = await finalFiles('killed');
    expect([...killed.keys()]).toEqual([...one.keys()]);
    for (const [f, bytes] of one) expect(killed.get(f)!.equals(bytes), `killed/final/${f}`).toBe(true);
  }, 300_000);

  it('a bf16 model in two shards comes back bf16, in the same shards, survivors bit for bit', async () => {
    const c = await procs.cluster(2);
    const calib = `sources: [{ path: ${join(GOLDEN, 'prune', 'calibration.jsonl')}, format: tokenized }]
      samples: 5`;
    await finished(c, await submit(c, specText('bf16-out', 2, 2, calib, 'bf16')));
    const out = join(dir, 'bf16-out', 'final');
    expect((await readdir(out)).sort()).toEqual(
      [
        '.polytune',
        'config.json',
        'model-00001-of-00002.safetensors',
        'model-00002-of-00002.safetensors',
        'model.safetensors.index.json',
      ].sort(),
    );
    for (const shard of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
      const inHeader = await header(join(dir, 'bf16', shard));
      const outHeader = await header(join(out, shard));
      expect(Object.keys(outHeader.tensors).sort()).toEqual(Object.keys(inHeader.tensors).sort());
      for (const [name, info] of Object.entries(inHeader.tensors)) {
        const o = outHeader.tensors[name]!;
        expect(o.dtype).toBe('BF16');
        const a = inHeader.data.subarray(info.data_offsets[0], info.data_offsets[1]);
        const b = outHeader.data.subarray(o.data_offsets[0], o.data_offsets[1]);
        let zeros = 0;
        const changed: number[] = [];
        for (let i = 0; i < a.length; i += 2) {
          const bv = b.readUInt16LE(i);
          if (bv === 0 && a.readUInt16LE(i) !== 0) zeros++;
          else if (bv !== a.readUInt16LE(i)) changed.push(i / 2);
        }
        expect(changed.slice(0, 5), `${name}: surviving weights changed`).toEqual([]);
        expect(zeros > 0).toBe(/_proj\.weight$/.test(name));
      }
    }
  }, 180_000);
});

/** A safetensors file's header and data section. */
async function header(
  file: string,
): Promise<{ tensors: Record<string, { dtype: string; data_offsets: [number, number] }>; data: Buffer }> {
  const buf = await readFile(file);
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  delete h['__metadata__'];
  return {
    tensors: h as Record<string, { dtype: string; data_offsets: [number, number] }>,
    data: buf.subarray(8 + n),
  };
}
