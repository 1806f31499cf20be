// Element-wise kernels (elementwise.h and the loops the emitter writes: unary, binary,
// select, broadcasts, fused chains, data movement, constants, rope) against the interpreter.
// Every op three or more shapes, including sizes that are not multiples of 8 or 16.

import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class ElementwiseKernelTests: KernelTestCase {
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "elementwise.h")
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

    /// plan-memory's views: producers write straight into their concat and contiguous slices are
    /// read in place, so neither emits a copy; an input operand, an operand already placed in
    /// another concat, a duplicate and a strided slice are still copied.
    func testViews() throws {
        let b = GraphBuilder(name: "views")
        let x = b.input("x", .f32([1, 16, 16])), y = b.input("y", .f32([1, 8, 16]))
        let a = x.apply(.tanh)
        let joint = b.concat([a, y.apply(.exp)], axis: 1)          // both written in place
        let copied = b.concat([y, a, a], axis: 1)                   // input, placed elsewhere, duplicate
        let sum = joint + b.slice(copied, axis: 1, 0..<24)          // a view of `copied`
        b.output("tail", b.slice(sum, axis: 1, 16..<24).apply(.neg))
        b.output("row", b.slice(sum, axis: 1, 1..<2))               // a view that is a graph output
        b.output("column", b.slice(sum, axis: 2, 1..<2))            // strided: copied
        b.output("nested", b.concat([b.concat([x.apply(.sigmoid), y.apply(.tanh)], axis: 1), x.apply(.neg)], axis: 1))
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), tolerance: 1e-6, inspect: { c in
            let kernels = c.program.steps.map(\.kernel)
            XCTAssertEqual(kernels.filter { $0.contains("_concat_") }.count, 1, "only `copied` copies: \(kernels)")
            XCTAssertEqual(kernels.filter { $0.contains("_slice_") }.count, 1, "only `column` copies: \(kernels)")
        })
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), passes: ["fuse-elementwise", "plan-memory"], tolerance: 1e-6)
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
}
