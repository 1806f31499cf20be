// Seeded randomness and the training-prompt sampler of the shapes world.

/// SplitMix64, the same generator as Runtime's `SeededGenerator` (copied: this module must not
/// depend on the compiler runtime). Same seed, same prompts and images on every machine.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Draws built on `next()` alone, not on the standard library's `random(in:using:)`, whose
/// algorithm is not promised: renders must stay identical across toolchains.
extension RandomNumberGenerator {
    /// Uniform in [0, 1) with 53 random bits.
    mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }
    mutating func uniform(_ range: ClosedRange<Double>) -> Double {
        range.lowerBound + unit() * (range.upperBound - range.lowerBound)
    }
    /// Uniform in 0..<n (bias below 2⁻⁵⁰ for the small n used here).
    mutating func index(_ n: Int) -> Int { min(Int(unit() * Double(n)), n - 1) }
    mutating func pick<T>(_ items: [T]) -> T { items[index(items.count)] }
    mutating func chance(_ p: Double) -> Bool { unit() < p }
}

/// Random training prompts over the whole grammar. Without `includeHeldOut` no prompt contains
/// a held-out colour-shape pair (green triangle, orange square) in either object: such prompts
/// are redrawn, so the other pairs keep their relative frequencies.
public struct PromptSampler: Sendable {
    public var includeHeldOut: Bool
    /// Probability of a two-object prompt; of a size, and of a position, in a one-object prompt.
    public var twoObjects = 0.4
    public var sizeGiven = 0.5
    public var positionGiven = 0.6
    /// Relative frequencies of circle, square and triangle (nil: uniform). A student that draws
    /// one shape worse than its teacher can be distilled on more of it (README, session 37:
    /// triangles); with equal weights the draws are those of the uniform pick.
    public var shapeWeights: [Double]? = nil
    private var rng: SplitMix64

    public init(seed: UInt64, includeHeldOut: Bool = false) {
        rng = SplitMix64(seed: seed)
        self.includeHeldOut = includeHeldOut
    }

    public mutating func next() -> Prompt {
        while true {
            let p = draw()
            if includeHeldOut || !p.containsHeldOutPair { return p }
        }
    }

    public mutating func next(_ count: Int) -> [Prompt] { (0..<count).map { _ in next() } }

    private mutating func object() -> Prompt.Object {
        let colour = rng.pick(Prompt.Colour.allCases)
        guard let w = shapeWeights else { return Prompt.Object(colour, rng.pick(Prompt.Shape.allCases)) }
        precondition(w.count == Prompt.Shape.allCases.count && w.allSatisfy { $0 >= 0 } && w.reduce(0, +) > 0,
                     "shapeWeights: one non-negative weight per shape, not all zero")
        // One unit() per shape, as the uniform pick draws: u·Σw against the running sums.
        var u = rng.unit() * w.reduce(0, +)
        for (shape, weight) in zip(Prompt.Shape.allCases, w) where weight > 0 {
            if u < weight { return Prompt.Object(colour, shape) }
            u -= weight
        }
        return Prompt.Object(colour, Prompt.Shape.allCases[w.lastIndex { $0 > 0 }!])
    }

    private mutating func draw() -> Prompt {
        if rng.chance(twoObjects) {
            let a = object()
            let relation = rng.pick(Prompt.Relation.allCases)
            while true {
                let b = object()
                if let p = try? Prompt(a, relation, b) { return p }   // identical objects: redraw b
            }
        }
        var o = object()
        if rng.chance(sizeGiven) { o.size = rng.pick(Prompt.Size.allCases) }
        if rng.chance(positionGiven) { o.position = rng.pick(Prompt.Position.allCases) }
        return Prompt(o)
    }
}
