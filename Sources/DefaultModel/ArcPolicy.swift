// The ArcFlow policy of a batch of student evaluations, in Swift: the closed-form integral of its
// network-free velocity field (reference §2.3, §3.3), with the distillation's component dropout.
// The rollout and the 2-NFE sampler integrate with it; the loss graph computes the same formula.

import ArcFlowGraphs
import Foundation
import Runtime

/// B policies on image tokens [B, N, 4C], each anchored at its (x_src, σ_src):
/// v(σ) = Σ_k w_k μ_k e^{γ_k(σ_src − σ)}, w and γ per token and sub-position j = cp mod 4, μ per
/// packed channel cp. The student's head predicts x0 means m_k (the teacher predicts x0), so
/// μ_k = (x_src − m_k)/σ_src; everything else is the reference's ArcFlow policy.
public struct ArcPolicy {
    public let batch: Int, tokens: Int, channels: Int, components: Int
    /// μ [B, N, K, 4C].
    var mu: [Float]
    /// Mixture weights [B, N, K, 4] (softmax over the components that survive dropout).
    var weights: [Double]
    /// Rates [B, N, K, 4], γ_0 = 0.
    var rates: [Double]
    public let sigmaSource: [Double]

    /// `means` [B, N, K·4C] (row k·4C + cp), `logWeights` [B, N, K·4] and `rates` [B, N, (K−1)·4]
    /// as the policy graph writes them (nil for K = 1). `dropped[b][k]` removes component k of
    /// sample b (its weight becomes 0 and the others are renormalised).
    public init(xSource: [Float], sigmaSource: [Double], means: [Float], logWeights: [Float]?, rates: [Float]?,
                batch: Int, tokens: Int, channels: Int, components k: Int, dropped: [[Bool]]? = nil) {
        self.batch = batch; self.tokens = tokens; self.channels = channels; self.components = k
        self.sigmaSource = sigmaSource
        let c = channels
        var mu = [Float](repeating: 0, count: batch * tokens * k * c)
        var w = [Double](repeating: k == 1 ? 1 : 0, count: batch * tokens * k * 4)
        var g = [Double](repeating: 0, count: batch * tokens * k * 4)
        for b in 0..<batch {
            let inv = 1 / Float(sigmaSource[b])
            let keep = (0..<k).map { dropped?[b][$0] != true }
            for n in 0..<tokens {
                let row = b * tokens + n
                for kk in 0..<k {
                    for cp in 0..<c {
                        mu[(row * k + kk) * c + cp] = (xSource[row * c + cp] - means[(row * k + kk) * c + cp]) * inv
                    }
                }
                guard k > 1, let lw = logWeights, let r = rates else { continue }
                for j in 0..<4 {
                    var total = 0.0
                    for kk in 0..<k where keep[kk] { total += Foundation.exp(Double(lw[(row * k + kk) * 4 + j])) }
                    for kk in 0..<k {
                        w[(row * k + kk) * 4 + j] = keep[kk] ? Foundation.exp(Double(lw[(row * k + kk) * 4 + j])) / total : 0
                        g[(row * k + kk) * 4 + j] = kk == 0 ? 0 : Double(r[(row * (k - 1) + kk - 1) * 4 + j])
                    }
                }
            }
        }
        self.mu = mu; self.weights = w; self.rates = g
    }

    /// Component dropout (§6.3): each of the K components of each sample is dropped with
    /// probability p; when all would be, none is.
    public static func dropout(batch: Int, components k: Int, p: Double, rng: inout SeededGenerator) -> [[Bool]] {
        (0..<batch).map { _ in
            let d = (0..<k).map { _ in Double(rng.uniform()) < p }
            return d.allSatisfy { $0 } ? [Bool](repeating: false, count: k) : d
        }
    }

