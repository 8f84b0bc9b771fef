/** File-system checks shared by the spec checks (coordinator) and the worker. */
import { stat } from 'node:fs/promises';

/** Whether `path` is a regular file (following links); false when it is missing or unreadable. */
export async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** A failed file operation's errno code (ENOENT, EACCES...), else `fallback`: for messages. */
export const errnoCode = (e: unknown, fallback = 'error'): string => (e as NodeJS.ErrnoException).code ?? fallback;
