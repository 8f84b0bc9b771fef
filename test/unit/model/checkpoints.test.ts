/**
 * Malformed checkpoints: each is refused at load with a ModelLoadError naming the file (and the
 * tensor, where one is at fault), and through the real `worker score` process with exit code 2 and
 * a one-line message, no stack trace. Every case starts from a copy of the bf16 two-shard golden.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelLoadError } from '../../../common/errors.js';
import { initBackend } from '../../../worker/backend.js';
import { LlamaModel } from '../../../worker/model/llama.js';

const ROOT = join(import.meta.dirname, '..', '..', '..');
const SRC = join(ROOT, 'test', 'golden', 'llama-gqa-bf16-sharded');
const CLI = join(ROOT, 'dist', 'worker', 'cli.js');
const S1 = 'model-00001-of-00002.safetensors';
const S2 = 'model-00002-of-00002.safetensors';
const INDEX = 'model.safetensors.index.json';

type Json = Record<string, unknown>;

/** Rewrites a safetensors file's header through `mutate`, keeping its data bytes. */
async function rewriteHeader(file: string, mutate: (h: Record<string, Json>) => void): Promise<void> {
  const raw = await readFile(file);
  const n = Number(raw.readBigUInt64LE(0));
  const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8')) as Record<string, Json>;
  mutate(header);
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  await writeFile(file, Buffer.concat([len, h, raw.subarray(8 + n)]));
}

async function editJson(file: string, mutate: (j: Json) => void): Promise<void> {
  const j = JSON.parse(await readFile(file, 'utf8')) as Json;
  mutate(j);
  await writeFile(file, JSON.stringify(j));
}

const weightMap = (j: Json): Record<string, string> => j['weight_map'] as Record<string, string>;

/** [what, break the copy in `dir`, the file at fault, what the message must say (tensor included)] */
const CASES: Array<[string, (dir: string) => Promise<void>, string, RegExp]> = [
  ['truncated shard', (d) => truncate(join(d, S2), 30_000), S2, /\(tensor [^)]+\): file is truncated/],
  [
    'header length beyond the file',
    async (d) => {
      const raw = await readFile(join(d, S1));
      raw.writeBigUInt64LE(1_000_000n);
      await writeFile(join(d, S1), raw);
    },
    S1,
    /header length 1000000 exceeds file size/,
  ],
  [
    'header not JSON',
    async (d) => {
      const raw = await readFile(join(d, S1));
      raw.write('{{{{', 8);
      await writeFile(join(d, S1), raw);
    },
    S1,
    /header is not valid JSON/,
  ],
  [
    'unsupported dtype',
    (d) => rewriteHeader(join(d, S1), (h) => void (h['model.layers.0.input_layernorm.weight']!['dtype'] = 'I16')),
    S1,
    /\(tensor model\.layers\.0\.input_layernorm\.weight\): dtype I16 is not supported/,
  ],
  ['missing shard', (d) => unlink(join(d, S2)), S2, /no such file/],
  [
    'shape mismatch with config.json',
    (d) => editJson(join(d, 'config.json'), (j) => void (j['intermediate_size'] = 48)),
    S1,
    /\(tensor model\.layers\.0\.mlp\.gate_proj\.weight\): shape \[64, 32\] does not match config\.json's \[48, 32\]/,
  ],
  [
    'tensor missing from the index',
    (d) => editJson(join(d, INDEX), (j) => void delete weightMap(j)['model.norm.weight']),
    '',
    /\(tensor model\.norm\.weight\): tensor missing from the model files/,
  ],
  [
    'index names a shard that lacks the tensor',
    (d) => editJson(join(d, INDEX), (j) => void (weightMap(j)['model.norm.weight'] = S1)),
    S1,
    /\(tensor model\.norm\.weight\): tensor listed in model\.safetensors\.index\.json is missing from this shard/,
  ],
  [
    'header lies about offsets',
    (d) =>
      rewriteHeader(join(d, S2), (h) => {
        const t = h['model.norm.weight']!;
        const [b, e] = t['data_offsets'] as [number, number];
        t['data_offsets'] = [b - 2, e - 2];
      }),
    S2,
    /data_offsets (overlaps|leaves a gap)|does not match shape/,
  ],
  [
    'header lies about a shape',
    (d) => rewriteHeader(join(d, S2), (h) => void (h['model.norm.weight']!['shape'] = [16])),
    S2,
    /\(tensor model\.norm\.weight\): byte size 64 does not match shape \[16\]/,
  ],
  [
    'unsupported rope scaling',
    (d) => editJson(join(d, 'config.json'), (j) => void (j['rope_scaling'] = { rope_type: 'yarn', factor: 4 })),
    'config.json',
    /rope_scaling type "yarn" is not supported/,
  ],
  [
    'index with a path outside the model',
    (d) => editJson(join(d, INDEX), (j) => void (weightMap(j)['model.norm.weight'] = '../x.safetensors')),
    INDEX,
    /\(tensor model\.norm\.weight\): weight_map entry is not a shard file name/,
  ],
  ['index not JSON', (d) => writeFile(join(d, INDEX), '{"weight_map": '), INDEX, /invalid JSON/],
];

let tmp: string;
beforeAll(async () => {
  await initBackend('wasm');
  tmp = await mkdtemp(join(tmpdir(), 'polytune-bad-'));
  await Promise.all(
    CASES.map(async ([, make], i) => {
      const d = join(tmp, String(i));
      await cp(SRC, d, { recursive: true });
      await make(d);
    }),
  );
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('malformed checkpoints', () => {
  it.each(CASES.map((c, i) => [c[0], i, c[2], c[3]] as const))(
    '%s: a ModelLoadError naming the file and tensor',
    async (_what, i, file, message) => {
      const dir = join(tmp, String(i));
      const err = await LlamaModel.load(dir).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ModelLoadError);
      expect((err as ModelLoadError).file).toBe(join(dir, file));
      expect((err as Error).message).toMatch(message);
    },
  );

  it.skipIf(!existsSync(CLI))(
    'through `worker score`: exit 2 and one line, no stack trace, for every case',
    async () => {
      const run = (dir: string): Promise<{ code: number; stderr: string; stdout: string }> =>
        new Promise((resolve) => {
          execFile(
            process.execPath,
            [CLI, 'score', '--model', dir, '--input', join(dir, 'score.jsonl'), '--json'],
            (e, stdout, stderr) => resolve({ code: e ? ((e as { code?: number }).code ?? -1) : 0, stdout, stderr }),
          );
        });
      const results = await Promise.all(CASES.map((_, i) => run(join(tmp, String(i)))));
      results.forEach((r, i) => {
        const [what, , , message] = CASES[i]!;
        expect(r.code, what).toBe(2);
        expect(r.stdout, what).toBe('');
        const lines = r.stderr
          .split('\n')
          .filter((l) => l.trim() !== '' && !/TensorFlow\.js in Node|tfjs-node|^=+$|Hi, looks like/.test(l));
        expect(lines, what).toHaveLength(1);
        expect(lines[0], what).toMatch(/^error: /);
        expect(lines[0], what).toMatch(message);
        expect(r.stderr, what).not.toMatch(/\n\s+at /);
      });
    },
  );
});
