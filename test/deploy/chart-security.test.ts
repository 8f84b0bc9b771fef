/**
 * The chart with security on, end to end as far as it goes without a cluster: real certificates
 * (openssl) and a real `coordinator nats-auth init` setup go into the values (nats-auth.conf
 * pasted under nats.config.merge, as the README says); the rendered pods' env and mounted Secret
 * files are laid out in a temp dir, and then
 * - the coordinator's own reader of its settings (cli-security.ts serveSecurity) accepts them:
 *   TLS with the client CA, two different tokens, its NATS credentials, an issuer for the account;
 * - the workers' settings (the env names worker/cli.ts reads) give TLS with the CA, their client
 *   certificate and the server name, and the worker token;
 * - a real nats-server, given the merged nats.config.merge the way the NATS chart writes its config
 *   (JSON), refuses a client without credentials and lets the coordinator's open its KV bucket.
 * Not covered (no `helm`, the NATS chart is not vendored): that the NATS chart itself renders the
 * merge into its ConfigMap; that Kubernetes mounts the Secrets as laid out here.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { credsAuthenticator } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { loadClientTls, natsTlsFromFlags } from '../../common/tls.js';
import { readToken } from '../../common/token.js';
import { CLIENT_SECURITY_FLAGS, clientSecurity, serveSecurity } from '../../coordinator/cli-security.js';
import { JobStore } from '../../coordinator/job-store.js';
import { createNatsOperatorSetup, type NatsOperatorSetup } from '../../coordinator/nats-credentials.js';
import { natsScope } from '../helpers/nats-server.js';
import { makeTestPki, type TestPki } from '../integration/security-fixtures.js';
import { ROOT, helmRender, mergedValues, render, runRender, type K8sObject } from './helm-render.js';

const bin = helmRender();
const skip = typeof bin === 'string' ? undefined : bin.skip;

type Env = { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } };
type Container = { name: string; env?: Env[]; volumeMounts?: Array<{ name: string; mountPath: string }> };
type Pod = {
  containers: Container[];
  volumes?: Array<{ name: string; secret?: { secretName: string; items: Array<{ key: string; path: string }> } }>;
};
type Workload = K8sObject & { spec: { template: { spec: Pod } } };

const CLIENT_TOKEN = 'client-token-0123456789abcdef';
const WORKER_TOKEN = 'worker-token-0123456789abcdef';

/**
 * A container's env as the process would see it: secret values resolved from the rendered Secrets,
 * mounted secret files written under `root` (paths rewritten to match).
 */
function materialize(objs: K8sObject[], pod: Pod, c: Container, root: string): Record<string, string> {
  const secret = (name: string, key: string): string => {
    const s = objs.find((o) => o.kind === 'Secret' && o.metadata.name === name);
    const b64 = s?.data?.[key];
    if (b64 === undefined) throw new Error(`Secret ${name} has no key ${key}`);
    return Buffer.from(b64, 'base64').toString();
  };
  for (const m of c.volumeMounts ?? []) {
    const v = pod.volumes?.find((x) => x.name === m.name)?.secret;
    for (const item of v?.items ?? []) {
      const file = join(root, m.mountPath, item.path);
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, secret(v!.secretName, item.key), { mode: 0o600 });
    }
  }
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    const ref = e.valueFrom?.secretKeyRef;
    if (ref) env[e.name] = secret(ref.name, ref.key);
    else if (e.value !== undefined) env[e.name] = e.value.startsWith('/etc/polytune/') ? join(root, e.value) : e.value;
  }
  return env;
}

