/**
 * Bearer tokens read from a file or an env var, checked for shape: shared by the coordinator (which
 * checks them, coordinator/auth.ts), its clients and the workers (which send them).
 */
import { readFileSync } from 'node:fs';
import { UserError } from './errors.js';

/** Tokens shorter than this are refused: they can be guessed. */
export const MIN_TOKEN_LENGTH = 16;
/** Longer tokens are refused (a header is not a place for a file). */
export const MAX_TOKEN_LENGTH = 4096;

/** Checks a token's shape; `what` names its source in the error. */
export function checkToken(token: string, what: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN_LENGTH)
    throw new UserError(`${what}: the token must have at least ${MIN_TOKEN_LENGTH} characters`);
  if (t.length > MAX_TOKEN_LENGTH)
    throw new UserError(`${what}: the token must have at most ${MAX_TOKEN_LENGTH} characters`);
  if (!/^[\x21-\x7e]+$/.test(t)) throw new UserError(`${what}: the token must be printable ASCII without spaces`);
  return t;
}

/**
 * A token from `--token-file FILE` if given, else from the env var, else undefined. The file's
 * content is trimmed (a trailing newline is fine).
 */
export function readToken(file: string | undefined, envVar: string, flag = '--token-file'): string | undefined {
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new UserError(`${flag}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, {
        cause: e,
      });
    }
    return checkToken(text, `${flag} ${file}`);
  }
  const env = process.env[envVar];
  return env ? checkToken(env, `$${envVar}`) : undefined;
}
