// The distillation's graphs: the student's ArcFlow head at a batch of (x, σ) (the rollout
// policy, no gradient), the teacher's CFG velocity at a batch of states (the targets), and the
// loss of the student's window-averaged mean velocity against those targets (what trains).
// All work on image tokens [B, N, 4C] (the teacher's patchify); the rollout between them is Swift.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import Training

public enum DistillGraphs {
    /// Component-dropout and integration live in Swift (`ArcPolicy`); these are the names the
    /// policy graph writes.
    public static let policyOutputs = ["means", "logweights", "rates"]

    /// The reference's loss scale: DiffusionMSELoss's ½ times the constant rescale 30 (§6.4).
    public static let lossScale: Float = 15

    static func studentNetwork(_ b: GraphBuilder, _ s: StudentConfig, teacher: WeightStore, adapter: ArcFlowAdapter) -> FluxNetwork {
        FluxNetwork(builder: b, config: s.flux, base: teacher, adapter: adapter, textTokens: s.teacher.text.tokens,
                    latentHeight: 2 * s.teacher.grid, latentWidth: 2 * s.teacher.grid)
    }

    /// The student's head at tokens x [B, N, 4C], σ [B]: x0 means [B, N, K·4C] (row k·4C + cp),
    /// log-weights [B, N, K·4] (log-softmaxed over K) and rates [B, N, (K−1)·4]; K = 1 has only
    /// the means (one component, weight 1, no rate).
    static func studentHead(_ b: GraphBuilder, _ net: FluxNetwork, _ s: StudentConfig, x: Value, sigma: Value,
                            ids: Value) throws -> (means: Value, logWeights: Value?, rates: Value?) {
        let c = s.teacher
        let text = TeacherGraphs.textEncoder(b, c.text, ids: ids)
        let temb = try net.conditioning(sigma: sigma, pooled: text.pooled)
        let pos = b.constant(TeacherGraphs.positionTable(c), shape: [c.imageTokens, c.flux.width])
        let h = try net.trunk(packed: x, temb: temb, context: try net.context(text.hidden), imagePositions: pos)
        if s.components == 1 {
            return (try net.linear(h, "proj_out_means", out: s.channels, in: s.flux.width), nil, nil)
        }
        let head = try net.arcHead(h, components: s.components)
        return (head.means, head.logWeights, head.rates)
    }

    /// The rollout policy: inputs `x` [B, N, 4C], `sigma` [B], `input_ids` [B, L]; outputs
    /// `means`, and for K > 1 `logweights` and `rates`. With `weightsAsInputs` every trained
    /// tensor is an input named by its graph key (`adapter:…`), so one compiled graph runs with
    /// the session's current weights or with their EMA, read in place.
    public static func policy(_ s: StudentConfig, teacher: WeightStore, adapter: ArcFlowAdapter, batch n: Int,
                              weightsAsInputs: Bool) throws -> Graph {
        let b = GraphBuilder(name: "distill_policy_k\(s.components)")
        let c = s.teacher
        let x = b.input("x", .f32([n, c.imageTokens, s.channels]))
        let sigma = b.input("sigma", .f32([n]))
        let ids = b.input("input_ids", .f32([n, c.text.tokens]))
        let net = studentNetwork(b, s, teacher: teacher, adapter: adapter)
        let head = try studentHead(b, net, s, x: x, sigma: sigma, ids: ids)
        b.output("means", head.means)
        if let l = head.logWeights, let r = head.rates { b.output("logweights", l); b.output("rates", r) }
        let g = try b.finish()
        return weightsAsInputs ? try promote(g, keys: Set(Student.trainable(s).map(\.key))) : g
    }

