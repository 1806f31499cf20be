// DefaultReport.grid with labels: the header and left bands, their sizes and contents, and the
// unlabelled layout unchanged byte for byte.

@testable import DefaultModel
import Imaging
import ShapesWorld
import XCTest

final class GridLabelTests: XCTestCase {
    /// The grid as it was before labels (copied from DefaultReport.grid at 295d973): the reference
    /// the unlabelled layout must still match exactly.
    static func unlabelledReference(_ rows: [[Image8?]], scale: Int, gap: Int) -> Image8 {
        let cols = rows.map(\.count).max() ?? 0
        let cell = ShapesWorld.side * scale
        let w = gap + cols * (cell + gap), h = gap + rows.count * (cell + gap)
        var out = Image8(width: max(w, 1), height: max(h, 1), channels: 3, pixels: [UInt8](repeating: 48, count: max(w, 1) * max(h, 1) * 3))
        for (r, row) in rows.enumerated() {
            for (c, image) in row.enumerated() {
                guard let image else { continue }
                let ox = gap + c * (cell + gap), oy = gap + r * (cell + gap)
                for y in 0..<min(cell, image.height * scale) {
                    for x in 0..<min(cell, image.width * scale) {
                        for ch in 0..<3 { out[ox + x, oy + y, ch] = image[x / scale, y / scale, image.channels == 3 ? ch : 0] }
                    }
                }
            }
        }
        return out
    }

    /// Rendered shapes-world images: `rows` prompts × `cols` seeds.
    static func images(rows: Int, cols: Int) -> (prompts: [String], grid: [[Image8?]]) {
        let prompts = ["a red circle", "a blue square to the left of a green circle", "a small yellow triangle at the top left"]
            .prefix(rows).map { try! Prompt.parse($0) }
        return (prompts.map(\.description), prompts.map { p in (0..<cols).map { Optional(ShapesWorld.render(p, seed: UInt64($0 + 1))) } })
    }

    static let ground: (UInt8, UInt8, UInt8) = (48, 48, 48)

    /// The pixels of `g` in [x0, x1) × [y0, y1) that are not the ground.
    static func ink(_ g: Image8, _ xs: Range<Int>, _ ys: Range<Int>) -> Int {
        var n = 0
        for y in ys { for x in xs where (g[x, y, 0], g[x, y, 1], g[x, y, 2]) != ground { n += 1 } }
        return n
    }

    func testUnlabelledGridIsUnchanged() {
        var (_, rows) = Self.images(rows: 3, cols: 3)
        rows[1][1] = nil
        rows[2].removeLast()
        var grey = Image8(width: 64, height: 64, channels: 1)
        for i in grey.pixels.indices { grey.pixels[i] = UInt8(i % 251) }
        rows[0][2] = grey
        for (scale, gap) in [(2, 4), (3, 2), (1, 0)] {
            let reference = Self.unlabelledReference(rows, scale: scale, gap: gap)
            XCTAssertEqual(DefaultReport.grid(rows, scale: scale, gap: gap), reference, "×\(scale), gap \(gap)")
            XCTAssertEqual(DefaultReport.grid(rows, scale: scale, gap: gap, columnLabels: [], rowLabels: []), reference)
            // Labels without text add no band either.
            XCTAssertEqual(DefaultReport.grid(rows, scale: scale, gap: gap, columnLabels: ["", " ", ""], rowLabels: ["", "", ""]), reference)
        }
        XCTAssertEqual(DefaultReport.grid([]), Self.unlabelledReference([], scale: 2, gap: 4))
    }

