// The Qwen-Image MMDiT as IR (diffusers v0.35.1 QwenImageTransformer2DModel, reference §8): double-
// stream blocks only, centred image RoPE, with the teacher's proj_out or the ArcFlow head (§2).

import Foundation
import IR
import Runtime

/// Builds Qwen-Image transformer evaluations into a graph. Weights, adapter overrides and LoRA
/// terms go through `AdaptedWeights` (shared with FLUX). The batch is the leading size of the
/// inputs: 1, or 2 for the teacher's true CFG (prompt and negative prompt in one evaluation).
public final class QwenImageNetwork {
    let b: GraphBuilder
    let config: QwenImageConfig
    let weights: AdaptedWeights
    /// Sequence layout: text tokens first, then the image token grid (as diffusers concatenates).
    let textTokens: Int
    let grid: LatentGrid
    /// The weight names of this network's RoPE tables: "<ropeName>.cos" and "<ropeName>.sin".
    let ropeName: String
    /// RoPE tables [text; image], bound as weights "rope.cos" and "rope.sin". Computed when the
    /// weight store asks, after the graph has checked every checkpoint tensor against the config:
    /// a config with absurd sizes fails on a weight shape instead of allocating tables first.
    public private(set) lazy var ropeTables: [String: Tensor] = {
        let t = QwenImageNetwork.rope(config: config, textTokens: textTokens, gridH: grid.gridH, gridW: grid.gridW)
        return ["\(ropeName).cos": t["rope.cos"]!, "\(ropeName).sin": t["rope.sin"]!]
    }()

    var width: Int { config.width }
    var heads: Int { config.numAttentionHeads }
    var headDim: Int { config.attentionHeadDim }
    var imageTokens: Int { grid.tokens }

    public init(builder: GraphBuilder, config: QwenImageConfig, base: WeightStore, adapter: ArcFlowAdapter?,
                textTokens: Int, latentHeight: Int, latentWidth: Int) {
        self.b = builder
        self.config = config
        self.weights = AdaptedWeights(builder, base: base, adapter: adapter)
        self.textTokens = textTokens
        self.grid = LatentGrid(channels: config.latentChannels, gridH: latentHeight / 2, gridW: latentWidth / 2)
        self.ropeName = "rope"
    }

    /// The same weights (one graph node per tensor, LoRA accounted once) over another text length:
    /// the teacher's negative prompt, which QwenImagePipeline evaluates at its own length.
    init(sharing other: QwenImageNetwork, textTokens: Int, ropeName: String) {
        (b, config, weights, grid) = (other.b, other.config, other.weights, other.grid)
        self.textTokens = textTokens
        self.ropeName = ropeName
    }

    // MARK: Embeddings

    /// diffusers' Timesteps(256, flip_sin_to_cos, shift 0, scale 1000) of σ, in f32 as PyTorch
    /// computes it: the scale multiplies AFTER the frequency product, 1000·(σ·f_k), where FLUX
    /// feeds (1000·σ)·f_k; the two differ by an f32 rounding of arguments up to 1000 radians.
    static func sinusoid(_ sigma: Float) -> [Float] {
        let half = 128
        let freqs = (0..<half).map { k in Float(Foundation.exp(Double(Float(-Foundation.log(10000.0)) * Float(k) / Float(half)))) }
        let args = freqs.map { 1000 * (sigma * $0) }
        return args.map { Float(Foundation.cos(Double($0))) } + args.map { Float(Foundation.sin(Double($0))) }
    }

    /// temb [1, D] = TimestepEmbedding(sinusoid(σ)): no pooled text and no guidance in Qwen-Image.
    func conditioning(sigma: Float) throws -> Value {
        let proj = b.constant(QwenImageNetwork.sinusoid(sigma), shape: [1, 256])
        let m = "time_text_embed.timestep_embedder"
        let h = try weights.linear(proj, "\(m).linear_1", out: width, in: 256).apply(.silu)
        return try weights.linear(h, "\(m).linear_2", out: width, in: width)
    }

    /// The text stream's input: RMSNorm(joint_attention_dim, eps 1e-6, learnable) then `txt_in`.
    public func context(_ promptEmbeds: Value) throws -> Value {
        let d = config.jointAttentionDim
        let normed = b.rmsNorm(promptEmbeds, scale: try weights.weight("txt_norm.weight", [d]), eps: 1e-6)
        return try weights.linear(normed, "txt_in", out: width, in: d)
    }

    /// QwenEmbedRope with scale_rope: each axis a of size d_a has ω_k = 1/θ^(2k/d_a) (θ = 10000),
    /// k < d_a/2, and an angle pos·ω per channel pair (interleaved, as FLUX). Image token (r, q)
    /// sits at (0, r − (h − ⌊h/2⌋), q − (w − ⌊w/2⌋)): rows and columns centred, negative first.
    /// Text token j sits at m + j on all three axes, m = max(⌊h/2⌋, ⌊w/2⌋), so text follows the
    /// largest image index. PyTorch builds these tables in f32 (ω, the product and polar), and so
    /// do we, for the same rounding.
    public static func rope(config: QwenImageConfig, textTokens: Int, gridH h: Int, gridW w: Int) -> [String: Tensor] {
        let d = config.attentionHeadDim
        let n = textTokens + h * w
        let m = max(h / 2, w / 2)
        let omegas = config.axesDimsRope.map { da in
            (0..<(da / 2)).map { k in 1 / Float(Foundation.pow(10000.0, Double(Float(2 * k) / Float(da)))) }
        }
        var cos = [Float](repeating: 0, count: n * d), sin = cos
        for s in 0..<n {
            let img = s - textTokens
            let pos = img < 0 ? [m + s, m + s, m + s] : [0, img / w - (h - h / 2), img % w - (w - w / 2)]
            var c = 0
            for (a, om) in omegas.enumerated() {
                for (k, omega) in om.enumerated() {
                    let angle = Float(pos[a]) * omega
                    for r in 0..<2 {
                        cos[s * d + c + 2 * k + r] = Float(Foundation.cos(Double(angle)))
                        sin[s * d + c + 2 * k + r] = Float(Foundation.sin(Double(angle)))
                    }
                }
                c += 2 * om.count
            }
        }
        return ["rope.cos": Tensor(.f32([n, d]), cos), "rope.sin": Tensor(.f32([n, d]), sin)]
    }

