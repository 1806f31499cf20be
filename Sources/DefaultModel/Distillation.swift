// ArcFlow π-ID distillation of the default teacher (reference §6): Swift drives the rollouts
// from noise with forward-only compiled graphs (the student's policy, the teacher's CFG
// velocity), then one compiled train step (student forward + autodiff + AdamW + EMA) learns
// from the collected (state, interval, target) pairs. Training's Trainer runs the loop.
//
// Why this split: the rollout is sequential (each teacher call starts where the previous interval
// ended) and has no gradient, so it costs forward passes only; the train step then evaluates the
// student once per segment with gradient, exactly the reference's one backward over the summed
// loss. Interval sampling, dropout and the closed-form integration are a few lines of Swift
// over [B, N, 4C] arrays (ArcPolicy), tested against Euler integration and the loss graph.

import ArcFlowGraphs
import Foundation
import Imaging
import IR
import Runtime
import ShapesWorld
import Training

/// The recipe's settings (defaults: the reference's, scaled; see `DistillOptions`).
public struct DistillRecipe: Equatable {
    public var batch = 8
    public var nfe = 2
    /// The reference's timestep_ratio r: the last segment's share of raw time, r/(N − 1 + r)
    /// (reference: keep 1.0; 2 steps meet at σ 0.5). Ours to vary: where the two steps meet
    /// decides how much of the image the last step draws; the adapter records it
    /// (`arcflow_timestep_ratio`) so the sampler takes the same knots.
    public var timestepRatio = 1.0
    public var intervals = 4
    /// The σ warp's shift. 1 (no warp) here: the teacher was trained with logit-normal σ and is
    /// sampled and judged on the plain linspace schedule (shift 1) at 64 tokens; ArcFlow's 3.2
    /// is FLUX's shift at 4096 tokens, and shifting toward high noise is what large token counts
    /// need (more tokens ⇒ more redundancy ⇒ noise must be larger to destroy the image), not 64.
    public var shift = 1.0
    /// The guided teacher's scale: the shipped teacher's (`DefaultTeacherSampling.guidance`).
    public var guidance = DefaultTeacherSampling.guidance
    /// Not the reference's (nil: one scale): the teacher's scale at σ > `guidanceSplit`, where
    /// a flow model settles the layout (`guidance` below, where it draws the shapes). Why: at
    /// CFG 5 the shipped teacher misplaces fewer two-object scenes than at 3 but overshoots
    /// sizes and shape edges more (README, session 25), so one scale cannot have both. Measured:
    /// the teacher guided 5 or 8 above σ 0.5 and 3 below judged level with 3 throughout.
    public var earlyGuidance: Double?
    public var guidanceSplit = 0.5
    /// D: the teacher ratio falls linearly from 1 to 0 over D iterations (reference: 2000 of 10 000).
    public var decayIterations = 600
    public var dropout = 0.1
    public var seed: UInt64 = 0
    /// Not the reference's (0: off, π-ID exactly): the weight of a loss on where each segment's
    /// policy ends against the teacher's own Euler solution from the same state over the same σ
    /// range, on the points of its `endpointSteps`-step schedule inside it (`DistillGraphs.loss`'s
    /// endpoint). Why: `distill-default --handoff` shows that 2-NFE students lose to the teacher
    /// in where a step ends (the patch-4 ones almost all in the first), and π-ID fits velocities
    /// along the way, never that state. Measured: closer images, the same judge accuracy (README).
    public var endpointWeight = 0.0
    public var endpointSteps = 28
    /// Not the reference's (0: off): the weight of a mode-seeking term on the student's final
    /// image x̂ (the last segment's end, σ = 0). x̂ is noised to a σ' drawn uniformly from
    /// [`scoreSigma`/10, `scoreSigma`], and x̂'s target (the endpoint input of
    /// `DistillGraphs.loss`, stopped) is x̂ − g, so the gradient is g:
    /// - without `dmd`, g = x̂ − x̂0_teacher(x̂_σ') (score distillation: DreamFusion's SDS);
    /// - with `dmd`, g = x̂0_fake(x̂_σ') − x̂0_teacher(x̂_σ') (distribution matching, DMD/DMD2),
    ///   the fake score (`FakeScore`) a copy of the teacher trained on the student's images.
    /// x̂0_teacher is guided (CFG), the fake's is not. Why: π-ID and the endpoint term regress
    /// onto averages of the teacher's outcomes, and what 2-step students get wrong is what an
    /// average draws (blurred edges, split or doubled objects). SDS moves x̂ up the teacher's
    /// density but also toward the mean of nearby student images; DMD's fake term cancels that.
    public var scoreWeight = 0.0
    public var scoreSigma = 0.5
    public var dmd = false
    /// The fake score's AdamW rate and its updates per iteration (DMD2 uses 5 per generator step).
    public var fakeLR = 1e-4
    public var fakeSteps = 1
    /// Iterations at the start whose score term has weight 0 while the fake score learns the
    /// student's images: a fake that starts as the unguided teacher would otherwise push the
    /// student (which absorbed the guidance) toward guidance on top of its own.
    public var fakeWarmup = 0
    /// The score term's gradient reaches the student through every step of its sample from the
    /// iteration's noise (`DistillGraphs.loss`'s generator), not only through the last segment:
    /// what the handoff probes say the first step decides (how many objects, where) then learns
    /// from the final image too.
    public var scoreAllSteps = false
    /// Not the reference's (0: off): the weight W of an adversarial term on the student's final
    /// image, through every step of its sample (as `scoreAllSteps`): the loss gains
    /// W·(−mean D(x̂)), D the `Discriminator` (the frozen teacher's features at x̂ noised to
    /// σ' ~ U(`adversarialSigma`/10, `adversarialSigma`), trained heads), whose heads learn each
    /// iteration to tell renders of the iteration's prompts from the student's samples. Why: the
    /// regression terms above average over outcomes; a discriminator against real renders
    /// penalizes what an average draws (README, session 33).
    public var adversarialWeight = 0.0
    public var adversarialSigma = 0.5
    /// The heads' AdamW rate (1e-3: at 1e-4 their hinge loss had not moved in 30 iterations, at
    /// 1e-3 it fell from 2.0 to 1.5-1.6 in 80, session 33), and the first iterations that train
    /// only them (the term's weight 0).
    public var discriminatorLR = 1e-3
    public var discriminatorWarmup = 0
    /// Not the reference's (0: off): the weight W of a loss on the student's whole 2-step sample
    /// from the iteration's noise against the guided teacher's `endpointSteps`-step Euler solution
    /// from the same noise, through every step of the sample (the generator of `scoreAllSteps`):
    /// 15·W·mean((x̂ − x̂_teacher)²). Why: `--handoff` on the deeper students shows neither step
    /// losing alone (the teacher finishes step 1, step 2 finishes the teacher's state) but the two
    /// composed losing 11-14 of 192 (README, session 33); π-ID fits each step's velocities and the
    /// endpoint term each step's end, never the composition, which this term does directly.
    public var trajectoryWeight = 0.0
    /// With `trajectoryWeight`: the term's gradient reaches the last step only, run from the
    /// student's own state at the last knot (its earlier steps without dropout, stopped), so the
    /// earlier steps learn from π-ID alone. Why: on the whole sample the term made the first step
    /// land closer on average but between outcomes (the teacher finishing it failed more counts),
    /// while the second step came to finish the teacher's states better than the teacher (README,
    /// session 34's handoff).
    public var trajectoryLastStep = false
    /// `PromptSampler.shapeWeights` of the distillation prompts (nil: uniform, as the teacher
    /// was trained).
    public var shapeWeights: [Double]? = nil
    /// Not the reference's (0: off): with `trajectoryWeight`, the term's squared error at each
    /// pixel is weighted ∝ 1 + A at the colour edges of the teacher's solution (a pixel that
    /// differs from a 4-neighbour by more than `edgeThreshold` in some channel), 1 elsewhere,
    /// normalised to mean 1 per image (the term's scale is unchanged). Why: the students lose the
    /// held-out pairs on triangles whose apex they draw blunt (README, session 37); an apex is
    /// almost all edge, a few pixels of an image-wide mean.
    public var edgeWeight = 0.0
    public static let edgeThreshold: Float = 0.3
    public init() {}

