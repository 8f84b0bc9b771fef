/**
 * LinguaLIFT (Zhang et al., arXiv 2412.12499; no public code): a language alignment layer feeds a
 * frozen multilingual encoder (mT5 / T5 v1.1, common/encoder-config.ts) into the LLM, in two
 * stages that are two entries of `spec.stages` (or one job each):
 *
 *   stage: align   only the alignment layer trains (the LLM and the encoder frozen), on
 *                  code-switched text (`format: codeswitch`);
 *   stage: task    the alignment layer frozen (from the previous stage's `final/lingualift.safetensors`,
 *                  or `alignment.from`), the LLM's selected tensors train (`layers`/`modules`, default all).
 *
 * Where the paper is silent the choices follow its neighbours (MindMerger, LangBridge) and are
 * fields: `alignment.depth` Linear layers with GELU between them (MindMerger's mapping is two),
 * `alignment.hidden` their width (default the LLM's hidden size), `fusion: prepend` (MindMerger:
 * the mapped states, a learned separator, then the LLM's own embeddings of the prompt) or
 * `replace` (LangBridge: the mapped states stand for the prompt). docs/methods.md has the rest.
 */
import { z } from 'zod';
import { join } from 'node:path';
import { readT5Config, t5EncoderParameters, type T5Config } from '../encoder-config.js';
import type { SpecIssue } from '../errors.js';
import { isFile } from '../fs-checks.js';
import type { LlamaConfig } from '../model-config.js';
import { readSafetensorsHeader } from '../safetensors-header.js';
import { pathString, positiveIntAtMost, resolveSpecPath } from '../spec-primitives.js';
import type { MethodContract } from './contract.js';
import { layerDepthIssues, layerSelectionFields, layerTensorNames } from './layer-selection.js';

export const LINGUALIFT_STAGES = ['align', 'task'] as const;
export const LINGUALIFT_FUSIONS = ['prepend', 'replace'] as const;
export const DEFAULT_ALIGNMENT_DEPTH = 2;
/** What a final/ holds the alignment layer in (DESIGN.md: `final/<method>.safetensors`). */
export const LINGUALIFT_MODULES_FILE = 'lingualift.safetensors';

export const lingualiftSchema = z.strictObject({
  name: z.literal('lingualift'),
  /** Which of the two stages this block runs. @default align */
  stage: z.enum(LINGUALIFT_STAGES, { message: `must be one of ${LINGUALIFT_STAGES.join(', ')}` }).default('align'),
  /** The multilingual encoder: an HF directory of an mT5 / T5 v1.1 encoder with its tokenizer.json. */
  encoder: z.strictObject({ path: pathString }),
  alignment: z
    .strictObject({
      /** Linear layers of the MLP, GELU (tanh) between them. @default 2 */
      depth: positiveIntAtMost(8).default(DEFAULT_ALIGNMENT_DEPTH),
      /** Width of its inner layers. @default the LLM's hidden size */
      hidden: positiveIntAtMost(65536).optional(),
      /**
       * An existing alignment layer (a `lingualift.safetensors`) to start from: the way to run only
       * stage `task` (or to align further). @default the model directory's, else the seed's
       */
      from: pathString.optional(),
    })
    .default({ depth: DEFAULT_ALIGNMENT_DEPTH }),
  /** How the mapped states enter the LLM. @default prepend */
  fusion: z.enum(LINGUALIFT_FUSIONS, { message: `must be one of ${LINGUALIFT_FUSIONS.join(', ')}` }).default('prepend'),
  layers: layerSelectionFields.layers,
  modules: layerSelectionFields.modules,
  analysis: z
    .custom<undefined>((v) => v === undefined, { message: 'method lingualift picks no layers by analysis' })
    .optional(),
});
export type LingualiftSpec = z.infer<typeof lingualiftSchema>;

/** Stage align trains no LLM tensor; stage task trains `layers` x `modules` (default: all of them). */
function issues(m: LingualiftSpec, path: string): SpecIssue[] {
  const out: SpecIssue[] = [];
  if (m.stage === 'align') {
    for (const key of ['layers', 'modules'] as const) {
      if (m[key] !== undefined) {
        out.push({
          path: `${path}.${key}`,
          message: 'is only allowed with stage task (stage align trains only the alignment layer)',
        });
      }
    }
  }
  if (m.layers === 'auto')
    out.push({ path: `${path}.layers`, message: 'must list layers (auto is not supported here)' });
  if (Array.isArray(m.layers) && new Set(m.layers).size !== m.layers.length)
    out.push({ path: `${path}.layers`, message: 'must not repeat a layer' });
  return out;
}

