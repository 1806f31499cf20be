// The σ schedules of the two samplers (reference §1.2, §3.1) and the arc integral factor φ.

import Foundation
import IR

public enum Schedule {
    /// ArcFlow's fixed shift (training and inference); dynamic shifting is off.
    public static let shift = 3.2

    /// σ = s·t / (1 + (s − 1)·t): raw time to noise level.
    public static func warp(_ t: Double, shift s: Double = shift) -> Double { s * t / (1 + (s - 1) * t) }

    /// ArcFlow's raw-time knots for N steps with timestep_ratio r (1.0, what the checkpoints were
    /// trained with): t_i = 1 − i/(N − 1 + r) for i < N and t_N = 0 exactly, so the last step's
    /// share is r/(N − 1 + r). The one definition: the sampler warps them, distillation's
    /// segments are their differences.
    public static func arcTimes(steps n: Int, timestepRatio r: Double = 1) -> [Double] {
        let base = 1 / (Double(n) - 1 + r)
        return (0...n).map { i in i == n ? 0 : 1 - Double(i) * base }
    }

    /// ArcFlow's σ knots: `arcTimes` warped. N = 2: 1, 0.761905, 0.
    public static func arcSigmas(steps n: Int, timestepRatio r: Double = 1, shift s: Double = shift) -> [Double] {
        arcTimes(steps: n, timestepRatio: r).map { warp($0, shift: s) }
    }

    /// The teacher's Euler schedule: σ_i = warp(1 − i/N), σ_N = 0.
    public static func eulerSigmas(steps n: Int, shift s: Double = shift) -> [Double] {
        (0...n).map { i in i == n ? 0 : warp(1 - Double(i) / Double(n), shift: s) }
    }

    /// φ(z) = expm1(z)/z, the exact integral of e^{γ(σ_src − σ)} over a step of length Δ, z = γΔ.
    /// The reference clamps z' = sgn(z)·max(|z|, 1e-4) with sgn(0) = +1 to avoid 0/0, so φ(0) is
    /// 1.00005 rather than 1; we keep the clamp to match its numbers.
    public static func phi(_ z: Double) -> Double { Interpreter.phi(z) }
}
