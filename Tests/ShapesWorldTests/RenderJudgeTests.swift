// Renderer and judge: renders of random prompts pass, corrupted renders fail, rendering is
// deterministic, and the measurements the judge's thresholds rest on.

import Foundation
import Imaging
import XCTest
@testable import ShapesWorld

final class RenderJudgeTests: XCTestCase {
    /// Prompts over the whole grammar, held-out pairs included (they are legal prompts).
    private func prompts(_ n: Int, seed: UInt64) -> [Prompt] {
        var s = PromptSampler(seed: seed, includeHeldOut: true)
        return s.next(n)
    }

    func testRendersOfRandomPromptsPassTheJudge() {
        var rng = SplitMix64(seed: 11)
        var failures: [String] = []
        let all = prompts(1000, seed: 3)
        for p in all {
            let v = ShapesWorld.judge(ShapesWorld.render(p, rng: &rng), p)
            if !v.passed { failures.append("\(p): \(v.reason)") }
        }
        let rate = Double(all.count - failures.count) / Double(all.count)
        print("judge pass rate on renders: \(all.count - failures.count)/\(all.count) = \(rate)")
        for f in failures.prefix(10) { print("  \(f)") }
        XCTAssertGreaterThanOrEqual(rate, 0.995)
    }

    func testRenderingIsDeterministicForASeed() throws {
        let p = try Prompt.parse("a green circle to the left of a white square")
        XCTAssertEqual(ShapesWorld.render(p, seed: 7), ShapesWorld.render(p, seed: 7))
        XCTAssertNotEqual(ShapesWorld.render(p, seed: 7), ShapesWorld.render(p, seed: 8))
        var a = SplitMix64(seed: 4), b = SplitMix64(seed: 4)
        XCTAssertEqual(ShapesWorld.renderBatch(prompts(8, seed: 1), rng: &a), ShapesWorld.renderBatch(prompts(8, seed: 1), rng: &b))
    }

    /// A narrower training prior (`across`): two-object scenes keep the offset across their
    /// relation within it and still pass the judge; one-object scenes draw exactly as before.
    func testNarrowerRelationPriorBoundsTheOffsetAcross() throws {
        var narrow = SplitMix64(seed: 21), wide = SplitMix64(seed: 21)
        var widest = 0.0
        for p in prompts(400, seed: 5) {
            let scene = ShapesWorld.layout(p, rng: &narrow, across: 6)
            let plain = ShapesWorld.layout(p, rng: &wide)
            guard let relation = p.relation else {
                XCTAssertEqual(scene.items.map(\.x), plain.items.map(\.x), "\(p)")
                XCTAssertEqual(scene.items.map(\.y), plain.items.map(\.y), "\(p)")
                narrow = wide   // a two-object draw may consume a different number of values
                continue
            }
            let (a, b) = (scene.items[0], scene.items[1])
            let across = relation == .above || relation == .below ? a.x - b.x : a.y - b.y
            XCTAssertLessThanOrEqual(abs(across), 6, "\(p)")
            widest = max(widest, abs(across))
            XCTAssertTrue(ShapesWorld.judge(ShapesWorld.rasterize(scene), p).passed, "\(p)")
            narrow = wide
        }
        XCTAssertGreaterThan(widest, 4, "the prior narrows the offsets, it does not pin them")
    }

