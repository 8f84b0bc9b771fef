/**
 * Prompts: BOS from tokenizer_config.json, and the `chat` template through the model's own
 * chat_template (@huggingface/jinja), labels -100 on the prompt.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UserError } from '../../../common/errors.js';
import { encodeRecord } from '../../../worker/data/encode.js';
import { bundledTokenizerDir } from '../../../worker/commands/init-model.js';
import { ModelTokenizer } from '../../../worker/model/tokenizer.js';

/** Mistral-7B-Instruct-v0.1's chat template, verbatim. */
const MISTRAL_CHAT =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] " +
  "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}" +
  "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only " +
  "user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const text = (question: string, output: string) => ({ kind: 'text' as const, question, output, language: undefined });

let dir: string;
async function tokenizerWith(name: string, patch: Record<string, unknown>): Promise<ModelTokenizer> {
  const d = join(dir, name);
  await cp(bundledTokenizerDir(), d, { recursive: true });
  const cfgFile = join(d, 'tokenizer_config.json');
  const cfg = JSON.parse(await readFile(cfgFile, 'utf8')) as Record<string, unknown>;
  await writeFile(cfgFile, JSON.stringify({ ...cfg, ...patch }));
  return ModelTokenizer.load(d);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'polytune-prompts-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('prompts', () => {
  it('adds BOS as tokenizer_config.json says', async () => {
    const withBos = await ModelTokenizer.load(bundledTokenizerDir());
    const noBos = await tokenizerWith('nobos', { add_bos_token: false });
    const a = encodeRecord(text('2+2?', '4'), withBos as ModelTokenizer & { eosId: number }, 'slam', 100);
    const b = encodeRecord(text('2+2?', '4'), noBos as ModelTokenizer & { eosId: number }, 'slam', 100);
    expect(a.inputIds[0]).toBe(withBos.bosId);
    expect([...a.inputIds.slice(1)]).toEqual([...b.inputIds]);
    expect(b.inputIds[b.inputIds.length - 1]).toBe(noBos.eosId);
  });

  it(
    'the chat template renders the conversation; the prompt ' + 'is unsupervised, the answer and end of turn are',
    async () => {
      const tok = (await tokenizerWith('chat', { chat_template: MISTRAL_CHAT })) as ModelTokenizer & { eosId: number };
      expect(tok.renderChat([{ role: 'user', content: 'Hi' }], true)).toBe('<s>[INST] Hi [/INST]');
      const s = encodeRecord(text('What is 2+2?', 'It is 4.'), tok, 'chat', 100);
      const full = tok.encode(
        tok.renderChat(
          [
            { role: 'user', content: 'What is 2+2?' },
            { role: 'assistant', content: 'It is 4.' },
          ],
          false,
        ),
        { addBos: false },
      );
      const prompt = tok.encode('<s>[INST] What is 2+2? [/INST]', { addBos: false });
      expect(prompt[0]).toBe(tok.bosId); // BOS comes from the template, once
      expect(prompt[1]).not.toBe(tok.bosId);
      expect(s.inputIds.length).toBe(full.length);
      expect([...s.labels.slice(0, prompt.length)].every((l) => l === -100)).toBe(true);
      const answer = [...s.inputIds.slice(prompt.length)];
      expect([...s.labels.slice(prompt.length)]).toEqual(answer);
      expect(answer).toContain(tok.eosId); // the template's end of turn is supervised
      expect(tok.decode(answer).trim()).toBe('It is 4.'); // the template's trailing ' ' after EOS is kept, as HF does
    },
  );

  it('refuses `chat` for a model without a chat template, and reports raise_exception', async () => {
    const plain = (await ModelTokenizer.load(bundledTokenizerDir())) as ModelTokenizer & { eosId: number };
    expect(() => encodeRecord(text('q', 'a'), plain, 'chat', 100)).toThrow(/no chat_template/);
    const tok = await tokenizerWith('chat2', { chat_template: MISTRAL_CHAT });
    expect(() => tok.renderChat([{ role: 'assistant', content: 'x' }], false)).toThrow(UserError);
    expect(() => tok.renderChat([{ role: 'assistant', content: 'x' }], false)).toThrow(/roles must alternate/);
  });
});