/**
 * Metadata keys of `final/lingualift.safetensors`: the encoder's directory, and the cut of the
 * encoder's ids (the job's `maxSeqLen`), for generation and evaluation to read it back.
 */
export const LINGUALIFT_METADATA = { encoder: 'encoder', maxTokens: 'encoder_max_tokens' } as const;

/**
 * An EvalJob's model directory against LinguaLIFT (`at` is `spec.model`): with a
 * `lingualift.safetensors` beside the model, an encoder must be known (`encoder`, else the file's
 * metadata), and `encoder` is a supported encoder; without one, `encoder` is refused. An encoder
 * named only by the file is read by the worker, after checking it against its storage roots.
 */
export async function trainedModelIssues(
  modelDir: string,
  encoder: string | undefined,
  at: string,
): Promise<SpecIssue[]> {
  const file = join(modelDir, LINGUALIFT_MODULES_FILE);
  if (!(await isFile(file))) {
    return encoder === undefined
      ? []
      : [{ path: `${at}.encoder`, message: `is only for a LinguaLIFT model: ${file}: no such file` }];
  }
  let named: string | undefined;
  try {
    named = (await readSafetensorsHeader(file)).metadata[LINGUALIFT_METADATA.encoder];
  } catch (e) {
    return [{ path: `${at}.path`, message: (e as Error).message }];
  }
  if (encoder === undefined) {
    return named === undefined
      ? [{ path: `${at}.encoder`, message: `is required: ${file} names no encoder in its metadata` }]
      : [];
  }
  try {
    await readT5Config(encoder);
    return [];
  } catch (e) {
    return [{ path: `${at}.encoder`, message: (e as Error).message }];
  }
}

/** The alignment layer's file a block starts from, given the stage's model directory (see the schema). */
export function alignmentSource(m: LingualiftSpec, modelDir: string): string {
  return m.alignment.from ?? join(modelDir, LINGUALIFT_MODULES_FILE);
}

/**
 * The alignment layer's tensors and shapes for a block, between an encoder of width `encoderHidden`
 * and an LLM of width `llmHidden`: `alignment.<i>.{weight,bias}` for each of `depth` Linear layers
 * ([out, in], inner width `hidden`, default the LLM's), and `alignment.separator` with `prepend`.
 */
export function alignmentShapes(m: LingualiftSpec, llmHidden: number, encoderHidden: number): Map<string, number[]> {
  const depth = m.alignment.depth;
  const inner = m.alignment.hidden ?? llmHidden;
  const out = new Map<string, number[]>();
  for (let i = 0; i < depth; i++) {
    const fanIn = i === 0 ? encoderHidden : inner;
    const fanOut = i === depth - 1 ? llmHidden : inner;
    out.set(`alignment.${i}.weight`, [fanOut, fanIn]);
    out.set(`alignment.${i}.bias`, [fanOut]);
  }
  if (m.fusion === 'prepend') out.set('alignment.separator', [llmHidden]);
  return out;
}

/**
 * An existing alignment layer (`alignment.from`) against the block, the encoder and the LLM: every
 * tensor by name and shape, read from the file's header. A layer made for another encoder or LLM
 * width cannot be bridged by any field: the message names the file, the tensor and both widths.
 */
async function alignmentFromIssues(
  m: LingualiftSpec,
  from: string,
  llm: LlamaConfig,
  encoder: T5Config,
  path: string,
): Promise<SpecIssue[]> {
  let tensors: ReadonlyMap<string, readonly number[]>;
  try {
    tensors = new Map((await readSafetensorsHeader(from)).tensors.map((t) => [t.name, t.shape]));
  } catch (e) {
    return [{ path, message: (e as Error).message }];
  }
  const widths =
    `the encoder's hidden size is ${encoder.hiddenSize} (${join(m.encoder.path, 'config.json')} d_model), ` +
    `the LLM's ${llm.hiddenSize} (hidden_size)`;
  const out: SpecIssue[] = [];
  const expected = alignmentShapes(m, llm.hiddenSize, encoder.hiddenSize);
  for (const [name, shape] of expected) {
    const got = tensors.get(name);
    if (got === undefined) {
      out.push({ path, message: `${from} (tensor ${name}): missing (depth ${m.alignment.depth}, fusion ${m.fusion})` });
    } else if (got.join(',') !== shape.join(',')) {
      out.push({
        path,
        message: `${from} (tensor ${name}): shape [${got.join(', ')}] does not fit [${shape.join(', ')}]: ${widths}`,
      });
    }
  }
  for (const name of tensors.keys()) {
    if (!expected.has(name))
      out.push({
        path,
        message: `${from} (tensor ${name}): not in this block (depth ${m.alignment.depth}, fusion ${m.fusion})`,
      });
  }
  return out;
}