    func testImagesFollowTheCanvasRules() throws {
        var rng = SplitMix64(seed: 12)
        for p in prompts(300, seed: 4) {
            let scene = ShapesWorld.layout(p, rng: &rng)
            for (o, item) in zip(p.objects, scene.items) {
                XCTAssertEqual(item.colour, o.colour)
                XCTAssertEqual(item.shape, o.shape)
                XCTAssertTrue(ShapesWorld.sizeRange(o.size).contains(item.size))
                for v in [item.x, item.y] { XCTAssertTrue(item.size / 2 <= v && v <= 64 - item.size / 2) }
                if let pos = o.position {
                    XCTAssertTrue(pos.contains(column: ShapesWorld.cell(item.x), row: ShapesWorld.cell(item.y)), "\(p)")
                }
            }
            if let r = p.relation {
                XCTAssertTrue(r.holds((scene.items[0].x, scene.items[0].y), (scene.items[1].x, scene.items[1].y)))
                XCTAssertGreaterThanOrEqual(scene.items[0].gap(to: scene.items[1]), 2)
            }
        }
        let image = ShapesWorld.render(try Prompt.parse("a red square"), seed: 1)
        XCTAssertEqual([image.width, image.height, image.channels], [64, 64, 3])
        // Flat palette colour inside, background outside, blends only on the rim.
        let exact = ShapesWorld.rasterize(Scene([Scene.Item(.orange, .square, x: 32, y: 32, size: 20)]))
        XCTAssertEqual([exact[32, 32, 0], exact[32, 32, 1], exact[32, 32, 2]], [245, 140, 30])
        XCTAssertEqual([exact[5, 5, 0], exact[5, 5, 1], exact[5, 5, 2]], [24, 24, 24])
        let half = ShapesWorld.rasterize(Scene([Scene.Item(.white, .square, x: 32.5, y: 32, size: 20)]))
        XCTAssertEqual([half[22, 32, 0], half[42, 32, 0]], [130, 130])   // half-covered columns
    }

    func testBatchIsCHWInMinusOneToOne() throws {
        let images = [ShapesWorld.render(try Prompt.parse("a white square"), seed: 2), ShapesWorld.render(try Prompt.parse("a red circle"), seed: 2)]
        let t = ShapesWorld.tensor(images)
        XCTAssertEqual(t.count, 2 * 3 * 64 * 64)
        XCTAssertTrue(t.allSatisfy { $0 >= -1 && $0 <= 1 })
        for (k, image) in images.enumerated() {
            for (x, y) in [(0, 0), (31, 30), (63, 17)] {
                for c in 0..<3 { XCTAssertEqual(t[((k * 3 + c) * 64 + y) * 64 + x], Float(image[x, y, c]) / 127.5 - 1) }
            }
        }
    }

    // MARK: anti-aliased rims

    /// Plain nearest-RGB would label white's half-covered rim green or purple; the ramp rule
    /// keeps every exact blend of a colour on that colour or the background.
    func testBlendedRimPixelsNeverTakeAnotherColour() {
        let bg = ShapesWorld.background
        for c in Prompt.Colour.allCases {
            for k in 0...16 {
                let a = Double(k) / 16
                func mix(_ v: UInt8, _ b: UInt8) -> UInt8 { UInt8((a * Double(v) + (1 - a) * Double(b)).rounded()) }
                let l = ShapesWorld.label(mix(c.rgb.r, bg.r), mix(c.rgb.g, bg.g), mix(c.rgb.b, bg.b))
                XCTAssertEqual(l, k >= 8 ? c : nil, "\(c) at coverage \(a)")
            }
        }
    }

    /// Sub-pixel squares have whole rows of one blend: the worst case for spurious rim objects.
    func testSubPixelEdgesMakeNoSpuriousObjects() {
        for c in Prompt.Colour.allCases {
            for shape in Prompt.Shape.allCases {
                for off in stride(from: 0.0, to: 1.0, by: 0.125) {
                    let scene = Scene([Scene.Item(c, shape, x: 20 + off, y: 30 + off / 2, size: 28 + off)])
                    let found = ShapesWorld.segment(ShapesWorld.rasterize(scene))
                    XCTAssertEqual(found.count, 1, "\(c) \(shape) offset \(off): \(found)")
                    XCTAssertEqual(found.first?.shape, shape)
                    XCTAssertEqual(found.first?.colour, c)
                }
            }
        }
    }

    /// The measurements behind the thresholds: fill, widest row and size error per shape over
    /// many sizes and sub-pixel positions. The bands in `ShapesWorld.shape` contain these
    /// ranges with room to spare; sizes measured with coverage are within `sizeTolerance`.
    func testShapeMeasurementsSitInsideTheBands() {
        var rng = SplitMix64(seed: 21)
        for shape in Prompt.Shape.allCases {
            var fill = (1.0, 0.0), widest = (1.0, 0.0), err = (100.0, -100.0)
            for _ in 0..<2000 {
                let s = rng.uniform(12...30)
                let item = Scene.Item(.blue, shape, x: rng.uniform(20...40), y: rng.uniform(20...40), size: s)
                let found = ShapesWorld.segment(ShapesWorld.rasterize(Scene([item])))
                guard found.count == 1 else { XCTFail("\(item): \(found)"); continue }
                let d = found[0]
                XCTAssertEqual(d.shape, shape, "\(item) → \(d)")
                fill = (min(fill.0, d.fill), max(fill.1, d.fill))
                widest = (min(widest.0, d.widestRow), max(widest.1, d.widestRow))
                err = (min(err.0, d.across - s), max(err.1, d.across - s))
                XCTAssertLessThanOrEqual(abs(d.across - s), shape == .triangle ? 1.25 : 0.3, "\(item) → \(d)")
                let dc = (abs(d.centre.x - item.x), abs(d.centre.y - item.y))
                XCTAssertLessThanOrEqual(max(dc.0, dc.1), 1.0, "\(item) → \(d)")
            }
            print("\(shape): fill \(fill), widest row \(widest), across − size \(err)")
        }
    }

