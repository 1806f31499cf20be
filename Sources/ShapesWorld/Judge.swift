// The judge of the shapes world: segments an image into objects and checks them against a prompt
// (docs/shapes-world.md, "How generated images are judged").

import Imaging

/// One object found in an image: a 4-connected region of one colour larger than 20 pixels.
public struct DetectedObject: CustomStringConvertible, Sendable {
    public let colour: Prompt.Colour
    public let pixels: Int
    /// Inclusive pixel bounds of the region.
    public let minX: Int, minY: Int, maxX: Int, maxY: Int
    /// Width and height measured with coverage: the largest sum of coverage over a row, and
    /// over a column, of the box widened by a pixel (see `segment`).
    public let extentX: Double, extentY: Double
    /// Fraction of its box (`extentX` × `extentY`) the region fills, counted with coverage.
    public let fill: Double
    /// Where the widest row lies, from 0 (top of the box) to 1 (bottom).
    public let widestRow: Double
    /// nil when the region is none of the three shapes.
    public let shape: Prompt.Shape?

    public var width: Int { maxX - minX + 1 }
    public var height: Int { maxY - minY + 1 }
    /// The longer side of the bounding box, measured with coverage.
    public var across: Double { max(extentX, extentY) }
    /// Centre of the bounding box in continuous coordinates (pixel x covers [x, x + 1)).
    public var centre: (x: Double, y: Double) { (Double(minX + maxX + 1) / 2, Double(minY + maxY + 1) / 2) }

    public var description: String {
        let what = shape.map { "\(colour.rawValue) \($0.rawValue)" }
            ?? "\(colour) region of no shape (fill \(f2(fill)), widest row at \(f2(widestRow)), \(f1(extentX))×\(f1(extentY)))"
        return "\(what) \(f1(across)) px across at (\(f1(centre.x)), \(f1(centre.y)))"
    }
}

private func f1(_ v: Double) -> String { String(Double((v * 10).rounded()) / 10) }
private func f2(_ v: Double) -> String { String(Double((v * 100).rounded()) / 100) }

/// The judge's answer: whether the image shows the prompt, and why (one line).
public struct Verdict: CustomStringConvertible, Sendable {
    /// The first check an image failed, in the order the judge makes them; reports count these to
    /// say what a model gets wrong, not only how often.
    public enum Failure: String, CaseIterable, Sendable {
        /// Not a 64×64 RGB image.
        case format
        /// Another number of objects than the prompt names (a missing, extra or split object).
        case count
        /// The right count, but a colour or shape other than the prompt's.
        case identity
        /// Two objects of the prompt, not in its relation.
        case relation
        /// One object, not the prompt's size.
        case size
        /// One object, not at the prompt's position.
        case position
    }

    public let passed: Bool
    public let reason: String
    public let objects: [DetectedObject]
    /// Why the image failed; nil when it passed.
    public let failure: Failure?
    public var description: String { (passed ? "pass: " : "fail: ") + reason }

    init(passed: Bool, reason: String, objects: [DetectedObject], failure: Failure? = nil) {
        precondition(passed == (failure == nil), "a failed verdict names its failure")
        self.passed = passed; self.reason = reason; self.objects = objects; self.failure = failure
    }
}

extension ShapesWorld {
    /// Regions of this many pixels or fewer are not objects (spec: "larger than 20 pixels").
    public static let minimumObjectPixels = 21
    /// Measured sizes may be off by this much from the size ranges. Squares and discs measure
    /// within 0.25 px of their size, triangles up to 1.2 px short (their apex and base rows are
    /// only partly covered, and the extents are the fullest row and column); 1.5 px keeps
    /// small (≤ 16) and large (≥ 24) far apart.
    public static let sizeTolerance = 1.5

    /// The label of one pixel: a palette colour, or nil for the background.
    ///
    /// "Nearest palette colour" is measured to each colour's anti-aliasing ramp, the segment from
    /// the background to the colour, and the pixel takes the colour when it lies on the colour's
    /// half of that ramp (coverage ≥ 1/2). Plain RGB distance would not do: white's edge pixels at
    /// 40–60 % coverage are nearer green and purple, and orange's nearer red, so every sub-pixel
    /// edge of a white or orange square would become a spurious 20-to-30-pixel line object.
    /// On flat colours both rules agree.
    public static func label(_ r: UInt8, _ g: UInt8, _ b: UInt8) -> Prompt.Colour? {
        let v = (Double(r) - Double(background.r), Double(g) - Double(background.g), Double(b) - Double(background.b))
        var best: Prompt.Colour?
        var bestDistance = Double.infinity, bestCoverage = 0.0
        for (colour, u, uu) in ramps {
            let a = max(0, min(1, (v.0 * u.0 + v.1 * u.1 + v.2 * u.2) / uu))
            let d = (v.0 - a * u.0) * (v.0 - a * u.0) + (v.1 - a * u.1) * (v.1 - a * u.1) + (v.2 - a * u.2) * (v.2 - a * u.2)
            if d < bestDistance { (best, bestDistance, bestCoverage) = (colour, d, a) }
        }
        return bestCoverage >= 0.5 ? best : nil
    }

