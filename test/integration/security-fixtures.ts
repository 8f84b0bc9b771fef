/** Throwaway certificates for the security suites, made with the system `openssl` in a temp dir. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  readonly dir: string;
  /** PEM buffers. `ca` signed `server` (SAN localhost, 127.0.0.1) and `worker`; `rogueCa` signed `rogue`. */
  readonly ca: Buffer;
  readonly server: { cert: Buffer; key: Buffer };
  readonly worker: { cert: Buffer; key: Buffer };
  readonly rogueCa: Buffer;
  readonly rogue: { cert: Buffer; key: Buffer };
  /** File paths, for CLI flags. */
  readonly files: Record<'ca' | 'serverCert' | 'serverKey' | 'workerCert' | 'workerKey', string>;
  cleanup(): void;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'polytune-pki-'));
  const p = (n: string): string => join(dir, n);
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const ca = (name: string): void =>
    openssl(
      'req',
      '-x509',
      ...EC,
      '-keyout',
      p(`${name}.key`),
      '-out',
      p(`${name}.crt`),
      '-days',
      '1',
      '-subj',
      `/CN=${name}`,
    );
  const leaf = (name: string, caName: string, ext: string): void => {
    openssl('req', ...EC, '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/CN=${name}`);
    writeFileSync(p(`${name}.ext`), ext);
    openssl(
      'x509',
      '-req',
      '-in',
      p(`${name}.csr`),
      '-CA',
      p(`${caName}.crt`),
      '-CAkey',
      p(`${caName}.key`),
      '-CAcreateserial',
      '-out',
      p(`${name}.crt`),
      '-days',
      '1',
      '-extfile',
      p(`${name}.ext`),
    );
  };
  ca('test-ca');
  ca('rogue-ca');
  leaf('server', 'test-ca', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  leaf('worker', 'test-ca', 'extendedKeyUsage=clientAuth\n');
  leaf('rogue', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const r = (n: string): Buffer => readFileSync(p(n));
  return {
    dir,
    ca: r('test-ca.crt'),
    server: { cert: r('server.crt'), key: r('server.key') },
    worker: { cert: r('worker.crt'), key: r('worker.key') },
    rogueCa: r('rogue-ca.crt'),
    rogue: { cert: r('rogue.crt'), key: r('rogue.key') },
    files: {
      ca: p('test-ca.crt'),
      serverCert: p('server.crt'),
      serverKey: p('server.key'),
      workerCert: p('worker.crt'),
      workerKey: p('worker.key'),
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
