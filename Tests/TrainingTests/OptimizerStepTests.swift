// The compiled AdamW step against an f64 reference and torch.optim.AdamW fixtures; the
// non-finite skip; the EMA. Gradients come from hand-built gradient graphs (no autodiff needed).

import Foundation
import IR
import Runtime
import TestSupport
import Training
import XCTest

/// A gradient graph whose gradients are inputs: loss = Σ_k sum(w_k · g_k), grad:k = g_k, so a
/// test can feed any gradient it wants, NaN included.
func fixedGradientGraph(_ shapes: [(String, [Int])]) throws -> Graph {
    let b = GraphBuilder(name: "fixed_grads")
    var loss: Value?
    var grads: [(String, Value)] = []
    for (k, shape) in shapes {
        let w = b.weight(k, .f32(shape)), g = b.input("g:" + k, .f32(shape))
        let s = b.reduce(.reduce_sum, w * g, axes: Array(0..<shape.count))
        loss = loss.map { $0 + s } ?? s
        grads.append(("grad:" + k, g))
    }
    b.output("loss", loss!)
    for (name, g) in grads { b.output(name, g) }
    return try b.finish()
}

func compileSession(_ step: TrainStepGraph, _ initial: WeightStore, threads: Int = 2) throws -> TrainingSession {
    var options = CompileOptions()
    options.cacheRoot = testCacheRoot
    let compiled = try ModelCompiler.build(Module(step.graph), weights: initial, options: options)
    let exe = try compiled.load()
    exe.setThreads(threads)
    return try TrainingSession(step: step, executable: exe, initial: initial)
}

/// torch.optim.AdamW + clip_grad_norm_ + lerp EMA, in f64.
struct ReferenceAdamW {
    var p: [String: [Double]], m: [String: [Double]] = [:], v: [String: [Double]] = [:], ema: [String: [Double]] = [:]
    var t = 0
    let config: OptimizerConfig
    let scales: [String: Double]

    init(_ initial: [String: [Float]], config: OptimizerConfig, scales: [String: Double], ema emaKeys: [String]) {
        p = initial.mapValues { $0.map(Double.init) }
        for (k, x) in p { m[k] = x.map { _ in 0 }; v[k] = m[k] }
        for k in emaKeys { ema[k] = p[k] }
        self.config = config
        self.scales = scales
    }

    /// Returns the unclipped norm; a non-finite norm changes nothing.
    mutating func step(_ grads: [String: [Float]], lr: Double, emaBeta: Double) -> Double {
        let norm = grads.values.flatMap { $0 }.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        guard norm.isFinite else { return norm }
        let clip = config.maxGradNorm.map { min(1, $0 / (norm + 1e-6)) } ?? 1
        t += 1
        let a = config.adamW
        let bc1 = 1 - pow(a.beta1, Double(t)), bc2 = 1 - pow(a.beta2, Double(t))
        for (k, g32) in grads {
            let lrK = lr * (scales[k] ?? 1)
            for i in g32.indices {
                let g = Double(g32[i]) * clip
                p[k]![i] *= 1 - lrK * a.weightDecay
                m[k]![i] = a.beta1 * m[k]![i] + (1 - a.beta1) * g
                v[k]![i] = a.beta2 * v[k]![i] + (1 - a.beta2) * g * g
                p[k]![i] -= lrK / bc1 * m[k]![i] / (v[k]![i].squareRoot() / bc2.squareRoot() + a.eps)
                if ema[k] != nil { ema[k]![i] = emaBeta * ema[k]![i] + (1 - emaBeta) * p[k]![i] }
            }
        }
        return norm
    }
}

func assertClose(_ got: Tensor, _ want: [Double], _ what: String, rtol: Double = 2e-5, atol: Double = 2e-6,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.data.count, want.count, what, file: file, line: line)
    var worst = 0.0
    for (g, w) in zip(got.data, want) { worst = max(worst, abs(Double(g) - w) / (atol + rtol * abs(w))) }
    XCTAssertLessThanOrEqual(worst, 1, "\(what): error \(worst)× the tolerance", file: file, line: line)
}

final class OptimizerStepTests: XCTestCase {
    let shapes: [(String, [Int])] = [("a", [3, 5]), ("b", [7])]
    let config = OptimizerConfig(adamW: AdamW(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1), maxGradNorm: 2.5)

