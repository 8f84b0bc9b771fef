/**
 * LinguaLIFT's bad input refused by a real coordinator at submit (real gRPC, real nats-server), with
 * the field path and the file, before any worker loads anything:
 * - an encoder of another architecture (a LLaMA directory as `encoder.path`), in a single-stage job
 *   and in a stage (`spec.stages[1].method.encoder.path`);
 * - an `alignment.from` layer made for another encoder width or another LLM width (a hidden-size
 *   mismatch no field bridges), read from the file's safetensors header;
 * - an EvalJob on a model with a `lingualift.safetensors` naming no encoder (spec.model.encoder is
 *   then required), an encoder of another architecture, or an encoder for a model without the file;
 * and a layer that fits is taken.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { alignmentShapes, lingualiftSchema } from '../../common/methods/index.js';
import type { NatsServer } from '../../common/nats-server-process.js';
import { JobClient } from '../../coordinator/client.js';
import { CoordinatorCallError } from '../../coordinator/grpc-errors.js';
import type { Coordinator } from '../../coordinator/server.js';
import { ENCODER_PRESET_CONFIGS } from '../../worker/commands/init-encoder.js';
import { writeSafetensors } from '../../worker/model/safetensors.js';
import { makeSpecFixture, startNats, startTestCoordinator, type SpecFixture } from './coordinator-fixtures.js';

/** The fixture model's hidden size (coordinator-fixtures.ts) and the tiny encoder's. */
const LLM_HIDDEN = 8;
const ENCODER_HIDDEN = ENCODER_PRESET_CONFIGS.tiny['d_model'] as number;

