// The FLUX.1 MMDiT as IR (diffusers v0.35.1 semantics, reference §4), with the teacher's
// proj_out head and the ArcFlow head (§2), and LoRA adapters applied unfused (fuse-lora folds them).

import Foundation
import IR
import Runtime

/// Builds FLUX transformer evaluations into a graph. Weights come from the base checkpoint,
/// with the adapter's dense tensors replacing the base's; every weight is checked against the
/// shape the config implies, and converted to f32 right where it is read.
///
/// Public for model builders outside this module (the embedded default model trains it). The
/// batch is whatever leading size the inputs have: inference graphs use 1, training and batched
/// classifier-free guidance use B (every reshape reads it from its operand).
public final class FluxNetwork {
    let b: GraphBuilder
    let config: FluxConfig
    /// Base weights, the adapter's overrides and LoRA terms (shared with Qwen-Image).
    let weights: AdaptedWeights
    var base: WeightStore { weights.base }
    var adapter: ArcFlowAdapter? { weights.adapter }
    /// Sequence layout: text tokens first, then the image token grid.
    let textTokens: Int, gridH: Int, gridW: Int
    /// LoRA modules this network used; anything else in the adapter targets nothing here.
    var usedLoRA: Set<String> { weights.usedLoRA }
    /// RoPE tables, computed here and bound as weights named "rope.cos" and "rope.sin".
    public let ropeTables: [String: Tensor]

    var imageTokens: Int { gridH * gridW }
    var width: Int { config.width }

    public init(builder: GraphBuilder, config: FluxConfig, base: WeightStore, adapter: ArcFlowAdapter?,
                textTokens: Int, latentHeight: Int, latentWidth: Int) {
        self.b = builder
        self.config = config
        self.weights = AdaptedWeights(builder, base: base, adapter: adapter)
        self.textTokens = textTokens
        self.gridH = latentHeight / 2
        self.gridW = latentWidth / 2
        self.ropeTables = FluxNetwork.rope(config: config, textTokens: textTokens, gridH: latentHeight / 2, gridW: latentWidth / 2)
    }

    // MARK: Weights and layers

    /// A weight as f32, from the adapter's dense tensors if it has one by this name, else the base.
    func weight(_ key: String, _ shape: [Int]) throws -> Value { try weights.weight(key, shape) }

    /// nn.Linear: y = x·Wᵀ + b, plus the adapter's LoRA term s·(x·Aᵀ)·Bᵀ when it has one for
    /// this module (s = `ArcFlowAdapter.loraScale`: α/r, α = r when nothing gives α).
    public func linear(_ x: Value, _ module: String, out: Int, in inputs: Int, bias: Bool = true) throws -> Value {
        try weights.linear(x, module, out: out, in: inputs, bias: bias)
    }

    /// Modulation chunks of an AdaLN layer: SiLU(temb)·Wᵀ + b split into `chunks` [1, 1, D] vectors.
    func modulation(_ temb: Value, _ module: String, chunks: Int) throws -> [Value] {
        try weights.modulation(temb, module, chunks: chunks, width: width)
    }

    /// Non-affine LayerNorm (eps 1e-6) modulated: LN(x)·(1 + scale) + shift.
    func modulate(_ x: Value, shift: Value, scale: Value) -> Value { weights.modulate(x, shift: shift, scale: scale) }

    /// Linear → GELU(tanh) → Linear, diffusers' FeedForward (`net.0.proj`, `net.2`).
    func feedForward(_ x: Value, _ module: String) throws -> Value { try weights.feedForward(x, module, width: width) }

    // MARK: Embeddings

