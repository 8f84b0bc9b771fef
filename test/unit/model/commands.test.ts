/** init-model, score and generate end to end on the tiny preset (wasm). */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataFormatError } from '../../../common/errors.js';
import { initBackend } from '../../../worker/backend.js';
import { runGenerate } from '../../../worker/commands/generate.js';
import { runInitModel } from '../../../worker/commands/init-model.js';
import { runScore } from '../../../worker/commands/score.js';
import { readLlamaConfig } from '../../../common/model-config.js';
import { readSafetensors } from '../../../worker/model/safetensors.js';
import { ModelTokenizer } from '../../../worker/model/tokenizer.js';

let dir: string;
let model: string;

beforeAll(async () => {
  await initBackend('wasm');
  dir = await mkdtemp(join(tmpdir(), 'polytune-model-'));
  model = join(dir, 'tiny');
  await runInitModel({ preset: 'tiny', out: model, seed: 7 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('init-model', () => {
  it('writes a loadable tiny LLaMA with the real tokenizer, deterministic in the seed', async () => {
    const c = await readLlamaConfig(model);
    expect(c).toMatchObject({
      modelType: 'llama',
      vocabSize: 32000,
      hiddenSize: 64,
      intermediateSize: 256,
      numHiddenLayers: 8,
    });
    expect(c).toMatchObject({
      numAttentionHeads: 4,
      numKeyValueHeads: 2,
      tieWordEmbeddings: false,
      bosTokenId: 1,
      eosTokenId: 2,
    });
    const tok = await ModelTokenizer.load(model);
    expect(tok.encode('Hello world')).toEqual([1, 22557, 1526]);
    const again = join(dir, 'again');
    await runInitModel({ preset: 'tiny', out: again, seed: 7 });
    expect(
      Buffer.compare(
        await readFile(join(model, 'model.safetensors')),
        await readFile(join(again, 'model.safetensors')),
      ),
    ).toBe(0);
    const { tensors } = await readSafetensors(join(model, 'model.safetensors'));
    const up = tensors.find((t) => t.name === 'model.layers.0.mlp.up_proj.weight')!;
    const std = Math.sqrt(up.data.reduce((s, x) => s + x * x, 0) / up.data.length);
    expect(std).toBeGreaterThan(0.019);
    expect(std).toBeLessThan(0.021);
    expect(tensors.find((t) => t.name === 'model.norm.weight')!.data.every((x) => x === 1)).toBe(true);
  });

  it('refuses an unknown preset', async () => {
    await expect(runInitModel({ preset: 'huge', out: join(dir, 'x') })).rejects.toThrow(/unknown preset "huge"/);
  });
});

describe('score', () => {
  it('prints one JSON line per record with the mean NLL of the supervised tokens', async () => {
    const input = join(dir, 'in.jsonl');
    await writeFile(
      input,
      [
        JSON.stringify({ instruction: 'What is 2+2?', output: '4' }),
        JSON.stringify({ input_ids: [1, 22557, 1526, 2], labels: [-100, -100, 1526, 2] }),
        JSON.stringify({ question: 'Say hi', input: 'politely', answer: 'Hello there' }),
      ].join('\n') + '\n',
    );
    const lines: string[] = [];
    const results = await runScore({ model, input, json: true, write: (l) => lines.push(l) });
    expect(lines.map((l) => JSON.parse(l) as unknown)).toEqual(results);
    expect(results.map((r) => r.index)).toEqual([0, 1, 2]);
    const tok = await ModelTokenizer.load(model);
    // "4" + EOS are supervised, as training does.
    expect(results[0]!.tokens).toBe(tok.encode('4', { addBos: false }).length + 1);
    expect(results[1]!.tokens).toBe(2);
    expect(results[2]!.tokens).toBe(tok.encode('Hello there', { addBos: false }).length + 1);
    // A random init is close to uniform over 32000 tokens: NLL near ln(32000) = 10.37.
    for (const r of results) expect(Math.abs(r.nll! - Math.log(32000))).toBeLessThan(0.5);
  });

  it('names the file and line of a bad record', async () => {
    const input = join(dir, 'bad.jsonl');
    await writeFile(input, '{"input_ids":[1,2],"labels":[1]}\n');
    const err = await runScore({ model, input, json: true, write: () => {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataFormatError);
    expect((err as Error).message).toMatch(/bad\.jsonl:1: input_ids \(2\) and labels \(1\) differ/);
  });
});

describe('generate', () => {
  it('generates greedily from a prompt', async () => {
    const lines: string[] = [];
    const r = await runGenerate({ model, prompt: 'Hello', maxNewTokens: 5, json: true, write: (l) => lines.push(l) });
    expect(r.ids.length).toBeLessThanOrEqual(5);
    const out = JSON.parse(lines[0]!) as { text: string; tokens: number; finish_reason: string };
    expect(out.text).toBe(r.text);
    expect(out.tokens).toBe(r.ids.length);
  });
});
