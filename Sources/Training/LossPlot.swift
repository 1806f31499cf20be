// The loss curve as a small RGB image: axes, grid, tick labels in a 3×5 pixel font, the raw loss
// and a moving average. Drawn by hand so training needs no plotting library.

import Foundation
import Imaging

public enum LossPlot {
    static let width = 720, height = 400
    static let left = 64, right = 16, top = 16, bottom = 28

    /// Plots loss against step; `logScale` uses log10 of the loss when every finite loss is > 0.
    public static func draw(_ history: [StepRecord], logScale: Bool = true) -> Image8 {
        var img = Image8(width: width, height: height, channels: 3, pixels: [UInt8](repeating: 255, count: width * height * 3))
        let points = history.filter { $0.loss.isFinite }
        let useLog = logScale && !points.isEmpty && points.allSatisfy { $0.loss > 0 }
        func yValue(_ l: Double) -> Double { useLog ? log10(l) : l }
        let ys = points.map { yValue($0.loss) }
        var lo = ys.min() ?? 0, hi = ys.max() ?? 1
        if useLog { lo = floor(lo); hi = max(ceil(hi), lo + 1) } else if hi - lo < 1e-12 { lo -= 0.5; hi += 0.5 }
        let x0 = Double(history.first?.step ?? 0), x1 = max(Double(history.last?.step ?? 1), x0 + 1)
        let pw = width - left - right, ph = height - top - bottom
        func px(_ s: Double) -> Int { left + Int((s - x0) / (x1 - x0) * Double(pw - 1)) }
        func py(_ v: Double) -> Int { top + ph - 1 - Int(((v - lo) / (hi - lo)) * Double(ph - 1)) }

        // Grid and y labels: each decade on a log axis, five even ticks on a linear one.
        let ticks: [Double] = useLog ? Array(stride(from: lo, through: hi, by: max(1, ((hi - lo) / 6).rounded(.up))))
                                     : (0...4).map { lo + (hi - lo) * Double($0) / 4 }
        for t in ticks {
            let y = py(t)
            line(&img, left, y, left + pw - 1, y, (225, 225, 225))
            let label = useLog ? "1e\(Int(t))" : String(format: "%.3g", t)
            text(&img, label, x: left - 6 - label.count * 8, y: y - 5)
        }
        for k in 0...4 {
            let s = x0 + (x1 - x0) * Double(k) / 4
            let x = px(s)
            line(&img, x, top, x, top + ph - 1, (235, 235, 235))
            let label = String(Int(s.rounded()))
            text(&img, label, x: x - label.count * 4, y: top + ph + 8)
        }
        line(&img, left, top, left, top + ph, (0, 0, 0))
        line(&img, left, top + ph, left + pw, top + ph, (0, 0, 0))

        // Raw loss (light), then a moving average over ~1% of the steps (dark).
        func curve(_ values: [Double], _ color: (UInt8, UInt8, UInt8)) {
            for i in 1..<max(values.count, 1) {
                line(&img, px(Double(points[i - 1].step)), py(values[i - 1]), px(Double(points[i].step)), py(values[i]), color)
            }
        }
        curve(ys, (160, 190, 235))
        let w = max(1, points.count / 100)
        var smooth: [Double] = [], sum = 0.0
        for (i, v) in ys.enumerated() {
            sum += v
            if i >= w { sum -= ys[i - w] }
            smooth.append(sum / Double(min(i + 1, w)))
        }
        curve(smooth, (20, 60, 160))
        return img
    }

    static func line(_ img: inout Image8, _ xa: Int, _ ya: Int, _ xb: Int, _ yb: Int, _ c: (UInt8, UInt8, UInt8)) {
        var x = xa, y = ya
        let dx = abs(xb - xa), dy = -abs(yb - ya), sx = xa < xb ? 1 : -1, sy = ya < yb ? 1 : -1
        var err = dx + dy
        while true {
            if x >= 0 && x < img.width && y >= 0 && y < img.height { img[x, y, 0] = c.0; img[x, y, 1] = c.1; img[x, y, 2] = c.2 }
            if x == xb && y == yb { return }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    /// 3×5 glyphs, rows top to bottom, 3 bits each (MSB left).
    static let glyphs: [Character: [UInt8]] = [
        "0": [7, 5, 5, 5, 7], "1": [2, 6, 2, 2, 7], "2": [7, 1, 7, 4, 7], "3": [7, 1, 7, 1, 7], "4": [5, 5, 7, 1, 1],
        "5": [7, 4, 7, 1, 7], "6": [7, 4, 7, 5, 7], "7": [7, 1, 1, 1, 1], "8": [7, 5, 7, 5, 7], "9": [7, 5, 7, 1, 7],
        ".": [0, 0, 0, 0, 2], "-": [0, 0, 7, 0, 0], "+": [0, 2, 7, 2, 0], "e": [0, 7, 7, 4, 7],
    ]

    /// Draws `s` at 2× scale (each glyph 6×10 pixels, 8 apart).
    static func text(_ img: inout Image8, _ s: String, x: Int, y: Int) {
        for (k, ch) in s.enumerated() {
            guard let rows = glyphs[ch] else { continue }
            for (r, bits) in rows.enumerated() {
                for col in 0..<3 where bits & (4 >> col) != 0 {
                    for dy in 0..<2 { for dx in 0..<2 {
                        let px = x + k * 8 + col * 2 + dx, py = y + r * 2 + dy
                        if px >= 0 && px < img.width && py >= 0 && py < img.height { img[px, py, 0] = 0; img[px, py, 1] = 0; img[px, py, 2] = 0 }
                    } }
                }
            }
        }
    }
}