    func makeSession(ema: Bool = true) throws -> (TrainingSession, ReferenceAdamW, [String: [Float]]) {
        var rng = SeededGenerator(seed: 7)
        var initial: [String: [Float]] = [:]
        for (k, s) in shapes { initial[k] = rng.normals(s.reduce(1, *)) }
        let params = [TrainableParameter("a", ema: ema), TrainableParameter("b", lrScale: 0.1)]
        let step = try OptimizerStep.apply(to: try fixedGradientGraph(shapes), parameters: params, optimizer: config)
        let store = TensorStore(Dictionary(uniqueKeysWithValues: shapes.map { ($0.0, Tensor(.f32($0.1), initial[$0.0]!)) }))
        let ref = ReferenceAdamW(initial, config: config, scales: ["b": 0.1], ema: ema ? ["a"] : [])
        return (try compileSession(step, store), ref, initial)
    }

    func grads(_ rng: inout SeededGenerator, scale: Float) -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: shapes.map { ($0.0, rng.normals($0.1.reduce(1, *)).map { $0 * scale }) })
    }

    func feed(_ s: TrainingSession, _ g: [String: [Float]]) throws {
        try s.setBatch(Dictionary(uniqueKeysWithValues: g.map { ("g:" + $0.key, $0.value) }))
    }

    func assertMatches(_ s: TrainingSession, _ ref: ReferenceAdamW, _ when: String, file: StaticString = #filePath, line: UInt = #line) throws {
        for (k, _) in shapes {
            assertClose(try s.tensor(k), ref.p[k]!, "\(k) \(when)", file: file, line: line)
            assertClose(try s.tensor(TrainNames.m(k)), ref.m[k]!, "adam_m/\(k) \(when)", file: file, line: line)
            assertClose(try s.tensor(TrainNames.v(k)), ref.v[k]!, "adam_v/\(k) \(when)", rtol: 5e-5, atol: 1e-9, file: file, line: line)
        }
        if let e = ref.ema["a"] { assertClose(try s.tensor(TrainNames.ema("a")), e, "ema/a \(when)", file: file, line: line) }
    }

    /// Six steps, clipped and unclipped, varying lr and EMA β, against the f64 reference.
    func testAdamWMatchesFloat64Reference() throws {
        var (s, ref, _) = try makeSession()
        var rng = SeededGenerator(seed: 11)
        for k in 0..<6 {
            let g = grads(&rng, scale: k % 2 == 0 ? 1 : 0.2)   // norm ≈ 4.7 (clipped) or ≈ 0.9 (not)
            let lr = 0.01 * Double(k + 1) / 3, beta = 0.9 + 0.01 * Double(k)
            try feed(s, g)
            let (_, norm) = try s.run(lr: lr, emaBeta: beta)
            let want = ref.step(g, lr: lr, emaBeta: beta)
            XCTAssertEqual(Double(norm), want, accuracy: 1e-5 * want, "grad_norm at step \(k + 1)")
            try assertMatches(s, ref, "after step \(k + 1)")
        }
        XCTAssertEqual(s.appliedSteps, 6)
    }

    /// A NaN or infinite gradient leaves parameters, moments and EMA bit-identical and does not
    /// advance t; the norm is still reported; the next finite step continues as if nothing happened.
    func testNonFiniteGradientSkipsTheStep() throws {
        var (s, ref, _) = try makeSession()
        var rng = SeededGenerator(seed: 3)
        for _ in 0..<2 {
            let g = grads(&rng, scale: 1)
            try feed(s, g)
            try s.run(lr: 0.01, emaBeta: 0.95)
            _ = ref.step(g, lr: 0.01, emaBeta: 0.95)
        }
        let names = s.step.stateNames
        let before = try names.map { try s.bytes($0) }
        for bad in [Float.nan, .infinity] {
            var g = grads(&rng, scale: 1)
            g["b"]![3] = bad
            try feed(s, g)
            let (_, norm) = try s.run(lr: 0.01, emaBeta: 0.95)
            XCTAssertFalse(norm.isFinite, "norm with a \(bad) gradient")
            if bad.isNaN { XCTAssertTrue(norm.isNaN) } else { XCTAssertEqual(norm, .infinity) }
            for (k, name) in names.enumerated() {
                XCTAssertTrue(try s.bytes(name) == before[k], "\(name) changed by a \(bad) gradient")
            }
        }
        XCTAssertEqual(s.stepCount, 4)
        XCTAssertEqual(s.appliedSteps, 2)
        let g = grads(&rng, scale: 1)
        try feed(s, g)
        try s.run(lr: 0.01, emaBeta: 0.95)
        _ = ref.step(g, lr: 0.01, emaBeta: 0.95)
        try assertMatches(s, ref, "after the skipped steps")
    }

    /// EMA: β = 0 copies the new parameter, β = 1 freezes the average; both from the same
    /// compiled step (β is an input).
    func testEMAFollowsItsBetaInput() throws {
        let (s, _, initial) = try makeSession()
        var rng = SeededGenerator(seed: 5)
        try feed(s, grads(&rng, scale: 1))
        try s.run(lr: 0.01, emaBeta: 1)
        XCTAssertEqual(try s.tensor(TrainNames.ema("a")).data, initial["a"]!, "β = 1 keeps the initial EMA")
        XCTAssertNotEqual(try s.tensor("a").data, initial["a"]!)
        try feed(s, grads(&rng, scale: 1))
        try s.run(lr: 0.01, emaBeta: 0)
        XCTAssertEqual(try s.tensor(TrainNames.ema("a")).data, try s.tensor("a").data, "β = 0 copies the parameter")
    }

    /// torch.optim.AdamW with clip_grad_norm_ on fixed gradients (Tools/fixtures/make_optimizer_fixtures.py).
    func testAdamWMatchesTorchFixture() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/adamw_torch.safetensors").path
        let file = try SafeTensorsFile(path: path)
        let md = file.metadata
        let steps = Int(md["steps"]!)!
        let lrs = md["lrs"]!.split(separator: ",").map { Double($0)! }
        let keys = md["keys"]!.split(separator: ",").map(String.init)
        let scales = md["lr_scales"]!.split(separator: ",").map { Double($0)! }
        let cfg = OptimizerConfig(adamW: AdamW(beta1: Double(md["beta1"]!)!, beta2: Double(md["beta2"]!)!, eps: Double(md["eps"]!)!,
                                               weightDecay: Double(md["weight_decay"]!)!), maxGradNorm: Double(md["max_norm"]!)!)
        let shapes = try keys.map { ($0, try file.info("\($0).init").shape) }
        let params = zip(keys, scales).map { TrainableParameter($0, lrScale: $1) }
        let step = try OptimizerStep.apply(to: try fixedGradientGraph(shapes), parameters: params, optimizer: cfg)
        let store = TensorStore(Dictionary(uniqueKeysWithValues: try keys.map { ($0, try SafeTensorsStore(path: path).tensor("\($0).init")) }))
        let s = try compileSession(step, store)
        for t in 0..<steps {
            try s.setBatch(Dictionary(uniqueKeysWithValues: try keys.map { ("g:" + $0, try file.floats("\($0).grad.\(t)")) }))
            let (_, norm) = try s.run(lr: lrs[t])
            let want = try file.floats("grad_norm.\(t)")[0]
            XCTAssertEqual(norm, want, accuracy: 1e-5 * want, "grad_norm at step \(t + 1)")
            for k in keys {
                assertClose(try s.tensor(k), try file.floats("\(k).step.\(t)").map(Double.init), "\(k) vs torch after step \(t + 1)")
            }
        }
        for k in keys {
            assertClose(try s.tensor(TrainNames.m(k)), try file.floats("\(k).exp_avg").map(Double.init), "exp_avg of \(k) vs torch")
            assertClose(try s.tensor(TrainNames.v(k)), try file.floats("\(k).exp_avg_sq").map(Double.init), "exp_avg_sq of \(k) vs torch", rtol: 5e-5, atol: 1e-9)
        }
    }

    func testBadTrainablesAreOneLineErrors() throws {
        let g = try fixedGradientGraph(shapes)
        XCTAssertThrowsError(try OptimizerStep.apply(to: g, parameters: [TrainableParameter("nope")], optimizer: config)) { e in
            XCTAssertTrue("\(e)".contains("trainable 'nope' is not a weight"), "\(e)")
        }
        XCTAssertThrowsError(try OptimizerStep.apply(to: g, parameters: [TrainableParameter("a"), TrainableParameter("a")], optimizer: config))
    }
}
