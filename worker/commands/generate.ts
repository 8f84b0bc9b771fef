/**
 * `worker generate --model DIR --prompt TEXT [--max-new-tokens N] [--json] [--cc-transform] [--encoder DIR]`:
 * greedy generation from a raw prompt (BOS added as the tokenizer config says; no template). With
 * `--cc-transform` (a CC-Tuning job's `final/`): the prompt's own FFN outputs mapped through the
 * Transform Matrix, the Decision Maker's pick injected at the prefill (worker/methods/cctuning.ts).
 * A LinguaLIFT job's `final/` (it has `lingualift.safetensors`): the prompt through the encoder
 * (the file's, or `--encoder DIR`) and the alignment layer goes before it at the prefill
 * (worker/methods/lingualift.ts).
 * With `--json` one line `{"text": ..., "tokens": N, "finish_reason": "eos"|"stop"|"length"}`.
 */
import { UserError } from '../../common/errors.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { DEFAULT_MAX_NEW_TOKENS, generate } from '../model/generate.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { ccTransformHooks, loadCcTransform } from '../methods/cctuning.js';
import { transformWithPrefixMessage } from '../../common/methods/cctuning.js';
import { LINGUALIFT_MODULES_FILE } from '../../common/methods/index.js';
import { join } from 'node:path';
import { isFile } from '../../common/fs-checks.js';
import { loadLingualift } from '../methods/lingualift.js';

export interface GenerateCommandOptions {
  model: string;
  prompt: string;
  /** @default DEFAULT_MAX_NEW_TOKENS (128) */
  maxNewTokens?: number;
  /** Stop strings. @default none */
  stop?: readonly string[];
  /** @default false */
  json?: boolean;
  /** CC-Tuning's inference: `final/cctuning.safetensors` of the model directory. @default false */
  ccTransform?: boolean;
  /** LinguaLIFT's encoder directory. @default the one `lingualift.safetensors` names */
  encoder?: string;
  write: (line: string) => void;
  logger?: Logger;
  signal?: AbortSignal;
}

export async function runGenerate(options: GenerateCommandOptions): Promise<{ text: string; ids: number[] }> {
  const model = await LlamaModel.load(options.model, { logger: options.logger ?? silentLogger });
  let lingualift: Awaited<ReturnType<typeof loadLingualift>>;
  try {
    const tokenizer = await ModelTokenizer.load(options.model, model.config);
    const llFile = join(options.model, LINGUALIFT_MODULES_FILE);
    if (options.ccTransform && (await isFile(llFile))) throw new UserError(transformWithPrefixMessage(llFile));
    const cc = options.ccTransform ? await loadCcTransform(options.model, model.config) : undefined;
    lingualift = await loadLingualift(
      options.model,
      model.config,
      tokenizer,
      options.encoder !== undefined ? { encoder: options.encoder } : {},
    );
    const prefixer = lingualift?.prefixer;
    const prefix = prefixer?.prefix([options.prompt]);
    const [g] = await generate(model, tokenizer, [prefixer?.promptIds ?? options.prompt], {
      maxNewTokens: options.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
      ...(options.stop ? { stop: options.stop } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(cc ? { hooksFor: (prompts) => ccTransformHooks(model, cc, prompts).hooks } : {}),
      ...(prefix ? { prefix } : {}),
    }).finally(() => prefix?.vectors.dispose());
    if (options.json)
      options.write(JSON.stringify({ text: g!.text, tokens: g!.ids.length, finish_reason: g!.finishReason }));
    else options.write(g!.text);
    return { text: g!.text, ids: g!.ids };
  } finally {
    lingualift?.dispose();
    model.dispose();
  }
}