    /// Generated images are soft-edged: a 3 × 3 box blur of a render still shows its prompt.
    func testBlurredRendersPass() {
        var rng = SplitMix64(seed: 13)
        var failures: [String] = []
        for p in prompts(300, seed: 8) {
            let image = ShapesWorld.render(p, rng: &rng)
            var blurred = image
            for y in 0..<64 {
                for x in 0..<64 {
                    for c in 0..<3 {
                        var sum = 0, n = 0
                        for dy in -1...1 { for dx in -1...1 where (0..<64).contains(x + dx) && (0..<64).contains(y + dy) {
                            sum += Int(image[x + dx, y + dy, c])
                            n += 1
                        } }
                        blurred[x, y, c] = UInt8((sum + n / 2) / n)
                    }
                }
            }
            let v = ShapesWorld.judge(blurred, p)
            if !v.passed { failures.append("\(p): \(v.reason)") }
        }
        print("blurred renders: judge passes \(300 - failures.count)/300")
        for f in failures.prefix(5) { print("  \(f)") }
        XCTAssertLessThanOrEqual(failures.count, 3)
    }

    // MARK: corrupted images fail

    enum Corruption: String, CaseIterable {
        case recolour, move, extra, delete, reshape, resize, noise
    }

    /// A corrupted render of `p`, or nil when the corruption does not apply to the prompt
    /// (moving an unplaced lone object, resizing an unsized one).
    private func corrupt(_ p: Prompt, _ kind: Corruption, _ rng: inout SplitMix64, sigma: Double = 128) -> Image8? {
        var scene = ShapesWorld.layout(p, rng: &rng)
        let k = rng.index(scene.items.count)
        switch kind {
        case .recolour:
            scene.items[k].colour = rng.pick(Prompt.Colour.allCases.filter { $0 != scene.items[k].colour })
        case .reshape:
            scene.items[k].shape = rng.pick(Prompt.Shape.allCases.filter { $0 != scene.items[k].shape })
        case .delete:
            scene.items.remove(at: k)
        case .extra:
            while true {
                let s = rng.uniform(14...26)
                let item = Scene.Item(rng.pick(Prompt.Colour.allCases), rng.pick(Prompt.Shape.allCases),
                                      x: rng.uniform(s / 2...64 - s / 2), y: rng.uniform(s / 2...64 - s / 2), size: s)
                if scene.items.allSatisfy({ $0.gap(to: item) >= 2 }) {
                    scene.items.append(item)
                    break
                }
            }
        case .move:
            if let r = p.relation {
                // Mirror the centres across the relation's axis: the relation turns around.
                for i in scene.items.indices {
                    if r == .leftOf || r == .rightOf { scene.items[i].x = 64 - scene.items[i].x } else { scene.items[i].y = 64 - scene.items[i].y }
                }
            } else if let pos = p.objects[0].position {
                let s = scene.items[0].size
                while true {
                    let (x, y) = (rng.uniform(s / 2...64 - s / 2), rng.uniform(s / 2...64 - s / 2))
                    if ShapesWorld.inCell(x, ShapesWorld.cell(x)) && ShapesWorld.inCell(y, ShapesWorld.cell(y))
                        && !pos.contains(column: ShapesWorld.cell(x), row: ShapesWorld.cell(y)) {
                        (scene.items[0].x, scene.items[0].y) = (x, y)
                        break
                    }
                }
            } else { return nil }
        case .resize:
            guard let size = p.objects[0].size, p.relation == nil else { return nil }
            let s = rng.uniform(ShapesWorld.sizeRange(size == .small ? .large : .small))
            scene.items[0].size = s
            scene.items[0].x = min(max(scene.items[0].x, s / 2), 64 - s / 2)
            scene.items[0].y = min(max(scene.items[0].y, s / 2), 64 - s / 2)
        case .noise:
            var image = ShapesWorld.rasterize(scene)
            for i in image.pixels.indices {
                let u1 = rng.unit() + 0x1p-53, u2 = rng.unit()
                let z = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
                image.pixels[i] = UInt8(max(0, min(255, (Double(image.pixels[i]) + sigma * z).rounded())))
            }
            return image
        }
        return ShapesWorld.rasterize(scene)
    }

