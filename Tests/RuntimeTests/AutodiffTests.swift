// Reverse-mode autodiff: every op's VJP against central finite differences of the interpreter,
// the compiled gradient graph against the interpreter's evaluation of the same graph, the
// attention backward kernel up to 1024 tokens, checkpointing and the pass's error messages.

import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

/// One gradient check: a graph from named tensors to `y`; the loss is Σ y·r with a random r.
struct GradCase {
    typealias Generator = (inout SeededGenerator, Int) -> [Float]
    var name: String
    var inputs: [(key: String, shape: [Int], values: Generator)]
    var wrt: [String]
    /// Keys bound as weights instead of inputs.
    var weights: Set<String> = []
    /// Every op of the forward and backward has a kernel in this branch (gather, conv2d,
    /// group_norm and masked/biased attention forward kernels come with the ops branch).
    var compiled = true
    /// Finite differences are meaningless through a rounding to bf16 (convert).
    var finiteDifferences = true
    var body: (GraphBuilder, [Value]) -> Value
}

let normal: GradCase.Generator = { rng, n in rng.normals(n) }
let positive: GradCase.Generator = { rng, n in rng.normals(n).map { abs($0) * 2 + 0.5 } }
func integers(below v: Int) -> GradCase.Generator { { rng, n in (0..<n).map { _ in Float(Int(rng.uniform() * Float(v)) % v) } } }

final class AutodiffTests: XCTestCase {
    // MARK: The cases: every op with a VJP, odd shapes.

    static func unary(_ op: OpCode, _ gen: @escaping GradCase.Generator = normal) -> GradCase {
        GradCase(name: op.rawValue, inputs: [("x", [3, 5], gen)], wrt: ["x"]) { b, x in b.unary(op, x[0]) }
    }

    static func binary(_ op: OpCode, _ ga: @escaping GradCase.Generator = normal, _ gb: @escaping GradCase.Generator = normal) -> GradCase {
        GradCase(name: op.rawValue, inputs: [("a", [4, 3], ga), ("b", [4, 3], gb)], wrt: ["a", "b"]) { b, x in b.append(op, [x[0], x[1]]) }
    }

    static func matmulCase(_ name: String, _ a: [Int], _ b: [Int], ta: Bool = false, tb: Bool = false) -> GradCase {
        GradCase(name: name, inputs: [("a", a, normal), ("b", b, normal)], wrt: ["a", "b"]) { bb, x in
            bb.matmul(x[0], x[1], transposeA: ta, transposeB: tb)
        }
    }