    /// The teacher's classifier-free-guided velocity at a batch of states: inputs `x` [B, N, 4C],
    /// `sigma` [B] (> 0), `input_ids` [B, L], `guidance_scale` [B] (per sample: the scale may
    /// depend on σ, `DistillRecipe.guidance(at:)`); output `velocity` [B, N, 4C]
    /// = (x − x̂0_guided)/σ, x̂0_guided = x̂0_u + G(x̂0_c − x̂0_u), cond and uncond (the empty
    /// caption) in one batch of 2B, as `TeacherGraphs.sampler` guides.
    public static func teacherVelocity(_ c: TeacherConfig, teacher: WeightStore, batch n: Int) throws -> Graph {
        let b = GraphBuilder(name: "distill_teacher_cfg")
        let l = c.text.tokens
        let x = b.input("x", .f32([n, c.imageTokens, c.tokenChannels]))
        let sigma = b.input("sigma", .f32([n]))
        let ids = b.input("input_ids", .f32([n, l]))
        let g = b.input("guidance_scale", .f32([n]))
        let empty = b.broadcast(b.constant(TeacherGraphs.emptyCaption.map(Float.init), shape: [1, l]), to: [n, l])
        let net = TeacherGraphs.network(b, c, teacher)
        let text = TeacherGraphs.textEncoder(b, c.text, ids: b.concat([ids, empty], axis: 0))
        let x0 = try TeacherGraphs.predictX0(b, net, c, x: b.concat([x, x], axis: 0), sigma: b.concat([sigma, sigma], axis: 0), text: text)
        let cond = b.slice(x0, axis: 0, 0..<n), uncond = b.slice(x0, axis: 0, n..<(2 * n))
        let guided = uncond + g.reshaped([n, 1, 1]) * (cond - uncond)
        b.output("velocity", (x - guided) / sigma.reshaped([n, 1, 1]))
        return try b.finish()
    }

    /// The fake score of `DistillRecipe.dmd` (distribution matching, not the reference's): a
    /// copy of the teacher trained on the student's own images. `fakeScore` is its x0 prediction
    /// at tokens `x` [B, N, 4C], `sigma` [B], `input_ids` [B, L] (output `x0`, conditional, no
    /// guidance), with the trained tensors as inputs (read in place from the fake's session);
    /// `fakeLoss` the teacher's flow-matching loss on the student's images `x0` with `noise`
    /// (tokens) at `sigma`, captions always kept. The text encoder stays the teacher's.
    public static func fakeScore(_ c: TeacherConfig, teacher: WeightStore, batch n: Int) throws -> Graph {
        let b = GraphBuilder(name: "distill_fake_score")
        let x = b.input("x", .f32([n, c.imageTokens, c.tokenChannels]))
        let sigma = b.input("sigma", .f32([n]))
        let ids = b.input("input_ids", .f32([n, c.text.tokens]))
        let text = TeacherGraphs.textEncoder(b, c.text, ids: ids)
        b.output("x0", try TeacherGraphs.predictX0(b, TeacherGraphs.network(b, c, teacher), c, x: x, sigma: sigma, text: text))
        return try promote(try b.finish(), keys: Set(fakeTrainable(c)))
    }

    public static func fakeLoss(_ c: TeacherConfig, teacher: WeightStore, batch n: Int) throws -> Graph {
        let b = GraphBuilder(name: "distill_fake_loss")
        let x0 = b.input("x0", .f32([n, c.imageTokens, c.tokenChannels]))
        let noise = b.input("noise", .f32([n, c.imageTokens, c.tokenChannels]))
        let sigma = b.input("sigma", .f32([n]))
        let ids = b.input("input_ids", .f32([n, c.text.tokens]))
        let text = TeacherGraphs.textEncoder(b, c.text, ids: ids)
        b.output("loss", try TeacherGraphs.flowMatchingLoss(b, TeacherGraphs.network(b, c, teacher), c, x0: x0, noise: noise, sigma: sigma, text: text))
        return try b.finish()
    }

    /// The fake score's trained tensors: the teacher's transformer (its text encoder is shared).
    public static func fakeTrainable(_ c: TeacherConfig) -> [String] {
        TeacherWeights.trainable(c).filter { !$0.hasPrefix("text_model.") }
    }

