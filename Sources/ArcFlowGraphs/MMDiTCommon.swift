// What the two MMDiT families (FLUX, Qwen-Image) share: base weights with the ArcFlow adapter's
// dense overrides and LoRA terms, the ArcFlow head, and the 2×2 latent packing.

import Foundation
import IR
import Runtime

/// A base checkpoint plus an optional ArcFlow adapter, bound into one graph: every weight is
/// checked against the shape the config implies and converted to f32 right where it is read;
/// the adapter's dense tensors replace the base's, and its LoRA pairs add their term unfused
/// (fuse-lora folds them).
final class AdaptedWeights {
    let b: GraphBuilder
    let base: WeightStore
    let adapter: ArcFlowAdapter?
    /// LoRA modules the graph used; anything else in the adapter targets nothing here.
    private(set) var usedLoRA = Set<String>()
    private var cache: [String: Value] = [:]

    init(_ builder: GraphBuilder, base: WeightStore, adapter: ArcFlowAdapter?) {
        self.b = builder
        self.base = base
        self.adapter = adapter
    }

    /// A weight as f32, from the adapter's dense tensors if it has one by this name, else the base.
    func weight(_ key: String, _ shape: [Int]) throws -> Value {
        if let v = cache[key] { return v }
        let fromAdapter = adapter.map { $0.dense.contains(key) } ?? false
        let store = fromAdapter ? adapter!.store : base
        guard let t = store.type(of: key) else {
            throw ArcError("\(store.label): missing tensor '\(key)' (expected \(shape), config implies it)")
        }
        guard t.shape == shape else {
            // The head's rows are K components × channels: a wrong K is the adapter config's.
            let k = fromAdapter && key.hasPrefix("proj_out_") ? adapter.map { "; the adapter's config.json says num_gaussians \($0.components)" } ?? "" : ""
            throw ArcError("\(store.label): tensor '\(key)' has shape \(t.shape), expected \(shape) for this transformer config\(k)")
        }
        let v = b.convert(b.weight((fromAdapter ? "adapter:" : "") + key, t), to: .f32)
        cache[key] = v
        return v
    }

    /// nn.Linear: y = x·Wᵀ + b, plus the adapter's LoRA term s·(x·Aᵀ)·Bᵀ when it has one for
    /// this module (s = `ArcFlowAdapter.loraScale`: α/r, α = r when nothing gives α).
    func linear(_ x: Value, _ module: String, out: Int, in inputs: Int, bias: Bool = true) throws -> Value {
        var y = b.matmul(x, try weight("\(module).weight", [out, inputs]), transposeB: true)
        if let a = adapter, let pair = a.lora[module] {
            usedLoRA.insert(module)
            guard let at = a.store.type(of: pair.a), let bt = a.store.type(of: pair.b), at.rank == 2, bt.rank == 2 else {
                throw ArcError("\(a.store.label): LoRA tensors of '\(module)' must be matrices")
            }
            let r = at.shape[0]
            guard r >= 1 else {
                // α/r would be α/0: the fused weight NaN, found only as non-finite latents later.
                throw ArcError("\(a.store.label): '\(pair.a)' has rank 0 (shape \(at.shape)): an empty LoRA; drop \(module)'s LoRA tensors")
            }
            guard at.shape == [r, inputs] else {
                throw ArcError("\(a.store.label): '\(pair.a)' has shape \(at.shape), expected [\(r), \(inputs)] for this base (an adapter for another model?)")
            }
            guard bt.shape == [out, r] else {
                throw ArcError("\(a.store.label): '\(pair.b)' has shape \(bt.shape), expected [\(out), \(r)] for this base (an adapter for another model?)")
            }
            let la = b.convert(b.weight("adapter:" + pair.a, at), to: .f32)
            let lb = b.convert(b.weight("adapter:" + pair.b, bt), to: .f32)
            var delta = b.matmul(b.matmul(x, la, transposeB: true), lb, transposeB: true)
            let s = try a.loraScale(module, rank: r)
            if s != 1 { delta = delta * s }
            y = y + delta
        }
        if bias { y = y + (try weight("\(module).bias", [out])) }
        return y
    }

    /// Every LoRA pair of the adapter must have met its layer: a pair that matches nothing means
    /// an adapter for another architecture, which would otherwise be silently half-applied.
    func checkAllLoRAUsed() throws {
        guard let a = adapter else { return }
        let unused = Set(a.lora.keys).subtracting(usedLoRA).sorted()
        // A layer the checkpoint has but this graph never runs (the teacher's proj_out under the
        // ArcFlow head): the adapter fits the architecture, yet its LoRA there would do nothing.
        let idle = unused.filter { base.type(of: "\($0).weight") != nil }
        if !idle.isEmpty {
            throw ArcError("\(a.store.label): LoRA for \(idle.prefix(3).joined(separator: ", "))\(idle.count > 3 ? ", …" : "") targets a layer of the checkpoint "
                           + "that this model does not run (the ArcFlow head replaces proj_out): the adapter would not be applied as saved")
        }
        if !unused.isEmpty {
            let peft = unused.contains { $0.hasPrefix("base_model.model.") } ? " (a PeftModel's keys: drop the base_model.model. prefix)" : ""
            throw ArcError("\(a.store.label): LoRA for \(unused.prefix(3).joined(separator: ", "))\(unused.count > 3 ? ", …" : "") matches no layer of this transformer\(peft)")
        }
    }

