// Qwen-Image + sampler → one module: the ArcFlow closed-form sampler (the student, no CFG), or the
// teacher's Euler sampler with diffusers' true classifier-free guidance, unrolled over the steps.

import Foundation
import IR
import Runtime

public struct QwenImageOptions {
    public var sampler: Sampler = .arc
    public var steps: Int?
    /// Image size in pixels; latents are 1/8 of it, tokens 1/16.
    public var height: Int
    public var width: Int
    public var textTokens: Int = 512
    /// The negative prompt's length under true CFG (nil: `textTokens`). QwenImagePipeline encodes
    /// each prompt at its own length; equal lengths share one batched evaluation, others get two.
    public var negativeTextTokens: Int?
    /// A fixed shift for the σ schedule (default 3.2, ArcFlow's).
    public var shift: Double?
    /// The teacher's true CFG (QwenImagePipeline's `true_cfg_scale`); nil: the prompt alone.
    public var trueCFGScale: Double?
    /// With `trueCFGScale`: the scale is read from the input `true_cfg_scale` f32[1] at run time
    /// and `trueCFGScale` is only the manifest's default (what `arcflow compile` builds).
    public var trueCFGScaleInput = false
    /// Also output the latents after every step ("x1", "x2", …), for parity tests.
    public var intermediateOutputs = false

    public init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }
}

/// A compiled transformer program (graph, weights, manifest facts), for either family.
public typealias TransformerProgram = FluxProgram

public enum QwenImageModel {
    /// Checks sizes and options; errors name the option.
    static func validate(_ o: QwenImageOptions, adapter: ArcFlowAdapter?) throws -> Int {
        guard o.height > 0, o.width > 0, o.height % 16 == 0, o.width % 16 == 0 else {
            throw ArcError("--height \(o.height) and --width \(o.width) must be positive multiples of 16 (latents are 1/8, tokens 2×2 latents)")
        }
        guard o.textTokens > 0 else { throw ArcError("--text-tokens must be positive") }
        if let t = o.negativeTextTokens {
            guard o.trueCFGScale != nil else { throw ArcError("--negative-text-tokens goes with --true-cfg-scale (the negative prompt is the teacher's true CFG)") }
            guard t > 0 else { throw ArcError("--negative-text-tokens must be positive") }
        }
        let steps = o.steps ?? o.sampler.defaultSteps
        guard steps >= 1 else { throw ArcError("--steps must be at least 1") }
        if o.sampler == .arc && adapter == nil { throw ArcError("--sampler arc needs --adapter (the ArcFlow head lives in the adapter)") }
        if o.sampler == .euler && adapter != nil { throw ArcError("--sampler euler runs the teacher; drop --adapter") }
        if let s = o.trueCFGScale {
            if o.sampler == .arc {
                throw ArcError("--true-cfg-scale is for the teacher (--sampler euler); the ArcFlow student has classifier-free guidance distilled in")
            }
            // QwenImagePipeline applies true CFG only when true_cfg_scale > 1.
            guard s > 1, s.isFinite else { throw ArcError("--true-cfg-scale must be greater than 1, got \(s)") }
        }
        return steps
    }

