/**
 * tools/helm-render, the test-only stand-in for `helm template` (Go text/template + sprig from
 * Debian's packages). scripts/setup.sh builds it into .cache/bin/helm-render; this builds it too
 * when it is missing or older than its source, so the suite also runs without `npm test`'s pretest.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CHART = join(ROOT, 'helm', 'polytune');
const BIN = join(ROOT, '.cache', 'bin', 'helm-render');
const SRC = join(ROOT, 'tools', 'helm-render', 'main.go');
const GOPATH = '/usr/share/gocode';

/** The renderer's path, or a reason to skip (no Go or no sprig sources and no apt-get to get them). */
export function helmRender(): string | { skip: string } {
  if (existsSync(BIN) && statSync(BIN).mtimeMs >= statSync(SRC).mtimeMs) return BIN;
  const go = ['go', '/usr/lib/go/bin/go'].find((g) => spawnSync(g, ['version']).status === 0);
  const haveSources =
    existsSync(join(GOPATH, 'src/github.com/Masterminds/sprig')) &&
    existsSync(join(GOPATH, 'src/github.com/ghodss/yaml'));
  if (!go || !haveSources) {
    const apt = spawnSync('sh', ['-c', 'command -v apt-get']).status === 0;
    if (!apt)
      return {
        skip:
          "no Go with Debian's sprig/ghodss-yaml sources to build " +
          'tools/helm-render, and no apt-get: skipping the chart tests',
      };
    throw new Error(
      'tools/helm-render cannot be built: run `bash scripts/setup.sh` as root (it installs ' +
        'golang-go, golang-github-masterminds-sprig-dev, golang-github-ghodss-yaml-dev)',
    );
  }
  mkdirSync(dirname(BIN), { recursive: true });
  execFileSync(go, ['build', '-o', BIN, './tools/helm-render'], {
    cwd: ROOT,
    stdio: 'pipe',
    env: { ...process.env, GO111MODULE: 'off', GOPATH, GOCACHE: join(ROOT, '.cache', 'go-build'), GOFLAGS: '' },
  });
  return BIN;
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
  [k: string]: unknown;
}

export interface RenderResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runRender(bin: string, args: string[]): RenderResult {
  const r = spawnSync(bin, [CHART, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Renders the chart and parses every document; throws with the renderer's message on failure. */
export function render(bin: string, args: string[] = []): K8sObject[] {
  const r = runRender(bin, args);
  if (r.status !== 0) throw new Error(`helm-render failed (${r.status}): ${r.stderr}`);
  return parseAllDocuments(r.stdout).map((d, i) => {
    if (d.errors.length > 0) throw new Error(`document ${i}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as K8sObject;
  });
}

/** The values Helm would pass to the templates (and to the NATS dependency under `nats`). */
export function mergedValues(bin: string, args: string[] = []): Record<string, unknown> {
  const r = runRender(bin, [...args, '--dump-values']);
  if (r.status !== 0) throw new Error(`helm-render --dump-values failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}