    static let cases: [GradCase] = {
        var c: [GradCase] = []
        for op in [OpCode.neg, .abs, .exp, .expm1, .tanh, .sigmoid, .silu, .gelu, .erf, .sin, .cos] { c.append(unary(op)) }
        for op in [OpCode.log, .sqrt, .rsqrt] { c.append(unary(op, positive)) }
        c.append(GradCase(name: "convert", inputs: [("x", [3, 5], normal)], wrt: ["x"], finiteDifferences: false) { b, x in
            b.convert(b.convert(x[0], to: .bf16), to: .f32) * x[0]
        })
        for op in [OpCode.add, .sub, .mul, .max, .min] { c.append(binary(op)) }
        c.append(binary(.div, normal, positive))
        c.append(binary(.pow, positive, normal))
        c.append(GradCase(name: "select", inputs: [("c", [3, 4], normal), ("a", [3, 4], normal), ("b", [3, 4], normal)], wrt: ["a", "b"]) { b, x in
            b.select(b.binary(.greater, x[0], b.scalar(0)), x[1], x[2])
        })
        c.append(GradCase(name: "several_users", inputs: [("x", [5, 3], normal)], wrt: ["x"]) { b, x in
            x[0] * x[0] + b.unary(.exp, x[0]) * b.unary(.sin, x[0])
        })
        c.append(GradCase(name: "reduce_sum", inputs: [("x", [3, 4, 5], normal)], wrt: ["x"]) { b, x in
            b.reduce(.reduce_sum, x[0], axes: [1]) + b.reduce(.reduce_sum, x[0], axes: [0, 1], keepDims: true).reshaped([1, 5]).broadcast(to: [3, 5])
        })
        c.append(GradCase(name: "reduce_mean", inputs: [("x", [3, 4, 5], normal)], wrt: ["x"]) { b, x in b.reduce(.reduce_mean, x[0], axes: [2]) })
        c.append(GradCase(name: "reduce_max", inputs: [("x", [3, 7, 5], normal)], wrt: ["x"]) { b, x in
            b.reduce(.reduce_max, x[0], axes: [1], keepDims: true).broadcast(to: [3, 7, 5]) * 2 + b.reduce(.reduce_max, x[0], axes: [0, 1, 2]).broadcast(to: [3, 7, 5])
        })
        c.append(GradCase(name: "softmax", inputs: [("x", [3, 7, 2], normal)], wrt: ["x"]) { b, x in
            b.softmax(x[0], axis: 1) + b.softmax(x[0], axis: -1)
        })
        c.append(GradCase(name: "log_softmax", inputs: [("x", [5, 3, 6], normal)], wrt: ["x"]) { b, x in
            b.logSoftmax(x[0], axis: 0) + b.logSoftmax(x[0], axis: -1)
        })
        c.append(GradCase(name: "layer_norm", inputs: [("x", [3, 2, 9], normal), ("g", [9], normal), ("beta", [9], normal)], wrt: ["x", "g", "beta"]) { b, x in
            b.layerNorm(x[0], scale: x[1], bias: x[2], eps: 1e-5) + b.layerNorm(x[0], eps: 1e-3)
        })
        c.append(GradCase(name: "rms_norm", inputs: [("x", [4, 7], normal), ("g", [7], normal)], wrt: ["x", "g"]) { b, x in
            b.rmsNorm(x[0], scale: x[1], eps: 1e-5) + b.rmsNorm(x[0], eps: 1e-6)
        })
        c.append(GradCase(name: "group_norm", inputs: [("x", [2, 6, 3, 3], normal), ("g", [6], normal), ("beta", [6], normal)],
                          wrt: ["x", "g", "beta"]) { b, x in
            b.groupNorm(x[0], scale: x[1], bias: x[2], groups: 3, eps: 1e-5)
        })
        c.append(matmulCase("matmul", [3, 4, 5], [3, 5, 6]))
        c.append(matmulCase("matmul_ta", [3, 5, 4], [3, 5, 6], ta: true))
        c.append(matmulCase("matmul_tb", [3, 4, 5], [3, 6, 5], tb: true))
        c.append(matmulCase("matmul_ta_tb", [3, 5, 4], [3, 6, 5], ta: true, tb: true))
        c.append(matmulCase("matmul_shared_rhs", [2, 3, 4, 5], [5, 6]))
        c.append(matmulCase("matmul_shared_rhs_tb", [2, 3, 4, 5], [6, 5], tb: true))
        c.append(matmulCase("matmul_shared_rhs_ta", [3, 5, 4], [5, 6], ta: true))
        c.append(matmulCase("matmul_shared_rhs_ta_tb", [3, 5, 4], [6, 5], ta: true, tb: true))
        c.append(matmulCase("matmul_gemv", [1, 7], [7, 3]))
        c.append(GradCase(name: "linear_weights", inputs: [("x", [3, 5], normal), ("w", [4, 5], normal), ("bias", [4], normal)],
                          wrt: ["w", "bias", "x"], weights: ["w", "bias"]) { b, x in
            b.unary(.gelu, b.linear(x[0], weight: x[1], bias: x[2]))
        })
        c.append(GradCase(name: "reshape_transpose", inputs: [("x", [3, 4, 5], normal)], wrt: ["x"]) { b, x in
            x[0].reshaped([12, 5]).reshaped([3, 4, 5]).transposed([2, 0, 1]) * b.constant(2, shape: [5, 3, 4])
        })
        c.append(GradCase(name: "slice", inputs: [("x", [4, 4, 6], normal)], wrt: ["x"]) { b, x in
            b.slice(x[0], start: [1, 0, 2], end: [3, 4, 5])
        })
        c.append(GradCase(name: "concat", inputs: [("a", [3, 2, 5], normal), ("b", [3, 1, 5], normal), ("c", [3, 4, 5], normal)], wrt: ["a", "c"]) { b, x in
            b.concat(x, axis: 1)
        })
        c.append(GradCase(name: "broadcast", inputs: [("a", [3, 1, 5], normal), ("b", [5], normal), ("s", [], normal), ("d", [1, 1], normal)],
                          wrt: ["a", "b", "s", "d"]) { b, x in
            x[0].broadcast(to: [2, 3, 4, 5]) * x[1].broadcast(to: [2, 3, 4, 5]) + x[2].broadcast(to: [2, 3, 4, 5]) + x[3].broadcast(to: [2, 3, 4, 5])
        })
        c.append(GradCase(name: "gather", inputs: [("table", [7, 3], normal), ("idx", [2, 5], integers(below: 7))], wrt: ["table"]) { b, x in
            b.gather(x[0], x[1])
        })
        func conv(_ name: String, x: [Int], w: [Int], stride: [Int], padding: [Int], dilation: [Int] = [1, 1]) -> GradCase {
            GradCase(name: name, inputs: [("x", x, normal), ("w", w, normal)], wrt: ["x", "w"]) { b, v in
                b.append(.conv2d, v, attributes: ["stride": .ints(stride), "padding": .ints(padding), "dilation": .ints(dilation)])
            }
        }
        c.append(conv("conv2d", x: [2, 3, 5, 6], w: [4, 3, 3, 3], stride: [1, 1], padding: [1, 1]))
        c.append(conv("conv2d_stride2", x: [1, 2, 7, 6], w: [3, 2, 3, 3], stride: [2, 2], padding: [1, 1]))
        c.append(conv("conv2d_stride2_rect", x: [2, 2, 8, 7], w: [2, 2, 2, 3], stride: [2, 3], padding: [0, 1]))
        c.append(conv("conv2d_dilated", x: [1, 2, 8, 7], w: [2, 2, 3, 2], stride: [1, 2], padding: [2, 0], dilation: [2, 1]))
        c.append(conv("conv2d_wide_padding", x: [1, 1, 4, 4], w: [2, 1, 2, 2], stride: [1, 1], padding: [2, 2]))
        c.append(GradCase(name: "rope", inputs: [("x", [2, 5, 3, 8], normal), ("cos", [5, 8], normal), ("sin", [5, 8], normal)], wrt: ["x", "cos", "sin"]) { b, x in
            b.rope(x[0], cos: x[1], sin: x[2])
        })
        let qkv = [("q", [2, 5, 3, 8], normal), ("k", [2, 6, 3, 8], normal), ("v", [2, 6, 3, 8], normal)]
        c.append(GradCase(name: "attention", inputs: qkv, wrt: ["q", "k", "v"]) { b, x in b.attention(x[0], x[1], x[2], scale: 0.4) })
        c.append(GradCase(name: "attention_bias", inputs: qkv + [("bias", [3, 5, 6], normal)], wrt: ["q", "k", "v", "bias"]) { b, x in
            b.attention(x[0], x[1], x[2], scale: 0.4, bias: x[3])
        })
        c.append(GradCase(name: "attention_causal", inputs: [("q", [1, 6, 2, 4], normal), ("k", [1, 6, 2, 4], normal), ("v", [1, 6, 2, 4], normal)],
                          wrt: ["q", "k", "v"]) { b, x in
            b.attention(x[0], x[1], x[2], scale: 0.5, causal: true)
        })
        return c
    }()

