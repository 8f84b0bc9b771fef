/**
 * What a person sees: a pseudo-terminal's output replayed on a tiny screen model, so that a test
 * reads the final screen instead of the byte stream. It knows what log-update writes: CR, LF,
 * cursor up/down (CSI n A/B), to column 1 (CSI G), erase line (CSI 2K) and to its end (CSI K);
 * other CSI sequences (cursor show/hide, synchronized output) are ignored. Enough for line-based
 * redraws, not a full VT100.
 *
 * Also `runInPty`: a command run under Debian's `script` (bsdutils) with a sized pseudo-terminal
 * (a 0x0 one would make log-update draw nothing), its output captured.
 */
import { spawn } from 'node:child_process';

// eslint-disable-next-line no-control-regex -- the escape character is what is parsed here
const CSI = /^\x1b\[([?\d;]*)([A-Za-z])/;

export function replay(output: string): string[] {
  const lines: string[] = [''];
  let row = 0;
  let col = 0;
  const put = (ch: string): void => {
    const line = lines[row] ?? '';
    lines[row] = line.padEnd(col).slice(0, col) + ch + line.slice(col + 1);
    col++;
  };
  for (let i = 0; i < output.length; i++) {
    const ch = output[i]!;
    if (ch === '\x1b' && output[i + 1] === '[') {
      const m = CSI.exec(output.slice(i));
      if (!m) continue;
      i += m[0].length - 1;
      const n = m[1] && !m[1].startsWith('?') ? Number(m[1]) : 1;
      switch (m[2]) {
        case 'A':
          row = Math.max(0, row - n);
          break;
        case 'B':
          row += n;
          while (lines.length <= row) lines.push('');
          break;
        case 'G':
          col = 0;
          break;
        case 'K':
          lines[row] = m[1] === '2' ? '' : (lines[row] ?? '').slice(0, col);
          break;
        default:
          break;
      }
      continue;
    }
    if (ch === '\r') col = 0;
    else if (ch === '\n') {
      row++;
      col = 0;
      while (lines.length <= row) lines.push('');
    } else put(ch);
  }
  while (lines.length > 0 && lines.at(-1) === '') lines.pop();
  return lines.map((l) => l.trimEnd());
}

export interface PtyRun {
  code: number | null;
  /** The raw bytes the terminal got (stdout and stderr together, as on a terminal). */
  output: string;
}

/** Runs `command` (a shell line) in a `rows` x `cols` pseudo-terminal. */
export function runInPty(
  command: string,
  env: NodeJS.ProcessEnv,
  size = { rows: 30, cols: 160 },
  cwd?: string,
): Promise<PtyRun> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qfec', `stty rows ${size.rows} cols ${size.cols}; ${command}`, '/dev/null'], {
      env,
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, output }));
  });
}
