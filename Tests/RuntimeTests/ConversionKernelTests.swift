// Conversion kernels (conversions.h: bf16/f16 storage, gathers of any storage type)
// against the interpreter.
// Every op three or more shapes, including sizes that are not multiples of 8 or 16.

import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class ConversionKernelTests: KernelTestCase {
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "conversions.h")
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
}
