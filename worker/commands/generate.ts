/**
 * `worker generate --model DIR --prompt TEXT [--max-new-tokens N] [--json]`: greedy generation
 * from a raw prompt (BOS added as the tokenizer config says; no template). With `--json` one line
 * `{"text": ..., "tokens": N, "finish_reason": "eos"|"stop"|"length"}`.
 */
import { silentLogger, type Logger } from '../../common/logging.js';
import { DEFAULT_MAX_NEW_TOKENS, generate } from '../model/generate.js';
import { LlamaModel } from '../model/llama.js';
import { ModelTokenizer } from '../model/tokenizer.js';

export interface GenerateCommandOptions {
  model: string;
  prompt: string;
  /** @default DEFAULT_MAX_NEW_TOKENS (128) */
  maxNewTokens?: number;
  /** Stop strings. @default none */
  stop?: readonly string[];
  /** @default false */
  json?: boolean;
  write: (line: string) => void;
  logger?: Logger;
  signal?: AbortSignal;
}

export async function runGenerate(options: GenerateCommandOptions): Promise<{ text: string; ids: number[] }> {
  const model = await LlamaModel.load(options.model, { logger: options.logger ?? silentLogger });
  try {
    const tokenizer = await ModelTokenizer.load(options.model, model.config);
    const [g] = await generate(model, tokenizer, [options.prompt], {
      maxNewTokens: options.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
      ...(options.stop ? { stop: options.stop } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (options.json)
      options.write(JSON.stringify({ text: g!.text, tokens: g!.ids.length, finish_reason: g!.finishReason }));
    else options.write(g!.text);
    return { text: g!.text, ids: g!.ids };
  } finally {
    model.dispose();
  }
}