    /// The teacher's guidance scale at noise level σ.
    public func guidance(at sigma: Double) -> Double {
        if let early = earlyGuidance, sigma > guidanceSplit { return early }
        return guidance
    }

    /// How the teacher is guided, for labels: "3.0", or "5.0 above σ 0.5, 3.0 below".
    public var guidanceLabel: String {
        earlyGuidance.map { "\($0) above σ \(guidanceSplit), \(guidance) below" } ?? "\(guidance)"
    }

    /// The score term's weight at 0-based iteration `step` (0 during the fake's warm-up).
    public func scoreWeight(step: Int) -> Double { dmd && step < fakeWarmup ? 0 : scoreWeight }

    /// The adversarial term's weight at 0-based iteration `step` (0 while only the heads train).
    public func adversarialWeight(step: Int) -> Double { step < discriminatorWarmup ? 0 : adversarialWeight }

    /// Whether the loss graph has the endpoint inputs (either term that uses them).
    public var usesEndpoint: Bool { endpointWeight > 0 || (scoreWeight > 0 && !scoreAllSteps) }
    /// The steps the loss graph's generator runs (with gradient): the last only for
    /// `trajectoryLastStep`, else all.
    public var generatorSteps: Int { trajectoryWeight > 0 && trajectoryLastStep ? 1 : nfe }
    /// Whether the loss graph has the generator inputs.
    public var usesGenerator: Bool { (scoreWeight > 0 && scoreAllSteps) || adversarialWeight > 0 || trajectoryWeight > 0 }

    /// The σ knots of the student's nfe steps, [σ(1), …, 0], the compiled sampler's own.
    public var knots: [Double] { Schedule.arcSigmas(steps: nfe, timestepRatio: timestepRatio, shift: shift) }

    /// ρ of 0-based iteration `step`.
    public func teacherRatio(step: Int) -> Double {
        decayIterations <= 0 ? 0 : 1 - Double(min(step, decayIterations)) / Double(decayIterations)
    }

    /// Raw-time segment sizes (§3.1): the differences of the sampler's raw knots, so that
    /// stepping down by them lands on its knots, the last exactly at 0.
    public var segments: [Double] {
        let t = Schedule.arcTimes(steps: nfe, timestepRatio: timestepRatio)
        return zip(t, t.dropFirst()).map { $0 - $1 }
    }

    public func warp(_ t: Double) -> Double { Schedule.warp(max(t, 0), shift: shift) }
}

extension SeededGenerator {
    /// `count` noise levels σ' ~ U(top/10, top): where the final-image terms (SDS, DMD's fake
    /// score, the discriminator) read a noised image. The floor keeps σ' off 0, where x0 is given.
    mutating func noiseLevels(_ count: Int, upTo top: Double) -> [Float] {
        (0..<count).map { _ in Float(top / 10 + Double(uniform()) * top * 0.9) }
    }
}

/// Runs the compiled policy graph with the trained tensors read from wherever the caller says
/// (the session's current weights, their EMA, or a store), in place.
public final class PolicyRunner {
    public let executable: Executable
    public let batch: Int
    private var data: [String: UnsafeMutableRawPointer] = [:]
    private let outputs: [UnsafeMutableRawPointer]

    /// `executable`: a forward graph whose trained tensors are inputs named `adapter:…` or by
    /// their keys (the fake score's), read through `weight` at each call.
    public init(_ executable: Executable, batch: Int) {
        self.executable = executable; self.batch = batch
        outputs = executable.allocateOutputs()
    }

    deinit { (Array(data.values) + outputs).forEach { $0.deallocate() } }

    /// The heads at tokens x [B, N, 4C], σ [B], ids [B, L]: means, log-weights, rates (the last
    /// two nil for K = 1). `weight` maps a graph key (`adapter:…`) to its current values.
    public func run(x: [Float], sigma: [Float], ids: [Float], weight: (String) throws -> UnsafeRawPointer) throws
        -> (means: [Float], logWeights: [Float]?, rates: [Float]?) {
        let out = try outputs(["x": x, "sigma": sigma, "input_ids": ids], weight: weight)
        return (out["means"]!, out["logweights"], out["rates"])
    }

    /// Every output by name, for the data inputs `values` (by name); any other input is a trained
    /// tensor that `weight` maps to its current values.
    public func outputs(_ values: [String: [Float]], weight: (String) throws -> UnsafeRawPointer) throws -> [String: [Float]] {
        let inputs: [UnsafeRawPointer?] = try executable.inputs.map { b in
            guard let v = values[b.name] else { return try weight(b.name) }
            guard v.count == b.type.count else { throw ArcError("input '\(b.name)' has \(v.count) values, expected \(b.type)") }
            let p = data[b.name] ?? UnsafeMutableRawPointer.allocate(byteCount: max(b.type.byteCount, 1), alignment: 64)
            data[b.name] = p
            v.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return UnsafeRawPointer(p)
        }
        try executable.runRaw(inputs: inputs, outputs: outputs.map { Optional($0) })
        var out: [String: [Float]] = [:]
        for (k, b) in executable.outputs.enumerated() { out[b.name] = decodeFloats(outputs[k], b.type) }
        return out
    }
}

