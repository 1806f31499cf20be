// The teacher's graphs: the flow-matching loss (what training differentiates) and the batched
// classifier-free-guidance Euler sampler, both built on FluxNetwork + the tiny text encoder.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import ShapesWorld

public enum TeacherGraphs {
    /// The ids of the empty caption: `<bos> <eos>` then padding. Caption dropout trains on it and
    /// the sampler's unconditional branch uses it.
    public static var emptyCaption: [Int] { WorldVocabulary.emptyCaption }

    // MARK: Pieces

    /// CLIP's text transformer on ids [B, L] (f32 integer values): (last_hidden_state [B, L, W],
    /// pooled [B, W] = the row of the first `<eos>`; every world caption has exactly one).
    static func textEncoder(_ b: GraphBuilder, _ c: TextEncoderConfig, ids: Value) -> (hidden: Value, pooled: Value) {
        let (n, l, d) = (ids.shape[0], c.tokens, c.width)
        func w(_ k: String, _ s: [Int]) -> Value { b.weight(k, .f32(s)) }
        func linear(_ x: Value, _ m: String, _ o: Int, _ i: Int) -> Value {
            b.matmul(x, w("\(m).weight", [o, i]), transposeB: true) + w("\(m).bias", [o])
        }
        func norm(_ x: Value, _ m: String) -> Value { b.layerNorm(x, scale: w("\(m).weight", [d]), bias: w("\(m).bias", [d]), eps: 1e-5) }
        var h = b.gather(w("text_model.embeddings.token_embedding.weight", [c.vocabSize, d]), ids)
            + w("text_model.embeddings.position_embedding.weight", [l, d]).reshaped([1, l, d])
        let hd = d / c.heads
        for i in 0..<c.layers {
            let p = "text_model.encoder.layers.\(i)"
            let x = norm(h, "\(p).layer_norm1")
            func heads(_ m: String) -> Value { linear(x, "\(p).self_attn.\(m)", d, d).reshaped([n, l, c.heads, hd]) }
            let o = b.attention(heads("q_proj"), heads("k_proj"), heads("v_proj"), scale: 1 / Double(hd).squareRoot(), causal: true)
            h = h + linear(o.reshaped([n, l, d]), "\(p).self_attn.out_proj", d, d)
            let y = norm(h, "\(p).layer_norm2")
            h = h + linear(linear(y, "\(p).mlp.fc1", c.intermediate, d).apply(.gelu), "\(p).mlp.fc2", d, c.intermediate)
        }
        h = norm(h, "text_model.final_layer_norm")
        // |id − eos| < 0.5 ⇔ id == eos: a one-hot row per caption, then one batched matmul.
        let oneHot = b.binary(.greater, b.scalar(0.5), (ids - Float(WorldVocabulary.eos)).apply(.abs))
        let pooled = b.matmul(oneHot.reshaped([n, 1, l]), h).reshaped([n, d])
        return (h, pooled)
    }

    /// Images [B, 3, S, S] → tokens [B, (S/p)², 3p²], token (gy, gx) row-major, channel c·p² + py·p + px.
    static func patchify(_ x: Value, _ c: TeacherConfig) -> Value {
        let (n, p, g) = (x.shape[0], c.patch, c.grid)
        return x.reshaped([n, 3, g, p, g, p]).transposed([0, 2, 4, 1, 3, 5]).reshaped([n, g * g, 3 * p * p])
    }

    static func unpatchify(_ t: Value, _ c: TeacherConfig) -> Value {
        let (n, p, g) = (t.shape[0], c.patch, c.grid)
        return t.reshaped([n, g, g, 3, p, p]).transposed([0, 3, 1, 4, 2, 5]).reshaped([n, 3, g * p, g * p])
    }

    /// The image position table [tokens, D] of `"arcflow_image_positions": "sincos2d"`; see
    /// `FluxNetwork.trunk(imagePositions:)`.
    public static func positionTable(_ c: TeacherConfig) -> [Float] {
        FluxNetwork.sinCosPositions(gridH: c.grid, gridW: c.grid, width: c.flux.width)
    }