    /// The sampler graph: inputs `noise` [1, C, H/8, W/8], `prompt_embeds` [1, T, joint_attention_dim]
    /// (and `negative_prompt_embeds`, the same shape, with true CFG, and `true_cfg_scale` [1] with
    /// `trueCFGScaleInput`); output `latents` [1, C, H/8, W/8].
    public static func sampler(_ checkpoint: QwenImageCheckpoint, adapter: ArcFlowAdapter?, options o: QwenImageOptions) throws -> TransformerProgram {
        let steps = try validate(o, adapter: adapter)
        let (b, net, noise, context, negative) = try setUp("qwen_image_\(o.sampler.rawValue)\(steps)", "noise", checkpoint, adapter, o)
        let shift = o.shift ?? Schedule.shift
        let sigmas = o.sampler == .arc ? Schedule.arcSigmas(steps: steps, timestepRatio: adapter?.timestepRatio ?? 1, shift: shift) : Schedule.eulerSigmas(steps: steps, shift: shift)
        let c = checkpoint.config.latentChannels
        let cfg = o.trueCFGScale.map { o.trueCFGScaleInput ? b.input(trueCFGScaleInput, .f32([1])) : b.scalar(Float($0)) }
        var x = net.grid.pack(noise)
        for i in 0..<steps {
            // σ in f32, and step sizes as f32 differences of the f32 knots, as the reference computes them.
            let (sc, sn) = (Float(sigmas[i]), Float(sigmas[i + 1]))
            let temb = try net.conditioning(sigma: sc)
            switch o.sampler {
            case .euler:
                x = x + (sn - sc) * (try velocity(net, x: x, temb: temb, context: context, negative: negative, trueCFG: cfg))
            case .arc:
                let k = adapter!.components
                let head = try net.weights.studentHead(try net.trunk(packed: x, temb: temb, context: context), components: k,
                                                       packedChannels: checkpoint.config.inChannels, width: net.width)
                x = FluxModel.arcStep(b, x: x, head: head, components: k, delta: sc - sn, step: i)
            }
            if o.intermediateOutputs { b.output("x\(i + 1)", net.grid.unpack(x, per: c)) }
        }
        b.output("latents", net.grid.unpack(x, per: c))
        try net.weights.checkAllLoRAUsed()
        var manifest: [String: String] = [
            "family": TransformerFamily.qwenImage.rawValue, "sampler": o.sampler.rawValue, "nfe": String(steps),
            "height": String(o.height), "width": String(o.width), "text_tokens": String(o.textTokens),
            "latent_channels": String(c), "sigmas": sigmas.map { String(Float($0)) }.joined(separator: ","),
            "joint_attention_dim": String(checkpoint.config.jointAttentionDim),
        ]
        if let s = o.trueCFGScale { manifest["true_cfg_scale"] = String(s) }
        if let n = negative { manifest["negative_text_tokens"] = String(n.net.textTokens) }
        if let a = adapter { manifest["components"] = String(a.components) }
        return TransformerProgram(module: Module(try b.finish()), weights: store(checkpoint, adapter, net, negative?.net),
                                  manifest: manifest, sigmas: sigmas)
    }

    /// One transformer evaluation at (x, σ), for parity tests: `velocity` [1, C, H/8, W/8] (the
    /// teacher, true-CFG-combined when the options ask for it), or the student's `means`,
    /// `logweights` and `gammas` (reference §2.2 layout).
    public static func evaluation(_ checkpoint: QwenImageCheckpoint, adapter: ArcFlowAdapter?, sigma: Double,
                                  options o: QwenImageOptions) throws -> TransformerProgram {
        var opts = o
        opts.sampler = adapter == nil ? .euler : .arc
        _ = try validate(opts, adapter: adapter)
        let (b, net, x, context, negative) = try setUp("qwen_image_eval", "x", checkpoint, adapter, opts)
        let temb = try net.conditioning(sigma: Float(sigma))
        if let a = adapter {
            let head = try net.arcHead(try net.trunk(packed: net.grid.pack(x), temb: temb, context: context), components: a.components)
            for (name, v) in net.grid.studentHeads(head, components: a.components) { b.output(name, v) }
        } else {
            let v = try velocity(net, x: net.grid.pack(x), temb: temb, context: context, negative: negative,
                                 trueCFG: o.trueCFGScale.map { b.scalar(Float($0)) })
            b.output("velocity", net.grid.unpack(v, per: checkpoint.config.latentChannels))
        }
        try net.weights.checkAllLoRAUsed()
        return TransformerProgram(module: Module(try b.finish()), weights: store(checkpoint, adapter, net, negative?.net),
                                  manifest: [:], sigmas: [sigma])
    }