    /// diffusers' Timesteps(256, flip_sin_to_cos, shift 0) of `t`, in f32 as PyTorch computes it
    /// (f32 exponent, exp, product, then cos and sin): [cos(t·f_0..127), sin(t·f_0..127)].
    static func sinusoid(_ t: Float) -> [Float] {
        let half = 128
        let freqs = (0..<half).map { k in Float(Foundation.exp(Double(Float(-Foundation.log(10000.0)) * Float(k) / Float(half)))) }
        let args = freqs.map { t * $0 }
        return args.map { Float(Foundation.cos(Double($0))) } + args.map { Float(Foundation.sin(Double($0))) }
    }

    /// Linear → SiLU → Linear (diffusers' TimestepEmbedding and PixArtAlphaTextProjection).
    func mlpEmbedder(_ x: Value, _ module: String, in inputs: Int) throws -> Value {
        let h = try linear(x, "\(module).linear_1", out: width, in: inputs).apply(.silu)
        return try linear(h, "\(module).linear_2", out: width, in: width)
    }

    /// The guidance embedder's scale g: compiled in (its embedding folds to a constant), or the
    /// graph input `guidance` [1] (the embedder runs each evaluation, a few GEMVs, so that
    /// `generate --guidance G` needs no new compile of a model the size of FLUX.1-dev).
    enum GuidanceScale {
        case fixed(Float)
        case input(Value)
    }

    /// temb = TE(proj(1000σ)) [+ GE(proj(1000g))] + TX(pooled). The model multiplies σ and g by
    /// 1000 in f32 (no bf16 rounding here; see the README).
    /// The in-graph `sinusoid` of a per-sample σ [B] (times 1000): [B, 256], for graphs whose σ is
    /// an input (training draws one per sample).
    public func sinusoid(_ sigma: Value) -> Value {
        let half = 128
        let freqs = (0..<half).map { k in Float(Foundation.exp(Double(Float(-Foundation.log(10000.0)) * Float(k) / Float(half)))) }
        let args = b.matmul(sigma.reshaped([sigma.shape[0], 1]) * 1000, b.constant(freqs, shape: [1, half]))
        return b.concat([args.apply(.cos), args.apply(.sin)], axis: 1)
    }

    /// temb [B, D] for a per-sample σ [B] and pooled [B, P]; no guidance embedder.
    public func conditioning(sigma: Value, pooled: Value) throws -> Value {
        let temb = try mlpEmbedder(sinusoid(sigma), "time_text_embed.timestep_embedder", in: 256)
        return temb + (try mlpEmbedder(pooled, "time_text_embed.text_embedder", in: config.pooledProjectionDim))
    }

    func conditioning(sigma: Float, guidance: GuidanceScale?, pooled: Value) throws -> Value {
        let tproj = b.constant(FluxNetwork.sinusoid(sigma * 1000), shape: [1, 256])
        var temb = try mlpEmbedder(tproj, "time_text_embed.timestep_embedder", in: 256)
        if let g = guidance {
            let gproj: Value
            switch g {
            case .fixed(let scale): gproj = b.constant(FluxNetwork.sinusoid(scale * 1000), shape: [1, 256])
            case .input(let scale): gproj = sinusoid(scale)
            }
            temb = temb + (try mlpEmbedder(gproj, "time_text_embed.guidance_embedder", in: 256))
        }
        return temb + (try mlpEmbedder(pooled, "time_text_embed.text_embedder", in: config.pooledProjectionDim))
    }

    /// FluxPosEmbed over ids = [text (0,0,0)…; image (0, r, q)…]: per axis a with size d_a,
    /// ω_k = θ^(−2k/d_a), angle = pos·ω in f64, each value repeated for a channel pair.
    public static func rope(config: FluxConfig, textTokens: Int, gridH: Int, gridW: Int) -> [String: Tensor] {
        let d = config.attentionHeadDim
        let n = textTokens + gridH * gridW
        var cos = [Float](repeating: 0, count: n * d), sin = cos
        for s in 0..<n {
            let img = s - textTokens
            let pos = img < 0 ? [0, 0, 0] : [0, img / gridW, img % gridW]
            var c = 0
            for (a, da) in config.axesDimsRope.enumerated() {
                for k in 0..<(da / 2) {
                    let omega = 1 / Foundation.pow(10000.0, Double(2 * k) / Double(da))
                    let angle = Double(pos[a]) * omega
                    for r in 0..<2 {
                        cos[s * d + c + 2 * k + r] = Float(Foundation.cos(angle))
                        sin[s * d + c + 2 * k + r] = Float(Foundation.sin(angle))
                    }
                }
                c += da
            }
        }
        return ["rope.cos": Tensor(.f32([n, d]), cos), "rope.sin": Tensor(.f32([n, d]), sin)]
    }

