// The ArcFlow distillation of the default model on TeacherConfig.tiny with random weights: head
// init, the closed-form policy against Euler and against the loss graph, a few iterations whose
// loss falls, bit-exact resume, export → ArcFlowAdapter.load, and the K = 1 baseline.

import ArcFlowGraphs
@testable import DefaultModel
import Foundation
import Imaging
import IR
import Runtime
import ShapesWorld
import Training
import XCTest

final class DistillTests: XCTestCase {
    static let teacherConfig = TeacherConfig.tiny()

    /// A fresh folder under the temporary directory, removed after the test.
    func temporaryFolder() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("arcflow-distill-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// The tiny teacher's random weights as a file, as `--teacher-weights` reads them.
    func teacherFile(_ dir: String, seed: UInt64 = 21) throws -> String {
        let path = "\(dir)/teacher.safetensors"
        try TeacherWeights.write(TeacherWeights.random(Self.teacherConfig, seed: seed), to: path)
        return path
    }

    func options(_ dir: String, teacher: String, components: Int = 3, iterations: Int) -> DistillOptions {
        var o = DistillOptions(directory: dir, teacherWeights: teacher)
        o.teacher = Self.teacherConfig
        o.components = components
        o.rank = 4
        o.recipe.batch = 2
        o.recipe.decayIterations = 4
        o.recipe.seed = 7
        o.iterations = iterations
        o.warmup = 2
        o.lr = 3e-3
        o.evalEvery = 0
        o.saveEvery = 0
        o.threads = 1
        o.log = { _ in }
        return o
    }

    /// Random ids of two world prompts, tokens and σ for graph checks.
    func inputs(_ c: TeacherConfig, seed: UInt64) throws -> (x: Tensor, sigma: Tensor, ids: Tensor) {
        var rng = SeededGenerator(seed: seed)
        let ids = try ["a red circle", "a small blue square at the top left"].flatMap { try WorldVocabulary.encode($0).map(Float.init) }
        return (Tensor(.f32([2, c.imageTokens, c.tokenChannels]), rng.normals(2 * c.imageTokens * c.tokenChannels)),
                Tensor(.f32([2]), [0.9, 0.4]), Tensor(.f32([2, WorldVocabulary.length]), ids))
    }

    /// The student's heads (interpreter) at init, and the teacher's x0 at the same inputs.
    func headsAndTeacher(noise: Double, components k: Int) throws -> (heads: [String: Tensor], x0: Tensor, s: StudentConfig, adapter: [String: Tensor]) {
        let dir = try temporaryFolder()
        let c = Self.teacherConfig
        let teacherWeights = TensorStore(TeacherWeights.random(c, seed: 3))
        var s = StudentConfig(teacher: c, components: k, rank: 4)
        s.biasNoise = noise
        s.seed = 5
        let tensors = try Student.initialAdapter(s, teacher: teacherWeights)
        try Student.writeAdapter(tensors, s, shift: 1, dtype: .f32, to: dir)
        let adapter = try ArcFlowAdapter.load(dir)
        let teacherStore = TeacherGraphs.store(c, trained: teacherWeights)
        let store = StudentWeights(teacher: teacherStore, adapter: adapter.store)
        let (x, sigma, ids) = try inputs(c, seed: 9)
        let policy = try DistillGraphs.policy(s, teacher: teacherStore, adapter: adapter, batch: 2, weightsAsInputs: false)
        let heads = try Interpreter.run(policy, inputs: ["x": x, "sigma": sigma, "input_ids": ids]) { key, _ in try store.tensor(key) }
        let b = GraphBuilder(name: "teacher_x0")
        let xv = b.input("x", x.type), sv = b.input("sigma", sigma.type), iv = b.input("input_ids", ids.type)
        let net = TeacherGraphs.network(b, c, teacherStore)
        b.output("x0", try TeacherGraphs.predictX0(b, net, c, x: xv, sigma: sv, text: TeacherGraphs.textEncoder(b, c.text, ids: iv)))
        let x0 = try Interpreter.run(try b.finish(), inputs: ["x": x, "sigma": sigma, "input_ids": ids]) { key, _ in try teacherStore.tensor(key) }["x0"]!
        return (heads, x0, s, tensors)
    }

    /// §2.4: with no bias noise every component's x0 mean is the teacher's x0 (so every velocity
    /// mean is the teacher's velocity); with noise, component k of packed channel cp is off by
    /// exactly the noise drawn for (k, cp/4), the same at every token and sub-position.
    func testHeadInitReproducesTeacher() throws {
        let k = 3
        let exact = try headsAndTeacher(noise: 0, components: k)
        let (n, ch) = (exact.s.teacher.imageTokens, exact.s.channels)
        let means = exact.heads["means"]!.data, x0 = exact.x0.data
        var worst: Float = 0
        for row in 0..<(2 * n) {
            for kk in 0..<k { for cp in 0..<ch { worst = max(worst, abs(means[(row * k + kk) * ch + cp] - x0[row * ch + cp])) } }
        }
        XCTAssertLessThan(worst, 1e-5, "noise 0: max |m_k − teacher x0| = \(worst)")
        XCTAssertTrue(exact.heads["logweights"]!.data.allSatisfy { abs($0 + Float(Foundation.log(Double(k)))) < 1e-6 }, "uniform weights")
        let rates = Student.initialRateBias(k)
        XCTAssertEqual(rates.count, 2)
        XCTAssertEqual(Double(rates[0]), Foundation.log(0.2), accuracy: 1e-6)
        XCTAssertEqual(Double(rates[1]), Foundation.log(4.0), accuracy: 1e-6)
        XCTAssertEqual(exact.heads["rates"]!.data[0..<8].map { $0 }, (0..<8).map { rates[$0 / 4] })

        let noisy = try headsAndTeacher(noise: 0.05, components: k)
        let bias = noisy.adapter["proj_out_means.bias"]!.data
        let teacherBias = try TensorStore(TeacherWeights.random(Self.teacherConfig, seed: 3)).tensor("proj_out.bias").data
        let drawn = (0..<(k * ch)).map { bias[$0] - teacherBias[$0 % ch] }
        for f in 0..<(k * ch) { XCTAssertEqual(drawn[f], drawn[(f / 4) * 4], accuracy: 1e-7, "noise shared by the 4 sub-positions") }
        XCTAssertGreaterThan(drawn.map(abs).max()!, 0.01)
        XCTAssertLessThan(drawn.map(abs).max()!, 0.3)
        let nm = noisy.heads["means"]!.data
        worst = 0
        for row in 0..<(2 * n) {
            for kk in 0..<k { for cp in 0..<ch { worst = max(worst, abs(nm[(row * k + kk) * ch + cp] - x0[row * ch + cp] - drawn[kk * ch + cp])) } }
        }
        XCTAssertLessThan(worst, 1e-5, "noise 0.05: m_k − teacher x0 is the bias noise")
    }

    func randomPolicy(components k: Int, seed: UInt64) -> (ArcPolicy, [Float]) {
        var rng = SeededGenerator(seed: seed)
        let (b, n, c) = (2, 3, 8)
        let x = rng.normals(b * n * c)
        let means = rng.normals(b * n * k * c)
        let lw = rng.normals(b * n * k * 4), rates = rng.normals(b * n * (k - 1) * 4).map { $0 * 1.5 }
        let p = ArcPolicy(xSource: x, sigmaSource: [0.9, 0.7], means: means, logWeights: k > 1 ? lw : nil, rates: k > 1 ? rates : nil,
                          batch: b, tokens: n, channels: c, components: k, dropped: [[false, true, false, false], [false, false, false, false]].map { Array($0.prefix(k)) })
        return (p, x)
    }

    /// §10.4: the closed-form displacement equals a fine (10⁴-step midpoint) integration of v(σ);
    /// K = 1 is a plain Euler step with μ_0.
    func testClosedFormMatchesEulerIntegration() throws {
        let (p, x) = randomPolicy(components: 4, seed: 1)
        for b in 0..<2 {
            let (sa, sb) = b == 0 ? (0.8, 0.3) : (0.7, 0.05)
            var closed = x
            p.advance(&closed, sample: b, from: sa, to: sb)
            var euler = x.map(Double.init)
            let steps = 10_000, h = (sa - sb) / Double(steps)
            for i in 0..<steps {
                let v = p.velocity(sample: b, at: sa - (Double(i) + 0.5) * h)
                for e in 0..<v.count { euler[b * v.count + e] -= h * Double(v[e]) }
            }
            let row = p.tokens * p.channels
            let err = (b * row..<(b + 1) * row).map { abs(Double(closed[$0]) - euler[$0]) }.max()!
            let scale = (b * row..<(b + 1) * row).map { abs(euler[$0] - Double(x[$0])) }.max()!
            XCTAssertLessThan(err, 1e-5 * max(scale, 1), "sample \(b): closed form vs Euler")
        }
        // Dropping component 1 of sample 0 changes its trajectory (weights renormalised).
        XCTAssertEqual(p.weights[1 * 4], 0)
        let (linear, x1) = randomPolicy(components: 1, seed: 2)
        var y = x1
        linear.advance(&y, sample: 1, from: 0.6, to: 0.2)
        let v = linear.velocity(sample: 1, at: 0.5)
        let row = linear.tokens * linear.channels
        for e in 0..<row { XCTAssertEqual(y[row + e], x1[row + e] - 0.4 * v[e], accuracy: 1e-5) }
    }

    /// The loss graph's mean velocity ū over [σ_b, σ_a] equals the Swift policy's
    /// (x_a − x_b)/(σ_a − σ_b) from the policy graph's heads at the same (x_src, σ_src).
    func testLossGraphMeanVelocityMatchesPolicy() throws {
        let dir = try temporaryFolder()
        let c = Self.teacherConfig
        let teacherWeights = TensorStore(TeacherWeights.random(c, seed: 4))
        for k in [3, 1] {
            var s = StudentConfig(teacher: c, components: k, rank: 4)
            s.seed = 11
            var tensors = try Student.initialAdapter(s, teacher: teacherWeights)
            // Non-trivial head: random weights and rates, so the mixture matters.
            var rng = SeededGenerator(seed: 12)
            for key in ["proj_out_logweights.weight", "proj_out_loggamma.weight"] where tensors[key] != nil {
                tensors[key] = Tensor(tensors[key]!.type, rng.normals(tensors[key]!.type.count).map { $0 * 0.3 })
            }
            try Student.writeAdapter(tensors, s, shift: 1, dtype: .f32, to: "\(dir)/k\(k)")
            let adapter = try ArcFlowAdapter.load("\(dir)/k\(k)")
            let teacherStore = TeacherGraphs.store(c, trained: teacherWeights)
            let store = StudentWeights(teacher: teacherStore, adapter: adapter.store)
            let weights: (String, TensorType) throws -> Tensor = { key, _ in try store.tensor(key) }
            let (x, sigma, ids) = try inputs(c, seed: 13)
            let heads = try Interpreter.run(try DistillGraphs.policy(s, teacher: teacherStore, adapter: adapter, batch: 2, weightsAsInputs: false),
                                            inputs: ["x": x, "sigma": sigma, "input_ids": ids], weights: weights)
            let policy = ArcPolicy(xSource: x.data, sigmaSource: sigma.data.map(Double.init), means: heads["means"]!.data,
                                   logWeights: heads["logweights"]?.data, rates: heads["rates"]?.data,
                                   batch: 2, tokens: c.imageTokens, channels: c.tokenChannels, components: k)
            let sa: [Float] = [0.9, 0.6, 0.4, 0.2], sb: [Float] = [0.5, 0.55, 0.1, 0.0]
            let row = c.imageTokens * c.tokenChannels
            let graph = try DistillGraphs.loss(s, teacher: teacherStore, adapter: adapter, evaluations: 2, intervals: 2, meanVelocity: true)
            let out = try Interpreter.run(graph, inputs: [
                "x_src": x, "sigma_src": sigma, "input_ids": ids,
                "sigma_a": Tensor(.f32([2, 2]), sa), "sigma_b": Tensor(.f32([2, 2]), sb),
                "target": Tensor(.f32([2, 2, c.imageTokens, c.tokenChannels]), [Float](repeating: 0, count: 4 * row)),
                "pair_weight": Tensor(.f32([2]), [0.25, 0.25]),
            ], weights: weights)
            let u = out["mean_velocity"]!.data
            var worst: Float = 0, scale: Float = 0
            for m in 0..<2 {
                for i in 0..<2 {
                    let (a, bb) = (Double(sa[m * 2 + i]), Double(sb[m * 2 + i]))
                    var y = x.data
                    policy.advance(&y, sample: m, from: a, to: bb)
                    for e in 0..<row {
                        let swift = (x.data[m * row + e] - y[m * row + e]) / Float(a - bb)
                        worst = max(worst, abs(swift - u[(m * 2 + i) * row + e])); scale = max(scale, abs(swift))
                    }
                }
            }
            XCTAssertLessThan(worst, 2e-4 * max(scale, 1), "K=\(k): graph ū vs Swift closed form")
            // Zero targets: the loss is 15·Σ_m w_m·mean(ū²).
            let expected = (0..<2).map { m in 0.25 * u[(m * 2 * row)..<((m + 1) * 2 * row)].map { Double($0 * $0) }.reduce(0, +) / Double(2 * row) }.reduce(0, +) * 15
            XCTAssertEqual(Double(out["loss"]!.data[0]), expected, accuracy: 1e-4 * expected)

            // The endpoint term: 15·Σ_m w_m·mean((x̂_m − end_m)²), x̂ where the Swift policy ends at σ_e.
            var endRng = SeededGenerator(seed: 14)
            let end = endRng.normals(2 * row), endWeight: [Float] = [0.5, 0.125], endSigma: [Float] = [0.3, 0]
            let withEnd = try Interpreter.run(try DistillGraphs.loss(s, teacher: teacherStore, adapter: adapter, evaluations: 2, intervals: 2, endpoint: true),
                                              inputs: [
                "x_src": x, "sigma_src": sigma, "input_ids": ids,
                "sigma_a": Tensor(.f32([2, 2]), sa), "sigma_b": Tensor(.f32([2, 2]), sb),
                "target": Tensor(.f32([2, 2, c.imageTokens, c.tokenChannels]), [Float](repeating: 0, count: 4 * row)),
                "pair_weight": Tensor(.f32([2]), [0.25, 0.25]),
                "endpoint": Tensor(.f32([2, c.imageTokens, c.tokenChannels]), end), "endpoint_weight": Tensor(.f32([2]), endWeight),
                "endpoint_sigma": Tensor(.f32([2]), endSigma),
            ], weights: weights)
            var reached = x.data
            for m in 0..<2 { policy.advance(&reached, sample: m, from: Double(sigma.data[m]), to: Double(endSigma[m])) }
            var endTerm = 0.0
            for m in 0..<2 {
                var sum = 0.0
                for e in 0..<row { let d = Double(reached[m * row + e] - end[m * row + e]); sum += d * d }
                endTerm += 15 * Double(endWeight[m]) * sum / Double(row)
            }
            XCTAssertEqual(Double(withEnd["loss"]!.data[0]), expected + endTerm, accuracy: 1e-4 * (expected + endTerm), "K=\(k): endpoint term")
        }
    }

    /// One batch repeated (ρ ≈ 1 on a long decay): the student must fit it.
    struct FixedStep: BatchProvider {
        let inner: DistillRollout
        func batch(step: Int) throws -> [String: [Float]] { try inner.batch(step: 0) }
    }

    /// The handoff probe's columns: its student column is the 2-NFE sampler's image from the same
    /// noise, its teacher column the guided Euler path; a knot off the teacher's schedule is refused.
    func testHandoffColumns() throws {
        let dir = try temporaryFolder()
        let run = try DistillRun.prepare(options(dir, teacher: try teacherFile(dir), iterations: 2))
        try run.train()
        let (columns, prompts) = try DistillHandoff.run(run, perCategory: 1, steps: 4, log: { _ in })
        XCTAssertEqual(columns.map(\.nfe), ["4 × 2", "2", "1 + 2 × 2", "2 × 2 + 1"])
        XCTAssertTrue(columns.allSatisfy { $0.images.count == 3 && $0.verdicts.count == 3 })
        let c = Self.teacherConfig, b = 2, side = TeacherConfig.side
        var rng = SeededGenerator(seed: 1234)
        var student: [Image8] = [], teacher: [Image8] = []
        let ema: (String) throws -> UnsafeRawPointer = { try run.trainer.session.buffer(TrainNames.ema($0)) }
        for start in stride(from: 0, to: 3, by: b) {
            let ps = prompts[start..<min(start + b, 3)].map(\.prompt)
            let ids = (ps.map { WorldVocabulary.encode($0) } + [[Int]](repeating: TeacherGraphs.emptyCaption, count: b - ps.count)).flatMap { $0.map(Float.init) }
            let noise = Tokens.patchify(rng.normals(b * 3 * side * side), count: b, patch: c.patch)
            let x = try run.rollout.sample(noise: noise, ids: ids, weight: ema)
            student += TeacherEvaluator.images(Tokens.unpatchify(x, count: b, patch: c.patch), count: ps.count)
            var y = noise
            for (a, z) in zip([1, 0.75, 0.5, 0.25], [0.75, 0.5, 0.25, 0]) {
                let u = try run.rollout.teacherVelocity(y, sigma: [a, a], ids: ids)
                for e in y.indices { y[e] += u[e] * Float(z - a) }
            }
            teacher += TeacherEvaluator.images(Tokens.unpatchify(y, count: b, patch: c.patch), count: ps.count)
        }
        XCTAssertEqual(columns[1].images.map(\.pixels), student.map(\.pixels))
        XCTAssertEqual(columns[0].images.map(\.pixels), teacher.map(\.pixels))
        XCTAssertThrowsError(try DistillHandoff.run(run, perCategory: 1, steps: 3, log: { _ in })) {
            XCTAssertTrue("\($0)".contains("not a point of the teacher's 3-step schedule"), "\($0)")
        }
    }

    func testDistillationLossFalls() throws {
        let dir = try temporaryFolder()
        var o = options(dir, teacher: try teacherFile(dir), iterations: 30)
        o.recipe.decayIterations = 1_000_000
        let run = try DistillRun.prepare(o)
        let trainer = Trainer(session: run.trainer.session, batches: FixedStep(inner: run.rollout), config: run.trainer.config, directory: nil)
        try trainer.run()
        let losses = trainer.history.map(\.loss)
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        let first = losses.prefix(3).reduce(0, +) / 3, last = losses.suffix(3).reduce(0, +) / 3
        XCTAssertLessThan(last, 0.7 * first, "loss \(first) → \(last)")
    }

    /// Trains `run` to its end: every step's loss finite and its gradient nonzero.
    func assertTrains(_ run: DistillRun, file: StaticString = #filePath, line: UInt = #line) throws {
        try run.train()
        XCTAssertTrue(run.trainer.history.allSatisfy { $0.loss.isFinite && $0.gradNorm > 0 }, file: file, line: line)
    }

    /// A 2-iteration run from the tiny teacher's file with the recipe adjusted by `configure`
    /// (a final-image or endpoint term), and its rollout's batch at `step`.
    func termRun(step: Int = 0, _ configure: (inout DistillRecipe) -> Void) throws
        -> (dir: String, teacher: String, o: DistillOptions, run: DistillRun, batch: [String: [Float]]) {
        let dir = try temporaryFolder(), teacher = try teacherFile(dir)
        var o = options(dir, teacher: teacher, iterations: 2)
        configure(&o.recipe)
        let run = try DistillRun.prepare(o)
        return (dir, teacher, o, run, try run.rollout.batch(step: step))
    }

    /// With an endpoint weight the rollout feeds each segment's teacher solution to the loss: from
    /// the noise, the first is the teacher's own Euler path to the knot; and a short run trains.
    func testEndpointLossBatchAndRun() throws {
        let (dir, teacher, o, run, batch) = try termRun { $0.endpointWeight = 2; $0.endpointSteps = 4 }
        let b = o.recipe.batch, row = Self.teacherConfig.imageTokens * Self.teacherConfig.tokenChannels
        XCTAssertEqual(batch["endpoint_weight"], [Float](repeating: 1, count: 2 * b))
        XCTAssertEqual(batch["endpoint_sigma"], [Float](repeating: 0.5, count: b) + [Float](repeating: 0, count: b))
        // Segment 1 from x_src at σ = 1: two Euler steps of the guided teacher (σ 1 → 0.75 → 0.5).
        let x = Array(batch["x_src"]![..<(b * row)]), ids = Array(batch["input_ids"]![..<(b * Self.teacherConfig.text.tokens)])
        var y = x
        for (a, z) in [(1.0, 0.75), (0.75, 0.5)] {
            let u = try run.rollout.teacherVelocity(y, sigma: [a, a], ids: ids)
            for e in y.indices { y[e] += u[e] * Float(z - a) }
        }
        XCTAssertEqual(Array(batch["endpoint"]![..<(b * row)]), y)
        XCTAssertEqual(batch["endpoint"]?.count, 2 * b * row)
        XCTAssertNil(try DistillRun.prepare(options("\(dir)/plain", teacher: teacher, iterations: 1)).rollout.batch(step: 0)["endpoint"])
        try assertTrains(run)
    }

    /// The score term's x̂0 predictions at the final images `end` noised with iteration `step`'s
    /// draws (x_σ' = (1 − σ')·x̂ + σ'·ε): the guided teacher's, x_σ' − σ'·v, and the rollout's
    /// fake score's (DMD) at its current weights.
    func scoreX0(_ rollout: DistillRollout, end: [Float], ids: [Float], step: Int) throws -> (teacher: [Float], fake: [Float]?) {
        let (sigmas, noise, _) = rollout.scoreDraws(step: step)
        let row = end.count / sigmas.count
        var y = end
        for e in y.indices { let s = Float(sigmas[e / row]); y[e] = (1 - s) * y[e] + s * noise[e] }
        let fake = try rollout.fake?.predictX0(y, sigma: sigmas, ids: ids)
        let v = try rollout.teacherVelocity(y, sigma: sigmas, ids: ids)
        for e in y.indices { y[e] -= Float(sigmas[e / row]) * v[e] }
        return (y, fake)
    }

    /// With a sharpen weight only the last segment's evaluations carry the term, and their target is
    /// the guided teacher's x̂0 at the student's own final image noised to the drawn σ' (recomputed
    /// here from the student's segment and the teacher graph); a short run trains.
    func testSharpenLossBatchAndRun() throws {
        let (dir, _, o, run, batch) = try termRun(step: 1) { $0.scoreWeight = 2; $0.scoreSigma = 0.4 }
        let b = o.recipe.batch, row = Self.teacherConfig.imageTokens * Self.teacherConfig.tokenChannels
        XCTAssertEqual(batch["endpoint_weight"], [Float](repeating: 0, count: b) + [Float](repeating: 1, count: b))
        XCTAssertEqual(batch["endpoint_sigma"], [Float](repeating: 0.5, count: b) + [Float](repeating: 0, count: b))
        let sigmas = run.rollout.scoreDraws(step: 1).sigmas
        XCTAssertTrue(sigmas.allSatisfy { $0 >= 0.04 && $0 <= 0.4 }, "\(sigmas)")
        XCTAssertNotEqual(sigmas, run.rollout.scoreDraws(step: 2).sigmas)
        let x = Array(batch["x_src"]![(b * row)...]), ids = Array(batch["input_ids"]![..<(b * Self.teacherConfig.text.tokens)])
        var end = x
        try run.rollout.studentSegment(&end, ids: ids, t: 0.5, size: 0.5, weight: run.rollout.weight)
        XCTAssertEqual(Array(batch["endpoint"]![(b * row)...]), try scoreX0(run.rollout, end: end, ids: ids, step: 1).teacher)
        var both = o
        both.directory = "\(dir)/both"
        both.recipe.endpointWeight = 1
        XCTAssertThrowsError(try DistillRun.prepare(both)) { XCTAssertTrue("\($0)".contains("cannot be combined"), "\($0)") }
        try assertTrains(run)
    }

    /// DMD: the last segment's target is x̂ − (x̂0_fake − x̂0_teacher) at the noised x̂, with the
    /// fake of the iteration's start (an identical run that has not rolled out yet recomputes it);
    /// the rollout then trains the fake; and a resumed run equals a straight one, fake included.
    func testDMDLossTargetFakeTrainingAndResume() throws {
        let dir = try temporaryFolder(), teacher = try teacherFile(dir)
        func dmd(_ name: String, iterations: Int) -> DistillOptions {
            var o = options("\(dir)/\(name)", teacher: teacher, iterations: iterations)
            o.recipe.scoreWeight = 2
            o.recipe.dmd = true
            o.recipe.fakeSteps = 2
            o.saveEvery = 0
            return o
        }
        let run = try DistillRun.prepare(dmd("a", iterations: 2)), twin = try DistillRun.prepare(dmd("b", iterations: 2))
        let fake = try XCTUnwrap(run.rollout.fake), key = DistillGraphs.fakeTrainable(Self.teacherConfig)[0]
        let before = try fake.session.bytes(key)
        let batch = try run.rollout.batch(step: 0)
        XCTAssertNotEqual(try fake.session.bytes(key), before, "the rollout trains the fake")
        XCTAssertEqual(fake.session.stepCount, 2)
        let b = 2, row = Self.teacherConfig.imageTokens * Self.teacherConfig.tokenChannels
        let x = Array(batch["x_src"]![(b * row)...]), ids = Array(batch["input_ids"]![..<(b * Self.teacherConfig.text.tokens)])
        var end = x
        try twin.rollout.studentSegment(&end, ids: ids, t: 0.5, size: 0.5, weight: twin.rollout.weight)
        let x0 = try scoreX0(twin.rollout, end: end, ids: ids, step: 0)
        let fakeX0 = try XCTUnwrap(x0.fake)
        for e in end.indices { end[e] -= fakeX0[e] - x0.teacher[e] }
        XCTAssertEqual(Array(batch["endpoint"]![(b * row)...]), end)
        XCTAssertEqual(batch["endpoint_weight"], [0, 0, 1, 1])
        var warm = run.options.recipe
        warm.fakeWarmup = 3
        XCTAssertEqual([2, 3].map(warm.scoreWeight(step:)), [0, 2], "the fake's warm-up holds the DMD term at 0")

        try assertResumeEqualsStraight(dmd, side: { $0.rollout.fake?.session }, sideSteps: 8)
    }

    /// 4 iterations straight against 2, a save and 2 more resumed (`make(name, iterations)`): the
    /// same losses, and the same bytes in the side session that `side` picks (DMD's fake score,
    /// the discriminator's heads), which took `sideSteps` steps by then.
    func assertResumeEqualsStraight(_ make: (String, Int) -> DistillOptions, side: (DistillRun) -> TrainingSession?,
                                    sideSteps: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let straight = try DistillRun.prepare(make("straight", 4))
        try straight.train()
        try DistillRun.prepare(make("resumed", 2)).train()
        var o = make("resumed", 4)
        o.resume = true
        let resumed = try DistillRun.prepare(o)
        try resumed.train()
        XCTAssertEqual(straight.trainer.history.map(\.loss), resumed.trainer.history.map(\.loss), file: file, line: line)
        XCTAssertTrue(straight.trainer.history.allSatisfy { $0.loss.isFinite && $0.gradNorm > 0 }, file: file, line: line)
        let sessions = try [straight, resumed].map { try XCTUnwrap(side($0), file: file, line: line) }
        XCTAssertEqual(sessions[1].stepCount, sideSteps, file: file, line: line)
        for name in sessions[0].step.stateNames {
            XCTAssertEqual(try sessions[0].bytes(name), try sessions[1].bytes(name), name, file: file, line: line)
        }
    }

    /// `scoreAllSteps`: the batch carries the iteration's noise, the knots and the score target at
    /// the student's own 2-step sample; the loss graph's generator reproduces that sample (its term
    /// vanishes with the sample as target and is 15·W·δ² with the target moved by δ), so the
    /// gradient flows through both steps; a short run trains.
    func testScoreThroughAllStepsBatchGraphAndRun() throws {
        let (dir, teacher, o, run, batch) = try termRun { $0.scoreWeight = 2; $0.scoreAllSteps = true }
        let c = Self.teacherConfig, b = o.recipe.batch, row = c.imageTokens * c.tokenChannels
        XCTAssertNil(batch["endpoint"])
        XCTAssertEqual(batch["gen_sigmas"], [1, 0.5, 0])
        XCTAssertEqual(batch["gen_noise"], Array(batch["x_src"]![..<(b * row)]))
        let noise = batch["gen_noise"]!, ids = batch["gen_ids"]!
        let sample = try run.rollout.sample(noise: noise, ids: ids, weight: run.rollout.weight)
        XCTAssertEqual(batch["gen_target"], try run.rollout.scoreTarget(sample, ids: ids, step: 0))

        let adapter = try ArcFlowAdapter.load("\(dir)/init-adapter")
        let teacherStore = TeacherGraphs.store(c, trained: try SafeTensorsStore(path: teacher))
        let store = StudentWeights(teacher: teacherStore, adapter: adapter.store)
        let graph = try DistillGraphs.loss(run.student, teacher: teacherStore, adapter: adapter, evaluations: 2 * b, intervals: o.recipe.intervals,
                                           generator: b, nfe: 2)
        func loss(target: [Float], weight: Float) throws -> Double {
            var inputs = batch
            inputs["gen_target"] = target
            inputs["gen_weight"] = [weight]
            let tensors = Dictionary(uniqueKeysWithValues: graph.inputs.map { id in
                (graph.nodes[id].name!, Tensor(graph.nodes[id].type, inputs[graph.nodes[id].name!]!))
            })
            return Double(try Interpreter.run(graph, inputs: tensors, weights: { key, _ in try store.tensor(key) })["loss"]!.data[0])
        }
        let base = try loss(target: sample, weight: 0)
        XCTAssertEqual(try loss(target: sample, weight: 1), base, accuracy: 1e-6 * base, "the graph's 2-step sample is the Swift sampler's")
        XCTAssertEqual(try loss(target: sample.map { $0 + 0.1 }, weight: 1) - base, 15 * 0.01, accuracy: 1e-3)
        try assertTrains(run)
    }

    /// The trajectory term: the batch's generator target is the guided teacher's Euler sample from
    /// the iteration's noise, as the teacher's own sampler graph (the report's) draws it from the
    /// same pixels; the weight is the term's; with `trajectoryLastStep` the generator runs the last
    /// step from the student's own first step; it excludes the other whole-sample terms; short runs train.
    func testTrajectoryTermTargetIsTheTeachersSample() throws {
        let (dir, teacher, o, run, batch) = try termRun { $0.trajectoryWeight = 1.5; $0.endpointSteps = 4 }
        let c = Self.teacherConfig, b = o.recipe.batch, row = c.imageTokens * c.tokenChannels
        XCTAssertNil(batch["endpoint"])
        XCTAssertEqual(batch["gen_weight"], [1.5])
        XCTAssertEqual(batch["gen_sigmas"], [1, 0.5, 0])
        XCTAssertEqual(batch["gen_noise"], Array(batch["x_src"]![..<(b * row)]))
        let store = TeacherGraphs.store(c, trained: try SafeTensorsStore(path: teacher))
        let images = try Interpreter.run(try TeacherGraphs.sampler(c, weights: store, count: b, steps: 4), inputs: [
            "noise": Tensor(.f32([b, 3, TeacherConfig.side, TeacherConfig.side]), Tokens.unpatchify(batch["gen_noise"]!, count: b, patch: c.patch)),
            "input_ids": Tensor(.f32([b, c.text.tokens]), batch["gen_ids"]!),
            "sigmas": Tensor(.f32([5]), Schedule.eulerSigmas(steps: 4, shift: 1).map(Float.init)),
            "guidance_scale": Tensor(.f32([1]), [Float(o.recipe.guidance)]),
        ], weights: { key, _ in try store.tensor(key) })["images"]!.data
        let expected = Tokens.patchify(images, count: b, patch: c.patch), got = batch["gen_target"]!
        XCTAssertEqual(got.count, expected.count)
        let err = zip(got, expected).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(err, 1e-4 * max(expected.map(abs).max()!, 1), "the target is the teacher's 4-step sample")
        // The last step only: the generator starts from the student's own state at σ 0.5 (its
        // first step, no dropout), toward the same target.
        let (_, _, _, last, lastBatch) = try termRun { $0.trajectoryWeight = 1.5; $0.endpointSteps = 4; $0.trajectoryLastStep = true }
        var mid = batch["gen_noise"]!
        try last.rollout.studentSegment(&mid, ids: batch["gen_ids"]!, t: 1, size: 0.5, weight: last.rollout.weight)
        XCTAssertEqual(lastBatch["gen_noise"], mid)
        XCTAssertNotEqual(mid, batch["gen_noise"]!)
        XCTAssertEqual(lastBatch["gen_sigmas"], [0.5, 0])
        XCTAssertEqual(lastBatch["gen_target"], batch["gen_target"])
        try assertTrains(last)
        for other in [{ (r: inout DistillRecipe) in r.adversarialWeight = 1 }, { r in r.scoreWeight = 1; r.scoreAllSteps = true }] {
            var both = options("\(dir)/both", teacher: teacher, iterations: 1)
            both.recipe.trajectoryWeight = 1
            other(&both.recipe)
            XCTAssertThrowsError(try DistillRun.prepare(both))
        }
        try assertTrains(run)
    }

    /// `Tokens.edgeWeights` on a flat image with one 10×10 square: the 36 border pixels inside it
    /// and the 40 outside (4-neighbours: no corners) weigh 1 + A, all others 1, scaled to mean 1;
    /// a difference at the threshold or under marks nothing; each image is scaled on its own.
    func testEdgeWeightsMarkColourEdges() {
        let s = TeacherConfig.side, plane = s * s, a: Float = 4
        var images = [Float](repeating: -1, count: 2 * 3 * plane)
        for y in 20..<30 { for x in 30..<40 { images[plane + y * s + x] = 0.5; images[3 * plane + 2 * plane + y * s + x] = -0.75 } }
        let w = Tokens.unpatchify(Tokens.edgeWeights(Tokens.patchify(images, count: 2, patch: 8), count: 2, patch: 8, boost: a, threshold: 0.3),
                                  count: 2, patch: 8)
        let mean = (Float(plane) + 76 * a) / Float(plane)
        func edge(_ y: Int, _ x: Int) -> Bool {
            let inside = (20..<30).contains(y) && (30..<40).contains(x)
            let ring = (y == 20 || y == 29 || x == 30 || x == 39)
            let outside = ((y == 19 || y == 30) && (30..<40).contains(x)) || ((x == 29 || x == 40) && (20..<30).contains(y))
            return (inside && ring) || outside
        }
        for c in 0..<3 {
            for y in 0..<s {
                for x in 0..<s {
                    XCTAssertEqual(w[c * plane + y * s + x], (edge(y, x) ? 1 + a : 1) / mean, accuracy: 1e-6, "image 0 (\(c), \(y), \(x))")
                    XCTAssertEqual(w[3 * plane + c * plane + y * s + x], 1, accuracy: 1e-6, "image 1: a step of 0.25 is no edge")
                }
            }
        }
    }

    /// `edgeWeight`: the batch carries `Tokens.edgeWeights` of the trajectory target, and the loss
    /// graph weights the term's squared error by it element by element (ones: the unweighted loss;
    /// a target moved by δ where the weight is 3 and 0 elsewhere: 15·W·mean(3δ² over that part));
    /// it needs the trajectory term; a short run trains.
    func testTrajectoryEdgeWeight() throws {
        let (dir, teacher, o, run, batch) = try termRun { $0.trajectoryWeight = 1; $0.trajectoryLastStep = true; $0.endpointSteps = 4; $0.edgeWeight = 4 }
        let c = Self.teacherConfig, b = o.recipe.batch
        XCTAssertEqual(batch["gen_pixel_weight"], Tokens.edgeWeights(batch["gen_target"]!, count: b, patch: c.patch, boost: 4,
                                                                     threshold: DistillRecipe.edgeThreshold))
        let adapter = try ArcFlowAdapter.load("\(dir)/init-adapter")
        let teacherStore = TeacherGraphs.store(c, trained: try SafeTensorsStore(path: teacher))
        let store = StudentWeights(teacher: teacherStore, adapter: adapter.store)
        func loss(pixelWeights: Bool, target: [Float], weights: [Float]? = nil) throws -> Double {
            let graph = try DistillGraphs.loss(run.student, teacher: teacherStore, adapter: adapter, evaluations: 2 * b, intervals: o.recipe.intervals,
                                               generator: b, nfe: 1, pixelWeights: pixelWeights)
            var inputs = batch
            inputs["gen_target"] = target
            inputs["gen_pixel_weight"] = weights
            let tensors = Dictionary(uniqueKeysWithValues: graph.inputs.map { id in
                (graph.nodes[id].name!, Tensor(graph.nodes[id].type, inputs[graph.nodes[id].name!]!))
            })
            return Double(try Interpreter.run(graph, inputs: tensors, weights: { key, _ in try store.tensor(key) })["loss"]!.data[0])
        }
        let n = batch["gen_target"]!.count
        var mid = batch["gen_noise"]!
        try run.rollout.studentSegment(&mid, ids: batch["gen_ids"]!, t: 0.5, size: 0.5, weight: run.rollout.weight)
        let plain = try loss(pixelWeights: false, target: batch["gen_target"]!)
        XCTAssertEqual(try loss(pixelWeights: true, target: batch["gen_target"]!, weights: [Float](repeating: 1, count: n)), plain, accuracy: 1e-6 * plain)
        let half = (0..<n).map { $0 < n / 2 ? Float(3) : 0 }
        XCTAssertEqual(try loss(pixelWeights: true, target: mid.enumerated().map { $0.offset < n / 2 ? $0.element + 0.1 : $0.element }, weights: half)
                       - (try loss(pixelWeights: true, target: mid, weights: half)), 15 * 0.5 * 3 * 0.01, accuracy: 1e-3)
        try assertTrains(run)
        var without = options("\(dir)/none", teacher: teacher, iterations: 1)
        without.recipe.edgeWeight = 1
        XCTAssertThrowsError(try DistillRun.prepare(without))
    }

    /// The adversarial term: the batch's generator target is the student's own 2-step sample moved
    /// by numel/30 times the discriminator's gradient of the heads at the iteration's start (a twin
    /// that has not rolled out recomputes it), and that gradient is the generator loss's
    /// (central differences); the rollout then trains the heads on renders against the sample;
    /// the term excludes the other final-image terms; a resumed run equals a straight one, heads included.
    func testAdversarialTermTargetHeadsAndResume() throws {
        let dir = try temporaryFolder(), teacher = try teacherFile(dir)
        func adversarial(_ name: String, iterations: Int) -> DistillOptions {
            var o = options("\(dir)/\(name)", teacher: teacher, iterations: iterations)
            o.recipe.adversarialWeight = 2
            o.recipe.adversarialSigma = 0.4
            o.recipe.discriminatorLR = 1e-2
            return o
        }
        let run = try DistillRun.prepare(adversarial("a", iterations: 2)), twin = try DistillRun.prepare(adversarial("b", iterations: 2))
        let heads = try XCTUnwrap(run.rollout.discriminator), key = Discriminator.layout(Self.teacherConfig)[0].key
        let before = try heads.session.bytes(key)
        let batch = try run.rollout.batch(step: 0)
        XCTAssertNotEqual(try heads.session.bytes(key), before, "the rollout trains the heads")
        XCTAssertEqual(heads.session.stepCount, 1)
        XCTAssertTrue(heads.lastLoss.isFinite && heads.lastLoss > 0)
        XCTAssertNil(batch["endpoint"])
        XCTAssertEqual(batch["gen_weight"], [2])
        let noise = batch["gen_noise"]!, ids = batch["gen_ids"]!
        let sample = try twin.rollout.sample(noise: noise, ids: ids, weight: twin.rollout.weight)
        let (sigmas, dNoise, _) = twin.rollout.adversarialDraws(step: 0)
        XCTAssertTrue(sigmas.allSatisfy { $0 >= 0.04 && $0 <= 0.4 }, "\(sigmas)")
        let d = try XCTUnwrap(twin.rollout.discriminator)
        let g = try d.gradient(sample, noise: dNoise, sigma: sigmas, ids: ids)
        let scale = Float(sample.count) / 30
        let target = batch["gen_target"]!
        for e in sample.indices { XCTAssertEqual(target[e], sample[e] - scale * g[e], accuracy: 1e-5 * max(1, abs(sample[e]))) }
        // The compiled gradient against central differences of the same graph's loss, along a random direction.
        var rng = SeededGenerator(seed: 3)
        let v = rng.normals(sample.count), h: Float = 1e-2
        func loss(_ t: Float) throws -> Double {
            let x = sample.indices.map { sample[$0] + t * v[$0] }
            let out = try d.generator.outputs(["x": x, "noise": dNoise, "sigma": sigmas, "input_ids": ids]) { try d.session.buffer($0) }
            return Double(out["loss"]![0])
        }
        let numeric = (try loss(h) - loss(-h)) / Double(2 * h)
        let analytic = zip(g, v).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        XCTAssertEqual(analytic, numeric, accuracy: 0.03 * abs(numeric) + 1e-6)
        XCTAssertNotEqual(analytic, 0)
        var warm = run.options.recipe
        warm.discriminatorWarmup = 3
        XCTAssertEqual([2, 3].map(warm.adversarialWeight(step:)), [0, 2], "the heads' warm-up holds the term at 0")
        var both = adversarial("both", iterations: 2)
        both.recipe.scoreWeight = 1
        XCTAssertThrowsError(try DistillRun.prepare(both)) { XCTAssertTrue("\($0)".contains("cannot be combined"), "\($0)") }
        try assertResumeEqualsStraight(adversarial, side: { $0.rollout.discriminator?.session }, sideSteps: 4)
    }

    /// 4 iterations straight equal 2 iterations, a save, a fresh process-like prepare with resume,
    /// and 2 more: every state tensor byte and every logged loss.
    func testResumeIsBitExactAndExportLoads() throws {
        let dir = try temporaryFolder()
        let teacher = try teacherFile(dir)
        let straight = try DistillRun.prepare(options("\(dir)/a", teacher: teacher, iterations: 4))
        try straight.train()
        var o = options("\(dir)/b", teacher: teacher, iterations: 2)
        try DistillRun.prepare(o).train()
        o.iterations = 4
        o.resume = true
        var notes: [String] = []
        o.log = { notes.append($0) }
        let resumed = try DistillRun.prepare(o)
        XCTAssertFalse(notes.contains { $0.hasPrefix("note:") }, "\(notes)")
        XCTAssertNil(resumed.trainer.metadata["timestep_ratio"], "r = 1 is not recorded: runs saved before the option resume without a note")
        XCTAssertEqual(resumed.trainer.session.stepCount, 2)
        try resumed.train()
        XCTAssertEqual(straight.trainer.history.map(\.loss), resumed.trainer.history.map(\.loss))
        for name in straight.trainer.session.step.stateNames {
            XCTAssertEqual(try straight.trainer.session.bytes(name), try resumed.trainer.session.bytes(name), name)
        }
        XCTAssertTrue(straight.trainer.history.allSatisfy { $0.loss.isFinite && $0.gradNorm > 0 })

        // Export the EMA as an adapter and load it as the compile path does.
        let s = try DistillExport.export(stateFile: "\(dir)/a/state.safetensors", teacher: Self.teacherConfig, to: "\(dir)/adapter")
        let adapter = try ArcFlowAdapter.load("\(dir)/adapter")
        XCTAssertEqual(adapter.components, 3)
        XCTAssertEqual(Set(adapter.lora.keys), Set(Student.loraTargets(s.flux).map(\.module)))
        XCTAssertEqual(adapter.dense, ArcFlowAdapter.denseKeys)
        let file = try SafeTensorsFile(path: "\(dir)/adapter/diffusion_pytorch_model.safetensors")
        XCTAssertEqual(file.metadata["policy_config"], "{\"type\": \"ArcFlow\"}")
        XCTAssertTrue(file.tensors.values.allSatisfy { $0.type.dtype == .f16 })
        for key in ["proj_out_loggamma.bias", "transformer_blocks.0.ff.net.2.lora_B.weight", "norm_out.linear.weight"] {
            let ema = try straight.trainer.session.tensor(TrainNames.ema("adapter:" + key)).data
            let got = Array(UnsafeRawBufferPointer(start: try adapter.store.raw(key), count: 2 * ema.count))
            XCTAssertEqual(got, encodeFloats(ema, .f16), key)
        }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/adapter/config.json"))) as! [String: Any]
        XCTAssertEqual(json["arcflow_prediction"] as? String, "x0")
        XCTAssertEqual(json["arcflow_shift"] as? Double, 1)
        XCTAssertEqual(json["arcflow_timestep_ratio"] as? Double, 1)
        // The adapter's config carries the teacher's sizes and the student's prediction (x0 means).
        var expected = Self.teacherConfig.flux
        expected.prediction = .x0
        XCTAssertEqual(try FluxConfig(json: json, path: "config.json"), expected)
    }

    /// A resumed run says which recorded settings it now runs with differently.
    func testResumeNotesNameChangedSettings() {
        let saved = ["guidance": "3.0", "shift": "1.0", "early_guidance": "5.0", "step": "2"]
        XCTAssertEqual(DistillRun.resumeNotes(saved: saved, now: ["guidance": "3.0", "shift": "1.0", "early_guidance": "5.0"]), [])
        XCTAssertEqual(DistillRun.resumeNotes(saved: saved, now: ["guidance": "4.0", "shift": "1.0"]), [
            "note: resuming with guidance 4.0 where the run so far had 3.0; the new value applies from here",
            "note: resuming with early_guidance unset where the run so far had 5.0; the new value applies from here",
        ])
    }

    /// The linear baseline: one component, no γ layer; it trains, exports and loads. Here with
    /// `--timestep-ratio 0.6`, which the run records and the export writes for the sampler.
    func testLinearBaseline() throws {
        let dir = try temporaryFolder()
        var o = options("\(dir)/run", teacher: try teacherFile(dir), components: 1, iterations: 2)
        o.recipe.timestepRatio = 0.6
        XCTAssertEqual(o.recipe.knots, [1, 0.375, 0])
        let run = try DistillRun.prepare(o)
        XCTAssertFalse(run.trainer.session.step.stateNames.contains { $0.contains("loggamma") || $0.contains("logweights") })
        try run.train()
        XCTAssertTrue(run.trainer.history.allSatisfy { $0.loss.isFinite })
        _ = try DistillExport.export(stateFile: "\(dir)/run/state.safetensors", teacher: Self.teacherConfig, to: "\(dir)/linear")
        let adapter = try ArcFlowAdapter.load("\(dir)/linear")
        XCTAssertEqual(adapter.components, 1)
        XCTAssertEqual(adapter.timestepRatio, 0.6)
        XCTAssertFalse(adapter.store.names.contains { $0.hasPrefix("proj_out_loggamma") })
        XCTAssertEqual(adapter.store.type(of: "proj_out_means.weight")?.shape, [Self.teacherConfig.tokenChannels, Self.teacherConfig.flux.width])
    }

    /// `--lora-targets mlp+attention`: LoRA on every attention projection too (the last block's
    /// `to_add_out` excepted); it trains, and the export finds the targets in the state's metadata.
    func testAttentionLoRATargets() throws {
        let dir = try temporaryFolder()
        var o = options("\(dir)/run", teacher: try teacherFile(dir), iterations: 2)
        o.attentionLoRA = true
        let run = try DistillRun.prepare(o)
        let targets = Student.loraTargets(run.student.flux, attention: true).map(\.module)
        let f = run.student.flux, last = f.numLayers - 1, deadTextOut = f.numSingleLayers == 0
        XCTAssertTrue(targets.contains("transformer_blocks.0.attn.to_q"))
        XCTAssertTrue(targets.contains("transformer_blocks.0.attn.to_add_out"))
        XCTAssertTrue(targets.contains("transformer_blocks.\(last).attn.add_v_proj"))
        XCTAssertEqual(targets.contains("transformer_blocks.\(last).attn.to_add_out"), !deadTextOut)
        XCTAssertEqual(targets.count, Student.loraTargets(f).count + 8 * f.numLayers - (deadTextOut ? 1 : 0))
        // The shipped teacher (double blocks only): its last block's text output reaches nothing.
        let shipped = Student.loraTargets(TeacherConfig.standard().flux, attention: true).map(\.module)
        XCTAssertFalse(shipped.contains("transformer_blocks.3.attn.to_add_out"))
        XCTAssertTrue(shipped.contains("transformer_blocks.3.attn.to_out.0"))
        XCTAssertTrue(run.trainer.session.step.stateNames.contains("adapter:transformer_blocks.0.attn.to_k.lora_B.weight"))
        try assertTrains(run)
        let s = try DistillExport.export(stateFile: "\(dir)/run/state.safetensors", teacher: Self.teacherConfig, to: "\(dir)/adapter")
        XCTAssertTrue(s.attentionLoRA)
        XCTAssertEqual(Set(try ArcFlowAdapter.load("\(dir)/adapter").lora.keys), Set(targets))
    }

    /// `--teacher-weights` on a default-model folder: every teacher and text-encoder tensor, as f32,
    /// equal to the exported f16 values (the shipped teacher, widened exactly); a missing path says so.
    func testTeacherWeightsFromDefaultModelFolder() throws {
        let dir = try temporaryFolder()
        let tensors = TeacherWeights.random(Self.teacherConfig, seed: 5)
        try DefaultModelExport.write(tensors, config: Self.teacherConfig, trainedSteps: "0", to: "\(dir)/model")
        let store = try DistillRun.openTeacherWeights("\(dir)/model")
        XCTAssertEqual(Set(store.names), Set(tensors.keys))
        for (name, t) in tensors {
            XCTAssertEqual(store.type(of: name), .f32(t.type.shape), name)
            XCTAssertEqual(try store.tensor(name).data, t.data.map { roundToStorage($0, .f16) }, name)
        }
        XCTAssertThrowsError(try DistillRun.openTeacherWeights("\(dir)/absent")) { error in
            XCTAssertTrue("\(error)".contains("no such file or folder"), "\(error)")
        }
    }

    /// The interval split (§6.3) with shift 1 (σ = t): at ρ = 1 the student intervals vanish and the
    /// teacher's tile the usable length L = S − ω from σ_src; at ρ = 0 every prediction interval is
    /// the window ω. Schedules: ρ linear over D, Karras β copying during the warm-up.
    func testRolloutIntervalsAndSchedules() throws {
        let dir = try temporaryFolder()
        var o = options(dir, teacher: try teacherFile(dir), iterations: 0)
        o.recipe.decayIterations = 4
        let run = try DistillRun.prepare(o)
        let window = 3.0 / 128, nI = o.recipe.intervals
        XCTAssertEqual(o.recipe.segments, [0.5, 0.5])
        for (step, rho) in [(0, 1.0), (2, 0.5), (4, 0.0), (9, 0.0)] { XCTAssertEqual(o.recipe.teacherRatio(step: step), rho) }
        let early = try run.rollout.batch(step: 0)
        let (sa, sb) = (early["sigma_a"]!.map(Double.init), early["sigma_b"]!.map(Double.init))
        XCTAssertEqual(early["sigma_src"]!, [1, 1, 0.5, 0.5])
        XCTAssertEqual(early["pair_weight"]!, [0.25, 0.25, 0.25, 0.25])
        for m in 0..<4 {
            let src = m < 2 ? 1.0 : 0.5
            XCTAssertEqual(sa[m * nI], src, accuracy: 1e-6)
            for i in 0..<(nI - 1) { XCTAssertEqual(sa[m * nI + i + 1], sb[m * nI + i] + window, accuracy: 1e-6) }
            XCTAssertEqual(sb[m * nI + nI - 1], src - 0.5, accuracy: 1e-6, "the teacher intervals sum to L = S − ω")
        }
        let late = try run.rollout.batch(step: 4)
        for (a, b) in zip(late["sigma_a"]!, late["sigma_b"]!) { XCTAssertEqual(Double(a - b), window, accuracy: 1e-6) }
        XCTAssertTrue(late["sigma_b"]!.allSatisfy { $0 >= 0 })

        var config = TrainConfig(steps: 1, schedule: LRSchedule(lr: 1))
        config.karrasEMAOffset = 100
        XCTAssertEqual(config.emaBeta(step: 0), 0)
        XCTAssertEqual(config.emaBeta(step: 99), 0)
        XCTAssertEqual(config.emaBeta(step: 199), Foundation.pow(0.99, 8), accuracy: 1e-12)
    }

    /// The target graph: the teacher's guided velocity equals what one step of the teacher's own
    /// CFG Euler sampler moves per unit σ, at the same state.
    func testTeacherVelocityMatchesTeacherSampler() throws {
        let c = Self.teacherConfig
        let store = TeacherGraphs.store(c, trained: TensorStore(TeacherWeights.random(c, seed: 17)))
        let (_, _, ids) = try inputs(c, seed: 3)
        var rng = SeededGenerator(seed: 4)
        let images = rng.normals(2 * 3 * 64 * 64)
        let weights: (String, TensorType) throws -> Tensor = { key, _ in try store.tensor(key) }
        let stepped = try Interpreter.run(try TeacherGraphs.sampler(c, weights: store, count: 2, steps: 1), inputs: [
            "noise": Tensor(.f32([2, 3, 64, 64]), images), "input_ids": ids,
            "sigmas": Tensor(.f32([2]), [0.75, 0.25]), "guidance_scale": Tensor(.f32([1]), [4]),
        ], weights: weights)["images"]!.data
        let x = Tokens.patchify(images, count: 2, patch: c.patch)
        let graph = try DistillGraphs.teacherVelocity(c, teacher: store, batch: 2)
        func velocity(_ scales: [Float]) throws -> [Float] {
            try Interpreter.run(graph, inputs: [
                "x": Tensor(.f32([2, c.imageTokens, c.tokenChannels]), x), "sigma": Tensor(.f32([2]), [0.75, 0.75]),
                "input_ids": ids, "guidance_scale": Tensor(.f32([2]), scales),
            ], weights: weights)["velocity"]!.data
        }
        let v = try velocity([4, 4])
        let moved = Tokens.patchify(stepped, count: 2, patch: c.patch)
        let err = zip(zip(moved, x), v).map { abs(($0.0 - $0.1) / -0.5 - $1) }.max()!
        XCTAssertLessThan(err, 1e-3 * max(v.map(abs).max()!, 1))
        // The scale is per sample (a σ-dependent guidance): each row is guided by its own.
        let half = v.count / 2, mixed = try velocity([4, 2]), two = try velocity([2, 2])
        XCTAssertEqual(Array(mixed[..<half]), Array(v[..<half]))
        XCTAssertEqual(Array(mixed[half...]), Array(two[half...]))
        var r = DistillRecipe()
        XCTAssertEqual([0.9, 0.5, 0.2].map(r.guidance(at:)), [3, 3, 3])
        (r.earlyGuidance, r.guidanceSplit) = (5, 0.5)
        XCTAssertEqual([0.9, 0.51, 0.5, 0.2].map(r.guidance(at:)), [5, 5, 3, 3])
        XCTAssertEqual(r.guidanceLabel, "5.0 above σ 0.5, 3.0 below")
    }

    /// The Swift patchify is the graph's.
    func testSwiftPatchifyMatchesGraph() throws {
        let c = Self.teacherConfig
        var rng = SeededGenerator(seed: 3)
        let images = rng.normals(2 * 3 * 64 * 64)
        let b = GraphBuilder(name: "p")
        b.output("t", TeacherGraphs.patchify(b.input("x", .f32([2, 3, 64, 64])), c))
        let graph = try Interpreter.run(try b.finish(), inputs: ["x": Tensor(.f32([2, 3, 64, 64]), images)]) { k, _ in throw ArcError("no weight \(k)") }["t"]!
        XCTAssertEqual(Tokens.patchify(images, count: 2, patch: c.patch), graph.data)
        XCTAssertEqual(Tokens.unpatchify(graph.data, count: 2, patch: c.patch), images)
    }
}
