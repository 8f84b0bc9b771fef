/**
 * `worker generate --model DIR --prompt TEXT [--max-new-tokens N] [--json] [--cc-transform]`: greedy
 * generation from a raw prompt (BOS added as the tokenizer config says; no template). With
 * `--cc-transform` (a CC-Tuning job's `final/`): the prompt's own FFN outputs mapped through the
 * Transform Matrix, the Decision Maker's pick injected at the prefill (worker/methods/cctuning.ts).
 * With `--json` one line `{"text": ..., "tokens": N, "finish_reason": "eos"|"stop"|"length"}`.
 */
import { silentLogger, type Logger } from '../../common/logging.js';
import { DEFAULT_MAX_NEW_TOKENS, generate } from '../model/generate.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';
import { ccTransformHooks, loadCcTransform } from '../methods/cctuning.js';

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
  write: (line: string) => void;
  logger?: Logger;
  signal?: AbortSignal;
}

export async function runGenerate(options: GenerateCommandOptions): Promise<{ text: string; ids: number[] }> {
  const model = await LlamaModel.load(options.model, { logger: options.logger ?? silentLogger });
  try {
    const tokenizer = await ModelTokenizer.load(options.model, model.config);
    const cc = options.ccTransform ? await loadCcTransform(options.model, model.config) : undefined;
    const [g] = await generate(model, tokenizer, [options.prompt], {
      maxNewTokens: options.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
      ...(options.stop ? { stop: options.stop } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(cc ? { hooksFor: (prompts) => ccTransformHooks(model, cc, prompts).hooks } : {}),
    });
    if (options.json)
      options.write(JSON.stringify({ text: g!.text, tokens: g!.ids.length, finish_reason: g!.finishReason }));
    else options.write(g!.text);
    return { text: g!.text, ids: g!.ids };
  } finally {
    model.dispose();
  }
}
