// FLUX + sampler → one module: the teacher's Euler sampler or the ArcFlow closed-form sampler,
// unrolled over a fixed number of steps, latents in and latents out.

import Foundation
import IR
import Runtime

public enum Sampler: String, CaseIterable {
    case arc, euler

    public var defaultSteps: Int { self == .arc ? 2 : 28 }
}

public struct FluxOptions {
    public var sampler: Sampler = .arc
    public var steps: Int?
    /// Image size in pixels; latents are 1/8 of it, tokens 1/16 (unless `latentSize` is given).
    public var height: Int
    public var width: Int
    /// The latent grid [H', W'] given directly, for models whose "latent" is not 1/8 of the image:
    /// a pipeline whose VAE scales by another factor, or the embedded default's pixels through a
    /// fixed space-to-depth (there `height`/`width` only label the image).
    public var latentSize: (height: Int, width: Int)?
    /// True classifier-free guidance (Euler only): each step evaluates the prompt and the
    /// negative prompt in one batch of 2 and uses v_u + G·(v_c − v_u). nil: no CFG.
    public var cfgScale: Double?
    /// With `cfgScale`: G is read from the input `true_cfg_scale` f32[1] at run time, and
    /// `cfgScale` is only the manifest's default (what `arcflow compile` builds). Off: compiled in.
    public var cfgScaleInput = false

    public var latentHeight: Int { latentSize?.height ?? height / 8 }
    public var latentWidth: Int { latentSize?.width ?? width / 8 }
    public var textTokens: Int = 512
    /// Fed to the guidance embedder; nil means 3.5 when the model has one.
    public var guidance: Double?
    /// The sampler reads the guidance embedder's scale from the input `guidance` f32[1] at run
    /// time, and `guidance` above is only the manifest's default (what `arcflow compile` builds;
    /// no effect without a guidance embedder). Off: the scale is compiled in.
    public var guidanceInput = false
    /// A fixed shift for the σ schedule (default 3.2, ArcFlow's); ignored when `sigmas` is set.
    public var shift: Double?
    /// Also output the latents after every step ("x1", "x2", …), for parity tests.
    public var intermediateOutputs = false
    /// Overrides the sampler's σ knots (steps + 1 values, the last 0), e.g. a diffusers pipeline's
    /// dynamically shifted schedule (`FlowMatchSchedulerConfig.sigmas`).
    public var sigmas: [Double]?

    public init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }
}

/// A FLUX module ready for `ModelCompiler.build`: the graph, the weights it names, and facts
/// for the manifest.
public struct FluxProgram {
    public var module: Module
    public var weights: WeightStore
    public var manifest: [String: String]
    public var sigmas: [Double]
}

/// The input a teacher compiled with run-time true CFG reads its scale from (f32[1]).
public let trueCFGScaleInput = "true_cfg_scale"

public enum FluxModel {
    public static let defaultGuidance = 3.5

    /// Checks sizes and options; errors name the option.
    static func validate(_ config: FluxConfig, _ o: FluxOptions, adapter: ArcFlowAdapter?) throws -> (guidance: Float?, steps: Int) {
        if let l = o.latentSize {
            guard l.height > 0, l.width > 0, l.height % 2 == 0, l.width % 2 == 0 else {
                throw ArcError("--latent-size \(l.height)x\(l.width) must be positive and even (tokens are 2×2 latents)")
            }
        } else {
            guard o.height > 0, o.width > 0, o.height % 16 == 0, o.width % 16 == 0 else {
                throw ArcError("--height \(o.height) and --width \(o.width) must be positive multiples of 16 (latents are 1/8, tokens 2×2 latents)")
            }
        }
        guard o.textTokens > 0 else { throw ArcError("--text-tokens must be positive") }
        let steps = o.steps ?? o.sampler.defaultSteps
        guard steps >= 1 else { throw ArcError("--steps must be at least 1") }
        if let s = o.sigmas, s.count != steps + 1 { throw ArcError("\(s.count) sigmas given for \(steps) steps (need steps + 1)") }
        if o.sampler == .arc && adapter == nil { throw ArcError("--sampler arc needs --adapter (the ArcFlow head lives in the adapter)") }
        if o.sampler == .euler && adapter != nil { throw ArcError("--sampler euler runs the teacher; drop --adapter") }
        if let g = o.cfgScale {
            guard o.sampler == .euler else {
                throw ArcError("--true-cfg-scale needs --sampler euler (the ArcFlow student absorbed its teacher's guidance; it takes none)")
            }
            // FluxPipeline applies true CFG only when true_cfg_scale > 1 (as QwenImagePipeline).
            guard g > 1, g.isFinite else { throw ArcError("--true-cfg-scale must be greater than 1, got \(g)") }
        }
        var guidance: Float?
        if config.guidanceEmbeds {
            guidance = Float(o.guidance ?? defaultGuidance)
        } else if o.guidance != nil {
            throw ArcError("this transformer has no guidance embedder (guidance_embeds is false); drop --guidance")
        }
        return (guidance, steps)
    }