    // MARK: Layers both families build the same way

    /// Non-affine LayerNorm (eps 1e-6) modulated: LN(x)·(1 + scale) + shift.
    func modulate(_ x: Value, shift: Value, scale: Value) -> Value {
        b.layerNorm(x, eps: 1e-6) * (1 + scale) + shift
    }

    /// SiLU(temb)·Wᵀ + b split into `chunks` vectors [B, 1, width] (AdaLN modulation).
    func modulation(_ temb: Value, _ module: String, chunks: Int, width: Int) throws -> [Value] {
        let m = try linear(temb.apply(.silu), module, out: chunks * width, in: width)
        return b.chunk(m, chunks, axis: 1).map { $0.reshaped([temb.shape[0], 1, width]) }
    }

    /// Linear → GELU(tanh) → Linear, diffusers' FeedForward (`net.0.proj`, `net.2`), hidden 4·width.
    func feedForward(_ x: Value, _ module: String, width: Int) throws -> Value {
        let h = try linear(x, "\(module).net.0.proj", out: 4 * width, in: width).apply(.gelu)
        return try linear(h, "\(module).net.2", out: width, in: 4 * width)
    }

    /// AdaLayerNormContinuous (`norm_out`): SiLU(temb)·Wᵀ + b → (scale, shift), scale FIRST
    /// (diffusers order), then the modulated LayerNorm.
    func normOut(_ x: Value, temb: Value, width: Int) throws -> Value {
        let mod = try linear(temb.apply(.silu), "norm_out.linear", out: 2 * width, in: width)
        let halves = b.chunk(mod, 2, axis: 1).map { $0.reshaped([temb.shape[0], 1, width]) }
        return modulate(x, shift: halves[1], scale: halves[0])
    }

    /// The student's head for sampling: K = 1 (the linear baseline) has no rates and a weight of
    /// 1, so only its means are read (its adapter needs no loggamma layer; one with an empty
    /// [0, D] layer, as the reference would save it, loads too).
    func studentHead(_ h: Value, components k: Int, packedChannels f: Int, width: Int) throws -> (means: Value, logWeights: Value?, rates: Value?) {
        if k == 1 { return (try linear(h, "proj_out_means", out: f, in: width), nil, nil) }
        let head = try arcHead(h, components: k, packedChannels: f, width: width)
        return (head.means, head.logWeights, head.rates)
    }

    /// The ArcFlow head (reference §2.1) in packed layout on image tokens h [B, N, D]: means
    /// [B, N, K·4C], log-weights log-softmaxed over K [B, N, K·4], rates γ [B, N, (K−1)·4] used as
    /// they are. The batch is h's leading size.
    func arcHead(_ h: Value, components k: Int, packedChannels f: Int, width: Int) throws -> (means: Value, logWeights: Value, rates: Value) {
        let (batch, n) = (h.shape[0], h.shape[1])
        let means = try linear(h, "proj_out_means", out: k * f, in: width)
        let raw = try linear(h, "proj_out_logweights", out: k * 4, in: width)
        let logw = b.logSoftmax(raw.reshaped([batch, n, k, 4]), axis: 2).reshaped([batch, n, k * 4])
        let rates = try linear(h, "proj_out_loggamma", out: (k - 1) * 4, in: width)
        return (means, logw, rates)
    }
}

/// The token grid of 2×2 latent patches (both families pack latents this way, outside the
/// transformer): token (r, q), sub-position (py, px) ↔ latent pixel (2r + py, 2q + px).
struct LatentGrid {
    var channels: Int, gridH: Int, gridW: Int
    var tokens: Int { gridH * gridW }

    /// [1, C, H, W] → [1, (H/2)(W/2), 4C] with packed channel c·4 + py·2 + px (diffusers' _pack_latents).
    func pack(_ latents: Value) -> Value {
        latents.reshaped([1, channels, gridH, 2, gridW, 2]).transposed([0, 2, 4, 1, 3, 5]).reshaped([1, tokens, 4 * channels])
    }

    /// Inverse of `pack`, for `per` values per token and position: [1, N, per·4] → [1, per, H, W].
    func unpack(_ tokens: Value, per: Int) -> Value {
        tokens.reshaped([1, gridH, gridW, per, 2, 2]).transposed([0, 3, 1, 4, 2, 5]).reshaped([1, per, 2 * gridH, 2 * gridW])
    }

    /// The ArcFlow head in the reference layout (§2.2): means [1, K, C, H, W], logweights
    /// [1, K, 1, H, W], gammas [1, K−1, 1, H, W], named as `FluxModel.headNames`.
    func studentHeads(_ head: (means: Value, logWeights: Value, rates: Value), components k: Int) -> [(String, Value)] {
        let (c, lh, lw) = (channels, 2 * gridH, 2 * gridW)
        return [("means", unpack(head.means, per: k * c).reshaped([1, k, c, lh, lw])),
                ("logweights", unpack(head.logWeights, per: k).reshaped([1, k, 1, lh, lw])),
                ("gammas", unpack(head.rates, per: k - 1).reshaped([1, k - 1, 1, lh, lw]))]
    }
}
