// The int8 GEMM (gemm_int8.h) against the interpreter: weights marked by quantize-weights stand
// for their int8 codes times scales in both, so the comparison is as tight as the f32 GEMM's.

import Codegen
import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class Int8GemmKernelTests: XCTestCase {
    /// Odd M, N and K (tails of the 14- or 6-row tile, the 32-column panel, the 256-deep K block
    /// and the last group of 32); M = 1 (its own kernel), serial and parallel, bare and fused; A batched; both orientations; a weight shared by two
    /// GEMMs; bias, bias + GELU, bias + SiLU in the store. A weight also read element-wise and
    /// a left operand are not quantized (OpenBLAS on exact f32).
    @discardableResult
    func checkInt8GEMM(group: String, march: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> CProgram {
        let cases: [(a: [Int], n: Int, transposed: Bool)] = [
            ([1, 300], 33, true), ([13, 7], 1, false), ([29, 65], 100, true), ([2, 15, 257], 31, false),
            ([257, 512], 64, true), ([130, 96], 300, false), ([3, 1], 45, true),
            ([500, 40], 70, true), // two row blocks (252 + 248 rows of AF_GEMM_MB's 336; AVX2: one, weight-outer)
            ([200, 1100], 70, true), // K blocks of 512, 512 and 76 (AVX2; 256s and 76 on AVX-512), one packed at a time weight-outer
            ([1, 1000], 1100, true), // M = 1 in parallel (af__i8_gemv): 35 panels, a partial pass of 4
        ]
        let b = GraphBuilder(name: "int8_gemm")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 23)
        func weight(_ name: String, _ shape: [Int]) -> Value {
            weights[name] = Tensor(.f32(shape), rng.normals(shape.reduce(1, *)))
            return b.weight(name, .f32(shape))
        }
        for (i, c) in cases.enumerated() {
            let k = c.a.last!
            let w = weight("w\(i)", c.transposed ? [c.n, k] : [k, c.n])
            b.output("y\(i)", b.matmul(b.input("x\(i)", .f32(c.a)), w, transposeB: c.transposed))
        }
        let x = b.input("xf", .f32([37, 45])), wf = weight("wf", [70, 45]), bias = weight("bf", [70])
        b.output("fused", b.input("rf", .f32([37, 70])) + b.linear(x, weight: wf, bias: bias).apply(.gelu))
        b.output("shared", b.linear(b.input("xs", .f32([5, 45])), weight: wf, bias: nil))
        b.output("row_fused", b.linear(b.input("xr", .f32([1, 45])), weight: wf, bias: bias).apply(.gelu))
        let xe2 = b.input("xe2", .f32([33, 45]))
        b.output("bias", b.linear(xe2, weight: weight("wb", [70, 45]), bias: bias))
        b.output("bias_silu", b.linear(xe2, weight: weight("ws", [70, 45]), bias: bias).apply(.silu))
        let we = weight("we", [9, 20])
        b.output("elementwise", b.linear(b.input("xe", .f32([4, 20])), weight: we, bias: nil) + b.slice(we, start: [0, 0], end: [4, 9]))
        b.output("left", b.matmul(weight("wl", [6, 11]), b.input("xl", .f32([11, 8]))))
        var module = Module(try b.finish())

        let context = PassContext(options: ["quantize-weights.dtype": "int8", "quantize-weights.group": group])
        try quantizeWeights.run(&module, context)
        let marked = module.main.nodes.filter { $0.attributes["quantize"] != nil }.map { $0.key! }.sorted()
        let expected = (cases.indices.map { "w\($0)" } + ["wf", "wb", "ws"]).sorted()
        XCTAssertEqual(marked, expected, file: file, line: line)
        for n in module.main.nodes where n.attributes["quantize"] != nil {
            let k = n.type.shape[n.int("quant_axis")!]
            XCTAssertEqual(n.int("quant_group"), group == "channel" ? k : min(32, k), n.key!, file: file, line: line)
        }

        var program: CProgram?
        try assertCompiledMatchesInterpreter(module, inputs: randomInputs(module.main), weights: weights,
                                             passes: ["fuse-elementwise", "plan-memory"],
                                             configure: { $0.weightsDType = .int8; $0.march = march }, inspect: { program = $0.program },
                                             file: file, line: line)
        let packed = program!.weights.filter { $0.packing?.group != nil }
        XCTAssertEqual(packed.map(\.name).sorted(), expected, file: file, line: line)
        XCTAssertTrue(packed.allSatisfy { $0.dtype == "i8" }, "\(packed)", file: file, line: line)
        let calls = program!.sources.map { $0.text.components(separatedBy: "af_gemm_packed_int8(in").count - 1 }.reduce(0, +)
        XCTAssertEqual(calls, cases.count + 5, "one int8 GEMM call per kernel", file: file, line: line)
        return program!
    }

    func testInt8GEMMPerBlockOf32() throws { try checkInt8GEMM(group: "32") }

    func testInt8GEMMPerChannel() throws { try checkInt8GEMM(group: "channel") }

    /// The AVX2 (6 x 16 tiles) and portable paths.
    func testInt8GEMMOnAVX2AndPortable() throws {
        #if arch(x86_64)
        try checkInt8GEMM(group: "32", march: "x86-64-v3")
        try checkInt8GEMM(group: "channel", march: "x86-64")
        #endif
    }

    /// The quantizer: the largest magnitude of a group maps to ±127 exactly, codes stay within
    /// ±127, an all-zero group stays zero, and the error is at most half a step per element.
    func testInt8Dequantized() {
        let w = Tensor(.f32([3, 5]), [0.5, -1, 0.25, 0.1, 0, 0, 0, 0, 0, 0, 3, 2, -1, 0.001, -3])
        let q = int8Dequantized(w, axis: 1, group: 5)
        XCTAssertEqual(q.data[1], -1)
        XCTAssertEqual(Array(q.data[5..<10]), [0, 0, 0, 0, 0])
        XCTAssertEqual(q.data[10], 3)
        XCTAssertEqual(q.data[14], -3)
        for (i, (a, b)) in zip(w.data, q.data).enumerated() {
            let scale: Float = i < 5 ? 1.0 / 127 : i < 10 ? 0 : 3.0 / 127
            XCTAssertLessThanOrEqual(abs(a - b), scale / 2 * 1.0001, "element \(i)")
        }
        // Along axis 0 in groups of 2: column 0 = [0.5, 0] then [0, 3] then [0, ...].
        let q0 = int8Dequantized(w, axis: 0, group: 2)
        XCTAssertEqual(q0.data[0], 0.5)
        XCTAssertEqual(q0.data[10], 3)
        XCTAssertEqual(int8Code(1000, scale: 1), 127)
        XCTAssertEqual(int8Code(1, scale: 0), 0)
    }
}