/// One distillation iteration's rollouts (§6.2–6.3), as the train step's batch: a pure function
/// of (seed, step) and the student's weights at that step, so a restored state resumes exactly.
public final class DistillRollout: BatchProvider {
    public let student: StudentConfig
    public let recipe: DistillRecipe
    let policy: PolicyRunner
    let teacher: Executable
    /// DMD's fake score (`DistillRecipe.dmd`), nil otherwise.
    public let fake: FakeScore?
    /// The adversarial term's discriminator (`DistillRecipe.adversarialWeight`), nil otherwise.
    public let discriminator: Discriminator?
    /// The trained tensors the rollout policy uses (the session's current weights).
    public var weight: (String) throws -> UnsafeRawPointer
    /// Wall seconds spent in `batch` (rollouts: policy, teacher, integration), for progress lines.
    public private(set) var seconds = 0.0

    public init(student: StudentConfig, recipe: DistillRecipe, policy: PolicyRunner, teacher: Executable, fake: FakeScore? = nil,
                discriminator: Discriminator? = nil, weight: @escaping (String) throws -> UnsafeRawPointer) {
        self.student = student; self.recipe = recipe; self.policy = policy; self.teacher = teacher; self.fake = fake
        self.discriminator = discriminator; self.weight = weight
    }

    var tokens: Int { student.teacher.imageTokens }
    var channels: Int { student.channels }

    /// The prompts of iteration `step` (held-out pairs excluded, as in the teacher's training).
    public func prompts(step: Int) -> [Prompt] {
        var sampler = PromptSampler(seed: (recipe.seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15) ^ 0xD157_111D_0A2C_F10E)
        sampler.shapeWeights = recipe.shapeWeights
        return sampler.next(recipe.batch)
    }

    func teacherVelocity(_ x: [Float], sigma: [Double], ids: [Float]) throws -> [Float] {
        let b = recipe.batch, l = student.teacher.text.tokens
        let out = try teacher.run(["x": Tensor(.f32([b, tokens, channels]), x), "sigma": Tensor(.f32([b]), sigma.map(Float.init)),
                                   "input_ids": Tensor(.f32([b, l]), ids),
                                   "guidance_scale": Tensor(.f32([b]), sigma.map { Float(recipe.guidance(at: $0)) })])
        return out["velocity"]!.data
    }

    func policyAt(_ x: [Float], sigma: Double, ids: [Float], dropped: [[Bool]]?,
                  weight: (String) throws -> UnsafeRawPointer) throws -> ArcPolicy {
        let b = recipe.batch
        let h = try policy.run(x: x, sigma: [Float](repeating: Float(sigma), count: b), ids: ids, weight: weight)
        return ArcPolicy(xSource: x, sigmaSource: [Double](repeating: Double(Float(sigma)), count: b), means: h.means,
                         logWeights: h.logWeights, rates: h.rates, batch: b, tokens: tokens, channels: channels,
                         components: student.components, dropped: dropped)
    }

    public func batch(step: Int) throws -> [String: [Float]] {
        let t0 = monotonicSeconds()
        defer { seconds += monotonicSeconds() - t0 }
        let r = recipe, b = r.batch, nI = r.intervals, row = tokens * channels
        var rng = SeededGenerator(seed: r.seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15)
        let ids = prompts(step: step).flatMap { WorldVocabulary.encode($0).map(Float.init) }
        let rho = r.teacherRatio(step: step)
        var x = rng.normals(b * row)
        var out: [String: [Float]] = ["x_src": [], "sigma_src": [], "input_ids": [], "sigma_a": [], "sigma_b": [], "target": [], "pair_weight": []]
        if r.usesGenerator {
            let noise = x
            out["gen_noise"] = noise
            out["gen_ids"] = ids
            out["gen_sigmas"] = r.knots.map(Float.init)
            if r.trajectoryWeight > 0 {
                out["gen_noise"] = try sample(noise: noise, ids: ids, segments: r.nfe - r.generatorSteps, weight: weight)
                out["gen_sigmas"] = r.knots.suffix(r.generatorSteps + 1).map(Float.init)
                let target = try teacherSolution(noise, from: r.knots.first!, to: r.knots.last!, ids: ids)
                out["gen_target"] = target
                out["gen_weight"] = [Float(r.trajectoryWeight)]
                if r.edgeWeight > 0 {
                    out["gen_pixel_weight"] = Tokens.edgeWeights(target, count: b, patch: student.teacher.patch,
                                                                 boost: Float(r.edgeWeight), threshold: DistillRecipe.edgeThreshold)
                }
            } else if discriminator != nil {
                let end = try sample(noise: noise, ids: ids, weight: weight)
                out["gen_target"] = try adversarialTarget(end, ids: ids, step: step)
                out["gen_weight"] = [Float(r.adversarialWeight(step: step))]
            } else {
                let end = try sample(noise: noise, ids: ids, weight: weight)
                out["gen_target"] = try scoreTarget(end, ids: ids, step: step)
                out["gen_weight"] = [Float(r.scoreWeight(step: step))]
            }
        }
        var t = 1.0
        for (segment, size) in r.segments.enumerated() {
            let sigmaSource = r.warp(t), last = segment == r.segments.count - 1
            if r.endpointWeight > 0 {
                out["endpoint", default: []] += try teacherSolution(x, from: Double(Float(sigmaSource)), to: r.warp(t - size), ids: ids)
            } else if r.usesEndpoint && last {
                var end = x
                try studentSegment(&end, ids: ids, t: t, size: size, weight: weight)
                out["endpoint", default: []] += try scoreTarget(end, ids: ids, step: step)
            } else if r.usesEndpoint {
                out["endpoint", default: []] += x   // the score term is on the last segment only: weight 0 here
            }
            if r.usesEndpoint {
                let w = r.endpointWeight > 0 ? r.endpointWeight : (last ? r.scoreWeight(step: step) : 0)
                out["endpoint_sigma", default: []] += [Float](repeating: Float(r.warp(t - size)), count: b)
                out["endpoint_weight", default: []] += [Float](repeating: Float(w / Double(b)), count: b)
            }
            let dropped = ArcPolicy.dropout(batch: b, components: student.components, p: r.dropout, rng: &rng)
            let pi = try policyAt(x, sigma: sigmaSource, ids: ids, dropped: dropped, weight: weight)
            // Window ω = 3 substeps of a 128-per-unit grid, and the usable length L = S − ω.
            let substeps = max(Int((size * 128).rounded()), 1)
            let window = min(3 * size / Double(substeps), size)
            let usable = size - window
            // Per sample: student intervals (differences of sorted U(0, (1−ρ)L) from 0) and teacher
            // intervals (differences of {0, sorted U(0,1)…, 1} scaled by ρL).
            var studentSteps: [[Double]] = [], teacherSteps: [[Double]] = []
            for _ in 0..<b {
                let u = (0..<nI).map { _ in Double(rng.uniform()) * (1 - rho) * usable }.sorted()
                studentSteps.append(zip(u, [0] + u.dropLast()).map { $0 - $1 })
                let v = [0] + (0..<(nI - 1)).map { _ in Double(rng.uniform()) }.sorted() + [1]
                teacherSteps.append((0..<nI).map { (v[$0 + 1] - v[$0]) * rho * usable })
            }
            out["x_src"]! += x
            out["sigma_src"]! += [Float](repeating: Float(sigmaSource), count: b)
            out["input_ids"]! += ids
            out["pair_weight"]! += [Float](repeating: Float(size / Double(b)), count: b)
            var sa = [[Float]](repeating: [], count: b), sb = sa
            var targets = [[Float]](repeating: [], count: b)
            var ts = [Double](repeating: t, count: b), sigmas = [Double](repeating: Double(Float(sigmaSource)), count: b)
            for i in 0..<nI {
                var ta = [Double](repeating: 0, count: b), sigmaA = ta
                for k in 0..<b {
                    ta[k] = max(ts[k] - studentSteps[k][i], 0)
                    sigmaA[k] = r.warp(ta[k])
                    pi.advance(&x, sample: k, from: sigmas[k], to: sigmaA[k])
                }
                let u = try teacherVelocity(x, sigma: sigmaA, ids: ids)
                for k in 0..<b {
                    let tb = max(ta[k] - teacherSteps[k][i], 0), sigmaB = r.warp(tb)
                    sa[k].append(Float(sigmaA[k]))
                    sb[k].append(Float(r.warp(tb - window)))
                    targets[k] += u[(k * row)..<((k + 1) * row)]
                    let step = Float(sigmaB - sigmaA[k])
                    for e in (k * row)..<((k + 1) * row) { x[e] += u[e] * step }
                    ts[k] = tb; sigmas[k] = sigmaB
                }
            }
            for k in 0..<b { pi.advance(&x, sample: k, from: sigmas[k], to: r.warp(t - size)) }
            out["sigma_a"]! += sa.flatMap { $0 }
            out["sigma_b"]! += sb.flatMap { $0 }
            out["target"]! += targets.flatMap { $0 }
            t -= size
        }
        return out
    }