describe('coordinator Submit of lingualift: bad input named by path', () => {
  let nats: NatsServer;
  let coord: Coordinator | undefined;
  let client: JobClient;
  let fx: SpecFixture;
  let encoder: string;

  const method = (enc: string, from?: string): string =>
    `{ name: lingualift, stage: align, encoder: { path: ${enc} }, alignment: { depth: 2, hidden: 12` +
    (from ? `, from: ${from} } }` : ' } }');
  const single = (m: string): string => `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ll-submit }
spec:
  model: { path: ${fx.modelDir} }
  method: ${m}
  data: { train: [{ path: ${fx.dataFile}, format: alpaca }] }
  training: { epochs: 1, globalBatchSize: 2, microBatchSize: 1, optimizer: { name: adamw, lr: 0.01 } }
  workers: { count: 1 }
  output: { dir: ${fx.dir}/out }
`;

  /** An alignment layer of zeros for these widths, as `final/lingualift.safetensors` holds one. */
  async function layerFile(name: string, llm: number, enc: number): Promise<string> {
    const m = lingualiftSchema.parse({ name: 'lingualift', encoder: { path: encoder }, alignment: { hidden: 12 } });
    const file = join(fx.dir, name);
    await writeSafetensors(
      file,
      [...alignmentShapes(m, llm, enc)].map(([n, shape]) => ({
        name: n,
        shape,
        data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
      })),
    );
    return file;
  }

  beforeEach(async () => {
    fx = makeSpecFixture();
    // The tiny encoder's config.json; the weights and tokenizer only need to exist for the submit.
    encoder = join(fx.dir, 'encoder');
    mkdirSync(encoder);
    writeFileSync(join(encoder, 'config.json'), JSON.stringify(ENCODER_PRESET_CONFIGS.tiny));
    writeFileSync(join(encoder, 'model.safetensors'), Buffer.alloc(16));
    writeFileSync(join(encoder, 'tokenizer.json'), '{}');
    nats = await startNats();
    coord = await startTestCoordinator(nats);
    client = new JobClient({ address: coord.address, callTimeoutMs: 5_000 });
  });

  afterEach(async () => {
    client.close();
    await coord?.stop();
    await nats.stop();
    fx.cleanup();
  });

  async function refusal(text: string): Promise<string> {
    const err = await client.submitText(text, 'll.yaml').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CoordinatorCallError);
    expect((err as CoordinatorCallError).code).toBe(status.INVALID_ARGUMENT);
    return (err as CoordinatorCallError).message;
  }

  it('refuses an encoder of another architecture with spec.method.encoder.path, also in a stage', async () => {
    const config = join(fx.modelDir, 'config.json');
    expect(await refusal(single(method(fx.modelDir)))).toContain(
      `spec.method.encoder.path: ${config}: model_type "llama" is not a supported encoder`,
    );
    const staged = `apiVersion: polytune/v1
kind: TrainJob
metadata: { name: ll-staged }
spec:
  model: { path: ${fx.modelDir} }
  stages:
    - name: align
      method: ${method(fx.modelDir)}
      data: { train: [{ path: ${fx.dataFile}, format: alpaca }] }
      training: { epochs: 1, globalBatchSize: 2, microBatchSize: 1, optimizer: { name: adamw, lr: 0.01 } }
    - name: task
      method: { name: lingualift, stage: task, encoder: { path: ${fx.modelDir} }, alignment: { hidden: 12 } }
      data: { train: [{ path: ${fx.dataFile}, format: alpaca }] }
      training: { epochs: 1, globalBatchSize: 2, microBatchSize: 1, optimizer: { name: adamw, lr: 0.01 } }
  workers: { count: 1 }
  output: { dir: ${fx.dir}/out }
`;
    // Both stages name it (stage task must carry the align stage's encoder): both are refused.
    const msg = await refusal(staged);
    for (const i of [0, 1]) {
      expect(msg).toContain(
        `spec.stages[${i}].method.encoder.path: ${join(fx.modelDir, 'config.json')}: model_type "llama"`,
      );
    }
    expect(await client.list()).toEqual([]);
  });

  it('refuses alignment.from made for another encoder or LLM width, naming file, tensor and widths', async () => {
    const otherEncoder = await layerFile('enc40.safetensors', LLM_HIDDEN, 40);
    expect(await refusal(single(method(encoder, otherEncoder)))).toContain(
      `spec.method.alignment.from: ${otherEncoder} (tensor alignment.0.weight): shape [12, 40] does not fit ` +
        `[12, ${ENCODER_HIDDEN}]: the encoder's hidden size is ${ENCODER_HIDDEN} ` +
        `(${join(encoder, 'config.json')} d_model), the LLM's ${LLM_HIDDEN} (hidden_size)`,
    );
    const otherLlm = await layerFile('llm16.safetensors', 16, ENCODER_HIDDEN);
    const msg = await refusal(single(method(encoder, otherLlm)));
    expect(msg).toContain(`spec.method.alignment.from: ${otherLlm} (tensor alignment.1.weight): shape [16, 12]`);
    expect(msg).toContain(`${otherLlm} (tensor alignment.separator): shape [16] does not fit [${LLM_HIDDEN}]`);
    // A layer of another depth: the tensors the block lacks and the ones it does not have.
    const m1 = `{ name: lingualift, encoder: { path: ${encoder} }, alignment: { depth: 1, from: ${otherLlm} } }`;
    const deep = await refusal(single(m1));
    expect(deep).toContain(`${otherLlm} (tensor alignment.1.weight): not in this block (depth 1, fusion prepend)`);
    // Not a safetensors file at all: its header's problem, at the same path.
    const junk = join(fx.dir, 'junk.safetensors');
    writeFileSync(junk, 'not a safetensors file');
    expect(await refusal(single(method(encoder, junk)))).toContain(
      `spec.method.alignment.from: ${junk}: invalid header`,
    );
    expect(await client.list()).toEqual([]);
  });

  it('refuses an EvalJob on a LinguaLIFT model without a known encoder, or an encoder it cannot use', async () => {
    const problems = join(fx.dir, 'mgsm_de.tsv');
    writeFileSync(problems, 'Wie viel ist 2 + 2?\t4\n');
    const evalJob = (model: string, enc?: string): string => `apiVersion: polytune/v1
kind: EvalJob
metadata: { name: ll-eval }
spec:
  model: { path: ${model}${enc ? `, encoder: ${enc}` : ''} }
  eval: { sets: [{ path: ${problems}, format: mgsm-tsv, language: de }], maxNewTokens: 4 }
  workers: { count: 1 }
  output: { dir: ${fx.dir}/eval-out }
`;
    // A model without lingualift.safetensors: no encoder to give.
    const none = join(fx.modelDir, 'lingualift.safetensors');
    expect(await refusal(evalJob(fx.modelDir, encoder))).toContain(
      `spec.model.encoder: is only for a LinguaLIFT model: ${none}: no such file`,
    );
    // A layer whose file names no encoder: the spec must.
    const file = await layerFile('model/lingualift.safetensors', LLM_HIDDEN, ENCODER_HIDDEN);
    expect(await refusal(evalJob(fx.modelDir))).toContain(
      `spec.model.encoder: is required: ${file} names no encoder in its metadata`,
    );
    expect(await refusal(evalJob(fx.modelDir, fx.modelDir))).toContain(
      `spec.model.encoder: ${join(fx.modelDir, 'config.json')}: model_type "llama" is not a supported encoder`,
    );
    expect(await client.list()).toEqual([]);
    expect(await client.submitText(evalJob(fx.modelDir, encoder), 'ev.yaml')).toMatch(/^ll-eval/);
  });

  it('takes a layer that fits', async () => {
    const fits = await layerFile('fits.safetensors', LLM_HIDDEN, ENCODER_HIDDEN);
    expect(await client.submitText(single(method(encoder, fits)), 'll.yaml')).toMatch(/^ll-submit/);
  });
});