    /// Coverage of a pixel by `colour`: its position along the colour's ramp, not clamped, so
    /// that noise averages out in sums instead of biasing them.
    static func coverage(_ r: UInt8, _ g: UInt8, _ b: UInt8, _ colour: Prompt.Colour) -> Double {
        let (_, u, uu) = ramps[colour.index]
        return ((Double(r) - Double(background.r)) * u.0 + (Double(g) - Double(background.g)) * u.1
                + (Double(b) - Double(background.b)) * u.2) / uu
    }

    /// Each colour's ramp direction (colour − background) and its squared length.
    private static let ramps: [(Prompt.Colour, (Double, Double, Double), Double)] = Prompt.Colour.allCases.map { c in
        let u = (Double(c.rgb.r) - Double(background.r), Double(c.rgb.g) - Double(background.g), Double(c.rgb.b) - Double(background.b))
        return (c, u, u.0 * u.0 + u.1 * u.1 + u.2 * u.2)
    }

    /// Reads a region's shape from its box, which must be about as wide as tall (within 30 %).
    /// Square: fills ≥ 0.9 of it. Circle: fills 0.6–0.9 (π/4 ≈ 0.785) with the widest row in the
    /// middle half. Triangle: fills 0.35–0.7 (1/2) with the widest row in the bottom quarter.
    /// The bands sit around the values renders measure (see the tests) with room for noise;
    /// circle and triangle, whose bands overlap, are told apart by the widest row. An apex-down
    /// triangle or a half disc is no shape.
    static func shape(width: Double, height: Double, fill: Double, widestRow: Double) -> Prompt.Shape? {
        guard width > 0 && height > 0 else { return nil }
        let aspect = max(width, height) / min(width, height)
        guard aspect <= 1.3 else { return nil }
        if fill >= 0.9 { return .square }
        if fill >= 0.6 && (0.25...0.75).contains(widestRow) { return .circle }
        if (0.35...0.7).contains(fill) && widestRow >= 0.75 { return .triangle }
        return nil
    }