    /// Fixed 2D sin-cos position table [gridH·gridW, width] (MAE/DiT layout): per token (r, q) the
    /// first half of the channels encodes the row r, the second half the column q, each half as
    /// [sin(pos·ω_k), cos(pos·ω_k)] over k < width/4 with ω_k = 10000^(−k/(width/4)). The one
    /// definition of `"arcflow_image_positions": "sincos2d"`, used by training and the compile path.
    public static func sinCosPositions(gridH: Int, gridW: Int, width d: Int) -> [Float] {
        let q = d / 4
        var out = [Float](repeating: 0, count: gridH * gridW * d)
        for r in 0..<gridH {
            for col in 0..<gridW {
                for (axis, pos) in [r, col].enumerated() {
                    for k in 0..<q {
                        let omega = 1 / Foundation.pow(10000.0, Double(k) / Double(q))
                        let base = (r * gridW + col) * d + axis * 2 * q
                        out[base + k] = Float(Foundation.sin(Double(pos) * omega))
                        out[base + q + k] = Float(Foundation.cos(Double(pos) * omega))
                    }
                }
            }
        }
        return out
    }

    /// The generated tables this network's graphs name as weights: RoPE, and the image position
    /// table when the config asks for one (bound as "positions.sincos2d", never baked into C).
    public var generatedTables: [String: Tensor] {
        var t = ropeTables
        if config.imagePositions == .sincos2d {
            t["positions.sincos2d"] = Tensor(.f32([imageTokens, width]), FluxNetwork.sinCosPositions(gridH: gridH, gridW: gridW, width: width))
        }
        return t
    }

    /// The config's image position table as a graph value, or nil when it has none.
    func imagePositionValue() -> Value? {
        guard config.imagePositions == .sincos2d else { return nil }
        return b.weight("positions.sincos2d", .f32([imageTokens, width]))
    }

    func ropeValues() -> (Value, Value) {
        let n = textTokens + imageTokens, d = config.attentionHeadDim
        return (b.weight("rope.cos", .f32([n, d])), b.weight("rope.sin", .f32([n, d])))
    }

    // MARK: Attention and blocks

    var heads: Int { config.numAttentionHeads }
    var headDim: Int { config.attentionHeadDim }

    /// Q, K, V of one stream as [1, S, H, Dh], Q and K RMS-normalised per head; Q from the rows
    /// `queries` of x only (another slice of the same x) when given.
    func qkv(_ x: Value, queries: Value? = nil, q: String, k: String, v: String, normQ: String, normK: String) throws -> (Value, Value, Value) {
        func proj(_ x: Value, _ m: String) throws -> Value {
            try linear(x, m, out: width, in: width).reshaped([x.shape[0], x.shape[1], heads, headDim])
        }
        let qn = b.rmsNorm(try proj(queries ?? x, q), scale: try weight("\(normQ).weight", [headDim]), eps: 1e-6)
        let kn = b.rmsNorm(try proj(x, k), scale: try weight("\(normK).weight", [headDim]), eps: 1e-6)
        return (qn, kn, try proj(x, v))
    }

