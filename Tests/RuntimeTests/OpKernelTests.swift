// Every op: the generated kernel against the interpreter, three or more shapes each,
// including sizes that are not multiples of 8 or 16.

import IR
import Runtime
import TestSupport
import XCTest

final class OpKernelTests: XCTestCase {
    /// Shapes used for element-wise ops: odd sizes, a scalar-ish one, a big one (parallel path).
    let shapes: [[Int]] = [[7], [3, 5, 13], [2, 129, 67]]

    /// Builds one graph with one subgraph per shape: inputs x<k>_<i>, output y<k>.
    func graph(_ name: String, shapes: [[[Int]]], _ body: (GraphBuilder, [Value]) -> Value) throws -> Graph {
        let b = GraphBuilder(name: name)
        for (k, operandShapes) in shapes.enumerated() {
            let xs = operandShapes.enumerated().map { i, s in b.input("x\(k)_\(i)", .f32(s)) }
            b.output("y\(k)", body(b, xs))
        }
        return try b.finish()
    }

    func check(_ g: Graph, transform: (Float) -> Float = { $0 }, tolerance: Double = 1e-5,
               file: StaticString = #filePath, line: UInt = #line) throws {
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g, transform: transform), tolerance: tolerance, file: file, line: line)
    }

    func testUnaryOps() throws {
        let positive: Set<OpCode> = [.log, .sqrt, .rsqrt]
        for op in [OpCode.neg, .abs, .exp, .expm1, .log, .sqrt, .rsqrt, .tanh, .sigmoid, .silu, .gelu, .erf, .sin, .cos] {
            let g = try graph(op.rawValue, shapes: shapes.map { [$0] }) { b, x in b.unary(op, x[0]) }
            // Scale inputs so exp/expm1/tanh see both tiny and large arguments.
            try check(g, transform: positive.contains(op) ? { abs($0) * 3 + 0.01 } : { $0 * 4 }, file: #filePath, line: #line)
        }
    }

    func testExpm1AndTanhNearZero() throws {
        for op in [OpCode.expm1, .tanh, .sigmoid, .gelu, .silu] {
            let g = try graph(op.rawValue + "_small", shapes: shapes.map { [$0] }) { b, x in b.unary(op, x[0]) }
            try check(g, transform: { $0 * 1e-4 })
        }
    }

    func testConvert() throws {
        for dtype in [DType.bf16, .f16] {
            let g = try graph("convert_\(dtype)", shapes: shapes.map { [$0] }) { b, x in
                b.convert(b.convert(x[0], to: dtype), to: .f32)
            }
            try check(g, transform: { $0 * 100 }, tolerance: 0)
            // Storage-typed outputs and inputs cross the ABI as 16-bit values.
            let g2 = try graph("convert_out_\(dtype)", shapes: shapes.map { [$0] }) { b, x in b.convert(x[0], to: dtype) }
            try check(g2, transform: { $0 * 100 }, tolerance: 0)
        }
    }

    func testBinaryOps() throws {
        for op in [OpCode.add, .sub, .mul, .div, .max, .min, .pow, .greater, .greater_equal] {
            let g = try graph(op.rawValue, shapes: shapes.map { [$0, $0] }) { b, x in b.append(op, [x[0], x[1]]) }
            try check(g, transform: op == .pow || op == .div ? { abs($0) + 0.5 } : { $0 })
        }
    }

    func testSelect() throws {
        let g = try graph("select", shapes: shapes.map { [$0, $0, $0] }) { b, x in
            b.select(b.binary(.greater, x[0], b.scalar(0)), x[1], x[2])
        }
        try check(g, tolerance: 0)
    }

    func testBroadcast() throws {
        let g = try graph("broadcast", shapes: [[[1]], [[5, 1]], [[129, 1, 7]], [[3]]]) { b, x in
            switch x[0].shape {
            case [1]: return b.broadcast(x[0], to: [4, 9])
            case [5, 1]: return b.broadcast(x[0], to: [2, 5, 11])
            case [3]: return b.broadcast(x[0], to: [3, 17, 3])
            default: return b.broadcast(x[0], to: [129, 3, 7])
            }
        }
        try check(g, tolerance: 0)
    }

    func testBroadcastingBinaryFusion() throws {
        // Element-wise chains with broadcasts, fused into one kernel by the default pipeline.
        let g = try graph("fused", shapes: [[[33, 47], [47], [33, 1]], [[2, 9, 130], [130], [2, 9, 1]], [[3, 5], [1], [3, 5]]]) { b, x in
            (((x[0] + x[1]) * x[2]).apply(.gelu) - x[0].apply(.exp) / (x[2] * x[2] + 1)).apply(.tanh)
        }
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), passes: ["fuse-elementwise", "plan-memory"])
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), passes: ["fold-constants", "cse", "dce", "fuse-elementwise", "plan-memory"])
    }

    func testReductions() throws {
        for op in [OpCode.reduce_sum, .reduce_max, .reduce_mean] {
            let g = try graph(op.rawValue, shapes: [[[13]], [[3, 37, 5]], [[4, 6, 9, 11]], [[2, 1000]]]) { b, x in
                switch x[0].rank {
                case 1: return b.reduce(op, x[0], axes: [0], keepDims: true)
                case 3: return b.reduce(op, x[0], axes: [1])
                case 4: return b.reduce(op, x[0], axes: [1, 2])
                default: return b.reduce(op, x[0], axes: [1])
                }
            }
            try check(g)
        }
    }

    func testSoftmaxAndLogSoftmax() throws {
        for log in [false, true] {
            let g = try graph(log ? "log_softmax" : "softmax", shapes: [[[7, 13]], [[3, 17, 5]], [[2, 4, 1029]]]) { b, x in
                let axis = x[0].rank == 3 && x[0].shape[1] == 17 ? 1 : -1
                return log ? b.logSoftmax(x[0], axis: axis) : b.softmax(x[0], axis: axis)
            }
            try check(g, transform: { $0 * 5 })
        }
    }

    func testNorms() throws {
        let b = GraphBuilder(name: "norms")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 9)
        for (k, shape) in [[5, 7], [3, 11, 77], [1, 130, 768]].enumerated() {
            let n = shape.last!
            let x = b.input("x\(k)", .f32(shape))
            let g = b.weight("g\(k)", .f32([n])), be = b.weight("b\(k)", .f32([n]))
            weights["g\(k)"] = Tensor(.f32([n]), rng.normals(n).map { 1 + 0.2 * $0 })
            weights["b\(k)"] = Tensor(.f32([n]), rng.normals(n))
            b.output("ln\(k)", b.layerNorm(x, eps: 1e-6))
            b.output("lna\(k)", b.layerNorm(x, scale: g, bias: be, eps: 1e-5))
            b.output("rms\(k)", b.rmsNorm(x, eps: 1e-6))
            b.output("rmsa\(k)", b.rmsNorm(x, scale: g, eps: 1e-6))
        }
        let g = try b.finish()
        // Values with a large common offset check the variance computation.
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g, transform: { 30 + $0 }), weights: weights)
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), weights: weights)
    }

    func testMatmul() throws {
        // (a shape, b shape, transpose a, transpose b): plain, transposed, batched, unbatched right
        // operand, M = 1 (sgemv) both ways, odd sizes.
        let cases: [([Int], [Int], Bool, Bool)] = [
            ([7, 13], [13, 5], false, false),
            ([13, 7], [13, 5], true, false),
            ([7, 13], [5, 13], false, true),
            ([13, 7], [5, 13], true, true),
            ([3, 9, 17], [3, 17, 11], false, false),
            ([2, 3, 9, 17], [11, 17], false, true),
            ([1, 129], [67, 129], false, true),
            ([1, 129], [129, 67], false, false),
            ([4, 1, 33], [4, 33, 10], false, false),
            ([200, 257], [257, 130], false, false),
        ]
        let b = GraphBuilder(name: "matmul")
        for (k, c) in cases.enumerated() {
            let x = b.input("a\(k)", .f32(c.0)), y = b.input("b\(k)", .f32(c.1))
            b.output("y\(k)", b.matmul(x, y, transposeA: c.2, transposeB: c.3))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    func testMatmulWithEpilogue() throws {
        let b = GraphBuilder(name: "gemm_epilogue")
        for (k, (m, n, kk)) in [(7, 13, 5), (64, 96, 33), (129, 300, 67)].enumerated() {
            let x = b.input("x\(k)", .f32([m, kk])), w = b.input("w\(k)", .f32([n, kk]))
            let bias = b.input("b\(k)", .f32([n])), r = b.input("r\(k)", .f32([m, n]))
            b.output("y\(k)", r + b.linear(x, weight: w, bias: bias).apply(.gelu) * 0.5)
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), passes: ["fuse-elementwise", "plan-memory"])
    }

    func testDataMovement() throws {
        let b = GraphBuilder(name: "movement")
        let x0 = b.input("x0", .f32([3, 5, 7])), x1 = b.input("x1", .f32([2, 33, 4, 9])), x2 = b.input("x2", .f32([129, 67]))
        b.output("reshape0", x0.reshaped([15, 7]) * 2)
        b.output("reshape1", x1.reshaped([66, 36]) + 1)
        b.output("reshape2", x2.reshaped([67, 129]).apply(.neg))
        b.output("transpose0", x0.transposed([2, 0, 1]))
        b.output("transpose1", x1.transposed([0, 2, 1, 3]))
        b.output("transpose2", x2.transposed([1, 0]))
        b.output("slice0", b.slice(x0, start: [1, 0, 2], end: [3, 5, 7]))
        b.output("slice1", b.slice(x1, axis: 1, 5..<30))
        b.output("slice2", b.slice(x2, start: [3, 1], end: [128, 66]))
        b.output("concat0", b.concat([x0, x0 * 2], axis: 0))
        b.output("concat1", b.concat([b.slice(x1, axis: 2, 0..<1), x1, b.slice(x1, axis: 2, 1..<3)], axis: 2))
        b.output("concat2", b.concat([x2, x2], axis: 1))
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), tolerance: 0)
    }

    func testConstants() throws {
        let b = GraphBuilder(name: "constants")
        let x = b.input("x", .f32([3, 4]))
        b.output("dense", b.matmul(x, b.constant((0..<12).map { Float($0) / 7 }, shape: [4, 3])))
        b.output("splat", b.matmul(x, b.broadcast(b.constant(0.25), to: [4, 5])))
        b.output("scalar", x * 3 + b.constant([1, 2, 3, 4], shape: [4]))
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), passes: Array(defaultPipelineNames))
    }

    func testRope() throws {
        let b = GraphBuilder(name: "rope")
        for (k, shape) in [[1, 5, 2, 8], [2, 77, 3, 64], [1, 130, 4, 128]].enumerated() {
            let x = b.input("x\(k)", .f32(shape))
            let c = b.input("c\(k)", .f32([shape[1], shape[3]])), s = b.input("s\(k)", .f32([shape[1], shape[3]]))
            b.output("y\(k)", b.rope(x, cos: c, sin: s))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    func testAttention() throws {
        // Up to 1024 tokens with head sizes 32, 64, 128, plus odd sizes and Sq != Sk.
        let cases: [(b: Int, sq: Int, sk: Int, h: Int, d: Int)] = [
            (1, 1024, 1024, 2, 32), (1, 1024, 1024, 1, 64), (1, 1024, 1024, 1, 128),
            (2, 77, 77, 3, 64), (1, 130, 33, 2, 40), (1, 1, 19, 2, 24), (1, 257, 257, 1, 128),
        ]
        let b = GraphBuilder(name: "attention")
        for (k, c) in cases.enumerated() {
            let q = b.input("q\(k)", .f32([c.b, c.sq, c.h, c.d]))
            let kk = b.input("k\(k)", .f32([c.b, c.sk, c.h, c.d])), v = b.input("v\(k)", .f32([c.b, c.sk, c.h, c.d]))
            b.output("y\(k)", b.attention(q, kk, v, scale: 1 / Double(c.d).squareRoot()))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    func testAttentionWithBiasAndCausalMask() throws {
        // T5-style additive bias [H, Sq, Sk], CLIP-style causal mask, both; Sq = 1; up to 1024
        // tokens with D = 64; Sq != Sk with a bias; sizes that are not multiples of the 64-query
        // and 256-key tiles.
        let cases: [(b: Int, sq: Int, sk: Int, h: Int, d: Int, bias: Bool, causal: Bool)] = [
            (1, 77, 77, 3, 64, false, true), (2, 130, 130, 2, 40, true, true), (1, 1, 19, 2, 24, true, false),
            (1, 1, 1, 2, 64, true, true), (1, 1024, 1024, 1, 64, true, true), (1, 1024, 1024, 2, 64, false, true),
            (1, 300, 257, 2, 64, true, false), (1, 513, 513, 1, 32, false, true), (2, 64, 64, 1, 16, true, false),
        ]
        let b = GraphBuilder(name: "attention_masked")
        for (k, c) in cases.enumerated() {
            let q = b.input("q\(k)", .f32([c.b, c.sq, c.h, c.d]))
            let kk = b.input("k\(k)", .f32([c.b, c.sk, c.h, c.d])), v = b.input("v\(k)", .f32([c.b, c.sk, c.h, c.d]))
            let bias = c.bias ? b.input("bias\(k)", .f32([c.h, c.sq, c.sk])) : nil
            b.output("y\(k)", b.attention(q, kk, v, scale: 1 / Double(c.d).squareRoot(), bias: bias, causal: c.causal))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    func testGather() throws {
        // f32 and bf16 tables (a bf16 table gives bf16 rows); rank-2 and rank-3 tables; index
        // tensors of rank 1 and 2; the first and last row always among the indices; one case
        // big enough for the parallel path.
        let cases: [(table: TensorType, indices: [Int])] = [
            (.f32([50, 7]), [3, 5]), (TensorType(.bf16, [33, 4, 5]), [9]),
            (TensorType(.bf16, [1000, 300]), [2, 77]), (.f32([1, 3]), [4]),
        ]
        let b = GraphBuilder(name: "gather")
        for (k, c) in cases.enumerated() {
            b.output("y\(k)", b.gather(b.input("t\(k)", c.table), b.input("i\(k)", .f32(c.indices))))
        }
        let g = try b.finish()
        var inputs = randomInputs(g)
        var rng = SeededGenerator(seed: 5)
        for (k, c) in cases.enumerated() {
            let rows = c.table.shape[0], n = c.indices.reduce(1, *)
            let idx = (0..<n).map { i in i == 0 ? 0 : i == n - 1 ? rows - 1 : Int(rng.next() % UInt64(rows)) }
            inputs["i\(k)"] = Tensor(.f32(c.indices), idx.map(Float.init))
        }
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, tolerance: 0)
    }

    func testGatherOutOfRangeGivesZeroRows() throws {
        // The interpreter rejects these indices; the kernel cannot, so it writes zero rows and
        // never reads outside the table.
        let b = GraphBuilder(name: "gather_bad")
        b.output("y", b.gather(b.input("t", .f32([4, 3])), b.input("i", .f32([6]))))
        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        options.pipeline.passes = ["plan-memory"]
        let exe = try ModelCompiler.build(Module(try b.finish()), weights: TensorStore([:]), options: options).load()
        let table = (0..<12).map { Float($0 + 1) }
        let y = try exe.run(["t": Tensor(.f32([4, 3]), table), "i": Tensor(.f32([6]), [-1, 4, 2.5, .nan, 1e30, 3])])["y"]!
        XCTAssertEqual(y.data, [Float](repeating: 0, count: 15) + [10, 11, 12])
    }

    func testConv2d() throws {
        // (N, C, H, W, O, KH, KW, stride, padding): 3×3 pad 1, 1×1 (direct GEMM), 3×3 stride 2
        // with pad 0 and 1, 1×1 strided and padded (im2col path), asymmetric stride/padding,
        // odd H×W, channels not multiples of 16, N = 2, and one with several im2col tiles.
        // Dilated cases: the weight gradient of a strided convolution is a dilated convolution.
        let cases: [(n: Int, c: Int, h: Int, w: Int, o: Int, kh: Int, kw: Int, stride: [Int], pad: [Int], dil: [Int])] = [
            (1, 3, 13, 7, 5, 3, 3, [1, 1], [1, 1], [1, 1]), (2, 17, 9, 11, 10, 1, 1, [1, 1], [0, 0], [1, 1]),
            (2, 5, 13, 7, 6, 3, 3, [2, 2], [0, 0], [1, 1]), (1, 6, 13, 7, 4, 3, 3, [2, 2], [1, 1], [1, 1]),
            (1, 8, 9, 9, 4, 1, 1, [2, 2], [1, 1], [1, 1]), (2, 3, 10, 12, 7, 3, 5, [1, 2], [0, 2], [1, 1]),
            (1, 64, 48, 48, 20, 3, 3, [1, 1], [1, 1], [1, 1]), (2, 4, 1, 1, 3, 3, 3, [1, 1], [1, 1], [1, 1]),
            (1, 5, 15, 11, 3, 3, 3, [1, 1], [2, 1], [2, 3]), (2, 4, 13, 9, 6, 2, 3, [2, 1], [0, 1], [3, 2]),
        ]
        let b = GraphBuilder(name: "conv2d")
        for (k, c) in cases.enumerated() {
            let x = b.input("x\(k)", .f32([c.n, c.c, c.h, c.w])), w = b.input("w\(k)", .f32([c.o, c.c, c.kh, c.kw]))
            b.output("y\(k)", b.append(.conv2d, [x, w], attributes: ["stride": .ints(c.stride), "padding": .ints(c.pad), "dilation": .ints(c.dil)]))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g))
    }

    func testConv2dWithEpilogueAndLiftedWeights() throws {
        // conv → + bias → SiLU becomes one fusion headed by the convolution; a convolution of
        // weights alone is lifted to the prologue and compiled there.
        let b = GraphBuilder(name: "conv_epilogue")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 3)
        for (k, (c, o, hw, kk)) in [(4, 6, 9, 3), (16, 24, 17, 1), (3, 5, 32, 3)].enumerated() {
            let x = b.input("x\(k)", .f32([1, c, hw, hw + 2]))
            let w = b.weight("w\(k)", .f32([o, c, kk, kk])), bias = b.weight("b\(k)", .f32([o]))
            weights["w\(k)"] = Tensor(.f32([o, c, kk, kk]), rng.normals(o * c * kk * kk))
            weights["b\(k)"] = Tensor(.f32([o]), rng.normals(o))
            let y = b.conv2d(x, w, padding: kk / 2)
            b.output("y\(k)", (y + b.broadcast(b.reshape(bias, [o, 1, 1]), to: y.shape)).apply(.silu))
        }
        let k0 = b.weight("k0", .f32([2, 3, 5, 5])), k1 = b.weight("k1", .f32([4, 3, 3, 3]))
        weights["k0"] = Tensor(.f32([2, 3, 5, 5]), rng.normals(150))
        weights["k1"] = Tensor(.f32([4, 3, 3, 3]), rng.normals(108))
        b.output("lifted", b.conv2d(k0, k1, stride: 2, padding: 1))
        let g = try b.finish()
        let inputs = randomInputs(g)
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, weights: weights, passes: ["fuse-elementwise", "plan-memory"])
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, weights: weights, passes: Array(defaultPipelineNames))
        var options = PipelineOptions()
        options.passes = Array(defaultPipelineNames)
        let (optimized, _) = try runPipeline(Module(g), options)
        XCTAssertEqual(optimized.main.nodes.filter { $0.op == .fusion && $0.region!.nodes.contains { $0.op == .conv2d } }.count, 3)
        XCTAssertEqual(optimized.prologue?.nodes.filter { $0.op == .conv2d }.count, 1)
    }

    func testGroupNorm() throws {
        // groups 1, 4 and 32; odd spatial sizes; 3-D, 4-D and 5-D inputs; one large enough for
        // the parallel path.
        let cases: [(shape: [Int], groups: Int)] = [
            ([2, 8, 5, 7], 4), ([1, 32, 13, 11], 32), ([2, 6, 9], 1), ([1, 8, 3, 5, 7], 4), ([1, 64, 61, 67], 32),
        ]
        let b = GraphBuilder(name: "group_norm")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 11)
        for (k, c) in cases.enumerated() {
            let ch = c.shape[1]
            let g = b.weight("g\(k)", .f32([ch])), be = b.weight("b\(k)", .f32([ch]))
            weights["g\(k)"] = Tensor(.f32([ch]), rng.normals(ch).map { 1 + 0.2 * $0 })
            weights["b\(k)"] = Tensor(.f32([ch]), rng.normals(ch))
            b.output("y\(k)", b.groupNorm(b.input("x\(k)", .f32(c.shape)), scale: g, bias: be, groups: c.groups, eps: 1e-6))
        }
        let g = try b.finish()
        // A large common offset checks the variance computation.
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g, transform: { 30 + $0 }), weights: weights)
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), weights: weights)
    }
}

import Passes
let defaultPipelineNames = defaultPipeline