    /// The guided teacher's Euler solution from states x at σ `from` to σ `to` (< from), stepping
    /// through the points of its `steps`-step schedule in between (default `endpointSteps`).
    func teacherSolution(_ x: [Float], from: Double, to: Double, ids: [Float], steps: Int? = nil) throws -> [Float] {
        let grid = Schedule.eulerSigmas(steps: steps ?? recipe.endpointSteps, shift: recipe.shift)
        let inside = grid.filter { $0 < from - 1e-9 && $0 > to + 1e-9 }
        let sigmas = [from] + inside + [to]
        var y = x
        for (a, z) in zip(sigmas, sigmas.dropFirst()) {
            let u = try teacherVelocity(y, sigma: [Double](repeating: a, count: recipe.batch), ids: ids)
            let step = Float(z - a)
            for e in y.indices { y[e] += u[e] * step }
        }
        return y
    }

    /// The score term's target x̂ − g for the student's final images `end` (`DistillRecipe.scoreWeight`;
    /// no dropout, the session's weights), noised per sample to x_σ' = (1 − σ')·x̂ + σ'·ε;
    /// x̂0_teacher = x_σ' − σ'·v with v the guided teacher's velocity. With a fake score,
    /// g = x̂0_fake − x̂0_teacher, and then the fake learns from this x̂ (after g, so g uses the
    /// fake of the iteration's start). The draws come from a generator of their own, so the
    /// rollout's are unchanged.
    func scoreTarget(_ end: [Float], ids: [Float], step: Int) throws -> [Float] {
        var (sigmas, noise, rng) = scoreDraws(step: step)
        let row = tokens * channels, sigma = sigmas.flatMap { [Float](repeating: Float($0), count: row) }
        let noised = end.indices.map { (1 - sigma[$0]) * end[$0] + sigma[$0] * noise[$0] }
        let v = try teacherVelocity(noised, sigma: sigmas, ids: ids)
        let teacherX0 = end.indices.map { noised[$0] - sigma[$0] * v[$0] }
        guard let fake else { return teacherX0 }
        let fakeX0 = try fake.predictX0(noised, sigma: sigmas, ids: ids)
        try fake.train(x0: end, ids: ids, sigmaMax: recipe.scoreSigma, rng: &rng)
        return end.indices.map { end[$0] - (fakeX0[$0] - teacherX0[$0]) }
    }

    /// The adversarial term's target x̂ − g for the student's samples `end`, with g the
    /// discriminator's ∂(−mean D)/∂x̂ times numel/30, so that the generator term
    /// 15·W·mean((x̂ − target)²) has the gradient W·∂(−mean D)/∂x̂ in x̂. Then the heads take one
    /// step on renders of the iteration's prompts against `end` (after g: g uses the heads of the
    /// iteration's start). Draws from a generator of their own; the rollout's are unchanged.
    func adversarialTarget(_ end: [Float], ids: [Float], step: Int) throws -> [Float] {
        guard let discriminator else { throw ArcError("adversarialTarget needs the discriminator") }
        var (sigma, noise, rng) = adversarialDraws(step: step)
        let g = try discriminator.gradient(end, noise: noise, sigma: sigma, ids: ids)
        let scale = Float(end.count) / (2 * DistillGraphs.lossScale)
        let real = Tokens.patchify(ShapesWorld.renderBatch(prompts(step: step), rng: &rng), count: recipe.batch, patch: student.teacher.patch)
        try discriminator.train(real: real, fake: end, ids: ids, sigmaMax: recipe.adversarialSigma, rng: &rng)
        return end.indices.map { end[$0] - scale * g[$0] }
    }

