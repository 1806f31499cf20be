// A small fixed bitmap font (5×7 body, 2-row descenders, 6×10 cell) for labelling image grids.

/// Text for the images arcflow writes (grid headers, prompt labels).
///
/// Why a bitmap font: the project is Swift toolchain only, with no font libraries (FreeType,
/// CoreText) on the Linux machines it targets, and labels need only a few words of ASCII in a
/// legible size. A hand-drawn 5×7 font is a page of source, renders the same bytes on every
/// machine (so grids are reproducible and testable), and scales by whole pixels (nearest), which
/// keeps it crisp next to the nearest-scaled images it labels.
///
/// Each glyph is 5 columns × 9 rows: rows 0–6 hold capitals, digits and the x-height letters
/// (rows 2–6), the baseline is under row 6, and rows 7–8 hold descenders (g, j, p, q, y, comma).
/// A character advances 6 columns (one blank column between glyphs) and a line is 10 rows.
public enum BitmapFont {
    public static let glyphWidth = 5
    public static let glyphHeight = 9
    /// Horizontal step per character, in unscaled pixels.
    public static let advance = 6
    /// Vertical step per line, in unscaled pixels.
    public static let lineHeight = 10

    /// The glyph sheets: a header line naming each glyph's character (over its middle column),
    /// then its 9 rows, glyphs 6 columns apart ('#' ink, '.' ground). Drawn for this project.
    /// Space is not in the sheets: it is the empty glyph.
    private static let sheets: [String] = [
        #"""
          A     B     C     D     E     F     G     H     I     J     K     L     M
        .###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...#
        #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.##
        #...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.#
        ##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.#
        #...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...#
        #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...#
        #...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...#
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        """#,
        #"""
          N     O     P     Q     R     S     T     U     V     W     X     Y     Z
        #...# .###. ####. .###. ####. .#### ##### #...# #...# #...# #...# #...# #####
        #...# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....#
        ##..# #...# #...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#.
        #.#.# #...# ####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#..
        #..## #...# #.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#...
        #...# #...# #.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #....
        #...# .###. #.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. #####
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        """#,
        #"""
          a     b     c     d     e     f     g     h     i     j     k     l     m
        ..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. .....
        ..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#.. .....
        .###. ####. .###. .#### .###. .#... .#### #.##. .##.. ..##. #..#. ..#.. ##.#.
        ....# #...# #.... #...# #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.#
        .#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#.. #.#.#
        #...# #...# #...# #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.#
        .#### ####. .###. .#### .###. .#... .#### #...# .###. ...#. #..#. .###. #...#
        ..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... ..... .....
        ..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... ..... .....
        """#,
        #"""
          n     o     p     q     r     s     t     u     v     w     x     y     z
        ..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
        ..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
        #.##. .###. ####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# #####
        ##..# #...# #...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#.
        #...# #...# #...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#..
        #...# #...# #...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#...
        #...# .###. ####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### #####
        ..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... ....# .....
        ..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... .###. .....
        """#,
        #"""
          0     1     2     3     4     5     6     7     8     9
        .###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###.
        #...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...#
        #..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...#
        #.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .####
        ##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....#
        #...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#.
        .###. .###. ##### .###. ...#. .###. .###. .#... .###. .##..
        ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
        """#,
        #"""
          !     "     #     $     %     &     '     (     )     *     +     ,     -     .     /
        ..#.. .#.#. .#.#. ..#.. ##... .##.. ..#.. ...#. .#... ..... ..... ..... ..... ..... .....
        ..#.. .#.#. .#.#. .#### ##..# #..#. ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..... ..... ....#
        ..#.. .#.#. ##### #.#.. ...#. #.#.. ..#.. .#... ...#. #.#.# ..#.. ..... ..... ..... ...#.
        ..#.. ..... .#.#. .###. ..#.. .#... ..... .#... ...#. .###. ##### ..... ##### ..... ..#..
        ..#.. ..... ##### ..#.# .#... #.#.# ..... .#... ...#. #.#.# ..#.. ..... ..... ..... .#...
        ..... ..... .#.#. ####. #..## #..#. ..... ..#.. ..#.. ..#.. ..#.. .##.. ..... .##.. #....
        ..#.. ..... .#.#. ..#.. ...## .##.# ..... ...#. .#... ..... ..... .##.. ..... .##.. .....
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..#.. ..... ..... .....
        ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .#... ..... ..... .....
        """#,
        #"""
          :     ;     <     =     >     ?     @     [     \     ]     ^     _     `     {     |     }     ~
        ..... ..... ...#. ..... .#... .###. .###. .###. ..... .###. ..#.. ..... .#... ...## ..#.. ##... .....
        .##.. .##.. ..#.. ..... ..#.. #...# #...# .#... #.... ...#. .#.#. ..... ..#.. ..#.. ..#.. ..#.. .....
        .##.. .##.. .#... ##### ...#. ....# #.### .#... .#... ...#. #...# ..... ...#. ..#.. ..#.. ..#.. .#...
        ..... ..... #.... ..... ....# ...#. #.#.# .#... ..#.. ...#. ..... ..... ..... ##... ..#.. ...## #.#.#
        ..... ..... .#... ##### ...#. ..#.. #.### .#... ...#. ...#. ..... ..... ..... ..#.. ..#.. ..#.. ...#.
        .##.. .##.. ..#.. ..... ..#.. ..... #.... .#... ....# ...#. ..... ..... ..... ..#.. ..#.. ..#.. .....
        .##.. .##.. ...#. ..... .#... ..#.. .#### .###. ..... .###. ..... ..... ..... ...## ..#.. ##... .....
        ..... ..#.. ..... ..... ..... ..... ..... ..... ..... ..... ..... ##### ..... ..... ..#.. ..... .....
        ..... .#... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..#.. ..... .....
        """#,
    ]

    /// Rows of each glyph, bit 4 = leftmost column, parsed once from `sheets`.
    private static let glyphs: [Character: [UInt8]] = {
        var table: [Character: [UInt8]] = [" ": [UInt8](repeating: 0, count: glyphHeight)]
        for sheet in sheets {
            let lines = sheet.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0) }
            precondition(lines.count == 1 + glyphHeight, "a glyph sheet is a header and \(glyphHeight) rows")
            let header = lines[0]
            for k in 0..<(header.count + advance - 3) / advance {
                let ch = header[advance * k + 2]
                var rows = [UInt8](repeating: 0, count: glyphHeight)
                for r in 0..<glyphHeight {
                    for c in 0..<glyphWidth {
                        let mark = lines[1 + r][advance * k + c]
                        precondition(mark == "#" || mark == ".", "glyph '\(ch)' row \(r) column \(c): '\(mark)'")
                        if mark == "#" { rows[r] |= 1 << UInt8(glyphWidth - 1 - c) }
                    }
                }
                precondition(table[ch] == nil, "glyph '\(ch)' drawn twice")
                table[ch] = rows
            }
        }
        return table
    }()

    /// Drawn for characters the font lacks (control characters, most non-ASCII): a solid block,
    /// so a missing glyph shows instead of silently vanishing.
    public static let placeholder: [UInt8] = [UInt8](repeating: 0b11111, count: 7) + [0, 0]

    /// Non-ASCII characters with an obvious ASCII look-alike.
    private static let lookalikes: [Character: Character] = [
        "×": "x", "–": "-", "—": "-", "−": "-", "‘": "'", "’": "'", "“": "\"", "”": "\"", "·": ".", "…": ".",
    ]

    /// Whether the font has a glyph of its own for `c` (directly or through a look-alike).
    public static func has(_ c: Character) -> Bool { glyphs[lookalikes[c] ?? c] != nil }

    /// The 9 rows of `c`'s glyph (bit 4 = leftmost column); `placeholder` when there is none.
    public static func glyph(_ c: Character) -> [UInt8] { glyphs[lookalikes[c] ?? c] ?? placeholder }

    /// Width in pixels of `text` on one line at `scale` (no blank column after the last glyph).
    public static func width(of text: String, scale: Int = 1) -> Int {
        text.isEmpty ? 0 : (text.count * advance - (advance - glyphWidth)) * scale
    }

    /// Height in pixels of `lines` lines at `scale` (no blank row after the last line).
    public static func height(lines: Int, scale: Int = 1) -> Int {
        lines <= 0 ? 0 : ((lines - 1) * lineHeight + glyphHeight) * scale
    }

    /// `text` broken into lines no wider than `maxWidth` pixels at `scale`: greedily at spaces, and
    /// inside a word only when the word alone is too wide. With `maxLines`, the last line kept ends
    /// in ".." when text was cut. At least one character goes on each line, however narrow.
    public static func wrap(_ text: String, maxWidth: Int, scale: Int = 1, maxLines: Int? = nil) -> [String] {
        let perLine = max(1, (maxWidth / max(scale, 1) + advance - glyphWidth) / advance)
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ").map(String.init) {
            if line.isEmpty {
                line = word
            } else if line.count + 1 + word.count <= perLine {
                line += " " + word
            } else {
                lines.append(line)
                line = word
            }
            while line.count > perLine {
                lines.append(String(line.prefix(perLine)))
                line = String(line.dropFirst(perLine))
            }
        }
        if !line.isEmpty { lines.append(line) }
        if let maxLines, lines.count > maxLines {
            lines = Array(lines.prefix(max(maxLines, 1)))
            // Drop whole words to make room for the "..", cutting inside a word only as a last resort.
            var words = lines[lines.count - 1].split(separator: " ")
            while words.count > 1 && words.joined(separator: " ").count + 2 > perLine { words.removeLast() }
            let last = words.joined(separator: " ")
            lines[lines.count - 1] = String(last.prefix(max(perLine - 2, 0))) + String("..".prefix(perLine))
        }
        return lines
    }
}

extension Image8 {
    /// Draws one line of `text` with its top-left corner at (`x`, `y`), each font pixel a
    /// `scale`×`scale` square of `color` (grey images take the mean of the three). Pixels outside
    /// the image are skipped; nothing is drawn outside `BitmapFont.width(of:scale:)` ×
    /// `BitmapFont.height(lines: 1, scale:)` from the corner. Newlines are not line breaks here
    /// (they draw the placeholder): use `BitmapFont.wrap` and one call per line.
    public mutating func drawText(_ text: String, x: Int, y: Int, color: (r: UInt8, g: UInt8, b: UInt8) = (255, 255, 255), scale: Int = 1) {
        let s = max(scale, 1)
        let grey = UInt8((Int(color.r) + Int(color.g) + Int(color.b)) / 3)
        for (i, ch) in text.enumerated() {
            let rows = BitmapFont.glyph(ch)
            let gx = x + i * BitmapFont.advance * s
            for r in 0..<BitmapFont.glyphHeight where rows[r] != 0 {
                for c in 0..<BitmapFont.glyphWidth where rows[r] >> UInt8(BitmapFont.glyphWidth - 1 - c) & 1 != 0 {
                    for dy in 0..<s {
                        let py = y + r * s + dy
                        guard py >= 0 && py < height else { continue }
                        for dx in 0..<s {
                            let px = gx + c * s + dx
                            guard px >= 0 && px < width else { continue }
                            if channels == 3 {
                                self[px, py, 0] = color.r
                                self[px, py, 1] = color.g
                                self[px, py, 2] = color.b
                            } else {
                                self[px, py, 0] = grey
                            }
                        }
                    }
                }
            }
        }
    }
}