    /// Labelled: the unlabelled grid shifted right and down by the bands, ink in both bands (label
    /// colour only), none in the corner or over a column whose label is empty.
    func testLabelledGridBands() {
        let (prompts, rows) = Self.images(rows: 3, cols: 3)
        let scale = 2, gap = 4, cell = 64 * scale
        let plain = DefaultReport.grid(rows, scale: scale, gap: gap)
        let labels = ["teacher 28", "", "linear 2"]
        let g = DefaultReport.grid(rows, scale: scale, gap: gap, columnLabels: labels, rowLabels: prompts)
        // Header: one line at ×1 (9 px) and 1 px under it; left band: the longest prompt (43
        // characters) is capped at a cell's width.
        let top = gap + 9 + 1, left = gap + cell
        XCTAssertEqual([g.width, g.height], [plain.width + left, plain.height + top])
        for y in 0..<plain.height {
            for x in 0..<plain.width {
                for c in 0..<3 where g[left + x, top + y, c] != plain[x, y, c] {
                    return XCTFail("image area differs at (\(x), \(y)) of the unlabelled grid")
                }
            }
        }
        for y in 0..<g.height {
            for x in 0..<g.width where x < left || y < top {
                let p = (g[x, y, 0], g[x, y, 1], g[x, y, 2])
                XCTAssertTrue(p == Self.ground || p == DefaultReport.labelColour, "band pixel (\(x), \(y)) is \(p)")
            }
        }
        XCTAssertEqual(Self.ink(g, 0..<left, 0..<top), 0, "the corner stays empty")
        for c in 0..<3 {
            let xs = (left + gap + c * (cell + gap))..<(left + gap + c * (cell + gap) + cell)
            let n = Self.ink(g, xs, 0..<top)
            if labels[c].isEmpty { XCTAssertEqual(n, 0, "column \(c) has no label") } else { XCTAssertGreaterThan(n, 0, "column \(c)") }
            // Centred: the ink's left and right margins within the column differ by at most a pixel.
            if !labels[c].isEmpty {
                let inked = xs.filter { x in (0..<top).contains { y in (g[x, y, 0], g[x, y, 1], g[x, y, 2]) != Self.ground } }
                XCTAssertLessThanOrEqual(abs((inked.first! - xs.lowerBound) - (xs.upperBound - 1 - inked.last!)), 1, "column \(c) label centred")
            }
        }
        for r in 0..<3 {
            let ys = (top + gap + r * (cell + gap))..<(top + gap + r * (cell + gap) + cell)
            XCTAssertGreaterThan(Self.ink(g, 0..<left, ys), 0, "row \(r) label")
            // Nothing between rows: each label stays within its row's height.
            let between = (top + gap + r * (cell + gap) + cell)..<(top + gap + (r + 1) * (cell + gap))
            XCTAssertEqual(Self.ink(g, 0..<left, between), 0, "below row \(r)")
        }
    }

    /// Only row labels, or only column labels: one band each; a long label is wrapped (and cut)
    /// within its row, and a long column label wraps over several header lines.
    func testOneBandAndLongLabels() {
        let (_, rows) = Self.images(rows: 2, cols: 2)
        let plain = DefaultReport.grid(rows, scale: 1, gap: 2)
        let long = String(repeating: "a green triangle below a red square ", count: 8)
        let g = DefaultReport.grid(rows, scale: 1, gap: 2, rowLabels: ["a red circle", long])
        // ×1: the band is 16 characters (95 px), wider than a 64 px cell; no header.
        XCTAssertEqual([g.width, g.height], [plain.width + 2 + 95, plain.height])
        XCTAssertGreaterThan(Self.ink(g, 0..<(2 + 95), 0..<g.height), 0)
        // Row 1 holds ⌊(64 − 9) / 10⌋ + 1 = 6 lines; the cut label keeps to its row: no ink above
        // row 0, between the rows or below row 1.
        for ys in [0..<2, (2 + 64)..<(2 + 66), (2 + 66 + 64)..<g.height] {
            XCTAssertEqual(Self.ink(g, 0..<(2 + 95), ys), 0, "\(ys)")
        }
        XCTAssertGreaterThan(Self.ink(g, 0..<(2 + 95), (2 + 66)..<(2 + 66 + 64)), Self.ink(g, 0..<(2 + 95), 2..<(2 + 64)), "row 1's label is the long one")
        XCTAssertEqual(BitmapFont.wrap(long, maxWidth: 95, maxLines: 6).count, 6)
        XCTAssertTrue(BitmapFont.wrap(long, maxWidth: 95, maxLines: 6).last!.hasSuffix(".."))

        let h = DefaultReport.grid(rows, scale: 2, gap: 4, columnLabels: ["teacher 28 steps, Euler, CFG 3.0", "x"])
        // 128 px holds 21 characters: the first label takes two lines, so the header is 19 + 1 px.
        XCTAssertEqual([h.width, h.height], [DefaultReport.grid(rows, scale: 2, gap: 4).width, DefaultReport.grid(rows, scale: 2, gap: 4).height + 4 + 19 + 1])
        XCTAssertEqual(Self.ink(h, 0..<h.width, 0..<4), 0, "the header starts after a gap")
    }
}
