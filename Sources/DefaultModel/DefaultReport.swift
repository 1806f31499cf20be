// The default model's report: judge accuracy of the teacher and both students on a fixed prompt
// set, paired pixel error of each student to the teacher from the same noise, wall-clock per
// image, and the demo grid (prompts × variants).

import Foundation
import Generation
import Imaging
import IR
import ShapesWorld

public enum DefaultReport {
    /// The fixed prompt set: `n` one-object prompts, `n` two-object prompts (held-out pairs
    /// excluded from both) and `n` prompts containing a held-out pair (green triangle, orange
    /// square), each from its own fixed seed.
    public static func prompts(perCategory n: Int) -> [(category: String, prompt: Prompt)] {
        var one = PromptSampler(seed: 101)
        one.twoObjects = 0
        var two = PromptSampler(seed: 202)
        two.twoObjects = 1
        var held = PromptSampler(seed: 303, includeHeldOut: true)
        var heldOut: [Prompt] = []
        while heldOut.count < n { let p = held.next(); if p.containsHeldOutPair { heldOut.append(p) } }
        return one.next(n).map { ("one object", $0) } + two.next(n).map { ("two objects", $0) } + heldOut.map { ("held-out pairs", $0) }
    }

    public static let categories = ["one object", "two objects", "held-out pairs"]

    /// One variant's results: verdicts and images in prompt order, seconds per image.
    public struct Column {
        public var name: String
        public var nfe: String
        public var verdicts: [Verdict] = []
        public var passed: [Bool] { verdicts.map(\.passed) }
        /// The judge's first failed check per prompt (nil: passed).
        public var failures: [Verdict.Failure?] { verdicts.map(\.failure) }
        public var images: [Image8] = []
        public var seconds: [Double] = []
    }

    /// Renders every prompt with every pipeline (prompt i with seed `seed + i`, the same noise for
    /// every variant) and judges it. `pipelines` starts with the teacher.
    public static func run(_ pipelines: [(name: String, nfe: String, pipeline: CompiledPipeline)],
                           prompts: [(category: String, prompt: Prompt)], seed: Int, log: (String) -> Void) throws -> [Column] {
        var columns: [Column] = []
        for (name, nfe, p) in pipelines {
            var col = Column(name: name, nfe: nfe)
            // One untimed image first: the first run pays page faults and thread start-up.
            _ = try p.generate(prompt: prompts[0].prompt.description, noise: p.noise(seed: seed))
            // A progress line about every 15 s: the teacher's pass over 576 prompts takes minutes.
            var lastLog = monotonicSeconds()
            for (i, item) in prompts.enumerated() {
                let t0 = monotonicSeconds()
                let image = try p.generate(prompt: item.prompt.description, noise: p.noise(seed: seed + i))
                col.seconds.append(monotonicSeconds() - t0)
                col.images.append(image)
                col.verdicts.append(ShapesWorld.judge(image, item.prompt))
                if monotonicSeconds() - lastLog >= 15 && i + 1 < prompts.count {
                    log("\(name): \(i + 1)/\(prompts.count) images")
                    lastLog = monotonicSeconds()
                }
            }
            let acc = Double(col.passed.filter { $0 }.count) / Double(max(prompts.count, 1))
            log(String(format: "%@: %d images, accuracy %.3f, %.3f s per image", name, prompts.count, acc,
                       col.seconds.reduce(0, +) / Double(max(col.seconds.count, 1))))
            columns.append(col)
        }
        return columns
    }

    /// Mean absolute difference of two 8-bit images, in levels (0–255).
    public static func meanAbsoluteError(_ a: Image8, _ b: Image8) -> Double {
        precondition(a.pixels.count == b.pixels.count)
        var s = 0
        for i in a.pixels.indices { s += abs(Int(a.pixels[i]) - Int(b.pixels[i])) }
        return Double(s) / Double(a.pixels.count)
    }