    /// Iteration `step`'s σ' per sample and noise [B, N, 4C] at which the discriminator reads the
    /// student's samples, and the generator after them (the renders and the heads' step continue it).
    func adversarialDraws(step: Int) -> (sigmas: [Float], noise: [Float], rng: SeededGenerator) {
        var rng = SeededGenerator(seed: (recipe.seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15) ^ 0xAD5E_0000_6A11_0001)
        let sigmas = rng.noiseLevels(recipe.batch, upTo: recipe.adversarialSigma)
        return (sigmas, rng.normals(recipe.batch * tokens * channels), rng)
    }

    /// Iteration `step`'s σ' per sample and noise [B, N, 4C] for `scoreTarget`, and the generator
    /// after them (the fake score's draws continue it).
    func scoreDraws(step: Int) -> (sigmas: [Double], noise: [Float], rng: SeededGenerator) {
        var rng = SeededGenerator(seed: (recipe.seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15) ^ 0x5A4E_C0DE_5D15_7111)
        let sigmas = rng.noiseLevels(recipe.batch, upTo: recipe.scoreSigma).map(Double.init)
        return (sigmas, rng.normals(recipe.batch * tokens * channels), rng)
    }

    /// The student's 2-NFE (the recipe's nfe, or `nfe`; the recipe's timestep ratio, or
    /// `timestepRatio`) sampler from tokens `noise` [B, N, 4C]: one policy evaluation per segment,
    /// each integrated in closed form to the next knot (no dropout); with `segments`, only the
    /// first that many (the state where the last-step trajectory term starts).
    public func sample(noise: [Float], ids: [Float], nfe: Int? = nil, timestepRatio: Double? = nil, segments: Int? = nil,
                       weight: (String) throws -> UnsafeRawPointer) throws -> [Float] {
        var r = recipe
        if let nfe { r.nfe = nfe }
        if let timestepRatio { r.timestepRatio = timestepRatio }
        var x = noise, t = 1.0
        for size in r.segments.prefix(segments ?? r.nfe) {
            try studentSegment(&x, ids: ids, t: t, size: size, weight: weight)
            t -= size
        }
        return x
    }

    /// One student segment from raw time t to t − size: one policy evaluation at x, integrated in
    /// closed form (no dropout).
    func studentSegment(_ x: inout [Float], ids: [Float], t: Double, size: Double, weight: (String) throws -> UnsafeRawPointer) throws {
        let sigma = recipe.warp(t)
        let pi = try policyAt(x, sigma: sigma, ids: ids, dropped: nil, weight: weight)
        for k in 0..<recipe.batch { pi.advance(&x, sample: k, from: Double(Float(sigma)), to: recipe.warp(t - size)) }
    }
}

/// Options of `arcflow distill-default`. Budget defaults scale the reference's FLUX run (10 000
/// iterations of 16 prompts, ρ decaying over the first 2000, warm-up 100) to this CPU: 3000
/// iterations of 8 prompts with the same proportions (D = 600 is 20%); see the README for the
/// measured speed.
public struct DistillOptions {
    public var directory: String
    public var teacherWeights: String
    /// The teacher's sizes; nil: inferred from the teacher's weights (`TeacherConfig.inferred`:
    /// the shapes `train-default` trains). Tests set a tiny one.
    public var teacher: TeacherConfig?
    public var components = 8
    public var rank = 32
    /// LoRA on the attention projections as well as the reference's MLP targets (`StudentConfig`).
    public var attentionLoRA = false
    public var recipe = DistillRecipe()
    public var iterations = 3000
    /// AdamW after warm-up (constant); the rates' lr is ×0.1. 1e-4 is the reference's.
    public var lr = 1e-4
    /// With a value: the rate is held to this iteration, then anneals by a half cosine to 5% at
    /// `iterations` (as the teacher's run does); nil keeps the reference's constant rate. A run
    /// extended past its budget with a later decay start resumes exactly (the rate so far is equal).
    public var decayStart: Int?
    public var warmup = 100
    /// Global-norm clip (the reference's 50; the norm is reported unclipped).
    public var maxGradNorm = 50.0
    public var saveEvery = 50
    public var evalEvery = 250
    public var evalCount = 64
    public var logEvery = 10
    public var threads = 1
    public var resume = false
    /// An exported adapter (`--export-adapter`) of this student's shape to start from instead of
    /// the fresh init: a run that continues a finished student under another recipe.
    public var initAdapter: String?
    public var log: (String) -> Void = { print($0) }
    public init(directory: String, teacherWeights: String) { self.directory = directory; self.teacherWeights = teacherWeights }

    /// The student of `teacher` (set: `DistillRun.prepare` fills it in first).
    public var student: StudentConfig {
        var s = StudentConfig(teacher: teacher ?? .standard(), components: components, rank: rank)
        s.seed = recipe.seed
        s.attentionLoRA = attentionLoRA
        return s
    }
}

/// Everything a run holds: the trainer (session + rollout), and the compiled policy for samples.
public struct DistillRun {
    public let trainer: Trainer
    public let rollout: DistillRollout
    public let student: StudentConfig
    public let teacherFile: WeightStore
    public let options: DistillOptions