    // MARK: Running a case

    static let h: Float = 3e-3

    struct Bound {
        var graph: Graph
        var inputs: [String: Tensor]
        var weights: [String: Tensor]
    }

    /// The loss graph of one case (keys prefixed), with random values for everything.
    static func bind(_ c: GradCase, prefix: String = "", into b: GraphBuilder, rng: inout SeededGenerator,
                     inputs: inout [String: Tensor], weights: inout [String: Tensor]) -> Value {
        let xs = c.inputs.map { k, shape, gen -> Value in
            let key = prefix + k
            let t = Tensor(.f32(shape), gen(&rng, shape.reduce(1, *)))
            if c.weights.contains(k) { weights[key] = t; return b.weight(key, t.type) }
            inputs[key] = t
            return b.input(key, t.type)
        }
        let y = c.body(b, xs)
        let r = b.input(prefix + "r", y.type)
        inputs[prefix + "r"] = Tensor(y.type, rng.normals(y.type.count))
        return y * r
    }

    static func bound(_ c: GradCase, seed: UInt64 = 7) throws -> Bound {
        let b = GraphBuilder(name: c.name)
        var rng = SeededGenerator(seed: seed)
        var inputs: [String: Tensor] = [:], weights: [String: Tensor] = [:]
        b.output("loss", bind(c, into: b, rng: &rng, inputs: &inputs, weights: &weights))
        return Bound(graph: try b.finish(), inputs: inputs, weights: weights)
    }