    /// The markdown table: accuracy per category and overall, paired error to the teacher (the
    /// first column), seconds per image and the speed-up over the teacher (columns without
    /// timings, as `DistillHandoff`'s, get neither those two nor the footnote).
    public static func markdown(_ columns: [Column], prompts: [(category: String, prompt: Prompt)], seed: Int, threads: Int) -> String {
        let timed = columns.allSatisfy { !$0.seconds.isEmpty }
        func mean(_ v: [Double]) -> Double { v.isEmpty ? .nan : v.reduce(0, +) / Double(v.count) }
        /// "0.72 (78/109)": the share of the prompts at `idx` that `c` passes ("—" for none).
        func accuracy(_ c: Column, _ idx: [Int]) -> String {
            guard !idx.isEmpty else { return "—" }
            let n = idx.filter { c.verdicts[$0].passed }.count
            return String(format: "%.2f (%d/%d)", Double(n) / Double(idx.count), n, idx.count)
        }
        func accuracy(_ c: Column, _ category: String?) -> String {
            accuracy(c, prompts.indices.filter { category == nil || prompts[$0].category == category })
        }
        let teacher = columns[0]
        var lines = ["| model | NFE | " + categories.joined(separator: " | ") + " | overall | paired error to teacher (MAE, 0–255) |"
                     + (timed ? " s / image | speed-up |" : ""),
                     "|---|---|" + String(repeating: "---|", count: categories.count + (timed ? 4 : 2))]
        for c in columns {
            let err = c.name == teacher.name ? "—" : String(format: "%.2f", mean(zip(c.images, teacher.images).map { meanAbsoluteError($0, $1) }))
            let secs = mean(c.seconds)
            lines.append("| \(c.name) | \(c.nfe) | " + categories.map { accuracy(c, $0) }.joined(separator: " | ") + " | \(accuracy(c, nil)) | \(err) |"
                         + (timed ? String(format: " %.3f | %.1f× |", secs, mean(teacher.seconds) / secs) : ""))
        }
        // What fails: the judge's first failed check, counted per model, and how a model's
        // verdicts pair with the teacher's on the same prompt and noise.
        let kinds = Verdict.Failure.allCases.filter { k in k != .format || columns.contains { $0.failures.contains(k) } }
        lines += ["", "| model | fails | " + kinds.map(\.rawValue).joined(separator: " | ") + " | passes where the teacher fails | fails where the teacher passes |",
                  "|---|---|" + String(repeating: "---|", count: kinds.count + 2)]
        let teacherPassed = teacher.passed
        let teacherFails = teacherPassed.filter { !$0 }.count
        for c in columns {
            let failed = c.failures.compactMap { $0 }, passed = c.passed
            let paired = c.name == teacher.name ? ["—", "—"] : [
                "\(zip(passed, teacherPassed).filter { $0 && !$1 }.count)/\(teacherFails)",
                "\(zip(passed, teacherPassed).filter { !$0 && $1 }.count)/\(teacherPassed.count - teacherFails)",
            ]
            lines.append("| \(c.name) | \(failed.count) | " + kinds.map { k in String(failed.filter { $0 == k }.count) }.joined(separator: " | ")
                         + " | " + paired.joined(separator: " | ") + " |")
        }
        // By prompt form and by shape: the held-out category mixes one- and two-object prompts and
        // holds more triangles than the others, and only these splits tell a held-out pair from a
        // shape a student draws worse (session 37: triangles).
        var groups: [(label: String, holds: (Prompt) -> Bool)] = []
        for (objects, heldOut) in [(1, false), (1, true), (2, false), (2, true)] {
            groups.append(("\(objects == 1 ? "one object" : "two objects"), \(heldOut ? "held-out pair" : "seen pairs")",
                           { $0.objects.count == objects && $0.containsHeldOutPair == heldOut }))
        }
        for shape in Prompt.Shape.allCases { groups.append(("with a \(shape.rawValue)", { $0.objects.contains { $0.shape == shape } })) }
        lines += ["", "| model | " + groups.map(\.label).joined(separator: " | ") + " |", "|---|" + String(repeating: "---|", count: groups.count)]
        for c in columns {
            lines.append("| \(c.name) | " + groups.map { g in accuracy(c, prompts.indices.filter { g.holds(prompts[$0].prompt) }) }.joined(separator: " | ") + " |")
        }
        guard timed else { return lines.joined(separator: "\n") + "\n" }
        let n = prompts.count / categories.count
        lines.append("")
        lines.append("\(n) prompts per category (fixed: `DefaultReport.prompts`), prompt i with seed \(seed) + i and the same noise for every model; "
                     + "judged by ShapesWorld's judge; wall-clock prompt → image (text encoder, sampler, decoder) on \(threads) thread\(threads == 1 ? "" : "s"), "
                     + "mean over the prompts after one warm-up image. A failure is the judge's first failed check: count (objects missing, extra or split), "
                     + "identity (a colour or shape), relation, size, position. The last table splits the same verdicts by the prompt's form "
                     + "(one or two objects, with a held-out pair, green triangle or orange square, or only seen pairs) and by the shapes it names. Generated by `arcflow report-default` (Tools/report-default.sh).")
        return lines.joined(separator: "\n") + "\n"
    }