    /// RoPE on Q and K, then scaled-dot-product attention: K and V cover the whole [text; image]
    /// sequence, Q its rows `rows` (all of them unless given).
    func attend(_ q: Value, _ k: Value, _ v: Value, rows: Range<Int>? = nil) -> Value {
        let (cos, sin) = ropeValues()
        let (qc, qs) = rows.map { (b.slice(cos, axis: 0, $0), b.slice(sin, axis: 0, $0)) } ?? (cos, sin)
        let o = b.attention(b.rope(q, cos: qc, sin: qs), b.rope(k, cos: cos, sin: sin), v, scale: 1 / Double(headDim).squareRoot())
        return o.reshaped([q.shape[0], q.shape[1], width])
    }

    /// FluxTransformerBlock (§4.4): both streams modulated by temb, joint attention over
    /// [text, image], gated residuals, separate feed-forwards.
    func doubleBlock(_ i: Int, image: Value, text: Value, temb: Value) throws -> (image: Value, text: Value) {
        let p = "transformer_blocks.\(i)"
        let m = try modulation(temb, "\(p).norm1.linear", chunks: 6)
        let c = try modulation(temb, "\(p).norm1_context.linear", chunks: 6)
        let ni = modulate(image, shift: m[0], scale: m[1])
        let nt = modulate(text, shift: c[0], scale: c[1])
        let (qi, ki, vi) = try qkv(ni, q: "\(p).attn.to_q", k: "\(p).attn.to_k", v: "\(p).attn.to_v",
                                   normQ: "\(p).attn.norm_q", normK: "\(p).attn.norm_k")
        let (qt, kt, vt) = try qkv(nt, q: "\(p).attn.add_q_proj", k: "\(p).attn.add_k_proj", v: "\(p).attn.add_v_proj",
                                   normQ: "\(p).attn.norm_added_q", normK: "\(p).attn.norm_added_k")
        let o = attend(b.concat([qt, qi], axis: 1), b.concat([kt, ki], axis: 1), b.concat([vt, vi], axis: 1))
        let ot = b.slice(o, axis: 1, 0..<textTokens), oi = b.slice(o, axis: 1, textTokens..<(textTokens + imageTokens))
        var img = image + m[2] * (try linear(oi, "\(p).attn.to_out.0", out: width, in: width))
        img = img + m[5] * (try feedForward(modulate(img, shift: m[3], scale: m[4]), "\(p).ff"))
        var txt = text + c[2] * (try linear(ot, "\(p).attn.to_add_out", out: width, in: width))
        txt = txt + c[5] * (try feedForward(modulate(txt, shift: c[3], scale: c[4]), "\(p).ff_context"))
        return (img, txt)
    }

    /// FluxSingleTransformerBlock (§4.5) on x = [text; image]: attention (no output projection)
    /// and MLP side by side, one proj_out over both (attention columns first), gated residual.
    /// Returns the rows `rows` of the result (all unless given). Every row's output depends on
    /// its own row only, except through the keys and values, so only K and V need the others:
    /// the last block returns the image rows, and its text rows' queries, attention, MLP and
    /// projection (diffusers computes them, then slices them off) are never computed here
    /// (1.4% of the width-768 NFE at 256 image + 64 text tokens).
    func singleBlock(_ i: Int, _ x: Value, temb: Value, rows: Range<Int>? = nil) throws -> Value {
        let p = "single_transformer_blocks.\(i)"
        let m = try modulation(temb, "\(p).norm.linear", chunks: 3)
        let n = modulate(x, shift: m[0], scale: m[1])
        let sliced = rows == 0..<x.shape[1] ? nil : rows
        let nr = sliced.map { b.slice(n, axis: 1, $0) } ?? n, xr = sliced.map { b.slice(x, axis: 1, $0) } ?? x
        let mlp = try linear(nr, "\(p).proj_mlp", out: 4 * width, in: width).apply(.gelu)
        let (q, k, v) = try qkv(n, queries: nr, q: "\(p).attn.to_q", k: "\(p).attn.to_k", v: "\(p).attn.to_v",
                                normQ: "\(p).attn.norm_q", normK: "\(p).attn.norm_k")
        let joined = b.concat([attend(q, k, v, rows: sliced), mlp], axis: 2)
        return xr + m[2] * (try linear(joined, "\(p).proj_out", out: width, in: 5 * width))
    }