    /// The sampler graph: inputs `noise` [1, C, H', W'], `prompt_embeds` [1, T, joint_attention_dim],
    /// `pooled_prompt_embeds` [1, pooled_projection_dim], and with `cfgScale` also
    /// `negative_prompt_embeds` and `negative_pooled_prompt_embeds` (same shapes) and, with
    /// `cfgScaleInput`, `true_cfg_scale` [1]; with `guidanceInput` on a model with a guidance
    /// embedder `guidance` [1]; output `latents`
    /// [1, C, H', W'] (H' = H/8 unless `latentSize` gives it).
    ///
    /// With `"arcflow_prediction": "x0"` the network's output is x̂0: the teacher's velocity is
    /// v = (x − x̂0)/σ and a student's component means are μ_k = (x − m_k)/σ_src, after which
    /// the Euler and arc updates are the velocity ones unchanged (reference §3).
    public static func sampler(_ checkpoint: FluxCheckpoint, adapter: ArcFlowAdapter?, options o: FluxOptions) throws -> FluxProgram {
        let (guidance, steps) = try validate(checkpoint.config, o, adapter: adapter)
        let (b, net, noise, prompt, pooled) = setUp("flux_\(o.sampler.rawValue)\(steps)", "noise", checkpoint, adapter, o)
        let scale = guidance.map { o.guidanceInput ? FluxNetwork.GuidanceScale.input(b.input("guidance", .f32([1]))) : .fixed($0) }
        let cfg = o.cfgScale.map { o.cfgScaleInput ? b.input(trueCFGScaleInput, .f32([1])) : b.scalar(Float($0)) }
        let config = checkpoint.config, c = config.latentChannels
        let prediction = adapter?.prediction ?? config.prediction
        let shift = o.shift ?? adapter?.shift ?? Schedule.shift
        let sigmas = o.sigmas ?? (o.sampler == .arc ? Schedule.arcSigmas(steps: steps, timestepRatio: adapter?.timestepRatio ?? 1, shift: shift)
                                                   : Schedule.eulerSigmas(steps: steps, shift: shift))
        if sigmas.count != steps + 1 || sigmas.last != 0 || !sigmas.allSatisfy(\.isFinite) {
            throw ArcError("the σ schedule must have \(steps + 1) finite knots ending in 0, got \(sigmas)")
        }
        // CFG: prompt and negative prompt as one batch of 2 (rows 0 and 1) through every evaluation.
        var context = try net.context(prompt), conditioning = pooled
        if o.cfgScale != nil {
            let negative = b.input("negative_prompt_embeds", prompt.type)
            let negativePooled = b.input("negative_pooled_prompt_embeds", pooled.type)
            context = try net.context(b.concat([prompt, negative], axis: 0))
            conditioning = b.concat([pooled, negativePooled], axis: 0)
        }
        var x = net.pack(noise)
        for i in 0..<steps {
            // σ in f32, and step sizes as f32 differences of the f32 knots, as the reference computes them.
            let (sc, sn) = (Float(sigmas[i]), Float(sigmas[i + 1]))
            let input = o.cfgScale == nil ? x : b.concat([x, x], axis: 0)
            let h = try net.trunk(packed: input, sigma: sc, guidance: scale, context: context, pooled: conditioning)
            switch o.sampler {
            case .euler:
                var v = try net.teacherHead(h)
                if prediction == .x0 { v = (input - v) / sc }
                if let g = cfg {
                    let (vc, vu) = (b.slice(v, axis: 0, 0..<1), b.slice(v, axis: 0, 1..<2))
                    v = vu + g * (vc - vu)
                }
                x = x + (sn - sc) * v
            case .arc:
                let k = adapter!.components
                var head = try net.weights.studentHead(h, components: k, packedChannels: config.inChannels, width: net.width)
                if prediction == .x0 {
                    let (n, f) = (x.shape[1], x.shape[2])
                    head.means = ((x.reshaped([1, n, 1, f]) - head.means.reshaped([1, n, k, f])) / sc).reshaped([1, n, k * f])
                }
                x = arcStep(b, x: x, head: head, components: k, delta: sc - sn, step: i)
            }
            if o.intermediateOutputs { b.output("x\(i + 1)", net.unpack(x, per: c)) }
        }
        b.output("latents", net.unpack(x, per: c))
        try checkAdapterUse(adapter, net)
        let graph = try b.finish()
        var manifest: [String: String] = [
            "family": "flux", "sampler": o.sampler.rawValue, "nfe": String(steps),
            "height": String(o.height), "width": String(o.width), "text_tokens": String(o.textTokens),
            "latent_channels": String(c), "latent_height": String(o.latentHeight), "latent_width": String(o.latentWidth),
            "sigmas": sigmas.map { String(Float($0)) }.joined(separator: ","), "prediction": prediction.rawValue,
            "joint_attention_dim": String(config.jointAttentionDim), "pooled_projection_dim": String(config.pooledProjectionDim),
        ]
        if let g = guidance { manifest["guidance"] = String(g) }
        if let g = o.cfgScale { manifest["true_cfg_scale"] = String(g) }
        if let p = config.imagePositions { manifest["image_positions"] = p.rawValue }
        if let a = adapter { manifest["components"] = String(a.components) }
        return FluxProgram(module: Module(graph), weights: store(checkpoint, adapter, net), manifest: manifest, sigmas: sigmas)
    }

