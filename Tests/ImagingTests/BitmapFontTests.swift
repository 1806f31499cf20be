// The bitmap font: every printable ASCII character has its own glyph inside the cell, unknown
// characters draw the placeholder, and drawText stays inside the box width(of:) and height(lines:) give.

import XCTest
@testable import Imaging

final class BitmapFontTests: XCTestCase {
    static let printable: [Character] = (33...126).map { Character(UnicodeScalar(UInt8($0))) }

    func testGlyphsAreDistinctAndInsideTheCell() {
        var seen: [[UInt8]: Character] = [:]
        for ch in Self.printable {
            XCTAssertTrue(BitmapFont.has(ch), "'\(ch)' has no glyph")
            let g = BitmapFont.glyph(ch)
            XCTAssertEqual(g.count, BitmapFont.glyphHeight)
            XCTAssertTrue(g.contains { $0 != 0 }, "'\(ch)' is blank")
            XCTAssertTrue(g.allSatisfy { $0 < 1 << BitmapFont.glyphWidth }, "'\(ch)' is wider than the glyph")
            XCTAssertNotEqual(g, BitmapFont.placeholder, "'\(ch)' looks like the placeholder")
            if let other = seen[g] { XCTFail("'\(ch)' and '\(other)' have the same glyph") }
            seen[g] = ch
            // Only descenders reach below the baseline.
            if !"gjpqy,;_|".contains(ch) { XCTAssertEqual(g[7...], [0, 0], "'\(ch)' reaches below the baseline") }
        }
        XCTAssertEqual(seen.count, 94)
        XCTAssertEqual(BitmapFont.glyph(" "), [UInt8](repeating: 0, count: BitmapFont.glyphHeight))
        XCTAssertEqual(BitmapFont.glyph("×"), BitmapFont.glyph("x"), "× draws as x")
        for unknown: Character in ["é", "\u{7}", "\n", "猫", "🙂"] {
            XCTAssertFalse(BitmapFont.has(unknown))
            XCTAssertEqual(BitmapFont.glyph(unknown), BitmapFont.placeholder, "'\(unknown)'")
        }
    }

    func testWidthAndHeight() {
        XCTAssertEqual(BitmapFont.width(of: ""), 0)
        XCTAssertEqual(BitmapFont.width(of: "a"), 5)
        XCTAssertEqual(BitmapFont.width(of: "ab", scale: 2), 22)
        XCTAssertEqual(BitmapFont.width(of: "a×é", scale: 1), 17, "one cell per character, known or not")
        XCTAssertEqual(BitmapFont.height(lines: 0), 0)
        XCTAssertEqual(BitmapFont.height(lines: 1, scale: 3), 27)
        XCTAssertEqual(BitmapFont.height(lines: 2), 19)
    }

    /// Every pixel drawText sets lies in [x, x + width) × [y, y + height); the box is tight (ink
    /// on its first and last column and row for text that has some there); pixels keep the colour.
    func testDrawTextMarksOnlyInsideItsBox() {
        let colour: (r: UInt8, g: UInt8, b: UInt8) = (200, 100, 50)
        for (text, x, y, scale) in [("Hg", 3, 4, 1), ("teacher 28 | ArcFlow 2", 10, 7, 2), ("a red circle?", 1, 1, 3), ("é\u{7}×", 5, 2, 1),
                                    (String(Self.printable), 0, 0, 1)] {
            var img = Image8(width: 600, height: 40, channels: 3)
            img.drawText(text, x: x, y: y, color: colour, scale: scale)
            let w = BitmapFont.width(of: text, scale: scale), h = BitmapFont.height(lines: 1, scale: scale)
            var minX = Int.max, maxX = Int.min, minY = Int.max, maxY = Int.min
            for py in 0..<img.height {
                for px in 0..<img.width {
                    let p = (img[px, py, 0], img[px, py, 1], img[px, py, 2])
                    if p == (0, 0, 0) { continue }
                    XCTAssertTrue(p == colour, "'\(text)': pixel (\(px), \(py)) is \(p)")
                    minX = min(minX, px); maxX = max(maxX, px); minY = min(minY, py); maxY = max(maxY, py)
                }
            }
            XCTAssertGreaterThanOrEqual(minX, x, text)
            XCTAssertLessThan(maxX, x + w, text)
            XCTAssertGreaterThanOrEqual(minY, y, text)
            XCTAssertLessThan(maxY, y + h, text)
            if text == "Hg" {
                XCTAssertEqual([minX, maxX, minY, maxY], [x, x + w - 1, y, y + h - 1], "H spans the top and sides, g the descender")
            }
        }
    }

    /// Text over an edge is clipped, not a crash; grey images take the colour's mean.
    func testClippingAndGrey() {
        var img = Image8(width: 12, height: 6, channels: 1)
        img.drawText("WWWWWW", x: -4, y: -3, color: (30, 60, 90), scale: 2)
        img.drawText("x", x: 11, y: 5)
        XCTAssertTrue(img.pixels.allSatisfy { $0 == 0 || $0 == 60 || $0 == 255 })
        XCTAssertTrue(img.pixels.contains(60))
        var untouched = Image8(width: 8, height: 8)
        untouched.drawText("abc", x: 100, y: -100)
        XCTAssertEqual(untouched, Image8(width: 8, height: 8))
    }

    func testWrap() {
        // 20 px holds 3 characters (3 × 6 − 1 = 17), not 4 (23).
        XCTAssertEqual(BitmapFont.wrap("a red circle", maxWidth: 40), ["a red", "circle"])
        XCTAssertEqual(BitmapFont.wrap("abcdefgh", maxWidth: 20), ["abc", "def", "gh"], "a word wider than the line breaks inside")
        XCTAssertEqual(BitmapFont.wrap("a blue square to the left of a green circle", maxWidth: 60, maxLines: 2), ["a blue", "square.."])
        XCTAssertEqual(BitmapFont.wrap("", maxWidth: 60), [])
        XCTAssertEqual(BitmapFont.wrap("  ", maxWidth: 60), [])
        XCTAssertEqual(BitmapFont.wrap("ab cd", maxWidth: 40, scale: 2), ["ab", "cd"])
        for maxWidth in [5, 29, 47, 128, 300] {
            let text = "a small red circle at the top left, next to a green triangle (held-out)"
            let lines = BitmapFont.wrap(text, maxWidth: maxWidth)
            XCTAssertTrue(lines.allSatisfy { BitmapFont.width(of: $0) <= max(maxWidth, BitmapFont.glyphWidth) }, "\(maxWidth): \(lines)")
            XCTAssertEqual(lines.joined().filter { $0 != " " }, text.filter { $0 != " " }, "nothing lost without maxLines")
        }
    }
}