    private func failureRate(_ kind: Corruption, count: Int = 1000, sigma: Double = 128)
        -> (rate: Double, applied: Int, passed: [String], failures: [Verdict.Failure: Int]) {
        var rng = SplitMix64(seed: 31 + UInt64(kind.rawValue.count))
        var applied = 0
        var passed: [String] = []
        var failures: [Verdict.Failure: Int] = [:]
        for p in prompts(count, seed: 77) {
            guard let image = corrupt(p, kind, &rng, sigma: sigma) else { continue }
            applied += 1
            let v = ShapesWorld.judge(image, p)
            if v.passed { passed.append("\(p): \(v.reason)") }
            if let f = v.failure { failures[f, default: 0] += 1 }
        }
        return (Double(applied - passed.count) / Double(max(applied, 1)), applied, passed, failures)
    }

    /// Each corruption fails, and for the check it breaks: a recoloured or reshaped object fails
    /// on identity, a deleted or extra one on the count, a resized one on size, a moved one on
    /// its position or relation (what the report's failure counts rest on).
    func testCorruptedRendersFail() {
        let expected: [Corruption: Set<Verdict.Failure>] = [
            .recolour: [.identity], .reshape: [.identity], .delete: [.count], .extra: [.count],
            .resize: [.size], .move: [.position, .relation],
        ]
        for kind in Corruption.allCases {
            let (rate, applied, passed, failures) = failureRate(kind)
            print("corruption \(kind.rawValue): judge fails \(applied - passed.count)/\(applied) = \(rate); "
                  + failures.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", "))
            for s in passed.prefix(5) { print("  still passes: \(s)") }
            XCTAssertGreaterThan(applied, 150)
            // Noise with σ = 128 (half the byte range) leaves a rare large shape readable.
            XCTAssertGreaterThanOrEqual(rate, kind == .noise ? 0.98 : 1.0, "\(kind)")
            if let allowed = expected[kind] {
                XCTAssertTrue(Set(failures.keys).isSubset(of: allowed), "\(kind): \(failures)")
            }
        }
        XCTAssertEqual(ShapesWorld.judge(Image8(width: 8, height: 8, channels: 3), try! Prompt.parse("a red circle")).failure, .format)
    }

    /// Light noise is not a corruption (the judge is not brittle); heavy noise is.
    func testNoiseLevels() {
        for sigma in [4.0, 8.0, 16.0, 32.0, 60.0, 80.0, 100.0, 128.0] {
            let (rate, applied, _, _) = failureRate(.noise, count: 300, sigma: sigma)
            print("gaussian noise σ = \(sigma): judge fails \(Int((rate * Double(applied)).rounded()))/\(applied) = \(rate)")
            if sigma <= 8 { XCTAssertLessThan(rate, 0.01) }
        }
    }

    // MARK: contact sheet

    func testContactSheet() throws {
        let ps = prompts(16, seed: 2024)
        let sheet = ShapesWorld.contactSheet(prompts: ps, seed: 1)
        XCTAssertEqual([sheet.width, sheet.height], [4 * 66 + 2, 4 * 66 + 2])
        var rng = SplitMix64(seed: 1)
        let first = ShapesWorld.render(ps[0], rng: &rng)
        XCTAssertEqual(sheet[2 + 10, 2 + 20, 1], first[10, 20, 1])
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("shapes-sheet.png")
        try PNG.encode(sheet, text: [("prompts", ps.map(\.description).joined(separator: " | "))]).write(to: url)
        print("contact sheet: \(url.path)")
        for (i, p) in ps.enumerated() { print("  \(i): \(p)") }
    }
}
