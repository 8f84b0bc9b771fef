/**
 * Text widths from a TrueType font's own advance widths (tables `head`, `hhea`, `hmtx`, `cmap`
 * format 4), for vega's layout. Without a `canvas` package vega estimates a line as
 * 0.8 x characters x font size, about 35% wider than DejaVu Sans, which left wide gaps beside
 * legends and titles; measuring with the font resvg draws with places them where the text ends.
 * Kerning is ignored (under 1% on labels).
 */
import { readFileSync } from 'node:fs';

export class FontMetrics {
  private readonly unitsPerEm: number;
  private readonly advances: Uint16Array;
  private readonly glyphs = new Map<number, number>();

  constructor(file: string) {
    const buf = readFileSync(file);
    const tables = new Map<string, number>();
    const numTables = buf.readUInt16BE(4);
    for (let i = 0; i < numTables; i++)
      tables.set(buf.toString('latin1', 12 + 16 * i, 16 + 16 * i), buf.readUInt32BE(20 + 16 * i));
    const table = (tag: string): number => {
      const at = tables.get(tag);
      if (at === undefined) throw new Error(`${file}: no '${tag}' table; not a TrueType font`);
      return at;
    };
    this.unitsPerEm = buf.readUInt16BE(table('head') + 18);
    const numberOfHMetrics = buf.readUInt16BE(table('hhea') + 34);
    const hmtx = table('hmtx');
    this.advances = Uint16Array.from({ length: numberOfHMetrics }, (_, g) => buf.readUInt16BE(hmtx + 4 * g));
    // cmap: the Windows Unicode BMP subtable (platform 3, encoding 1), format 4.
    const cmap = table('cmap');
    let sub = -1;
    for (let i = 0; i < buf.readUInt16BE(cmap + 2); i++) {
      const r = cmap + 4 + 8 * i;
      if (buf.readUInt16BE(r) === 3 && buf.readUInt16BE(r + 2) === 1) sub = cmap + buf.readUInt32BE(r + 4);
    }
    if (sub < 0 || buf.readUInt16BE(sub) !== 4) throw new Error(`${file}: no Unicode BMP cmap (format 4)`);
    const segCount = buf.readUInt16BE(sub + 6) / 2;
    const ends = sub + 14;
    const starts = ends + 2 * segCount + 2;
    const deltas = starts + 2 * segCount;
    const rangeOffsets = deltas + 2 * segCount;
    for (let s = 0; s < segCount; s++) {
      const start = buf.readUInt16BE(starts + 2 * s);
      const end = buf.readUInt16BE(ends + 2 * s);
      const delta = buf.readUInt16BE(deltas + 2 * s);
      const rangeOffset = buf.readUInt16BE(rangeOffsets + 2 * s);
      for (let c = start; c <= end && c !== 0xffff; c++) {
        let g: number;
        if (rangeOffset === 0) g = (c + delta) & 0xffff;
        else {
          g = buf.readUInt16BE(rangeOffsets + 2 * s + rangeOffset + 2 * (c - start));
          if (g !== 0) g = (g + delta) & 0xffff;
        }
        if (g !== 0) this.glyphs.set(c, g);
      }
    }
  }

  /** The advance width of `text` at `fontSize` (characters outside the font count as its .notdef glyph). */
  width(text: string, fontSize: number): number {
    let units = 0;
    for (const ch of text) {
      const g = this.glyphs.get(ch.codePointAt(0)!) ?? 0;
      units += this.advances[Math.min(g, this.advances.length - 1)]!;
    }
    return (units / this.unitsPerEm) * fontSize;
  }
}