    /// One transformer evaluation up to norm_out: image tokens [1, N, D].
    /// `context` is context_embedder(prompt_embeds), computed once per graph by the caller.
    func trunk(packed x: Value, sigma: Float, guidance: GuidanceScale?, context: Value, pooled: Value) throws -> Value {
        try trunk(packed: x, temb: try conditioning(sigma: sigma, guidance: guidance, pooled: pooled), context: context,
                  imagePositions: imagePositionValue())
    }

    /// The trunk for a given temb [B, D] (B = 1, or per-sample σ). `imagePositions` [N, D], when
    /// given, is added to the embedded image tokens: FLUX's RoPE shows image tokens their absolute
    /// place only through attention to the text (all at position 0), which a model that must put
    /// an object "at the top left" learns slowly; an additive table makes it explicit.
    /// `tap`, when given, sees the image tokens [B, N, D] after each double block (the default
    /// model's discriminator reads the teacher's features there).
    public func trunk(packed x: Value, temb: Value, context: Value, imagePositions: Value? = nil,
                      tap: ((Value) -> Void)? = nil) throws -> Value {
        var img = try linear(x, "x_embedder", out: width, in: config.inChannels)
        if let p = imagePositions { img = img + p.reshaped([1, imageTokens, width]) }
        var txt = context
        for i in 0..<config.numLayers {
            (img, txt) = try doubleBlock(i, image: img, text: txt, temb: temb)
            tap?(img)
        }
        let imageRows = textTokens..<(textTokens + imageTokens), singles = config.numSingleLayers
        if singles > 0 {
            var joint = b.concat([txt, img], axis: 1)
            for i in 0..<singles { joint = try singleBlock(i, joint, temb: temb, rows: i == singles - 1 ? imageRows : nil) }
            img = joint
        }
        // AdaLayerNormContinuous: scale is the FIRST half, shift the second (diffusers order).
        let mod = try linear(temb.apply(.silu), "norm_out.linear", out: 2 * width, in: width)
        let halves = b.chunk(mod, 2, axis: 1).map { $0.reshaped([temb.shape[0], 1, width]) }
        return modulate(img, shift: halves[1], scale: halves[0])
    }

    public func context(_ promptEmbeds: Value) throws -> Value {
        try linear(promptEmbeds, "context_embedder", out: width, in: config.jointAttentionDim)
    }

    /// The teacher's velocity in packed layout [1, N, 4C].
    public func teacherHead(_ h: Value) throws -> Value {
        try linear(h, "proj_out", out: config.inChannels, in: width)
    }

    /// The ArcFlow head (§2.1) in packed layout: means [B, N, K·4C], log-weights
    /// log-softmaxed over K [B, N, K·4], rates γ [B, N, (K−1)·4] used as they are. The batch
    /// is h's leading size (the default model's distillation evaluates B students at once).
    public func arcHead(_ h: Value, components k: Int) throws -> (means: Value, logWeights: Value, rates: Value) {
        try weights.arcHead(h, components: k, packedChannels: config.inChannels, width: width)
    }

    // MARK: Latent layouts

    /// [1, C, H, W] → [1, (H/2)(W/2), 4C] with packed channel c·4 + py·2 + px (diffusers' _pack_latents).
    func pack(_ latents: Value) -> Value { grid.pack(latents) }

    /// Inverse of `pack`, for `per` values per token and position: [1, N, per·4] → [1, per, H, W].
    func unpack(_ tokens: Value, per: Int) -> Value { grid.unpack(tokens, per: per) }

    var grid: LatentGrid { LatentGrid(channels: config.latentChannels, gridH: gridH, gridW: gridW) }
}