    /// Builds the network's x0 prediction for tokens x [B, N, C] at σ [B] with text (hidden, pooled).
    static func predictX0(_ b: GraphBuilder, _ net: FluxNetwork, _ c: TeacherConfig, x: Value, sigma: Value,
                          text: (hidden: Value, pooled: Value)) throws -> Value {
        try net.teacherHead(try features(b, net, c, x: x, sigma: sigma, text: text).last!)
    }

    /// The network's image tokens [B, N, D] at x, σ: after each double block, then the trunk's
    /// output (the head's input). The discriminator reads them all; the x0 prediction the last.
    static func features(_ b: GraphBuilder, _ net: FluxNetwork, _ c: TeacherConfig, x: Value, sigma: Value,
                         text: (hidden: Value, pooled: Value)) throws -> [Value] {
        let temb = try net.conditioning(sigma: sigma, pooled: text.pooled)
        let pos = b.constant(positionTable(c), shape: [c.imageTokens, c.flux.width])
        var taps: [Value] = []
        let h = try net.trunk(packed: x, temb: temb, context: try net.context(text.hidden), imagePositions: pos) { taps.append($0) }
        return taps + [h]
    }

    static func network(_ b: GraphBuilder, _ c: TeacherConfig, _ weights: WeightStore) -> FluxNetwork {
        // FLUX's pack is 2×2 over its latent grid: a grid of g tokens is a 2g "latent".
        FluxNetwork(builder: b, config: c.flux, base: weights, adapter: nil, textTokens: c.text.tokens,
                    latentHeight: 2 * c.grid, latentWidth: 2 * c.grid)
    }

    /// The weights a teacher graph names: `trained` plus the RoPE tables.
    public static func store(_ c: TeacherConfig, trained: WeightStore) -> WeightStore {
        let rope = FluxNetwork.rope(config: c.flux, textTokens: c.text.tokens, gridH: c.grid, gridW: c.grid)
        return LayeredStore(TensorStore(rope, label: "RoPE tables"), over: trained)
    }

    // MARK: Loss

    /// The flow-matching loss graph. Inputs (B = `c.batch`): `x0` [B, 3, 64, 64] in [−1, 1],
    /// `noise` [B, 3, 64, 64] ~ N(0, 1), `sigma` [B] in (0, 1), `input_ids` [B, 12], `keep` [B]
    /// (1 keeps the caption, 0 replaces it by the empty caption: caption dropout, drawn by the
    /// batch provider). Output `loss`, a scalar.
    ///
    /// x_t = (1 − σ)x0 + σε and the target velocity is v = ε − x0 (rectified flow, FLUX's sign
    /// convention: x moves from noise at σ = 1 to data at σ = 0 along −v). The network predicts
    /// x0 (the stand-in found velocity prediction stalls at this size); its velocity is then
    /// v̂ = (x_t − x̂0)/σ and v̂ − v = (x0 − x̂0)/σ exactly, so the velocity MSE is the x0 MSE
    /// weighted by 1/σ². That weight explodes as σ → 0, where x̂0 ≈ x_t is nearly free and a tiny
    /// error would dominate the gradient; it is capped at 1/σ_floor² (σ_floor = 0.1: weight
    /// ≤ 100, touching ~1.4% of logit-normal draws), per sample, then averaged.
    public static func loss(_ c: TeacherConfig, weights: WeightStore) throws -> Graph {
        let b = GraphBuilder(name: "teacher_loss")
        let n = c.batch, s = TeacherConfig.side, l = c.text.tokens
        let x0 = b.input("x0", .f32([n, 3, s, s]))
        let noise = b.input("noise", .f32([n, 3, s, s]))
        let sigma = b.input("sigma", .f32([n]))
        let ids = b.input("input_ids", .f32([n, l]))
        let keep = b.input("keep", .f32([n])).reshaped([n, 1])
        let empty = b.constant(emptyCaption.map(Float.init), shape: [1, l])
        let captions = ids * keep + empty * (1 - keep)
        let text = textEncoder(b, c.text, ids: captions)
        b.output("loss", try flowMatchingLoss(b, network(b, c, weights), c, x0: patchify(x0, c), noise: patchify(noise, c), sigma: sigma, text: text))
        return try b.finish()
    }

