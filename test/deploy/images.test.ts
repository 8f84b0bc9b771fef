/**
 * The Dockerfiles, parsed (no Docker engine here): multi-stage, pinned base images, a non-root
 * numeric USER in the final stage, the GPU worker on CUDA 11.2 + cuDNN 8.1 with
 * @tensorflow/tfjs-node-gpu 4.22.0, and the files the runtime needs copied in.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helm-render.js';

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

/**
 * Instructions (continuation lines joined, comments dropped), ARG defaults substituted into FROM, split into stages.
 */
function parseDockerfile(text: string): { args: Map<string, string>; stages: Stage[] } {
  const lines = text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    const m = /^([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`cannot parse: ${line}`);
    const op = m[1]!.toUpperCase();
    const rest = m[2]!;
    if (op === 'ARG' && stages.length === 0) {
      const [k, v] = rest.split('=');
      args.set(k!, v ?? '');
      continue;
    }
    if (op === 'FROM') {
      const f = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest);
      if (!f) throw new Error(`bad FROM: ${rest}`);
      const image = f[1]!.replace(/\$\{(\w+)\}/g, (_, k: string) => args.get(k) ?? `\${${k}}`);
      stages.push({ from: image, name: f[2], instructions: [] });
      continue;
    }
    stages.at(-1)?.instructions.push({ op, args: rest });
  }
  return { args, stages };
}

const load = (name: string): { args: Map<string, string>; stages: Stage[] } =>
  parseDockerfile(readFileSync(join(ROOT, 'deploy', name), 'utf8'));
const external = (stages: Stage[]): string[] =>
  stages.map((s) => s.from).filter((f) => !stages.some((s) => s.name === f));
const last = <T>(xs: T[]): T => xs[xs.length - 1]!;
const ops = (s: Stage, op: string): string[] => s.instructions.filter((i) => i.op === op).map((i) => i.args);

describe.each(['Dockerfile.coordinator', 'Dockerfile.worker-cpu', 'Dockerfile.worker-gpu'])('%s', (file) => {
  const { stages } = load(file);
  const final = last(stages);

  it('is multi-stage: built in one stage, run from a fresh one', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(
      ops(
        stages.find((s) => s.name === 'build')!,
        'RUN',
      ).join(' '),
    ).toMatch(/npm ci .*&&|npm run build/);
    expect(ops(final, 'RUN').join(' ')).not.toContain('npm run build');
    expect(ops(final, 'COPY').some((c) => c.includes('--from=build'))).toBe(true);
  });

  it('pins every base image to an exact version (no latest, no floating major)', () => {
    for (const image of external(stages)) {
      expect(image, image).not.toMatch(/:latest$|^[^:]+$/);
      expect(image).toMatch(/:(\d+\.\d+\.\d+)[-\w.]*$/);
    }
  });

  it('runs as a numeric non-root user in the final stage', () => {
    const users = ops(final, 'USER');
    expect(users.length).toBeGreaterThan(0);
    const user = last(users);
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(Number(user.split(':')[0])).toBeGreaterThan(0);
  });

  it('ships the compiled code, the production node_modules and the .proto files (loaded at run time)', () => {
    const copies = ops(final, 'COPY').join('\n');
    for (const p of ['/src/dist', 'node_modules', '/src/proto', '/src/package.json']) expect(copies).toContain(p);
    expect(ops(final, 'ENTRYPOINT').length).toBe(1);
  });

  it('has a .dockerignore next to it that keeps node_modules, dist and .git out of the context', () => {
    const ignore = readFileSync(join(ROOT, 'deploy', `${file}.dockerignore`), 'utf8');
    for (const p of ['node_modules', 'dist', '.git']) expect(ignore.split('\n')).toContain(p);
  });
});