    /// One transformer evaluation at (x, σ), for parity tests: outputs `velocity` [1, C, H/8, W/8]
    /// (teacher; converted from x̂0 for an x0 model), or the student's per-pixel `means` (as the
    /// head predicts them: x0 means for an x0 student) [1, K, C, H/8, W/8], `logweights` [1, K, 1, …]
    /// and `gammas` [1, K−1, 1, …] (reference §2.2 layout).
    public static func evaluation(_ checkpoint: FluxCheckpoint, adapter: ArcFlowAdapter?, sigma: Double, options o: FluxOptions) throws -> FluxProgram {
        var opts = o
        opts.sampler = adapter == nil ? .euler : .arc
        let (guidance, _) = try validate(checkpoint.config, opts, adapter: adapter)
        let (b, net, x, prompt, pooled) = setUp("flux_eval", "x", checkpoint, adapter, o)
        let h = try net.trunk(packed: net.pack(x), sigma: Float(sigma), guidance: guidance.map { .fixed($0) }, context: try net.context(prompt), pooled: pooled)
        if let a = adapter {
            for (name, v) in try studentHeads(net, h, components: a.components) { b.output(name, v) }
        } else {
            var v = try net.teacherHead(h)
            // An x0 model's output is x̂0; its velocity is (x − x̂0)/σ, as the sampler computes it.
            if checkpoint.config.prediction == .x0 { v = (net.pack(x) - v) / Float(sigma) }
            b.output("velocity", net.unpack(v, per: checkpoint.config.latentChannels))
        }
        try checkAdapterUse(adapter, net)
        return FluxProgram(module: Module(try b.finish()), weights: store(checkpoint, adapter, net), manifest: [:], sigmas: [sigma])
    }

    /// The names of the student's head outputs, in the order `evaluation` writes them.
    public static let headNames = ["means", "logweights", "gammas"]

    /// The ArcFlow head of `h` in the reference layout (§2.2), named as in `headNames`.
    static func studentHeads(_ net: FluxNetwork, _ h: Value, components k: Int) throws -> [(String, Value)] {
        net.grid.studentHeads(try net.arcHead(h, components: k), components: k)
    }