    /// Compiles the three graphs (cached by their C), writes `init-adapter/` (f32) on the first
    /// run, binds a session at it, or at RUNDIR/state.safetensors with `resume`.
    public static func prepare(_ options: DistillOptions) throws -> DistillRun {
        let teacherFile = try openTeacherWeights(options.teacherWeights)
        var o = options
        // The teacher's shape is the weights' own (a teacher trained with other --patch/--width).
        if o.teacher == nil { o.teacher = try TeacherConfig.inferred(from: teacherFile) }
        let dir = o.directory, s = o.student, r = o.recipe
        guard s.components >= 1 else { throw ArcError("--components must be at least 1, got \(s.components)") }
        guard r.batch >= 1, r.intervals >= 1, r.nfe >= 1 else { throw ArcError("--batch must be at least 1") }
        guard r.shift > 0 else { throw ArcError("--shift must be positive, got \(r.shift)") }
        guard r.timestepRatio > 0, r.timestepRatio.isFinite else { throw ArcError("--timestep-ratio must be positive, got \(r.timestepRatio)") }
        guard r.endpointWeight == 0 || r.scoreWeight == 0 else { throw ArcError("--endpoint-loss cannot be combined with --sharpen-loss or --dmd-loss (each sets the loss's endpoint)") }
        guard r.scoreSigma > 0, r.scoreSigma <= 1 else { throw ArcError("--score-sigma must be in (0, 1], got \(r.scoreSigma)") }
        guard r.fakeSteps >= 1, r.fakeLR > 0 else { throw ArcError("--fake-steps must be at least 1 and --fake-lr positive") }
        guard r.adversarialWeight == 0 || (r.scoreWeight == 0 && r.endpointWeight == 0) else {
            throw ArcError("--adversarial-loss cannot be combined with --sharpen-loss, --dmd-loss or --endpoint-loss (each sets the final image's target)")
        }
        guard r.trajectoryWeight == 0 || (r.adversarialWeight == 0 && !(r.scoreWeight > 0 && r.scoreAllSteps)) else {
            throw ArcError("--trajectory-loss cannot be combined with --adversarial-loss or --score-all-steps (each sets the whole sample's target)")
        }
        guard r.edgeWeight == 0 || r.trajectoryWeight > 0 else { throw ArcError("--edge-weight needs --trajectory-loss") }
        guard r.adversarialSigma > 0, r.adversarialSigma <= 1, r.discriminatorLR > 0 else {
            throw ArcError("--adversarial-sigma must be in (0, 1] and --discriminator-lr positive")
        }
        if !o.resume { try Trainer.checkFreshStart(dir, resume: "--resume") }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let teacherStore = TeacherGraphs.store(s.teacher, trained: teacherFile)
        let initDir = "\(dir)/init-adapter"
        if !FileManager.default.fileExists(atPath: "\(initDir)/config.json") {
            let start = try o.initAdapter.map { dir in
                let store = try ArcFlowAdapter.load(dir).store
                return try Dictionary(uniqueKeysWithValues: Student.layout(s).map { key, _ in (key, try store.tensor(key)) })
            } ?? Student.initialAdapter(s, teacher: teacherFile)
            try Student.writeAdapter(start, s, shift: r.shift, timestepRatio: r.timestepRatio, dtype: .f32, to: initDir)
        }
        let adapter = try ArcFlowAdapter.load(initDir)
        // The folder's init must be this student's (K, rank, LoRA targets): another run's would be
        // trained under this run's name and then fail to export.
        let layout = Student.layout(s)
        let mismatch = layout.first { adapter.store.type(of: $0.key)?.shape != $0.shape }.map { "\($0.key) \($0.shape)" }
            ?? Set(adapter.store.names).subtracting(layout.map(\.key)).sorted().first
        if adapter.components != s.components || mismatch != nil {
            throw ArcError("\(initDir) was written for another student (K = \(adapter.components); first difference: this run has \(mismatch ?? "other components")); "
                           + "this run asks for K = \(s.components), rank \(s.rank), --lora-targets \(s.loraTargetsName): use another -o folder")
        }
        let weights = StudentWeights(teacher: teacherStore, adapter: adapter.store)
        let t0 = monotonicSeconds()
        func compile(_ g: Graph, _ model: [String: String] = [:]) throws -> Executable {
            var options = CompileOptions()
            options.model = model
            let exe = try ModelCompiler.build(Module(g), weights: weights, options: options).load()
            exe.setThreads(o.threads)
            return exe
        }
        let policy = PolicyRunner(try compile(try DistillGraphs.policy(s, teacher: teacherStore, adapter: adapter, batch: r.batch, weightsAsInputs: true)),
                                  batch: r.batch)
        let teacher = try compile(try DistillGraphs.teacherVelocity(s.teacher, teacher: teacherStore, batch: r.batch))
        let lossGraph = try DistillGraphs.loss(s, teacher: teacherStore, adapter: adapter, evaluations: r.nfe * r.batch, intervals: r.intervals,
                                               endpoint: r.usesEndpoint, generator: r.usesGenerator ? r.batch : nil, nfe: r.generatorSteps,
                                               pixelWeights: r.trajectoryWeight > 0 && r.edgeWeight > 0)
        let optimizer = OptimizerConfig(adamW: AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0), maxGradNorm: o.maxGradNorm)
        let step = try OptimizerStep.build(lossGraph: lossGraph, loss: "loss", parameters: Student.trainable(s), optimizer: optimizer)
        let session = try TrainingSession(step: step, executable: try compile(step.graph, ["train_step": step.hash]), initial: weights)
        let trained = Student.trainable(s).reduce(0) { n, p in n + (weights.type(of: p.key)?.count ?? 0) }
        o.log(String(format: "student K=%d rank %d: %d trained parameters; batch %d, nfe %d, %d intervals; graphs compiled in %.0f s",
                     s.components, s.rank, trained, r.batch, r.nfe, r.intervals, monotonicSeconds() - t0))

