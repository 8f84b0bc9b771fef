/**
 * A model's tokenizer: `tokenizer.json` (plus `tokenizer_config.json` when present) through
 * `@huggingface/tokenizers`. BOS/EOS are added here, from the config's `add_bos_token` /
 * `add_eos_token` defaults or the caller's choice, rather than by the tokenizer's post-processor, so
 * that `addBos: false` means exactly that whatever the post-processor template says.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelLoadError, UserError } from '../../common/errors.js';

export interface EncodeOptions {
  /** @default the tokenizer config's `add_bos_token` (true for LLaMA) */
  addBos?: boolean;
  /** @default the tokenizer config's `add_eos_token` (false for LLaMA) */
  addEos?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, pad) from the text. @default true */
  skipSpecial?: boolean;
}

type Json = Record<string, unknown>;

/** One turn of a conversation, as HF chat templates expect it. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/**
 * The model's chat template from tokenizer_config.json: `chat_template` is a string, or a list of
 * `{name, template}` of which `default` is the one used.
 */
function chatTemplateOf(cfg: Json, file: string): string | undefined {
  const t = cfg['chat_template'];
  if (t === undefined || t === null) return undefined;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const d = t.find((x) => typeof x === 'object' && x !== null && (x as Json)['name'] === 'default') as
      Json | undefined;
    if (d && typeof d['template'] === 'string') return d['template'];
  }
  throw new ModelLoadError(file, 'chat_template must be a string or a list with a "default" {name, template}');
}

async function readJson(file: string, optional: boolean): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ModelLoadError(file, (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(e), {
      cause: e,
    });
  }
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (e) {
    throw new ModelLoadError(file, `invalid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** A special token in tokenizer_config.json is a string or an AddedToken object `{content}`. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json)['content'] === 'string')
    return (v as Json)['content'] as string;
  return undefined;
}

export class ModelTokenizer {
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  /** The pad token, else EOS (the usual choice for LLaMA, which has none). */
  readonly padId: number | undefined;
  /** Tokens in the vocabulary, added tokens included. */
  readonly vocabSize: number;
  readonly addBosDefault: boolean;
  readonly addEosDefault: boolean;
  /** The jinja source of the model's chat template, if tokenizer_config.json has one. */
  readonly chatTemplate: string | undefined;
  private compiledChat: Template | undefined;

  private constructor(
    private readonly tok: Tokenizer,
    ids: { bos?: number; eos?: number; pad?: number; addBos: boolean; addEos: boolean; vocabSize: number },
    private readonly specials: { bos?: string; eos?: string; pad?: string; unk?: string; chatTemplate?: string },
  ) {
    this.chatTemplate = specials.chatTemplate;
    this.bosId = ids.bos;
    this.eosId = ids.eos;
    this.padId = ids.pad ?? ids.eos;
    this.addBosDefault = ids.addBos;
    this.addEosDefault = ids.addEos;
    this.vocabSize = ids.vocabSize;
  }

  /**
   * Loads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`. `fallback` supplies
   * BOS/EOS ids from config.json when the tokenizer config does not name them.
   */
  static async load(
    dir: string,
    fallback: { bosTokenId?: number | null; eosTokenId?: number | readonly number[] | null } = {},
  ): Promise<ModelTokenizer> {
    const tokFile = join(dir, 'tokenizer.json');
    const cfgFile = join(dir, 'tokenizer_config.json');
    const json = (await readJson(tokFile, false))!;
    const cfg = (await readJson(cfgFile, true)) ?? {};
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, cfg);
    } catch (e) {
      throw new ModelLoadError(tokFile, `cannot build the tokenizer: ${(e as Error).message}`, { cause: e });
    }
    const idOf = (key: string, dflt: number | null | undefined): number | undefined => {
      const content = tokenContent(cfg[key]);
      if (content !== undefined) {
        const id = tok.token_to_id(content);
        if (id === undefined)
          throw new ModelLoadError(cfgFile, `${key} ${JSON.stringify(content)} is not in the vocabulary`);
        return id;
      }
      return dflt ?? undefined;
    };
    // Without a tokenizer config, LLaMA's conventional <s> / </s> if the vocabulary has them.
    const hasCfg = Object.keys(cfg).length > 0;
    const bos = idOf('bos_token', fallback.bosTokenId ?? (hasCfg ? undefined : tok.token_to_id('<s>')));
    const fallbackEos = Array.isArray(fallback.eosTokenId)
      ? fallback.eosTokenId[0]
      : (fallback.eosTokenId as number | null | undefined);
    const eos = idOf('eos_token', fallbackEos ?? (hasCfg ? undefined : tok.token_to_id('</s>')));
    const pad = idOf('pad_token', undefined);
    const addBos = typeof cfg['add_bos_token'] === 'boolean' ? (cfg['add_bos_token'] as boolean) : bos !== undefined;
    const addEos = typeof cfg['add_eos_token'] === 'boolean' ? (cfg['add_eos_token'] as boolean) : false;
    let maxId = -1;
    for (const id of tok.get_vocab(true).values()) maxId = Math.max(maxId, id);
    const text = (key: string): string | undefined => tokenContent(cfg[key]);
    const chatTemplate = chatTemplateOf(cfg, cfgFile);
    if (chatTemplate !== undefined) {
      try {
        new Template(chatTemplate);
      } catch (e) {
        throw new ModelLoadError(cfgFile, `chat_template does not parse: ${(e as Error).message}`, { cause: e });
      }
    }
    return new ModelTokenizer(
      tok,
      { bos, eos, pad, addBos, addEos, vocabSize: maxId + 1 },
      {
        bos: bos === undefined ? undefined : (text('bos_token') ?? tok.id_to_token(bos)),
        eos: eos === undefined ? undefined : (text('eos_token') ?? tok.id_to_token(eos)),
        pad: text('pad_token'),
        unk: text('unk_token'),
        chatTemplate,
      },
    );
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    if ((options.addBos ?? this.addBosDefault) && this.bosId !== undefined) ids.unshift(this.bosId);
    if ((options.addEos ?? this.addEosDefault) && this.eosId !== undefined) ids.push(this.eosId);
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    return this.tok.decode([...ids], { skip_special_tokens: options.skipSpecial ?? true });
  }

  /**
   * Renders `messages` with the model's chat template, as transformers' `apply_chat_template(...,
   * tokenize=False)` does: `bos_token`, `eos_token` etc. as text, `add_generation_prompt` to end
   * with the assistant's turn opened. The text carries the special tokens itself: encode it with
   * `addBos: false`.
   */
  renderChat(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string {
    if (this.chatTemplate === undefined) throw new UserError('the model has no chat_template in tokenizer_config.json');
    this.compiledChat ??= new Template(this.chatTemplate);
    try {
      return this.compiledChat.render({
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.specials.bos ?? '',
        eos_token: this.specials.eos ?? '',
        pad_token: this.specials.pad ?? '',
        unk_token: this.specials.unk ?? '',
      });
    } catch (e) {
      // Including the template's own raise_exception (a @huggingface/jinja built-in).
      throw new UserError(`chat_template: ${(e as Error).message}`, { cause: e });
    }
  }

  /** The id of a token string, if it is in the vocabulary. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}