/** Runs `f` with `env` as process.env's POLYTUNE_* variables. */
function withEnv<T>(env: Record<string, string>, f: () => T): T {
  const saved = { ...process.env };
  for (const k of Object.keys(process.env)) if (k.startsWith('POLYTUNE_')) delete process.env[k];
  Object.assign(process.env, env);
  try {
    return f();
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

describe.skipIf(skip !== undefined)('helm/polytune with security on, its settings read by the code', () => {
  const nats = natsScope();
  const dir = mkdtempSync(join(tmpdir(), 'polytune-chart-security-'));
  let pki: TestPki;
  let setup: NatsOperatorSetup;
  let objs: K8sObject[];
  let valuesFile: string;

  beforeAll(async () => {
    pki = makeTestPki();
    setup = await createNatsOperatorSetup();
    // `coordinator nats-auth init --out DIR` writes exactly these; nats-auth.conf is YAML too.
    const conf = setup.serverConfig.join('\n') + '\n';
    const values = {
      auth: { token: CLIENT_TOKEN, workerToken: WORKER_TOKEN },
      tls: {
        enabled: true,
        cert: pki.server.cert.toString(),
        key: pki.server.key.toString(),
        ca: pki.ca.toString(),
        serverName: 'localhost',
        mutual: {
          enabled: true,
          cert: pki.worker.cert.toString(),
          key: pki.worker.key.toString(),
          ca: pki.ca.toString(),
        },
      },
      natsAuth: {
        enabled: true,
        coordinatorCreds: setup.coordinatorCreds,
        accountSigningKey: setup.signingKeySeed + '\n',
        account: setup.account + '\n',
        systemCreds: setup.systemCreds,
        accountJwt: setup.accountJwt + '\n',
        operatorSigningKey: setup.operatorSigningKeySeed + '\n',
      },
      natsTls: {
        enabled: true,
        ca: pki.ca.toString(),
        cert: pki.worker.cert.toString(),
        key: pki.worker.key.toString(),
      },
    };
    valuesFile = join(dir, 'values.yaml');
    // The README's recipe: the lines of nats-auth.conf, indented under nats.config.merge, in a second values file.
    const natsFile = join(dir, 'nats-auth-values.yaml');
    writeFileSync(valuesFile, stringify(values));
    writeFileSync(
      natsFile,
      'nats:\n  config:\n    merge:\n' +
        conf
          .split('\n')
          .filter(Boolean)
          .map((l) => `      ${l}\n`)
          .join(''),
    );
    objs = render(bin as string, ['-f', valuesFile, '-f', natsFile]);
  });
  afterAll(async () => {
    await nats.cleanup();
    pki?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const pod = (kind: string, suffix: string): Pod =>
    (objs.find((o) => o.kind === kind && o.metadata.name.endsWith(suffix)) as Workload).spec.template.spec;

  it(
    'the coordinator: serveSecurity reads TLS with the client CA, ' +
      'both tokens, its NATS credentials and an issuer for the account',
    async () => {
      const p = pod('Deployment', '-coordinator');
      const env = materialize(objs, p, p.containers[0]!, join(dir, 'coordinator'));
      const s = withEnv(env, () => serveSecurity({}));
      expect(s.tls?.cert.toString()).toBe(pki.server.cert.toString());
      expect(s.tls?.key.toString()).toBe(pki.server.key.toString());
      expect(s.tls?.clientCa?.toString()).toBe(pki.ca.toString());
      expect(s.auth).toEqual({ clientToken: CLIENT_TOKEN, workerToken: WORKER_TOKEN, workerIdFromCertificate: false });
      expect(s.natsConnect?.authenticator).toBeDefined();
      expect(s.natsConnect?.tls).toEqual({
        ca: pki.ca.toString(),
        cert: pki.worker.cert.toString(),
        key: pki.worker.key.toString(),
      });
      expect(s.natsIssuer?.account).toBe(setup.account);
      const issued = await s.natsIssuer!.issueWorker('job-1', 'w0');
      expect(issued.creds).toContain('BEGIN NATS USER JWT');
    },
  );

  it(
    "the workers: TLS with the coordinator's CA, their client " +
      'certificate and the server name; the worker token; nothing else',
    () => {
      const p = pod('StatefulSet', '-worker');
      const env = materialize(objs, p, p.containers[0]!, join(dir, 'worker'));
      // The names worker/cli.ts reads, taken from its source.
      const src = readFileSync(join(ROOT, 'worker/cli.ts'), 'utf8');
      const name = (flag: string): string =>
        new RegExp(`flagOrEnv\\(v, '${flag}', '(POLYTUNE_[A-Z_]+)'\\)`).exec(src)![1]!;
      const tokenEnv = /readToken\([^,]+, '(POLYTUNE_[A-Z_]+)'\)/.exec(src)![1]!;
      const { tls, token } = withEnv(env, () => ({
        tls: loadClientTls({
          ca: process.env[name('tls-ca')],
          cert: process.env[name('tls-cert')],
          key: process.env[name('tls-key')],
          serverName: process.env[name('tls-server-name')],
        }),
        token: readToken(undefined, tokenEnv),
      }));
      expect(tls?.ca?.toString()).toBe(pki.ca.toString());
      expect(tls?.cert?.toString()).toBe(pki.worker.cert.toString());
      expect(tls?.key?.toString()).toBe(pki.worker.key.toString());
      expect(tls?.serverName).toBe('localhost');
      expect(token).toBe(WORKER_TOKEN);
      expect(Object.values(env).join('\n')).not.toContain(CLIENT_TOKEN);
      // NATS: the URL and TLS (the same flags as the coordinator's), no credentials (each assignment carries the
      // job's).
      expect(
        Object.keys(env).filter((k) => k.startsWith('POLYTUNE_NATS_') && !k.startsWith('POLYTUNE_NATS_TLS_')),
      ).toEqual(['POLYTUNE_NATS_URL']);
      const natsTls = withEnv(env, () => natsTlsFromFlags({}));
      expect(natsTls).toEqual({
        ca: pki.ca.toString(),
        cert: pki.worker.cert.toString(),
        key: pki.worker.key.toString(),
      });
    },
  );

  it(
    'NOTES.txt: its commands fetch the CA and the client token from ' +
      'the rendered Secrets, and its submit flags reach the server',
    () => {
      const notes = runRender(bin as string, ['-f', valuesFile, '--notes']);
      expect(notes.status, notes.stderr).toBe(0);
      const here = join(dir, 'laptop');
      mkdirSync(here, { recursive: true });
      // kubectl get secret NAME -o jsonpath='{.data.KEY}' | base64 -d > FILE, on the rendered Secrets.
      const fetches = [
        ...notes.stdout.matchAll(
          /kubectl -n \S+ get secret (\S+) -o jsonpath='\{\.data\.([^}]+)\}' \| base64 -d > (\S+)/g,
        ),
      ];
      expect(fetches.map((m) => m[3])).toEqual(['ca.crt', 'token']);
      for (const [, name, key, file] of fetches) {
        const secret = objs.find((o) => o.kind === 'Secret' && o.metadata.name === name);
        const b64 = secret?.data?.[key!.replaceAll('\\.', '.')];
        expect(b64, `${name} ${key}`).toBeDefined();
        writeFileSync(join(here, file!), Buffer.from(b64!, 'base64'));
      }
      const submit = /coordinator submit job\.yaml --coordinator \S+ (.*) --watch/.exec(notes.stdout);
      expect(submit).not.toBeNull();
      const { values } = parseArgs({ args: submit![1]!.split(' '), options: CLIENT_SECURITY_FLAGS, strict: true });
      const files = Object.fromEntries(
        Object.entries(values).map(([k, v]) => [k, k === 'tls-server-name' ? v : join(here, v)]),
      );
      const { tls, token } = withEnv({}, () => clientSecurity(files));
      expect(tls?.ca?.toString()).toBe(pki.ca.toString());
      expect(tls?.serverName).toBe('localhost');
      expect(token).toBe(CLIENT_TOKEN);
    },
  );

  it(
    'nats-server takes nats.config.merge as the NATS chart writes it (JSON): ' +
      "no credentials, no connection; the coordinator's open its KV bucket",
    async () => {
      const merge = (
        mergedValues(bin as string, ['-f', valuesFile, '-f', join(dir, 'nats-auth-values.yaml')])['nats'] as {
          config: { merge: Record<string, unknown> };
        }
      ).config.merge;
      // Merged over the chart's defaults, not replacing them.
      expect(merge['max_payload']).toBe(8 * 1024 * 1024);
      expect(merge['operator']).toBe(parseYaml(setup.serverConfig[0]!)['operator']);
      const server = await nats.start({
        jetstream: true,
        config: Object.entries(merge).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`),
      });
      await expect(nats.connect(server)).rejects.toThrow(/authoriz|authentic/i);
      const p = pod('Deployment', '-coordinator');
      const env = materialize(objs, p, p.containers[0]!, join(dir, 'coordinator-nats'));
      const nc = await nats.connect(server, {
        authenticator: credsAuthenticator(readFileSync(env['POLYTUNE_NATS_CREDS']!)),
      });
      const store = await JobStore.open(nc);
      expect(await store.list()).toEqual([]);
    },
  );
});