    /// The training loss (§6.3–6.4) over M = nfe·B student evaluations, each with I intervals:
    /// inputs `x_src` [M, N, 4C], `sigma_src` [M], `input_ids` [M, L], `sigma_a` and `sigma_b`
    /// [M, I] (each interval [σ_b, σ_a], σ_b = warp(t_b − ω)), `target` [M, I, N, 4C] (the
    /// teacher's guided velocity at x_a), `pair_weight` [M] (S_s/B: segment size over the batch).
    /// Output `loss` = 15 · Σ_m pair_weight_m · mean_{I,N,4C}(ū − target)², i.e. Σ_s S_s·15·MSE_s
    /// with MSE_s over the s-th segment's B·I pairs. ū is the student's mean velocity over each
    /// interval anchored at (x_src, σ_src) (§3.3), with velocity means μ_k = (x_src − m_k)/σ_src
    /// from the x0 means m_k. With `meanVelocity` ū [M, I, N, 4C] is an output too (tests).
    ///
    /// With `endpoint` (not the reference's: `DistillRecipe.endpointWeight`), three more inputs,
    /// `endpoint_sigma` [M] (σ_e, where the evaluation's segment ends), `endpoint` [M, N, 4C] (the
    /// teacher's Euler solution from x_src at σ_src to σ_e) and `endpoint_weight` [M], add
    /// 15 · Σ_m endpoint_weight_m · mean_{N,4C}(x̂_m − endpoint_m)², where
    /// x̂ = x_src − (σ_src − σ_e)·ū(σ_src → σ_e) is where the student's policy itself ends.
    ///
    /// With `generator` (B; not the reference's: `DistillRecipe.scoreAllSteps`), the student's
    /// whole `nfe`-step sample from `gen_noise` [B, N, 4C] (prompts `gen_ids`, knots `gen_sigmas`)
    /// is built too, with gradient through every step, and 15 · gen_weight · mean((x̂ − gen_target)²)
    /// is added. With `pixelWeights`, an input `gen_pixel_weight` [B, N, 4C] weights that squared
    /// error element by element (`DistillRecipe.edgeWeight`).
    public static func loss(_ s: StudentConfig, teacher: WeightStore, adapter: ArcFlowAdapter, evaluations m: Int, intervals: Int,
                            meanVelocity: Bool = false, endpoint: Bool = false, generator: Int? = nil, nfe: Int = 2,
                            pixelWeights: Bool = false) throws -> Graph {
        let b = GraphBuilder(name: "distill_loss_k\(s.components)")
        let c = s.teacher, n = c.imageTokens, ch = s.channels, i = intervals
        let x = b.input("x_src", .f32([m, n, ch]))
        let sigma = b.input("sigma_src", .f32([m]))
        let ids = b.input("input_ids", .f32([m, c.text.tokens]))
        let sa = b.input("sigma_a", .f32([m, i]))
        let sb = b.input("sigma_b", .f32([m, i]))
        let target = b.input("target", .f32([m, i, n, ch]))
        let pairWeight = b.input("pair_weight", .f32([m]))
        let net = studentNetwork(b, s, teacher: teacher, adapter: adapter)
        let averaged = policyAverage(b, s, head: try studentHead(b, net, s, x: x, sigma: sigma, ids: ids), x: x, sigma: sigma)
        let u = averaged(sa, sb, i)
        if meanVelocity { b.output("mean_velocity", u) }
        let d = u - target
        let perEvaluation = b.reduce(.reduce_mean, d * d, axes: [1, 2, 3])
        var total = b.reduce(.reduce_sum, perEvaluation * pairWeight, axes: [0])
        if endpoint {
            let endSigma = b.input("endpoint_sigma", .f32([m]))
            let end = b.input("endpoint", .f32([m, n, ch]))
            let endWeight = b.input("endpoint_weight", .f32([m]))
            let travelled = averaged(sigma.reshaped([m, 1]), endSigma.reshaped([m, 1]), 1).reshaped([m, n, ch])
            let reached = x - (sigma - endSigma).reshaped([m, 1, 1]) * travelled
            let e = reached - end
            total = total + b.reduce(.reduce_sum, b.reduce(.reduce_mean, e * e, axes: [1, 2]) * endWeight, axes: [0])
        }
        if let g = generator {
            // The student's whole nfe-step sample from `gen_noise` through the knots `gen_sigmas`
            // [nfe + 1], with gradient through every step (not the reference's: the score term of
            // `DistillRecipe.scoreAllSteps`): + 15 · gen_weight · mean((x̂ − gen_target)²).
            let noise = b.input("gen_noise", .f32([g, n, ch]))
            let genIDs = b.input("gen_ids", .f32([g, c.text.tokens]))
            let knots = b.input("gen_sigmas", .f32([nfe + 1]))
            let genTarget = b.input("gen_target", .f32([g, n, ch]))
            let genWeight = b.input("gen_weight", .f32([1]))
            var y = noise
            for k in 0..<nfe {
                let from = b.broadcast(b.slice(knots, axis: 0, k..<(k + 1)), to: [g])
                let to = b.broadcast(b.slice(knots, axis: 0, (k + 1)..<(k + 2)), to: [g])
                let step = policyAverage(b, s, head: try studentHead(b, net, s, x: y, sigma: from, ids: genIDs), x: y, sigma: from)
                y = y - (from - to).reshaped([g, 1, 1]) * step(from.reshaped([g, 1]), to.reshaped([g, 1]), 1).reshaped([g, n, ch])
            }
            let e = y - genTarget
            let squared = pixelWeights ? e * e * b.input("gen_pixel_weight", .f32([g, n, ch])) : e * e
            total = total + b.reduce(.reduce_mean, squared, axes: [0, 1, 2]).reshaped([1]) * genWeight
        }
        b.output("loss", total * lossScale)
        return try b.finish()
    }