    static func interpret(_ g: Graph, _ inputs: [String: Tensor], _ weights: [String: Tensor]) throws -> [String: Tensor] {
        try Interpreter.run(g, inputs: inputs) { key, _ in
            guard let w = weights[key] else { throw ArcError("no weight \(key)") }
            return w
        }
    }

    /// Σ loss in f64 (the interpreter rounds each element to f32; the sum adds no more error).
    static func loss(_ bd: Bound, _ inputs: [String: Tensor], _ weights: [String: Tensor]) throws -> Double {
        try interpret(bd.graph, inputs, weights)["loss"]!.data.reduce(0.0) { $0 + Double($1) }
    }

    /// Central differences of the interpreter's loss for every element of `key`.
    static func finiteDifferences(_ bd: Bound, key: String) throws -> Tensor {
        var inputs = bd.inputs, weights = bd.weights
        let isWeight = weights[key] != nil
        var t = isWeight ? weights[key]! : inputs[key]!
        var out = [Float](repeating: 0, count: t.data.count)
        for i in t.data.indices {
            let x = t.data[i]
            let (up, down) = (x + h, x - h)
            func at(_ v: Float) throws -> Double {
                t.data[i] = v
                if isWeight { weights[key] = t } else { inputs[key] = t }
                return try loss(bd, inputs, weights)
            }
            out[i] = Float((try at(up) - at(down)) / Double(up - down))
            t.data[i] = x
        }
        return Tensor(t.type, out)
    }

    // MARK: Tests

