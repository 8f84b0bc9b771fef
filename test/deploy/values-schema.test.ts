/**
 * values.schema.json accepts the chart's values and refuses bad ones, as `helm install` would (validated with ajv on
 * Helm's merged values).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { CHART, ROOT, helmRender, mergedValues } from './helm-render.js';

const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8')) as object;
const validate = new Ajv({ allErrors: true, allowUnionTypes: true }).compile(schema);
const bin = helmRender();
const skip = typeof bin === 'string' ? undefined : bin.skip;
const dir = mkdtempSync(join(tmpdir(), 'polytune-values-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Helm validates the merged values: the chart's defaults with the user's file over them. */
function merged(user: object): unknown {
  const file = join(dir, `v-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, stringify(user));
  return mergedValues(bin as string, ['-f', file]);
}
const errors = (): string[] => (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);

describe('values.schema.json', () => {
  it('accepts the default values', () => {
    expect(validate(parseYaml(readFileSync(join(CHART, 'values.yaml'), 'utf8'))), errors().join('\n')).toBe(true);
  });

  it.skipIf(skip !== undefined)('accepts every option on', () => {
    expect(
      validate(
        merged(parseYaml(readFileSync(join(ROOT, 'test/deploy/fixtures/values-all-on.yaml'), 'utf8')) as object),
      ),
      errors().join('\n'),
    ).toBe(true);
  });

  it.skipIf(skip !== undefined)(
    'accepts both tokens from an existing Secret, and the worker token alone with it',
    () => {
      expect(validate(merged({ auth: { existingSecret: 'my-tokens' } })), errors().join('\n')).toBe(true);
      expect(
        validate(merged({ auth: { existingSecret: 'my-tokens', workerToken: 'ignored-token-0123456789' } })),
        errors().join('\n'),
      ).toBe(true);
    },
  );

  const bad: Array<[string, object, string]> = [
    ['an unknown top-level key', { replicas: 3 }, 'must NOT have additional properties'],
    ['a typo in a nested key', { worker: { replica: 3 } }, 'must NOT have additional properties'],
    ['zero processes per pod', { worker: { processesPerPod: 0 } }, '/worker/processesPerPod must be >= 1'],
    ['a relative storage root', { storageRoots: ['data'] }, '/storageRoots/0 must match pattern'],
    ['storage roots by kind (the old form)', { storageRoots: { data: ['/data'] } }, '/storageRoots must be array'],
    ['processes per pod as a string', { worker: { processesPerPod: '8' } }, '/worker/processesPerPod must be integer'],
    [
      'an unknown backend',
      { worker: { backend: 'cuda' } },
      '/worker/backend must be equal to one of the allowed values',
    ],
    [
      'the tensorflow backend without GPUs',
      { worker: { gpu: { enabled: false } } },
      '/worker/gpu/enabled must be equal to constant',
    ],
    ['a port out of range', { coordinator: { grpcPort: 70000 } }, '/coordinator/grpcPort must be <= 65535'],
    [
      'a bad pull policy',
      { image: { pullPolicy: 'Sometimes' } },
      '/image/pullPolicy must be equal to one of the allowed values',
    ],
    ['a bad storage size', { persistence: { size: '10 GB' } }, '/persistence/size must match pattern'],
    [
      'a bad scrape interval',
      { metrics: { serviceMonitor: { interval: '15 seconds' } } },
      '/metrics/serviceMonitor/interval must match pattern',
    ],
    [
      'an unknown gang scheduler',
      { gangScheduling: { mode: 'yunikorn' } },
      '/gangScheduling/mode must be equal to one of the allowed values',
    ],
    [
      'kueue without a queue',
      { gangScheduling: { mode: 'kueue' } },
      '/gangScheduling/kueue/queueName must NOT have fewer than 1 characters',
    ],
    [
      'running as root',
      { podSecurityContext: { runAsNonRoot: false } },
      '/podSecurityContext/runAsNonRoot must be equal to constant',
    ],
    [
      'privilege escalation',
      { containerSecurityContext: { allowPrivilegeEscalation: true } },
      '/containerSecurityContext/allowPrivilegeEscalation must be equal to constant',
    ],
    [
      'a max_payload below 1 MiB',
      { nats: { config: { merge: { max_payload: 1024 } } } },
      '/nats/config/merge/max_payload must be >= 1048576',
    ],
    [
      'JetStream off',
      { nats: { config: { jetstream: { enabled: false } } } },
      '/nats/config/jetstream/enabled must be equal to constant',
    ],
    ['no NATS at all', { nats: { enabled: false } }, '/externalNats/url must NOT have fewer than 1 characters'],
    [
      'a client token under 16 characters',
      { auth: { token: 's3cret', workerToken: 'worker-token-0123456789' } },
      '/auth/token must match pattern',
    ],
    [
      'a worker token with a space',
      { auth: { token: 'client-token-0123456789', workerToken: 'worker token 0123456789' } },
      '/auth/workerToken must match pattern',
    ],
    [
      'a client token without a worker token',
      { auth: { token: 'client-token-0123456789' } },
      '/auth/workerToken must NOT have fewer than 1 characters',
    ],
    [
      'a worker token without a client token',
      { auth: { workerToken: 'worker-token-0123456789' } },
      '/auth/token must NOT have fewer than 1 characters',
    ],
    [
      'an unknown auth key (the old single token layout)',
      { auth: { workerTokens: 'x' } },
      'must NOT have additional properties',
    ],
    ['mutual TLS without TLS', { tls: { mutual: { enabled: true } } }, '/tls/enabled must be equal to constant'],
    [
      'a NATS account that is not an account public key',
      { natsAuth: { account: 'UA2FQTYER62WEQL62S5XJ4MA4APM5ENYLOUSJHUHO2OZTO3MJHBZLVLM' } },
      '/natsAuth/account must match pattern',
    ],
    [
      'a signing key that is not an account seed',
      { natsAuth: { accountSigningKey: 'SUAGPLACEHOLDERSEEDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } },
      '/natsAuth/accountSigningKey must match pattern',
    ],
    [
      'coordinator credentials that are not a .creds file',
      { natsAuth: { coordinatorCreds: 'CREDS' } },
      '/natsAuth/coordinatorCreds must match pattern',
    ],
    [
      'the old natsAuth.credentials (workers no longer get static credentials)',
      { natsAuth: { credentials: 'x' } },
      'must NOT have additional properties',
    ],
    [
      'a CIDR without a prefix',
      { networkPolicy: { clientCIDRs: ['10.0.0.1'] } },
      '/networkPolicy/clientCIDRs/0 must match pattern',
    ],
  ];
  it.skipIf(skip !== undefined).each(bad)('refuses %s', (_what, user, message) => {
    expect(validate(merged(user))).toBe(false);
    expect(errors().join('\n')).toContain(message);
  });
});