    /// The policy of a student head evaluated at (x [m, N, 4C], σ [m]) as a function of intervals
    /// [σ_b, σ_a] ([m, j] each, and j): its mean velocity ū over each, [m, j, N, 4C] (§3.3), with
    /// velocity means μ_k = (x − m_k)/σ from the x0 means m_k.
    static func policyAverage(_ b: GraphBuilder, _ s: StudentConfig, head: (means: Value, logWeights: Value?, rates: Value?),
                              x: Value, sigma: Value) -> (Value, Value, Int) -> Value {
        let m = x.shape[0], n = x.shape[1], ch = s.channels, k = s.components
        let means = head.means.reshaped([m, n, k, ch / 4, 4])
        let mu = (x.reshaped([m, n, 1, ch / 4, 4]) - means) / sigma.reshaped([m, 1, 1, 1, 1])
        return { sa, sb, j in
            if k == 1 { return b.broadcast(mu.reshaped([m, 1, n, ch]), to: [m, j, n, ch]) }
            let w = b.softmax(head.logWeights!.reshaped([m, 1, n, k, 1, 4]), axis: 3)
            let rates = head.rates!.reshaped([m, 1, n, k - 1, 1, 4])
            let sinceSource = (sigma.reshaped([m, 1]) - sa).reshaped([m, j, 1, 1, 1, 1])
            let length = (sa - sb).reshaped([m, j, 1, 1, 1, 1])
            let decay = (rates * sinceSource).apply(.exp)
            // φ(z) = expm1(z)/z with the reference's clamp z' = sgn(z)·max(|z|, 1e-4) (as arcUpdate).
            let z = rates * length
            let zc = b.select(b.binary(.greater_equal, z, b.scalar(0)), b.binary(.max, z, b.scalar(1e-4)), b.binary(.min, z, b.scalar(-1e-4)))
            let factors = b.concat([b.constant(1, shape: [m, j, n, 1, 1, 4]), decay * (zc.apply(.expm1) / zc)], axis: 3)
            return b.reduce(.reduce_sum, (w * factors) * mu.reshaped([m, 1, n, k, ch / 4, 4]), axes: [3]).reshaped([m, j, n, ch])
        }
    }

    /// A copy of `g` in which the weights named in `keys` are inputs of the same name and type.
    static func promote(_ g: Graph, keys: Set<String>) throws -> Graph {
        let b = GraphBuilder(name: g.name)
        var map = [ValueID](repeating: -1, count: g.nodes.count)
        var promoted: [String: Value] = [:]
        for (idx, node) in g.nodes.enumerated() {
            if node.op == .weight, let key = node.key, keys.contains(key) {
                let v = promoted[key] ?? b.input(key, node.type)
                promoted[key] = v
                map[idx] = v.id
                continue
            }
            map[idx] = b.append(node.op, node.operands.map { b.value(map[$0]) }, attributes: node.attributes, type: node.type,
                                key: node.key, constant: node.constant, region: node.region, name: node.name).id
        }
        for o in g.outputs { b.output(o.name, b.value(map[o.value])) }
        return try b.finish()
    }
}