        let fake = r.dmd && r.scoreWeight > 0
            ? try FakeScore(s.teacher, teacher: teacherStore, batch: r.batch, lr: r.fakeLR, steps: r.fakeSteps, compile: compile) : nil
        let discriminator = r.adversarialWeight > 0
            ? try Discriminator(s.teacher, teacher: teacherStore, batch: r.batch, lr: r.discriminatorLR, seed: r.seed, compile: compile) : nil
        let rollout = DistillRollout(student: s, recipe: r, policy: policy, teacher: teacher, fake: fake,
                                     discriminator: discriminator) { try session.buffer($0) }
        let schedule = LRSchedule(lr: o.lr, warmupSteps: o.warmup, warmupStartFactor: 0.001, cosine: o.decayStart != nil,
                                  minFactor: 0.05, totalSteps: o.iterations, decayStart: o.decayStart ?? 0)
        var config = TrainConfig(steps: o.iterations, schedule: schedule,
                                 saveEvery: o.saveEvery, seed: r.seed, threads: o.threads, progress: false)
        config.karrasEMAOffset = o.warmup
        let trainer = Trainer(session: session, batches: rollout, config: config, directory: dir)
        trainer.metadata = ["model": "shapes-arcflow-student", "components": String(s.components), "rank": String(s.rank),
                            "lora_targets": s.loraTargetsName, "shift": String(r.shift), "guidance": String(r.guidance), "batch": String(r.batch),
                            "decay_iterations": String(r.decayIterations), "lr": String(o.lr), "warmup": String(o.warmup),
                            "lr_decay_start": o.decayStart.map(String.init) ?? "none",
                            "teacher_weights": o.teacherWeights, "teacher_shape": TeacherShape.metadata(s.teacher.shape)]
        if let g = r.earlyGuidance {
            trainer.metadata["early_guidance"] = String(g)
            trainer.metadata["guidance_split"] = String(r.guidanceSplit)
        }
        if r.endpointWeight > 0 { trainer.metadata["endpoint_weight"] = String(r.endpointWeight) }
        if r.trajectoryWeight > 0 { trainer.metadata["trajectory_weight"] = String(r.trajectoryWeight) }
        if r.trajectoryWeight > 0, r.trajectoryLastStep { trainer.metadata["trajectory_last_step"] = "1" }
        if r.edgeWeight > 0 { trainer.metadata["edge_weight"] = String(r.edgeWeight) }
        // Recorded only off the reference's 1, so that runs saved before the option resume quietly.
        if r.timestepRatio != 1 { trainer.metadata["timestep_ratio"] = String(r.timestepRatio) }
        if let w = r.shapeWeights { trainer.metadata["shape_weights"] = w.map { String($0) }.joined(separator: ",") }
        if r.scoreWeight > 0 {
            trainer.metadata[r.dmd ? "dmd_weight" : "sharpen_weight"] = String(r.scoreWeight)
            trainer.metadata["score_sigma"] = String(r.scoreSigma)
            if r.scoreAllSteps { trainer.metadata["score_all_steps"] = "1" }
        }
        if fake != nil {
            trainer.metadata["fake_lr"] = String(r.fakeLR)
            trainer.metadata["fake_steps"] = String(r.fakeSteps)
            trainer.metadata["fake_warmup"] = String(r.fakeWarmup)
        }
        if discriminator != nil {
            trainer.metadata["adversarial_weight"] = String(r.adversarialWeight)
            trainer.metadata["adversarial_sigma"] = String(r.adversarialSigma)
            trainer.metadata["discriminator_lr"] = String(r.discriminatorLR)
            trainer.metadata["discriminator_warmup"] = String(r.discriminatorWarmup)
        }
        // A final-image term's own trained state (DMD's fake score, the discriminator's heads; at
        // most one) goes beside the run's, whenever the run's is saved.
        let side = fake.map { ($0.session, "\(dir)/fake.safetensors") } ?? discriminator.map { ($0.session, "\(dir)/discriminator.safetensors") }
        if let (state, path) = side { trainer.afterSave = { try state.save(to: path) } }
        if let a = o.initAdapter { trainer.metadata["init_adapter"] = a }
        if o.resume, FileManager.default.fileExists(atPath: trainer.statePath!) {
            let saved = try SafeTensorsFile(path: trainer.statePath!).metadata
            for line in Self.resumeNotes(saved: saved, now: trainer.metadata) { o.log(line) }
            try trainer.resume(from: trainer.statePath!)
            if let (state, path) = side { try state.restore(from: path) }
            o.log("resumed at iteration \(session.stepCount)")
        }
        return DistillRun(trainer: trainer, rollout: rollout, student: s, teacherFile: teacherFile, options: o)
    }

    /// The recipe settings a saved run records that do not change its train step's graph (resume
    /// checks that by hash): changing one on resume is allowed (a run extended with a later
    /// decay, say), but it changes the run from there on, so it is said, not silent.
    static let resumableSettings = ["guidance", "early_guidance", "guidance_split", "shift", "decay_iterations", "lr", "warmup",
                                    "lr_decay_start", "teacher_weights", "endpoint_weight", "sharpen_weight", "dmd_weight",
                                    "score_sigma", "score_all_steps", "fake_lr", "fake_steps", "fake_warmup", "adversarial_weight",
                                    "adversarial_sigma", "discriminator_lr", "discriminator_warmup", "trajectory_weight", "init_adapter",
                                    "shape_weights", "edge_weight", "timestep_ratio"]

    /// One line per setting whose value `now` differs from the saved run's (absent: "unset").
    static func resumeNotes(saved: [String: String], now: [String: String]) -> [String] {
        Trainer.resumeNotes(saved: saved, now: now, keys: resumableSettings)
    }

    /// The teacher as f32 tensors: a flat safetensors file (a teacher run's `ema.safetensors`) or
    /// a default-model folder, whose f16 transformer and text encoder are widened exactly; the
    /// folder lets a student be distilled from the teacher that is shipped, not its f32 parent.
    public static func openTeacherWeights(_ path: String, option: String = "--teacher-weights") throws -> WeightStore {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ArcError("\(option) \(path): no such file or folder")
        }
        guard isDirectory.boolValue else { return try SafeTensorsStore(path: path) }
        let folder = try DefaultModelFolder.load(path)
        let file = try SafeTensorsStore(path: "\(folder.transformerDirectory)/diffusion_pytorch_model.safetensors")
        let store = TensorStore(label: "\(path) (widened to f32)")
        try store.addWidened(file)
        try store.addWidened(folder.textWeights)
        return store
    }

    /// Trains up to `options.iterations` with progress lines and periodic evaluations.
    @discardableResult
    public func train() throws -> Bool {
        let o = options, session = trainer.session
        let evaluator = o.evalEvery > 0 ? DistillEvaluator(run: self) : nil
        var window: [StepRecord] = []
        var last = monotonicSeconds(), rolloutSeconds = rollout.seconds
        trainer.afterStep = { rec in
            window.append(rec)
            if rec.step % o.logEvery == 0 || rec.step == o.iterations {
                let now = monotonicSeconds()
                let mean = window.map(\.loss).reduce(0, +) / Double(window.count)
                let rollouts = (rollout.seconds - rolloutSeconds) / Double(window.count)
                let d = rollout.discriminator.map { String(format: "  D loss %.3f, D(student) %.3f", $0.lastLoss, $0.lastFakeLogit) } ?? ""
                o.log(String(format: "iter %d  loss %.5f (mean of %d)  rho %.3f  grad_norm %.3g  lr %.3g  %.3f it/s (rollout %.2f s + step %.2f s)",
                             rec.step, mean, window.count, o.recipe.teacherRatio(step: rec.step - 1), rec.gradNorm, rec.lr,
                             Double(window.count) / (now - last), rollouts, window.map(\.seconds).reduce(0, +) / Double(window.count) - rollouts) + d)
                window.removeAll(); last = now; rolloutSeconds = rollout.seconds
            }
            if let evaluator, rec.step % o.evalEvery == 0 || rec.step == o.iterations {
                try trainer.save()
                try evaluator.evaluate()
                last = monotonicSeconds()
            }
        }
        let done = try trainer.run()
        o.log(done ? "done at iteration \(session.stepCount)" : "stopped at iteration \(session.stepCount); state saved")
        return done
    }
}

