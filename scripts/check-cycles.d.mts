/** The import cycles among the TypeScript files under `dirs`, each as the files along it (check-cycles.mjs). */
export function findCycles(dirs: readonly string[], root?: string): string[][];