    /// One student evaluation at (x, σ) with a scalar loss, for training and gradient checks:
    /// the graph of `evaluation` plus inputs `target_means`, `target_logweights`, `target_gammas`
    /// (the shapes of the head outputs) and the output `loss` f32[] =
    /// Σ_head weight_head · mean((head − target_head)²), over the heads with a non-zero weight
    /// (`lossWeights`, default 1 each; a head without weight has no target input). With
    /// `keepHeads` the three heads are outputs too.
    ///
    /// Every adapter tensor is a `weight` node keyed `adapter:<key>` (`trainableKeys`), and each
    /// LoRA is applied unfused, x·Wᵀ + s·(x·Aᵀ)·Bᵀ, so `gradientGraph(program.module.main, loss:
    /// "loss", wrt: trainableKeys(adapter))` sees A and B. The default pipeline may still fold a
    /// LoRA into its base weight where the backward does not read x·Aᵀ (only when B is not
    /// differentiated): forward values are the same, and the backward reads A and B themselves.
    public static func trainingEvaluation(_ checkpoint: FluxCheckpoint, adapter: ArcFlowAdapter, sigma: Double, options o: FluxOptions,
                                          lossWeights: [String: Float] = ["means": 1, "logweights": 1, "gammas": 1],
                                          keepHeads: Bool = false) throws -> FluxProgram {
        for name in lossWeights.keys where !headNames.contains(name) {
            throw ArcError("no head named '\(name)' to put a loss on (heads: \(headNames.joined(separator: ", ")))")
        }
        guard lossWeights.values.contains(where: { $0 != 0 }) else { throw ArcError("every loss weight is zero: the loss would be constant") }
        var opts = o
        opts.sampler = .arc
        let (guidance, _) = try validate(checkpoint.config, opts, adapter: adapter)
        let (b, net, x, prompt, pooled) = setUp("flux_train_eval", "x", checkpoint, adapter, o)
        let h = try net.trunk(packed: net.pack(x), sigma: Float(sigma), guidance: guidance.map { .fixed($0) }, context: try net.context(prompt), pooled: pooled)
        var loss: Value?
        for (name, head) in try studentHeads(net, h, components: adapter.components) {
            if keepHeads { b.output(name, head) }
            guard let w = lossWeights[name], w != 0 else { continue }
            let d = head - b.input("target_\(name)", .f32(head.shape))
            var term = b.reduce(.reduce_mean, d * d, axes: Array(0..<d.rank))
            if w != 1 { term = term * w }
            loss = loss.map { $0 + term } ?? term
        }
        b.output("loss", loss!)
        try checkAdapterUse(adapter, net)
        var manifest = ["family": "flux", "sigma": String(Float(sigma)), "components": String(adapter.components)]
        if let g = guidance { manifest["guidance"] = String(g) }
        return FluxProgram(module: Module(try b.finish()), weights: store(checkpoint, adapter, net), manifest: manifest, sigmas: [sigma])
    }

    /// The keys of the weights a student is trained by: every adapter tensor (LoRA A and B,
    /// `norm_out.linear.*`, the three head layers) as `adapter:<key>`, sorted. LoRA alphas are
    /// not weights of the graph (they are folded into constants) and are left out.
    public static func trainableKeys(_ adapter: ArcFlowAdapter) -> [String] {
        let lora = adapter.lora.values.flatMap { [$0.a, $0.b] }
        return (lora + adapter.dense).map { "adapter:" + $0 }.sorted()
    }

    /// A builder, the network, and the three inputs every FLUX graph takes: latents [1, C, H/8, W/8]
    /// named `latentName`, `prompt_embeds` and `pooled_prompt_embeds`.
    static func setUp(_ name: String, _ latentName: String, _ checkpoint: FluxCheckpoint, _ adapter: ArcFlowAdapter?,
                      _ o: FluxOptions) -> (GraphBuilder, FluxNetwork, Value, Value, Value) {
        let config = checkpoint.config
        let b = GraphBuilder(name: name)
        let (lh, lw) = (o.latentHeight, o.latentWidth)
        let net = FluxNetwork(builder: b, config: config, base: checkpoint.store, adapter: adapter,
                              textTokens: o.textTokens, latentHeight: lh, latentWidth: lw)
        let latents = b.input(latentName, .f32([1, config.latentChannels, lh, lw]))
        let prompt = b.input("prompt_embeds", .f32([1, o.textTokens, config.jointAttentionDim]))
        let pooled = b.input("pooled_prompt_embeds", .f32([1, config.pooledProjectionDim]))
        return (b, net, latents, prompt, pooled)
    }

