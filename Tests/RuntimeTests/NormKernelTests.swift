// Norm, softmax and reduction kernels (norms.h) against the interpreter.
// Every op three or more shapes, including sizes that are not multiples of 8 or 16.

import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class NormKernelTests: KernelTestCase {
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "norms.h")
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

    /// Additive masks: -inf entries are exactly 0 after softmax, never NaN (the TwoSum correction
    /// of exp(x - max) met -inf - (-inf)), along the last axis and a strided one.
    func testSoftmaxOfMaskedRows() throws {
        let b = GraphBuilder(name: "masked_softmax")
        let x = b.input("x", .f32([3, 37])), m = b.input("m", .f32([3, 37]))
        let y = b.input("y", .f32([3, 5, 4])), n = b.input("n", .f32([3, 5, 4]))
        b.output("last", b.softmax(x + m, axis: 1))
        b.output("strided", b.softmax(y + n, axis: 1))
        var rng = SeededGenerator(seed: 4)
        func mask(_ count: Int) -> [Float] { (0..<count).map { $0 % 3 == 1 ? -.infinity : 0 } }
        let inputs = ["x": Tensor(.f32([3, 37]), rng.normals(111)), "m": Tensor(.f32([3, 37]), mask(111)),
                      "y": Tensor(.f32([3, 5, 4]), rng.normals(60)), "n": Tensor(.f32([3, 5, 4]), mask(60))]
        let g = try b.finish()
        // The interpreter (exp(x − max) directly) gives exact zeros there; a NaN fails the comparison.
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs)
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