    /// For every case: the interpreter evaluating the gradient graph agrees with central finite
    /// differences (h = 3e-3, truncation error O(h²)) to a relative L2 error below 1e-3.
    /// The autodiff kernels (Prelude/autodiff.h, on top of every other family) compile clean.
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "autodiff.h")
    }

    func testEveryVJPMatchesFiniteDifferences() throws {
        var worst: (Double, String) = (0, "")
        var checked = 0
        for c in Self.cases where c.finiteDifferences {
            let bd = try Self.bound(c)
            let grad = try gradientGraph(bd.graph, loss: "loss", wrt: c.wrt)
            assertRoundTrips(Module(grad))
            let got = try Self.interpret(grad, bd.inputs, bd.weights)
            for key in c.wrt {
                let fd = try Self.finiteDifferences(bd, key: key)
                let e = relativeL2(got[gradientOutputName(key)]!, fd)
                XCTAssertLessThan(e, 1e-3, "\(c.name): ∂\(key) vs finite differences")
                if e > worst.0 { worst = (e, "\(c.name)/\(key)") }
                checked += 1
            }
        }
        print("autodiff: \(checked) gradients vs finite differences, worst rel-L2 \(worst.0) (\(worst.1))")
    }

    /// All cases with kernels in one graph (keys prefixed per case), compiled through the
    /// autodiff pass and the default pipeline, against the interpreter on the gradient graph.
    func testCompiledGradientsMatchInterpreter() throws {
        let b = GraphBuilder(name: "all")
        var rng = SeededGenerator(seed: 11)
        var inputs: [String: Tensor] = [:], weights: [String: Tensor] = [:]
        var total: Value?
        var wrt: [String] = []
        for (k, c) in Self.cases.enumerated() where c.compiled {
            let l = Self.bind(c, prefix: "c\(k).", into: b, rng: &rng, inputs: &inputs, weights: &weights)
            let s = b.reduce(.reduce_sum, l, axes: Array(0..<l.rank))
            total = total.map { $0 + s } ?? s
            wrt += c.wrt.map { "c\(k).\($0)" }
        }
        b.output("loss", total!)
        let forward = try b.finish()
        let grad = try gradientGraph(forward, loss: "loss", wrt: wrt)
        let expected = try Self.interpret(grad, inputs, weights)

        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        options.pipeline.passes = ["autodiff"] + defaultPipeline
        options.pipeline.context.options = ["autodiff.loss": "loss", "autodiff.wrt": wrt.joined(separator: ",")]
        let compiled = try ModelCompiler.build(Module(forward), weights: TensorStore(weights), options: options)
        let got = try compiled.load().run(inputs)
        var worst: (Double, String) = (0, "")
        for name in ["loss"] + wrt.map(gradientOutputName) {
            let e = relativeL2(got[name]!, expected[name]!)
            XCTAssertLessThan(e, 1e-5, "\(name): compiled vs interpreter")
            if e > worst.0 { worst = (e, name) }
        }
        print("autodiff: \(wrt.count) compiled gradients (\(compiled.program.steps.count) steps) vs interpreter, worst rel-L2 \(worst.0) (\(worst.1))")
    }

    /// Inlined fusion regions differentiate like the ops they hold.
    func testFusionIsDifferentiatedThroughItsRegion() throws {
        let c = GradCase(name: "fused", inputs: [("x", [3, 5], normal), ("w", [4, 5], normal)], wrt: ["x", "w"]) { b, x in
            b.unary(.tanh, b.matmul(x[0], x[1], transposeB: true)) * 3 + b.unary(.sigmoid, b.matmul(x[0], x[1], transposeB: true))
        }
        var bd = try Self.bound(c)
        var options = PipelineOptions()
        options.passes = ["cse", "fuse-elementwise"]
        bd.graph = try runPipeline(Module(bd.graph), options).0.main
        XCTAssertTrue(bd.graph.nodes.contains { $0.op == .fusion })
        let got = try Self.interpret(try gradientGraph(bd.graph, loss: "loss", wrt: c.wrt), bd.inputs, bd.weights)
        for key in c.wrt {
            XCTAssertLessThan(relativeL2(got[gradientOutputName(key)]!, try Self.finiteDifferences(bd, key: key)), 1e-3, key)
        }
    }

    /// Checkpointed values are recomputed in the backward (tagged `recompute`), the gradients
    /// are bit-identical, and CSE does not merge the recomputation back.
    func testCheckpointRecomputesAndKeepsGradients() throws {
        let b = GraphBuilder(name: "ckpt")
        let x = b.input("x", .f32([4, 6])), w = b.input("w", .f32([6, 6]))
        let h = b.withAttributes(["checkpoint": .bool(true)]) { b.unary(.gelu, b.matmul(x, w)) }
        let y = b.unary(.tanh, b.matmul(h, w))
        b.output("loss", y * y)
        let g = try b.finish()
        var rng = SeededGenerator(seed: 3)
        let inputs = ["x": Tensor(.f32([4, 6]), rng.normals(24)), "w": Tensor(.f32([6, 6]), rng.normals(36))]
        let plainGraph = try gradientGraph(eliminateCheckpointTags(g), loss: "loss", wrt: ["x", "w"])
        let ckptGraph = try gradientGraph(g, loss: "loss", wrt: ["x", "w"])
        XCTAssertFalse(Printer.print(plainGraph).contains("recompute"))
        XCTAssertEqual(ckptGraph.nodes.filter { $0.attributes["recompute"] != nil }.count, 2, Printer.print(ckptGraph))
        let plain = try Self.interpret(plainGraph, inputs, [:]), ckpt = try Self.interpret(ckptGraph, inputs, [:])
        for k in ["x", "w"] { XCTAssertEqual(plain[gradientOutputName(k)], ckpt[gradientOutputName(k)]) }
        var options = PipelineOptions()
        options.passes = ["cse", "dce"]
        XCTAssertEqual(try runPipeline(Module(ckptGraph), options).0.main.nodes.filter { $0.attributes["recompute"] != nil }.count, 2)
        // By SSA name, the same.
        let byName = try gradientGraph(eliminateCheckpointTags(g), loss: "loss", wrt: ["x", "w"],
                                       checkpoint: [Printer.valueNames(g)[h.id]])
        XCTAssertEqual(byName.nodes.filter { $0.attributes["recompute"] != nil }.count, 1)
    }

    func eliminateCheckpointTags(_ g: Graph) -> Graph {
        var g = g
        for i in g.nodes.indices { g.nodes[i].attributes["checkpoint"] = nil }
        return g
    }

    /// torch.maximum/minimum and amax split the gradient evenly among ties.
    func testTiesSplitEvenly() throws {
        let b = GraphBuilder(name: "ties")
        let a = b.input("a", .f32([4])), c = b.input("c", .f32([4]))
        b.output("loss", b.append(.max, [a, c]) + b.append(.min, [a, c]).broadcast(to: [4]) + b.reduce(.reduce_max, a, axes: [0]).broadcast(to: [4]))
        let g = try gradientGraph(try b.finish(), loss: "loss", wrt: ["a", "c"])
        let out = try Self.interpret(g, ["a": Tensor(.f32([4]), [1, 2, 3, 3]), "c": Tensor(.f32([4]), [1, 5, 0, 3])], [:])
        // max: a wins (1), ties ½; min: the other side; amax over a = [1,2,3,3] (broadcast to 4
        // elements, so its cotangent is 4): ½ of it to each 3.
        XCTAssertEqual(out[gradientOutputName("a")]!.data, [1, 1, 1 + 2, 1 + 2])
        XCTAssertEqual(out[gradientOutputName("c")]!.data, [1, 1, 1, 1])
    }

    /// Edge points where a rule's formula is 0·inf or reads a NaN: torch's conventions.
    func testEdgeGradientsFollowTorch() throws {
        let b = GraphBuilder(name: "edges")
        let x = b.input("x", .f32([4])), e = b.input("e", .f32([4]))
        let p = b.input("p", .f32([3])), q = b.input("q", .f32([3]))
        b.output("loss", b.reduce(.reduce_sum, b.binary(.pow, x, e), axes: [0]) + b.reduce(.reduce_sum, b.append(.max, [p, q]), axes: [0])
                 + 2 * b.reduce(.reduce_sum, b.append(.min, [p, q]), axes: [0]))
        let g = try gradientGraph(try b.finish(), loss: "loss", wrt: ["x", "p", "q"])
        let out = try Self.interpret(g, ["x": Tensor(.f32([4]), [0, 0, 1, 3]), "e": Tensor(.f32([4]), [0, 0, 0, 2]),
                                         "p": Tensor(.f32([3]), [.nan, 1, 2]), "q": Tensor(.f32([3]), [3, .nan, 1])], [:])
        // pow(0, 0) = 1 with ∂/∂x = 0 (torch masks e·x^(e−1) where e = 0), not 0·inf = NaN.
        XCTAssertEqual(out[gradientOutputName("x")]!.data, [0, 0, 0, 6])
        // max/min are C's fmax/fmin: the operand facing a NaN is the result and gets the gradient.
        XCTAssertEqual(out[gradientOutputName("p")]!.data, [0, 1 + 2, 1])
        XCTAssertEqual(out[gradientOutputName("q")]!.data, [1 + 2, 0, 2])
    }

    /// The default wrt (the pass, `arcflow grad`): the weights on a differentiable path to the loss.
    func testDefaultWrtIsTheWeightsThatAffectTheLoss() throws {
        let g = try Parser.parseVerified("""
        graph @two {
          %x = input "x" : f32[3]
          %w1 = weight "w1" : f32[3]
          %w2 = weight "w2" : f32[3]
          %w3 = weight "w3" : f32[3]
          %a = mul %x, %w1 : f32[3]
          %c = greater %w3, %x : f32[3]
          %d = mul %a, %c : f32[3]
          %b = mul %x, %w2 : f32[3]
          output "y" %d
          output "z" %b
        }
        """).main
        XCTAssertEqual(weightsAffecting(g, loss: "y"), ["w1"])
        XCTAssertEqual(weightsAffecting(g, loss: "z"), ["w2"])
        var options = PipelineOptions()
        options.passes = ["autodiff"]
        options.context = PassContext(options: ["autodiff.loss": "y"])
        let (module, _) = try runPipeline(Module(g), options)
        XCTAssertEqual(module.main.outputs.map(\.name), ["loss", "grad:w1"])
    }

    // MARK: Errors

    func testErrorsNameTheProblem() throws {
        let text = """
        graph @g {
          %x = input "x" : f32[3]
          %w = weight "w" : f32[3]
          %m = mul %x, %w : f32[3]
          %c = greater %m, %x : f32[3]
          %y = mul %c, %x : f32[3]
          output "y" %y
          output "c" %c
          output "m" %m
        }
        """
        let g = try Parser.parseVerified(text).main
        func message(_ f: () throws -> Graph) -> String {
            do { _ = try f(); return "" } catch let e as ArcError { return e.message } catch { return "\(error)" }
        }
        XCTAssertEqual(message { try gradientGraph(g, loss: "nope", wrt: ["w"]) }, "no output named 'nope' to use as the loss (outputs: y, c, m)")
        XCTAssertEqual(message { try gradientGraph(g, loss: "y", wrt: ["v"]) }, "wrt 'v' names no weight or input (weights: w; inputs: x)")
        XCTAssertEqual(message { try gradientGraph(g, loss: "y", wrt: ["w"]) },
                       "'w' has no differentiable path to loss 'y': greater %c at line 5 is not differentiable")
        XCTAssertEqual(message { try gradientGraph(g, loss: "c", wrt: ["x"]) },
                       "loss 'c' is the output of greater %c at line 5: integer-valued (0 or 1), not differentiable")
        XCTAssertEqual(message { try gradientGraph(g, loss: "m", wrt: ["w"], checkpoint: ["zz"]) }, "checkpoint 'zz' names no value of @g")
        // x reaches y directly: fine, and its gradient is c (the mask).
        let ok = try gradientGraph(g, loss: "y", wrt: ["x"], keepOutputs: true)
        XCTAssertEqual(ok.outputs.map(\.name), ["loss", "grad:x", "y", "c", "m"])
    }

    // MARK: Kernels

    /// attention_grad (both parts) against the interpreter, up to 1024 tokens, head sizes 32/64/128,
    /// with and without bias and the causal mask.
    func testAttentionGradKernel() throws {
        let configs: [(b: Int, sq: Int, sk: Int, h: Int, d: Int, bias: Bool, causal: Bool)] = [
            (1, 7, 5, 2, 32, false, false), (2, 33, 33, 3, 64, true, true), (1, 129, 97, 2, 128, true, false),
            (2, 64, 64, 2, 32, false, true), (1, 1024, 1024, 1, 64, false, false), (1, 1024, 1024, 1, 32, true, true),
            (1, 1024, 1024, 1, 128, false, true),
        ]
        for (k, c) in configs.enumerated() {
            let b = GraphBuilder(name: "attention_grad_\(k)")
            let q = b.input("q", .f32([c.b, c.sq, c.h, c.d])), kk = b.input("k", .f32([c.b, c.sk, c.h, c.d]))
            let v = b.input("v", .f32([c.b, c.sk, c.h, c.d]))
            let bias = c.bias ? [b.input("bias", .f32([c.h, c.sq, c.sk]))] : []
            let o = b.input("o", .f32([c.b, c.sq, c.h, c.d])), g = b.input("g", .f32([c.b, c.sq, c.h, c.d]))
            var attrs: [String: Attribute] = ["scale": .float(1 / Double(c.d).squareRoot()), "part": .string("qkv")]
            if c.causal { attrs["causal"] = .bool(true) }
            b.output("qkv", b.append(.attention_grad, [q, kk, v] + bias + [o, g], attributes: attrs))
            if c.bias {
                attrs["part"] = .string("bias")
                b.output("bias", b.append(.attention_grad, [q, kk, v] + bias + [o, g], attributes: attrs))
            }
            let graph = try b.finish()
            let results = try assertCompiledMatchesInterpreter(Module(graph), inputs: randomInputs(graph, seed: UInt64(k + 1)), tolerance: 2e-5)
            print("attention_grad \(c): " + results.sorted { $0.key < $1.key }.map { "\($0.key) rel-L2 \($0.value.relativeL2)" }.joined(separator: ", "))
        }
    }

    /// The whole gradient graph of an attention layer at 1024 tokens (forward kernel, then
    /// attention_grad, default pipeline) against the interpreter's evaluation of it.
    func testAttentionGradientGraphAt1024Tokens() throws {
        for (k, d) in [32, 64, 128].enumerated() {
            let b = GraphBuilder(name: "attention_1024_\(d)")
            let t = TensorType.f32([1, 1024, 2, d])
            let (q, kk, v) = (b.input("q", t), b.input("k", t), b.input("v", t))
            b.output("loss", b.attention(q, kk, v, scale: 1 / Double(d).squareRoot()) * b.input("r", t))
            let grad = try gradientGraph(try b.finish(), loss: "loss", wrt: ["q", "k", "v"])
            XCTAssertEqual(grad.nodes.filter { $0.op == .attention_grad }.count, 1)
            let results = try assertCompiledMatchesInterpreter(Module(grad), inputs: randomInputs(grad, seed: UInt64(k + 20)),
                                                               passes: defaultPipeline, tolerance: 2e-5)
            print("attention 1024 tokens, D = \(d): " + results.sorted { $0.key < $1.key }.map { "\($0.key) rel-L2 \($0.value.relativeL2)" }.joined(separator: ", "))
        }
    }

    func testScatterAddKernel() throws {
        for (k, (rows, idxShape, row)) in [(7, [5], [3]), (11, [2, 9], [17]), (5, [40], [4100])].enumerated() {
            let b = GraphBuilder(name: "scatter_add_\(k)")
            let u = b.input("u", .f32(idxShape + row)), i = b.input("i", .f32(idxShape))
            b.output("t", b.append(.scatter_add, [u, i], type: .f32([rows] + row)))
            let g = try b.finish()
            var inputs = randomInputs(g)
            var rng = SeededGenerator(seed: 5)
            inputs["i"] = Tensor(.f32(idxShape), integers(below: rows)(&rng, idxShape.reduce(1, *)))
            try assertCompiledMatchesInterpreter(Module(g), inputs: inputs)
        }
    }
}
