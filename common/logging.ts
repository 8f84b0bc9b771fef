/**
 * A small logger interface, injected and tagged with the component. JSON lines when
 * `POLYTUNE_LOG_FORMAT=json` (production), readable lines otherwise. Logs go to stderr so that
 * stdout stays free for a command's output (`--json`).
 */
export const LogLevel = { debug: 10, info: 20, warn: 30, error: 40 } as const;
export type LogLevel = keyof typeof LogLevel;

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(component: string): Logger;
}

export interface LoggerOptions {
  /** @default process.env.POLYTUNE_LOG_LEVEL ?? 'info' */
  level?: LogLevel;
  /** @default 'json' when POLYTUNE_LOG_FORMAT=json, else 'text' */
  format?: 'json' | 'text';
  /** @default process.stderr */
  sink?: (line: string) => void;
}

function envLevel(): LogLevel {
  const v = process.env['POLYTUNE_LOG_LEVEL'];
  return v !== undefined && v in LogLevel ? (v as LogLevel) : 'info';
}

export function createLogger(component: string, options: LoggerOptions = {}): Logger {
  const level = options.level ?? envLevel();
  const format = options.format ?? (process.env['POLYTUNE_LOG_FORMAT'] === 'json' ? 'json' : 'text');
  const sink = options.sink ?? ((line: string) => process.stderr.write(line + '\n'));
  const min = LogLevel[level];
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LogLevel[lvl] < min) return;
    if (format === 'json') {
      sink(JSON.stringify({ time: new Date().toISOString(), level: lvl, component, msg, ...fields }));
      return;
    }
    const extra =
      fields && Object.keys(fields).length > 0
        ? ' ' +
          Object.entries(fields)
            .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
            .join(' ')
        : '';
    sink(`${new Date().toISOString().slice(11, 23)} ${lvl.padEnd(5)} [${component}] ${msg}${extra}`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (sub) => createLogger(`${component}/${sub}`, { level, format, sink }),
  };
}

/** A logger that drops everything, for tests and library defaults. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};