    /// x of sample b moved from σ_a to σ_b (σ_src ≥ σ_a ≥ σ_b) by the exact integral:
    /// x_b = x_a − Σ_k w_k μ_k e^{γ_k(σ_src − σ_a)} (σ_a − σ_b) φ(γ_k(σ_a − σ_b)), φ(z) = expm1(z)/z
    /// (the reference's clamp) and factor 1 for the γ = 0 component.
    public func advance(_ x: inout [Float], sample b: Int, from sa: Double, to sb: Double) {
        let c = channels, k = components, delta = sa - sb
        guard delta != 0 else { return }
        var coef = [Float](repeating: 0, count: k * 4)
        for n in 0..<tokens {
            let row = b * tokens + n
            for kk in 0..<k {
                for j in 0..<4 {
                    let i = (row * k + kk) * 4 + j
                    let g = rates[i]
                    let factor = kk == 0 ? 1 : Foundation.exp(g * (sigmaSource[b] - sa)) * Schedule.phi(g * delta)
                    coef[kk * 4 + j] = Float(weights[i] * delta * factor)
                }
            }
            for kk in 0..<k {
                let m = (row * k + kk) * c
                for cp in 0..<c { x[row * c + cp] -= mu[m + cp] * coef[kk * 4 + cp % 4] }
            }
        }
    }

    /// The velocity field of sample b at σ, [N, 4C] (for checks against its integral).
    public func velocity(sample b: Int, at sigma: Double) -> [Float] {
        let c = channels, k = components
        var v = [Float](repeating: 0, count: tokens * c)
        for n in 0..<tokens {
            let row = b * tokens + n
            for kk in 0..<k {
                for cp in 0..<c {
                    let i = (row * k + kk) * 4 + cp % 4
                    v[n * c + cp] += mu[(row * k + kk) * c + cp] * Float(weights[i] * Foundation.exp(rates[i] * (sigmaSource[b] - sigma)))
                }
            }
        }
        return v
    }
}

/// The teacher's patchify (`TeacherGraphs.patchify`) in Swift: images [B, 3, S, S] ↔ tokens
/// [B, (S/p)², 3p²], token (gy, gx) row-major, channel c·p² + py·p + px.
public enum Tokens {
    public static func patchify(_ images: [Float], count: Int, patch p: Int) -> [Float] {
        let s = TeacherConfig.side, g = s / p
        var out = [Float](repeating: 0, count: images.count)
        for n in 0..<count {
            for c in 0..<3 {
                for y in 0..<s {
                    for x in 0..<s {
                        let token = (y / p) * g + x / p, ch = c * p * p + (y % p) * p + x % p
                        out[(n * g * g + token) * 3 * p * p + ch] = images[((n * 3 + c) * s + y) * s + x]
                    }
                }
            }
        }
        return out
    }

    public static func unpatchify(_ tokens: [Float], count: Int, patch p: Int) -> [Float] {
        let s = TeacherConfig.side, g = s / p
        var out = [Float](repeating: 0, count: tokens.count)
        for n in 0..<count {
            for c in 0..<3 {
                for y in 0..<s {
                    for x in 0..<s {
                        let token = (y / p) * g + x / p, ch = c * p * p + (y % p) * p + x % p
                        out[((n * 3 + c) * s + y) * s + x] = tokens[(n * g * g + token) * 3 * p * p + ch]
                    }
                }
            }
        }
        return out
    }

    /// Per-element weights for tokens [B, N, 3p²] (`DistillRecipe.edgeWeight`): 1 + `boost` at
    /// the pixels that differ from a 4-neighbour by more than `threshold` in some channel, 1
    /// elsewhere, the same in all three channels, scaled to mean 1 per image.
    public static func edgeWeights(_ tokens: [Float], count: Int, patch p: Int, boost: Float, threshold: Float) -> [Float] {
        let s = TeacherConfig.side, plane = s * s
        let images = unpatchify(tokens, count: count, patch: p)
        var weights = [Float](repeating: 0, count: images.count)
        for n in 0..<count {
            let image = images[(n * 3 * plane)...].prefix(3 * plane)
            func differs(_ y: Int, _ x: Int, _ y2: Int, _ x2: Int) -> Bool {
                guard y2 >= 0, y2 < s, x2 >= 0, x2 < s else { return false }
                return (0..<3).contains { c in abs(image[image.startIndex + c * plane + y * s + x] - image[image.startIndex + c * plane + y2 * s + x2]) > threshold }
            }
            var w = [Float](repeating: 1, count: plane)
            for y in 0..<s {
                for x in 0..<s where differs(y, x, y - 1, x) || differs(y, x, y + 1, x) || differs(y, x, y, x - 1) || differs(y, x, y, x + 1) {
                    w[y * s + x] += boost
                }
            }
            let mean = w.reduce(0, +) / Float(plane)
            for c in 0..<3 { for i in 0..<plane { weights[n * 3 * plane + c * plane + i] = w[i] / mean } }
        }
        return patchify(weights, count: count, patch: p)
    }
}