/**
 * The encoder directory: a supported encoder's config.json (another architecture is refused by
 * name), weights, tokenizer.json; `alignment.from` a file whose tensors fit the encoder and the LLM.
 */
async function fileIssues(m: LingualiftSpec, config: LlamaConfig, path: string): Promise<SpecIssue[]> {
  const out: SpecIssue[] = [];
  const dir = m.encoder.path;
  let encoder: T5Config | undefined;
  try {
    encoder = await readT5Config(dir);
  } catch (e) {
    out.push({ path: `${path}.encoder.path`, message: (e as Error).message });
  }
  if (!(await isFile(join(dir, 'model.safetensors'))) && !(await isFile(join(dir, 'model.safetensors.index.json'))))
    out.push({ path: `${path}.encoder.path`, message: `${dir}: no model.safetensors or model.safetensors.index.json` });
  if (!(await isFile(join(dir, 'tokenizer.json'))))
    out.push({ path: `${path}.encoder.path`, message: `${join(dir, 'tokenizer.json')}: no such file` });
  const from = m.alignment.from;
  if (from !== undefined && !(await isFile(from)))
    out.push({ path: `${path}.alignment.from`, message: `${from}: no such file` });
  else if (from !== undefined && encoder)
    out.push(...(await alignmentFromIssues(m, from, config, encoder, `${path}.alignment.from`)));
  return out;
}

/**
 * Stage task without `alignment.from` carries the alignment layer of the stage before it: that
 * stage must be LinguaLIFT's with the same encoder and the same layer (depth, width, fusion), or
 * the layer's shapes (or the encoder it was trained with) would not be this stage's.
 */
function stageIssues(m: LingualiftSpec, earlier: readonly { readonly name: string }[], path: string): SpecIssue[] {
  if (m.stage !== 'task' || m.alignment.from !== undefined) return [];
  const prev = earlier.at(-1);
  if (prev?.name !== 'lingualift') {
    const before = prev === undefined ? 'there is no stage before it' : `the stage before it is ${prev.name}`;
    return [
      {
        path: `${path}.alignment.from`,
        message: `is required: stage task carries the alignment layer of the stage before it, and ${before}`,
      },
    ];
  }
  const p = prev as LingualiftSpec;
  const fields: [string, unknown, unknown][] = [
    ['encoder.path', p.encoder.path, m.encoder.path],
    ['alignment.depth', p.alignment.depth, m.alignment.depth],
    ['alignment.hidden', p.alignment.hidden ?? "the LLM's", m.alignment.hidden ?? "the LLM's"],
    ['fusion', p.fusion, m.fusion],
  ];
  return fields
    .filter(([, a, b]) => a !== b)
    .map(([field, a, b]) => ({
      path: `${path}.${field}`,
      message:
        `${String(b)} differs from the stage before's ${String(a)}: stage task carries that stage's ` +
        'alignment layer (give alignment.from for another one)',
    }));
}

export const lingualiftContract: MethodContract<LingualiftSpec> = {
  name: 'lingualift',
  schema: lingualiftSchema,
  issues,
  modelIssues: (m, numLayers, path) => layerDepthIssues(m, numLayers, path),
  trainableTensorNames: (m, numLayers, allNames) => {
    if (m.stage === 'align') return [];
    if (m.layers === undefined && m.modules === undefined) return [...allNames];
    const layers = Array.isArray(m.layers) ? m.layers : Array.from({ length: numLayers }, (_, i) => i);
    return layerTensorNames(
      'lingualift',
      layers,
      m.modules ?? ['mlp', 'self_attn', 'input_layernorm', 'post_attention_layernorm'],
      allNames,
    );
  },
  fileIssues,
  stageIssues,
  frozenParameters: async (m) => t5EncoderParameters(await readT5Config(m.encoder.path)),
  resolvePaths: (m, baseDir) => ({
    ...m,
    encoder: { path: resolveSpecPath(m.encoder.path, baseDir) },
    alignment: {
      ...m.alignment,
      ...(m.alignment.from !== undefined ? { from: resolveSpecPath(m.alignment.from, baseDir) } : {}),
    },
  }),
};