    /// `loss`'s scalar on tokens x0 and noise [B, N, C] at σ [B]: the x0 MSE per sample weighted
    /// by 1/max(σ², σ_floor²), averaged (the distillation's fake score trains on it too).
    static func flowMatchingLoss(_ b: GraphBuilder, _ net: FluxNetwork, _ c: TeacherConfig, x0: Value, noise: Value, sigma: Value,
                                 text: (hidden: Value, pooled: Value)) throws -> Value {
        let sg = sigma.reshaped([sigma.shape[0], 1, 1])
        let pred = try predictX0(b, net, c, x: (1 - sg) * x0 + sg * noise, sigma: sigma, text: text)
        let d = pred - x0
        let perSample = b.reduce(.reduce_mean, d * d, axes: [1, 2])
        let floor = Float(c.sigmaFloor * c.sigmaFloor)
        let weight = b.scalar(1) / b.binary(.max, sigma * sigma, b.scalar(floor))
        return b.reduce(.reduce_mean, perSample * weight, axes: [0])
    }

    // MARK: Sampler

    /// Batched classifier-free-guidance Euler sampler over `steps` steps, unrolled. Inputs:
    /// `noise` [N, 3, 64, 64] (x at σ = sigmas[0]), `input_ids` [N, 12], `sigmas` [steps + 1]
    /// (descending; the last may be 0), `guidance_scale` [1]. Output `images` [N, 3, 64, 64]
    /// (before clamping). Each step evaluates cond and uncond (the empty caption) in one batch of
    /// 2N and guides the velocity: v = v_u + g(v_c − v_u); with x0 prediction this is the same
    /// guidance on x̂0, since v = (x − x̂0)/σ is affine in x̂0. Knots and scale are inputs, so one
    /// compiled graph serves every schedule; a caller may run a 1-step graph repeatedly.
    public static func sampler(_ c: TeacherConfig, weights: WeightStore, count n: Int, steps: Int) throws -> Graph {
        let b = GraphBuilder(name: "teacher_cfg_euler\(steps)")
        let s = TeacherConfig.side, l = c.text.tokens
        let noise = b.input("noise", .f32([n, 3, s, s]))
        let ids = b.input("input_ids", .f32([n, l]))
        let sigmas = b.input("sigmas", .f32([steps + 1]))
        let g = b.input("guidance_scale", .f32([1]))
        let empty = b.broadcast(b.constant(emptyCaption.map(Float.init), shape: [1, l]), to: [n, l])
        let net = network(b, c, weights)
        let text = textEncoder(b, c.text, ids: b.concat([ids, empty], axis: 0))
        var x = patchify(noise, c)
        for i in 0..<steps {
            let sc = b.slice(sigmas, axis: 0, i..<(i + 1)), sn = b.slice(sigmas, axis: 0, (i + 1)..<(i + 2))
            let x0 = try predictX0(b, net, c, x: b.concat([x, x], axis: 0), sigma: b.broadcast(sc, to: [2 * n]), text: text)
            let cond = b.slice(x0, axis: 0, 0..<n), uncond = b.slice(x0, axis: 0, n..<(2 * n))
            let guided = uncond + g.reshaped([1, 1, 1]) * (cond - uncond)
            let v = (x - guided) / sc.reshaped([1, 1, 1])
            x = x + (sn - sc).reshaped([1, 1, 1]) * v
        }
        b.output("images", unpatchify(x, c))
        return try b.finish()
    }
}
