/**
 * Directories written whole or not at all, and checked on the way back: a directory is filled
 * under a temporary sibling name and renamed into place; `manifest.json` lists every file with
 * its sha256 and size, and `verifyManifest` refuses a directory whose files do not match it.
 * Single files (reports, charts) are written the same way by `writeFileAtomically`.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Write every file of `dir` into `manifest.json` with its sha256 and size. */
export async function writeManifest(dir: string, extra: Record<string, unknown>): Promise<void> {
  const files: Record<string, { sha256: string; bytes: number }> = {};
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name);
    files[name] = { sha256: await sha256(path), bytes: (await stat(path)).size };
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...extra, files }, null, 2) + '\n');
}

/** Write `file` whole or not at all: a temporary sibling renamed over it. */
export async function writeFileAtomically(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Build `dir` via `fill(tmp)` in a sibling temporary directory, then rename it into place. */
export async function writeDirAtomically(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await fill(tmp);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

export interface Manifest {
  readonly files: Record<string, { sha256: string; bytes: number }>;
  readonly [key: string]: unknown;
}

/** Check every file named by `dir/manifest.json`; returns the manifest, or throws naming the file. */
export async function verifyManifest(dir: string): Promise<Manifest> {
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  } catch (e) {
    throw new Error(`${join(dir, 'manifest.json')}: unreadable (${(e as Error).message})`, { cause: e });
  }
  if (typeof manifest.files !== 'object' || manifest.files === null)
    throw new Error(`${join(dir, 'manifest.json')}: no "files"`);
  for (const [name, want] of Object.entries(manifest.files)) {
    const path = join(dir, name);
    let got: string;
    try {
      got = await sha256(path);
    } catch (e) {
      throw new Error(`${path}: unreadable (${(e as Error).message})`, { cause: e });
    }
    if (got !== want.sha256)
      throw new Error(
        `${path}: sha256 ${got.slice(0, 12)}… does not match the manifest's ${want.sha256.slice(0, 12)}…`,
      );
  }
  return manifest;
}