    // MARK: Blocks

    /// Q, K, V of one stream as [B, S, H, Dh], Q and K RMS-normalised per head (eps 1e-6).
    func qkv(_ x: Value, _ p: String, q: String, k: String, v: String, normQ: String, normK: String) throws -> (Value, Value, Value) {
        func proj(_ m: String) throws -> Value {
            try weights.linear(x, "\(p).attn.\(m)", out: width, in: width).reshaped([x.shape[0], x.shape[1], heads, headDim])
        }
        let qn = b.rmsNorm(try proj(q), scale: try weights.weight("\(p).attn.\(normQ).weight", [headDim]), eps: 1e-6)
        let kn = b.rmsNorm(try proj(k), scale: try weights.weight("\(p).attn.\(normK).weight", [headDim]), eps: 1e-6)
        return (qn, kn, try proj(v))
    }

    /// QwenImageTransformerBlock: per-stream modulation (img_mod / txt_mod: attention half, then
    /// MLP half, each (shift, scale, gate)), joint attention over [text, image] with RoPE, gated
    /// residuals, GELU-tanh MLPs. Text is not masked (v0.35.1 passes no mask to attention).
    func block(_ i: Int, image: Value, text: Value, temb: Value) throws -> (image: Value, text: Value) {
        let p = "transformer_blocks.\(i)"
        let m = try weights.modulation(temb, "\(p).img_mod.1", chunks: 6, width: width)
        let c = try weights.modulation(temb, "\(p).txt_mod.1", chunks: 6, width: width)
        let ni = weights.modulate(image, shift: m[0], scale: m[1])
        let nt = weights.modulate(text, shift: c[0], scale: c[1])
        let (qi, ki, vi) = try qkv(ni, p, q: "to_q", k: "to_k", v: "to_v", normQ: "norm_q", normK: "norm_k")
        let (qt, kt, vt) = try qkv(nt, p, q: "add_q_proj", k: "add_k_proj", v: "add_v_proj", normQ: "norm_added_q", normK: "norm_added_k")
        let cos = b.weight("\(ropeName).cos", .f32([textTokens + imageTokens, headDim]))
        let sin = b.weight("\(ropeName).sin", .f32([textTokens + imageTokens, headDim]))
        let q = b.rope(b.concat([qt, qi], axis: 1), cos: cos, sin: sin)
        let k = b.rope(b.concat([kt, ki], axis: 1), cos: cos, sin: sin)
        let o = b.attention(q, k, b.concat([vt, vi], axis: 1), scale: 1 / Double(headDim).squareRoot())
            .reshaped([image.shape[0], textTokens + imageTokens, width])
        let ot = b.slice(o, axis: 1, 0..<textTokens), oi = b.slice(o, axis: 1, textTokens..<(textTokens + imageTokens))
        var img = image + m[2] * (try weights.linear(oi, "\(p).attn.to_out.0", out: width, in: width))
        img = img + m[5] * (try weights.feedForward(weights.modulate(img, shift: m[3], scale: m[4]), "\(p).img_mlp", width: width))
        var txt = text + c[2] * (try weights.linear(ot, "\(p).attn.to_add_out", out: width, in: width))
        txt = txt + c[5] * (try weights.feedForward(weights.modulate(txt, shift: c[3], scale: c[4]), "\(p).txt_mlp", width: width))
        return (img, txt)
    }

    /// One evaluation up to norm_out: packed latents [B, N, 4C] → image tokens [B, N, D].
    /// `context` is `context(prompt_embeds)` [B, T, D], computed once per graph by the caller.
    /// The last block's text output is unused, as in diffusers (dce drops it).
    func trunk(packed x: Value, temb: Value, context: Value) throws -> Value {
        var img = try weights.linear(x, "img_in", out: width, in: config.inChannels)
        var txt = context
        for i in 0..<config.numLayers { (img, txt) = try block(i, image: img, text: txt, temb: temb) }
        return try weights.normOut(img, temb: temb, width: width)
    }

    /// The teacher's velocity in packed layout [B, N, 4C].
    func teacherHead(_ h: Value) throws -> Value {
        try weights.linear(h, "proj_out", out: 4 * config.outChannels, in: width)
    }

    /// The ArcFlow head (§2.1; head init from Qwen's proj_out in training, same layout as FLUX's).
    func arcHead(_ h: Value, components k: Int) throws -> (means: Value, logWeights: Value, rates: Value) {
        try weights.arcHead(h, components: k, packedChannels: config.inChannels, width: width)
    }
}