/// Periodic evaluation: 2-NFE samples of the EMA student on the teacher evaluator's fixed
/// one-object prompts and noise, judged (accuracy), and their mean paired pixel error to the
/// teacher's 28-step CFG image from the same noise (computed once per process).
public final class DistillEvaluator {
    let run: DistillRun
    let teacherEval: TeacherEvaluator
    var teacherResult: (accuracy: Double, images: [Image8])?

    public init(run: DistillRun) {
        self.run = run
        let r = run.options.recipe
        teacherEval = TeacherEvaluator(config: run.student.teacher, count: run.options.evalCount, chunk: r.batch, steps: 28,
                                       shift: 1, guidance: r.guidance)
        teacherEval.guidanceAt = r.guidance(at:)   // `guidance` throughout unless --early-guidance
    }

    /// The EMA student's images for the prompts, from the evaluator's noise: pixel-space N(0, 1)
    /// images (`TeacherEvaluator.noiseChunks`), the same for the teacher and the student, not
    /// `generate --seed`'s latent-space noise (same generator, other layout; PixelCodec maps one
    /// onto the other: StudentParityTests.testNoiseConventions).
    public func studentImages() throws -> [Image8] {
        let rollout = run.rollout, b = rollout.recipe.batch, c = run.student.teacher
        let session = run.trainer.session
        var images: [Image8] = []
        for (index, noise) in teacherEval.noiseChunks().enumerated() {
            let ps = Array(teacherEval.prompts[(index * b)..<min((index + 1) * b, teacherEval.prompts.count)])
            var ids = ps.flatMap { WorldVocabulary.encode($0).map(Float.init) }
            for _ in ps.count..<b { ids += TeacherGraphs.emptyCaption.map(Float.init) }
            let tokens = try rollout.sample(noise: Tokens.patchify(noise, count: b, patch: c.patch), ids: ids) {
                try session.buffer(TrainNames.ema($0))
            }
            images += TeacherEvaluator.images(Tokens.unpatchify(tokens, count: b, patch: c.patch), count: ps.count)
        }
        return images
    }

    /// Mean |a − b| over pixels and channels of two image lists, in [0, 1] units.
    public static func pixelError(_ a: [Image8], _ b: [Image8]) -> Double {
        var sum = 0.0, n = 0
        for (x, y) in zip(a, b) {
            for (p, q) in zip(x.pixels, y.pixels) { sum += abs(Double(p) - Double(q)); n += 1 }
        }
        return sum / Double(max(n, 1)) / 255
    }

    public func evaluate() throws {
        let t0 = monotonicSeconds(), dir = run.options.directory, step = run.trainer.session.stepCount
        if teacherResult == nil {
            let (acc, images, _) = try teacherEval.evaluate(weights: run.teacherFile, threads: run.options.threads)
            teacherResult = (acc, images)
            try writeAtomically(PNG.encode(ShapesWorld.contactSheet(images)), to: "\(dir)/eval_teacher.png")
        }
        let teacher = teacherResult!
        let images = try studentImages()
        let verdicts = zip(images, teacherEval.prompts).map { ShapesWorld.judge($0, $1) }
        let acc = Double(verdicts.filter(\.passed).count) / Double(max(images.count, 1))
        let err = Self.pixelError(images, teacher.images)
        try writeAtomically(PNG.encode(ShapesWorld.contactSheet(images)), to: "\(dir)/eval_\(step).png")
        let path = "\(dir)/eval.csv"
        var text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? "step,accuracy,teacher_accuracy,pixel_mae,components,nfe,guidance,shift,prompts\n"
        let r = run.options.recipe
        text += "\(step),\(acc),\(teacher.accuracy),\(err),\(run.student.components),\(r.nfe),\(r.guidance),\(r.shift),\(images.count)\n"
        try writeAtomically(text, to: path)
        run.options.log(String(format: "eval at iteration %d: EMA student %d-NFE accuracy %.3f (teacher 28-step %.3f), mean paired pixel error %.4f (%d prompts) in %.0f s",
                               step, r.nfe, acc, teacher.accuracy, err, images.count, monotonicSeconds() - t0))
    }
}

public enum DistillExport {
    /// Writes the ArcFlow adapter (§5.2, f16) of the EMA in `stateFile` to `dir`. The student's
    /// sizes and its teacher's shape come from the state's metadata (`given`: a teacher of
    /// another family, as tests use).
    public static func export(stateFile: String, teacher given: TeacherConfig? = nil, to dir: String) throws -> StudentConfig {
        let file = try SafeTensorsFile(path: stateFile)
        let md = file.metadata
        guard md["format"] == TrainingSession.stateFormat, md["model"] == "shapes-arcflow-student",
              let k = md["components"].flatMap(Int.init), let rank = md["rank"].flatMap(Int.init), let shift = md["shift"].flatMap(Double.init) else {
            throw ArcError("\(stateFile) is not a distill-default state (no model=shapes-arcflow-student, components, rank and shift in its metadata)")
        }
        // States written before teachers had other shapes have no teacher_shape: the standard one.
        let shape = try md["teacher_shape"].map { try TeacherShape(metadata: $0, in: stateFile) } ?? TeacherShape()
        let teacher = try given ?? TeacherConfig.make(shape)
        var s = StudentConfig(teacher: teacher, components: k, rank: rank)
        s.attentionLoRA = md["lora_targets"].flatMap(StudentConfig.attentionLoRA(named:)) ?? false   // absent in states before the option: mlp
        let trained = Set(Student.trainable(s).map(\.key))
        var tensors: [String: Tensor] = [:]
        for (key, shape) in Student.layout(s) {
            let name = TrainNames.ema("adapter:" + key)
            if trained.contains("adapter:" + key) {
                guard let info = file.tensors[name] else { throw ArcError("\(stateFile): missing '\(name)' (expected \(shape))") }
                guard info.shape == shape else { throw ArcError("\(stateFile): '\(name)' is \(info.shape), expected \(shape)") }
                tensors[key] = Tensor(.f32(shape), try file.floats(name))
            } else {
                // K = 1's log-weight layer: untrained and irrelevant (softmax over one component).
                tensors[key] = Tensor(.f32(shape), [Float](repeating: 0, count: shape.reduce(1, *)))
            }
        }
        // Absent: the reference's 1 (runs at 1, and states written before the option).
        let ratio = md["timestep_ratio"].flatMap(Double.init) ?? 1
        try Student.writeAdapter(tensors, s, shift: shift, timestepRatio: ratio, dtype: .f16, to: dir)
        return s
    }
}
