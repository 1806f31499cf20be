// The σ schedules and φ, against the reference's numbers (arcflow-reference.md §3).

import ArcFlowGraphs
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class SamplerMathTests: XCTestCase {
    func testArcKnots() {
        let expected: [Int: [Double]] = [
            1: [1, 0],
            2: [1, 0.761905, 0],
            3: [1, 0.864865, 0.615385, 0],
            4: [1, 0.905660, 0.761905, 0.516129, 0],
        ]
        for (n, want) in expected {
            let got = Schedule.arcSigmas(steps: n)
            XCTAssertEqual(got.count, want.count)
            for (g, w) in zip(got, want) { XCTAssertEqual(g, w, accuracy: 1e-6, "N = \(n)") }
            XCTAssertEqual(got.last, 0, "the last knot is exactly 0")
        }
    }

    func testEulerKnotsAreWarpedUniformSteps() {
        let s = Schedule.eulerSigmas(steps: 4)
        XCTAssertEqual(s[0], 1)
        XCTAssertEqual(s[2], 3.2 * 0.5 / (1 + 2.2 * 0.5), accuracy: 1e-12)
        XCTAssertEqual(s[4], 0)
    }

    func testPhiValues() {
        // Sanity values of reference §3.4, z = γ·Δ (positive and negative z).
        XCTAssertEqual(Schedule.phi(1.3863 * 0.238095), 1.184796, accuracy: 1e-6)
        XCTAssertEqual(Schedule.phi(1.3863 * 0.761905), 1.775663, accuracy: 1e-6)
        XCTAssertEqual(Schedule.phi(-1.6094 * 0.761905), 0.576245, accuracy: 1e-6)
        XCTAssertEqual(Schedule.phi(-30), (exp(-30.0) - 1) / -30, accuracy: 1e-12)
        // Near 0 the clamp holds z' at ±1e-4: φ(0) = φ(1e-9) = φ(1e-4) = 1.00005, φ(−1e-9) = 0.99995.
        XCTAssertEqual(Schedule.phi(0), expm1(1e-4) / 1e-4, accuracy: 1e-15)
        XCTAssertEqual(Schedule.phi(0), 1.00005, accuracy: 1e-8)
        XCTAssertEqual(Schedule.phi(1e-9), Schedule.phi(0))
        XCTAssertEqual(Schedule.phi(-1e-9), 0.99995, accuracy: 1e-8)
        XCTAssertEqual(Schedule.phi(2e-4), expm1(2e-4) / 2e-4, accuracy: 1e-15)
        XCTAssertEqual(Interpreter.phi(-0.5), Schedule.phi(-0.5))
    }

    /// The compiled arc_step kernel on rates that give z near 0 (both signs) and strongly negative.
    func testArcStepKernelNearZeroAndNegative() throws {
        let (t, k, f, p) = (37, 5, 12, 4)
        let b = GraphBuilder(name: "arc")
        let x = b.input("x", .f32([1, t, f])), mu = b.input("mu", .f32([1, t, k * f]))
        let lw = b.input("lw", .f32([1, t, k * p])), g = b.input("g", .f32([1, t, (k - 1) * p]))
        let step = b.append(.arc_step, [x, mu, lw, g], attributes: ["delta": .float(0.238095), "components": .int(k), "positions": .int(p)])
        b.output("y", step)
        let graph = try b.finish()
        var rng = SeededGenerator(seed: 5)
        var rates = rng.normals(t * (k - 1) * p).map { $0 * 1e-4 }      // |γΔ| well under the clamp
        for i in stride(from: 0, to: rates.count, by: 3) { rates[i] = -40 * abs(rates[i]) * 1e4 }  // strongly decaying
        rates[1] = 0; rates[2] = -0.0
        let inputs = ["x": Tensor(.f32([1, t, f]), rng.normals(t * f)), "mu": Tensor(.f32([1, t, k * f]), rng.normals(t * k * f)),
                      "lw": Tensor(.f32([1, t, k * p]), rng.normals(t * k * p)), "g": Tensor(.f32([1, t, (k - 1) * p]), rates)]
        let want = try Interpreter.run(graph, inputs: inputs) { _, _ in throw ArcError("no weights") }["y"]!
        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        options.pipeline.passes = ["plan-memory"]
        let got = try ModelCompiler.build(Module(graph), weights: TensorStore(), options: options).load().run(inputs)["y"]!
        XCTAssertLessThan(relativeL2(got, want), 1e-6)
    }
}