    /// One row per prompt: index, category, prompt, seed, then per model its verdict ("pass" or
    /// the failed check), the judge's reason (the objects it found) and, for the students, the
    /// paired error to the teacher (0–255).
    public static func verdictsCSV(_ columns: [Column], prompts: [(category: String, prompt: Prompt)], seed: Int) -> String {
        func field(_ s: String) -> String { s.contains(",") || s.contains("\"") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
        let teacher = columns[0]
        var header = ["index", "category", "prompt", "seed"]
        for (j, c) in columns.enumerated() { header += [c.name, "\(c.name) reason"] + (j == 0 ? [] : ["\(c.name) error"]) }
        var lines = [header.map(field).joined(separator: ",")]
        for (i, item) in prompts.enumerated() {
            var row = [String(i), item.category, item.prompt.description, String(seed + i)]
            for (j, c) in columns.enumerated() {
                row += [c.verdicts[i].failure?.rawValue ?? "pass", c.verdicts[i].reason]
                if j > 0 { row.append(String(format: "%.3f", meanAbsoluteError(c.images[i], teacher.images[i]))) }
            }
            lines.append(row.map(field).joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Ground of the grid and colour of its labels.
    public static let gridGround: UInt8 = 48
    public static let labelColour: (r: UInt8, g: UInt8, b: UInt8) = (224, 224, 224)

    /// Rows = prompts, columns = images (nil: absent), each scaled ×`scale` (nearest), `gap`
    /// pixels apart on a dark grey ground.
    ///
    /// `columnLabels` (e.g. "teacher 28", "ArcFlow 2") add a header band with each label centred
    /// over its column, wrapped at spaces to the column's width (3 lines at most); `rowLabels` (the
    /// prompts) add a left band, as wide as the longest label up to `maxRowLabelWidth` (default: a
    /// cell, at least 16 characters), each label wrapped to it, centred on its row's height and cut
    /// with ".." when it has more lines than the row holds. Text is `BitmapFont` ×`textScale`
    /// (default max(1, scale / 2)), light on the ground. A band exists only when one of its labels
    /// has text, so with no labels (the default) the layout is the unlabelled one, byte for byte.
    /// Missing labels are blank; extra ones are ignored.
    public static func grid(_ rows: [[Image8?]], scale: Int = 2, gap: Int = 4, columnLabels: [String] = [], rowLabels: [String] = [],
                            textScale: Int? = nil, maxRowLabelWidth: Int? = nil) -> Image8 {
        let cols = rows.map(\.count).max() ?? 0
        let cell = ShapesWorld.side * scale
        let ts = max(textScale ?? scale / 2, 1)
        func visible(_ s: String) -> Bool { !s.allSatisfy { $0 == " " } }
        let headerLines = columnLabels.prefix(cols).map { BitmapFont.wrap($0, maxWidth: cell, scale: ts, maxLines: 3) }
        let headerRows = headerLines.map(\.count).max() ?? 0
        let bandText = rowLabels.prefix(rows.count).contains(where: visible)
            ? min(rowLabels.prefix(rows.count).map { BitmapFont.width(of: $0, scale: ts) }.max()!,
                  maxRowLabelWidth ?? max(cell, BitmapFont.width(of: String(repeating: "x", count: 16), scale: ts)))
            : 0
        let rowLineCount = max(1, (cell + BitmapFont.lineHeight * ts - BitmapFont.height(lines: 1, scale: ts)) / (BitmapFont.lineHeight * ts))
        let rowLines = rowLabels.prefix(rows.count).map { BitmapFont.wrap($0, maxWidth: bandText, scale: ts, maxLines: rowLineCount) }
        // The bands: text, then the grid's own gap before the images.
        let top = headerRows > 0 ? gap + BitmapFont.height(lines: headerRows, scale: ts) + ts : 0
        let left = bandText > 0 ? gap + bandText : 0
        let w = left + gap + cols * (cell + gap), h = top + gap + rows.count * (cell + gap)
        var out = Image8(width: max(w, 1), height: max(h, 1), channels: 3, pixels: [UInt8](repeating: gridGround, count: max(w, 1) * max(h, 1) * 3))
        for (r, row) in rows.enumerated() {
            for (c, image) in row.enumerated() {
                guard let image else { continue }
                let ox = left + gap + c * (cell + gap), oy = top + gap + r * (cell + gap)
                for y in 0..<min(cell, image.height * scale) {
                    for x in 0..<min(cell, image.width * scale) {
                        for ch in 0..<3 { out[ox + x, oy + y, ch] = image[x / scale, y / scale, image.channels == 3 ? ch : 0] }
                    }
                }
            }
        }
        for (c, lines) in headerLines.enumerated() {
            // Bottom-aligned, so one-line labels sit next to the images when others take two.
            let y0 = gap + BitmapFont.lineHeight * ts * (headerRows - lines.count)
            for (i, line) in lines.enumerated() {
                let x = left + gap + c * (cell + gap) + (cell - BitmapFont.width(of: line, scale: ts)) / 2
                out.drawText(line, x: x, y: y0 + i * BitmapFont.lineHeight * ts, color: labelColour, scale: ts)
            }
        }
        for (r, lines) in rowLines.enumerated() {
            let y0 = top + gap + r * (cell + gap) + (cell - BitmapFont.height(lines: lines.count, scale: ts)) / 2
            for (i, line) in lines.enumerated() {
                out.drawText(line, x: gap, y: y0 + i * BitmapFont.lineHeight * ts, color: labelColour, scale: ts)
            }
        }
        return out
    }
}