    /// One student step from x by Δ: the closed-form arc update tagged `arc_step = i` and
    /// `arc_delta = Δ` (fold-arc-integral makes it one kernel), or for K = 1 (γ = 0: φ = 1 and a
    /// weight of 1) the straight step along its one mean.
    static func arcStep(_ b: GraphBuilder, x: Value, head: (means: Value, logWeights: Value?, rates: Value?),
                        components k: Int, delta: Float, step i: Int) -> Value {
        guard k > 1, let logWeights = head.logWeights, let rates = head.rates else { return x - head.means * delta }
        return b.withAttributes(["arc_step": .int(i), "arc_delta": .float(Double(delta))]) {
            arcUpdate(b, x: x, head: (head.means, logWeights, rates), components: k, delta: delta)
        }
    }

    /// x − Δ·Σ_k softmax(ℓ)_k·φ(γ_k·Δ)·μ_k in primitive ops, token layout, γ_0 = 0 (φ_0 = 1).
    /// fold-arc-integral recognises this (by its `arc_step` tag) and makes it one kernel.
    static func arcUpdate(_ b: GraphBuilder, x: Value, head: (means: Value, logWeights: Value, rates: Value),
                          components k: Int, delta: Float) -> Value {
        let (n, f) = (x.shape[1], x.shape[2])
        let p = 4, c = f / p
        let mu = head.means.reshaped([1, n, k, c, p])
        let w = b.softmax(head.logWeights.reshaped([1, n, k, 1, p]), axis: 2)
        var phi = b.constant(1, shape: [1, n, 1, 1, p])
        if k > 1 {
            let z = head.rates.reshaped([1, n, k - 1, 1, p]) * delta
            let zc = b.select(b.binary(.greater_equal, z, b.scalar(0)), b.binary(.max, z, b.scalar(1e-4)), b.binary(.min, z, b.scalar(-1e-4)))
            phi = b.concat([phi, zc.apply(.expm1) / zc], axis: 2)
        }
        let v = b.reduce(.reduce_sum, (w * phi) * mu, axes: [2])
        return x - v.reshaped([1, n, f]) * delta
    }

    static func checkAdapterUse(_ adapter: ArcFlowAdapter?, _ net: FluxNetwork) throws {
        try net.weights.checkAllLoRAUsed()
    }

    static func store(_ checkpoint: FluxCheckpoint, _ adapter: ArcFlowAdapter?, _ net: FluxNetwork) -> WeightStore {
        FluxWeights(base: checkpoint.store, adapter: adapter?.store, generated: TensorStore(net.generatedTables, label: "RoPE and position tables"))
    }
}

/// The weights a FLUX graph names: "adapter:<key>" from the adapter, "rope.*" and "positions.*" computed, the rest
/// from the base checkpoint.
final class FluxWeights: WeightStore {
    let base: WeightStore, adapter: WeightStore?, generated: WeightStore
    init(base: WeightStore, adapter: WeightStore?, generated: WeightStore) {
        self.base = base
        self.adapter = adapter
        self.generated = generated
    }
    var label: String { base.label }
    var names: [String] { base.names + (adapter?.names.map { "adapter:" + $0 } ?? []) + generated.names }
    private func route(_ name: String) -> (WeightStore, String)? {
        if name.hasPrefix("adapter:") { return adapter.map { ($0, String(name.dropFirst(8))) } }
        if generated.type(of: name) != nil { return (generated, name) }
        return (base, name)
    }
    func type(of name: String) -> TensorType? { route(name).flatMap { $0.0.type(of: $0.1) } }
    func raw(_ name: String) throws -> UnsafeRawPointer {
        guard let (s, k) = route(name) else { throw ArcError("no adapter loaded for '\(name)'") }
        return try s.raw(k)
    }
    func evict(_ name: String) { route(name).map { $0.0.evict($0.1) } }
}