describe('images', () => {
  it('Node 22 (LTS) on bookworm-slim for the coordinator and the CPU worker', () => {
    for (const f of ['Dockerfile.coordinator', 'Dockerfile.worker-cpu']) {
      expect(external(load(f).stages)).toEqual(
        expect.arrayContaining([expect.stringMatching(/^node:22\.\d+\.\d+-bookworm-slim$/)]),
      );
    }
    expect(last(load('Dockerfile.coordinator').stages).instructions.find((i) => i.op === 'EXPOSE')?.args).toBe(
      '7070 9464',
    );
  });

  it(
    'the GPU worker runs on the CUDA 11.2 + cuDNN 8.1 runtime ' + 'with Node 22 and @tensorflow/tfjs-node-gpu 4.22.0',
    () => {
      const { stages } = load('Dockerfile.worker-gpu');
      const final = last(stages);
      // nvidia/cuda 11.2.2 "cudnn8" images carry cuDNN 8.1.1, what libtensorflow 2.9.1 was built for.
      expect(final.from).toBe('nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04');
      expect(ops(final, 'COPY')).toContain('--from=node /usr/local/bin/node /usr/local/bin/node');
      expect(stages.find((s) => s.name === 'node')!.from).toMatch(/^node:22\.\d+\.\d+-bookworm-slim$/);
      const tfjs = stages.find((s) => s.name === 'tfjs')!;
      expect(tfjs.from).toBe(final.from);
      expect(ops(tfjs, 'RUN').join(' ')).toContain('@tensorflow/tfjs-node-gpu@4.22.0');
      expect(ops(final, 'COPY')).toContain('--from=tfjs --chown=0:0 /src/node_modules ./node_modules');
      // Ubuntu packages pinned too.
      for (const pkg of ops(tfjs, 'RUN')
        .join(' ')
        .match(/\b(python3|make|g\+\+|ca-certificates)(=\S+)?/g) ?? [])
        expect(pkg).toContain('=');
    },
  );

  it(
    'the GPU image: no dev tools, a libtensorflow mirror and checksum ' +
      'as build arguments, a large CUDA cache on a volume, gpu-check.sh',
    () => {
      const { stages } = load('Dockerfile.worker-gpu');
      const tfjs = stages.find((s) => s.name === 'tfjs')!;
      const install = ops(tfjs, 'RUN').find((r) => r.includes('@tensorflow/tfjs-node-gpu@4.22.0'))!;
      expect(install).toMatch(/npm install --omit=dev /);
      for (const a of ['TFJS_NODE_CDN_STORAGE', 'TFJS_NODE_BASE_URI', 'LIBTENSORFLOW_SHA256']) {
        expect(ops(tfjs, 'ARG'), a).toContain(`${a}=""`);
        expect(install).toContain(`$${a}`);
      }
      expect(install).toContain('sha256sum -c');
      const env = ops(last(stages), 'ENV').join(' ');
      expect(env).toContain('CUDA_CACHE_PATH=/var/cache/cuda');
      expect(Number(/CUDA_CACHE_MAXSIZE=(\d+)/.exec(env)?.[1])).toBeGreaterThanOrEqual(2 ** 31);
      const copies = ops(last(stages), 'COPY').join('\n');
      for (const p of ['scripts/gpu-check.sh', 'test/golden', 'configs/models']) expect(copies).toContain(p);
      expect(readFileSync(join(ROOT, 'deploy/Dockerfile.worker-gpu.dockerignore'), 'utf8').split('\n')).toContain(
        '!test/golden',
      );
    },
  );

  it('workers start through worker-launch.sh: one process per GPU with CUDA_VISIBLE_DEVICES and its local rank', () => {
    for (const f of ['Dockerfile.worker-cpu', 'Dockerfile.worker-gpu']) {
      expect(ops(last(load(f).stages), 'ENTRYPOINT')).toEqual(['["/app/deploy/worker-launch.sh"]']);
    }
    const script = readFileSync(join(ROOT, 'deploy/worker-launch.sh'), 'utf8');
    expect(script).toContain('CUDA_VISIBLE_DEVICES="$i" POLYTUNE_LOCAL_RANK="$i"');
    expect(script).toContain('wait -n');
    expect(statSync(join(ROOT, 'deploy/worker-launch.sh')).mode & 0o111).not.toBe(0);
  });

  it(
    'worker-launch.sh really starts one process per GPU, each with its ' +
      'device, local rank and id, and exits with the first one to stop',
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'polytune-launch-'));
      try {
        const cli = join(dir, 'fake-worker.mjs');
        writeFileSync(
          cli,
          `const e = process.env; console.log(JSON.stringify({ argv: ` +
            `process.argv.slice(2), cuda: e.CUDA_VISIBLE_DEVICES ?? null, rank: e.POLYTUNE_LOCAL_RANK }));
setTimeout(() => process.exit(3), e.POLYTUNE_LOCAL_RANK === '1' ? 800 : 30000);`,
        );
        const r = spawnSync(join(ROOT, 'deploy/worker-launch.sh'), ['--backend', 'tensorflow'], {
          env: {
            ...process.env,
            POLYTUNE_WORKER_CLI: cli,
            POLYTUNE_WORKER_PROCESSES: '3',
            POLYTUNE_WORKER_GPUS: '3',
            POD_NAME: 'w-0',
          },
          encoding: 'utf8',
          timeout: 20_000,
        });
        expect(r.status).toBe(3);
        const lines = r.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { argv: string[]; cuda: string; rank: string })
          .sort((a, b) => a.rank.localeCompare(b.rank));
        expect(lines).toEqual(
          [0, 1, 2].map((i) => ({
            argv: ['--id', `w-0-${i}`, '--backend', 'tensorflow'],
            cuda: String(i),
            rank: String(i),
          })),
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