    /// The objects of an image, in reading order of their first pixel. Regions are 4-connected:
    /// the anti-aliased rim that survives labelling is then never a diagonal bridge between
    /// neighbouring objects, and noise pixels touching only at corners stay separate.
    public static func segment(_ image: Image8) -> [DetectedObject] {
        let w = image.width, h = image.height
        var labels = [Prompt.Colour?](repeating: nil, count: w * h)
        for i in 0..<w * h {
            labels[i] = image.channels == 3
                ? label(image.pixels[i * 3], image.pixels[i * 3 + 1], image.pixels[i * 3 + 2])
                : label(image.pixels[i], image.pixels[i], image.pixels[i])
        }
        var seen = [Bool](repeating: false, count: w * h)
        var owner = [Int](repeating: 0, count: w * h)
        var objects: [DetectedObject] = []
        var stack: [Int] = []
        var region: [Int] = []
        for start in 0..<w * h where !seen[start] {
            seen[start] = true
            guard let colour = labels[start] else { continue }
            region.removeAll(keepingCapacity: true)
            stack.append(start)
            while let i = stack.popLast() {
                region.append(i)
                let x = i % w, y = i / w
                for (nx, ny) in [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)] where nx >= 0 && nx < w && ny >= 0 && ny < h {
                    let j = ny * w + nx
                    if !seen[j] && labels[j] == colour {
                        seen[j] = true
                        stack.append(j)
                    }
                }
            }
            guard region.count >= minimumObjectPixels else { continue }
            let xs = region.map { $0 % w }, ys = region.map { $0 / w }
            let minX = xs.min()!, maxX = xs.max()!, minY = ys.min()!, maxY = ys.max()!
            let bh = maxY - minY + 1
            var rowWidth = [Int](repeating: 0, count: bh)
            for y in ys { rowWidth[y - minY] += 1 }
            // Several rows can share the maximum (a disc's middle, all of a square): take their mean.
            let widest = rowWidth.max()!
            let widestRows = rowWidth.indices.filter { rowWidth[$0] == widest }
            let widestRow = (Double(widestRows.reduce(0, +)) / Double(widestRows.count) + 0.5) / Double(bh)
            // Extents and fill from coverage, not pixel counts: a rim half covered is counted as
            // half, where the binary box would gain a whole row or column (or not, with a little
            // noise). The window is the box widened by a pixel, for rims under half covered; it
            // takes this region's pixels and background pixels, never another region's.
            let regionID = objects.count + 1
            for i in region { owner[i] = regionID }
            let wx0 = max(0, minX - 1), wx1 = min(w - 1, maxX + 1), wy0 = max(0, minY - 1), wy1 = min(h - 1, maxY + 1)
            var rows = [Double](repeating: 0, count: wy1 - wy0 + 1), cols = [Double](repeating: 0, count: wx1 - wx0 + 1)
            for y in wy0...wy1 {
                for x in wx0...wx1 {
                    let i = y * w + x
                    guard owner[i] == regionID || labels[i] == nil else { continue }
                    let a = image.channels == 3
                        ? coverage(image.pixels[i * 3], image.pixels[i * 3 + 1], image.pixels[i * 3 + 2], colour)
                        : coverage(image.pixels[i], image.pixels[i], image.pixels[i], colour)
                    rows[y - wy0] += a
                    cols[x - wx0] += a
                }
            }
            let area = rows.reduce(0, +), ex = rows.max()!, ey = cols.max()!
            let fill = ex > 0 && ey > 0 ? area / (ex * ey) : 0
            objects.append(DetectedObject(colour: colour, pixels: region.count, minX: minX, minY: minY, maxX: maxX, maxY: maxY,
                                          extentX: ex, extentY: ey, fill: fill, widestRow: widestRow,
                                          shape: shape(width: ex, height: ey, fill: fill, widestRow: widestRow)))
        }
        return objects
    }

    /// Whether the image shows the prompt: exactly as many objects as the prompt names, each of
    /// the right colour and shape; for one object the size (±`sizeTolerance`) and the cell of the
    /// bounding-box centre when named; for two objects the relation between the centres.
    public static func judge(_ image: Image8, _ prompt: Prompt) -> Verdict {
        guard image.width == side && image.height == side && image.channels == 3 else {
            return Verdict(passed: false, reason: "a \(image.width)×\(image.height) image with \(image.channels) channel(s) is not a 64×64 RGB image of the shapes world",
                           objects: [], failure: .format)
        }
        let found = segment(image)
        func fail(_ failure: Verdict.Failure, _ why: String) -> Verdict { Verdict(passed: false, reason: why, objects: found, failure: failure) }
        let list = found.isEmpty ? "none" : found.map(\.description).joined(separator: "; ")
        guard found.count == prompt.objects.count else {
            return fail(.count, "expected \(prompt.objects.count) object(s), found \(found.count): \(list)")
        }
        func matches(_ d: DetectedObject, _ o: Prompt.Object) -> Bool { d.colour == o.colour && d.shape == o.shape }
        if let relation = prompt.relation {
            let (a, b) = (prompt.objects[0], prompt.objects[1])
            // The objects differ in colour or shape, so at most one assignment matches.
            let pair = matches(found[0], a) && matches(found[1], b) ? (found[0], found[1])
                : matches(found[1], a) && matches(found[0], b) ? (found[1], found[0]) : nil
            guard let (da, db) = pair else {
                return fail(.identity, "expected a \(a.colour.rawValue) \(a.shape.rawValue) and a \(b.colour.rawValue) \(b.shape.rawValue), found: \(list)")
            }
            guard relation.holds(da.centre, db.centre) else {
                return fail(.relation, "the \(a.colour.rawValue) \(a.shape.rawValue) is not \(relation.phrase) the \(b.colour.rawValue) \(b.shape.rawValue) (centres 16 px apart along, within 16 px across): \(list)")
            }
            return Verdict(passed: true, reason: list, objects: found)
        }
        let (d, o) = (found[0], prompt.objects[0])
        guard matches(d, o) else { return fail(.identity, "expected a \(o.colour.rawValue) \(o.shape.rawValue), found: \(list)") }
        if let size = o.size {
            let r = sizeRange(size)
            guard d.across >= r.lowerBound - sizeTolerance && d.across <= r.upperBound + sizeTolerance else {
                return fail(.size, "\(list): not \(size.rawValue) (\(Int(r.lowerBound))–\(Int(r.upperBound)) px across)")
            }
        }
        if let p = o.position {
            guard p.contains(column: cell(d.centre.x), row: cell(d.centre.y)) else {
                return fail(.position, "\(list): the centre is not \(p.phrase)")
            }
        }
        return Verdict(passed: true, reason: list, objects: found)
    }
}