    /// The teacher's velocity [1, N, 4C]. With true CFG and a negative prompt as long as the prompt,
    /// `context` holds [prompt; negative] as a batch of 2 and one evaluation computes both (one set
    /// of GEMMs with twice the rows instead of two passes over every weight); a negative of another
    /// length (`negative`: its network and context) is a second evaluation, as QwenImagePipeline
    /// runs it. Then exactly QwenImagePipeline's combination:
    ///   comb = u_neg + s·(u − u_neg),  v = comb · ‖u‖ / ‖comb‖,
    /// the norms over each token's packed channels (torch.norm(dim=-1) on [B, N, 4C]), which keeps
    /// the guided prediction at the conditional prediction's per-token magnitude.
    static func velocity(_ net: QwenImageNetwork, x: Value, temb: Value, context: Value,
                         negative: (net: QwenImageNetwork, context: Value)?, trueCFG: Value?) throws -> Value {
        let b = net.b
        guard let s = trueCFG else { return try net.teacherHead(try net.trunk(packed: x, temb: temb, context: context)) }
        let cond: Value, uncond: Value
        if let n = negative {
            cond = try net.teacherHead(try net.trunk(packed: x, temb: temb, context: context))
            uncond = try n.net.teacherHead(try n.net.trunk(packed: x, temb: temb, context: n.context))
        } else {
            let both = try net.teacherHead(try net.trunk(packed: b.concat([x, x], axis: 0), temb: temb, context: context))
            (cond, uncond) = (b.slice(both, axis: 0, 0..<1), b.slice(both, axis: 0, 1..<2))
        }
        let comb = uncond + s * (cond - uncond)
        func norm(_ v: Value) -> Value { b.reduce(.reduce_sum, v * v, axes: [2], keepDims: true).apply(.sqrt) }
        return comb * (norm(cond) / norm(comb))
    }

    /// A builder, the network, the latent input named `latentName` [1, C, H/8, W/8] and the text
    /// context from `prompt_embeds` (stacked with `negative_prompt_embeds` under true CFG when the
    /// two are as long; else the negative's own network and context).
    static func setUp(_ name: String, _ latentName: String, _ checkpoint: QwenImageCheckpoint, _ adapter: ArcFlowAdapter?,
                      _ o: QwenImageOptions) throws -> (GraphBuilder, QwenImageNetwork, Value, Value, (net: QwenImageNetwork, context: Value)?) {
        let config = checkpoint.config
        let b = GraphBuilder(name: name)
        let (lh, lw) = (o.height / 8, o.width / 8)
        let net = QwenImageNetwork(builder: b, config: config, base: checkpoint.store, adapter: adapter,
                                   textTokens: o.textTokens, latentHeight: lh, latentWidth: lw)
        let latents = b.input(latentName, .f32([1, config.latentChannels, lh, lw]))
        let embeds = TensorType.f32([1, o.textTokens, config.jointAttentionDim])
        var prompt = b.input("prompt_embeds", embeds)
        guard o.trueCFGScale != nil else { return (b, net, latents, try net.context(prompt), nil) }
        let negativeTokens = o.negativeTextTokens ?? o.textTokens
        let negativeEmbeds = b.input("negative_prompt_embeds", .f32([1, negativeTokens, config.jointAttentionDim]))
        if negativeTokens == o.textTokens {
            prompt = b.concat([prompt, negativeEmbeds], axis: 0)
            return (b, net, latents, try net.context(prompt), nil)
        }
        let negative = QwenImageNetwork(sharing: net, textTokens: negativeTokens, ropeName: "rope.negative")
        return (b, net, latents, try net.context(prompt), (negative, try negative.context(negativeEmbeds)))
    }

    /// The weights of a graph over `net` (and the negative prompt's network, whose RoPE tables have
    /// their own names).
    static func store(_ checkpoint: QwenImageCheckpoint, _ adapter: ArcFlowAdapter?, _ net: QwenImageNetwork,
                      _ negative: QwenImageNetwork?) -> WeightStore {
        let tables = net.ropeTables.merging(negative?.ropeTables ?? [:]) { a, _ in a }
        return FluxWeights(base: checkpoint.store, adapter: adapter?.store, generated: TensorStore(tables, label: "RoPE tables"))
    }
}
