// Gradients against PyTorch autograd: Fixtures/autodiff.safetensors from
// Tools/fixtures/make_autodiff_fixtures.py (float64 torch gradients of float32 inputs). Each case
// here builds the same function as the script's case of the same name.

import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class AutodiffFixtureTests: XCTestCase {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/autodiff.safetensors").path

    /// name → (input names in order, wrt, y = f(inputs)).
    static let cases: [String: (inputs: [String], wrt: [String], body: (GraphBuilder, [Value]) -> Value)] = [
        "layer_norm": (["x", "g", "beta"], ["x", "g", "beta"], { b, x in
            b.layerNorm(x[0], scale: x[1], bias: x[2], eps: 1e-5) + b.layerNorm(x[0], eps: 1e-3) }),
        "rms_norm": (["x", "g"], ["x", "g"], { b, x in b.rmsNorm(x[0], scale: x[1], eps: 1e-5) + b.rmsNorm(x[0], eps: 1e-6) }),
        "softmax": (["x"], ["x"], { b, x in b.softmax(x[0], axis: 1) + b.softmax(x[0], axis: -1) }),
        "log_softmax": (["x"], ["x"], { b, x in b.logSoftmax(x[0], axis: 0) + b.logSoftmax(x[0], axis: -1) }),
        "gelu_tanh": (["x"], ["x"], { b, x in b.unary(.gelu, x[0]) }),
        "elementwise": (["x", "p"], ["x", "p"], { b, v in
            let (x, p) = (v[0], v[1])
            return b.unary(.silu, x) + b.unary(.erf, x) * b.unary(.sigmoid, x) + b.binary(.pow, p, x) + b.unary(.rsqrt, p) * b.unary(.tanh, x)
                + b.unary(.expm1, x) * b.unary(.log, p) + b.unary(.sin, x) * b.unary(.cos, p) + b.unary(.abs, x) / p
        }),
        "max_min_ties": (["a", "c"], ["a", "c"], { b, v in
            let (a, c) = (v[0], v[1])
            let rowMax = b.reduce(.reduce_max, c.reshaped([2, 3]), axes: [1]).reshaped([1, 2]).broadcast(to: [3, 2]).reshaped([6])
            return b.append(.max, [a, c]) * 2 + b.append(.min, [a, c]) + b.reduce(.reduce_max, a, axes: [0]).broadcast(to: [6]) + rowMax
        }),
        "matmul_shared_rhs": (["a", "b"], ["a", "b"], { b, x in b.matmul(x[0], x[1], transposeB: true) }),
        "attention_bias": (["q", "k", "v", "bias"], ["q", "k", "v", "bias"], { b, x in b.attention(x[0], x[1], x[2], scale: 0.4, bias: x[3]) }),
        "attention_causal": (["q", "k", "v"], ["q", "k", "v"], { b, x in b.attention(x[0], x[1], x[2], scale: 0.5, causal: true) }),
        "rope": (["x", "cos", "sin"], ["x", "cos", "sin"], { b, x in b.rope(x[0], cos: x[1], sin: x[2]) }),
        "conv2d_stride2": (["x", "w"], ["x", "w"], { b, x in b.conv2d(x[0], x[1], stride: 2, padding: 1) }),
        "conv2d_dilated": (["x", "w"], ["x", "w"], { b, x in
            b.append(.conv2d, x, attributes: ["stride": .ints([1, 2]), "padding": .ints([2, 0]), "dilation": .ints([2, 1])]) }),
        "group_norm": (["x", "g", "beta"], ["x", "g", "beta"], { b, x in b.groupNorm(x[0], scale: x[1], bias: x[2], groups: 3, eps: 1e-5) }),
        "gather": (["table", "idx"], ["table"], { b, x in b.gather(x[0], x[1]) }),
    ]

    /// Every fixture case: the interpreter evaluating our gradient graph against torch, rel-L2 < 1e-4.
    func testGradientsMatchPyTorch() throws {
        let file = try SafeTensorsStore(path: Self.path)
        let fixtureCases = Set(file.names.compactMap { n in n.hasSuffix(".r") ? String(n.dropLast(2)) : nil })
        XCTAssertEqual(fixtureCases, Set(Self.cases.keys), "the script and this test define the same cases")
        var worst: (Double, String) = (0, "")
        var count = 0
        for (name, c) in Self.cases.sorted(by: { $0.key < $1.key }) {
            let b = GraphBuilder(name: name)
            var inputs: [String: Tensor] = [:]
            let xs = try c.inputs.map { k -> Value in
                let t = try file.tensor("\(name).\(k)")
                inputs[k] = t
                return b.input(k, t.type)
            }
            let y = c.body(b, xs)
            let r = try file.tensor("\(name).r")
            inputs["r"] = r
            b.output("loss", y * b.input("r", r.type))
            let grad = try gradientGraph(try b.finish(), loss: "loss", wrt: c.wrt)
            let out = try Interpreter.run(grad, inputs: inputs) { k, _ in throw ArcError("no weight \(k)") }
            XCTAssertEqual(Double(out["loss"]!.data[0]), Double(try file.tensor("\(name).loss").data[0]), accuracy: 1e-4 * max(1, Double(abs(out["loss"]!.data[0]))), name)
            for k in c.wrt {
                let e = relativeL2(out[gradientOutputName(k)]!, try file.tensor("\(name).grad.\(k)"))
                XCTAssertLessThan(e, 1e-4, "\(name): ∂\(k) vs torch")
                if e > worst.0 { worst = (e, "\(name)/\(k)") }
                count += 1
            }
        }
        print("autodiff: \(count) gradients vs PyTorch autograd, worst rel-L2 \(worst.0) (\(worst.1))")
    }
}
