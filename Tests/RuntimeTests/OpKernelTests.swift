// Every op: the generated kernel against the interpreter, three or more shapes each,
// including sizes that are not multiples of 8 or 16.

import IR
import Runtime
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
}

import Passes
let defaultPipelineNames = defaultPipeline
