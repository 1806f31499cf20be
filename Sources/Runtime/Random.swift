// Seeded random numbers: the same seed gives the same tensors on every machine.

/// SplitMix64: tiny, fast, and fully specified, so seeds reproduce bit-identically anywhere
/// (Swift's default generator is neither seedable nor stable across versions).
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    public mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// Standard normal values by Box-Muller in f64, rounded to f32.
    public mutating func normals(_ count: Int) -> [Float] {
        var out = [Float]()
        out.reserveCapacity(count)
        while out.count < count {
            let u1 = (Double(next() >> 11) + 1) * 0x1p-53   // (0, 1]
            let u2 = Double(next() >> 11) * 0x1p-53
            let r = (-2 * _log(u1)).squareRoot()
            out.append(Float(r * _cos(2 * .pi * u2)))
            if out.count < count { out.append(Float(r * _sin(2 * .pi * u2))) }
        }
        return out
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) private func _log(_ x: Double) -> Double { log(x) }
@inline(__always) private func _cos(_ x: Double) -> Double { cos(x) }
@inline(__always) private func _sin(_ x: Double) -> Double { sin(x) }
#endif
