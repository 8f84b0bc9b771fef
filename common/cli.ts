/**
 * What both command-line entry points share: how a run ends. A user's mistake (`UserError`)
 * prints its message, which names the field or file, and exits 2 without a stack trace; anything
 * else is a bug or an outage: message and stack, exit 1. SIGINT/SIGTERM abort the signal given to
 * the command, so it can stop its children and flush before exiting.
 */
import { isUserError, UserError } from './errors.js';

export const ExitCode = { ok: 0, failure: 1, usage: 2 } as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export async function runCli(main: (signal: AbortSignal) => Promise<number | void>): Promise<never> {
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) process.exit(130);
    abort.abort(new Error(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let code: number;
  try {
    code = (await main(abort.signal)) ?? ExitCode.ok;
  } catch (e) {
    if (isUserError(e)) {
      process.stderr.write(`error: ${e.message}\n`);
      code = ExitCode.usage;
    } else {
      process.stderr.write(`error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      code = ExitCode.failure;
    }
  }
  process.exit(code);
}

/** A flag's value as parsed (`parseArgs`), else its env var's; an empty one counts as unset. */
export function flagOrEnv(
  values: Readonly<Record<string, string | boolean | undefined>>,
  flag: string,
  env: string,
): string | undefined {
  return (values[flag] as string | undefined) || process.env[env] || undefined;
}

/** Parse an integer flag, naming the flag in the error. */
export function intFlag(name: string, value: string | undefined, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name}: must be an integer >= ${min}, got "${value}"`);
  return n;
}

/** A wrong flag or argument on the command line. */
export class UsageError extends UserError {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
