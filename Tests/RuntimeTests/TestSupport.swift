// Helpers: compile a graph with the real toolchain and compare against the interpreter.

import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest

struct Comparison {
    var relativeL2: Double
    var maxAbsError: Double
    var maxAbsReference: Double
}

/// Random inputs from a seeded generator, shaped for each graph input; `transform` adjusts a
/// value (e.g. positive for log).
func randomInputs(_ graph: Graph, seed: UInt64 = 1, transform: (Float) -> Float = { $0 }) -> [String: Tensor] {
    var rng = SeededGenerator(seed: seed)
    var inputs: [String: Tensor] = [:]
    for id in graph.inputs {
        let t = graph[id].type
        inputs[graph[id].key!] = Tensor(t, rng.normals(t.count).map { roundToStorage(transform($0), t.dtype) })
    }
    return inputs
}

/// Compiles `module` (default: only memory planning, so each op gets its own kernel), runs it
/// and the interpreter on the same inputs and weights, and asserts every output agrees.
@discardableResult
func assertCompiledMatchesInterpreter(_ module: Module, inputs: [String: Tensor], weights: [String: Tensor] = [:],
                                      passes: [String] = ["plan-memory"], tolerance: Double = 1e-5,
                                      file: StaticString = #filePath, line: UInt = #line) throws -> [String: Comparison] {
    assertRoundTrips(module, file: file, line: line)
    let expected = try Interpreter.run(module, inputs: inputs) { key, _ in
        guard let w = weights[key] else { throw ArcError("no weight \(key)") }
        return w
    }
    var options = CompileOptions()
    options.cacheRoot = testCacheRoot
    options.pipeline.passes = passes
    let compiled = try ModelCompiler.build(module, weights: TensorStore(weights), options: options)
    assertRoundTrips(compiled.module, file: file, line: line)
    let got = try compiled.load().run(inputs)
    var results: [String: Comparison] = [:]
    for (name, want) in expected {
        guard let g = got[name] else { XCTFail("missing output \(name)", file: file, line: line); continue }
        XCTAssertEqual(g.type, want.type, file: file, line: line)
        let (maxErr, maxRef) = maxErrors(g, want)
        let c = Comparison(relativeL2: relativeL2(g, want), maxAbsError: maxErr, maxAbsReference: maxRef)
        results[name] = c
        XCTAssertLessThanOrEqual(c.relativeL2, tolerance, "output \(name) \(want.type): relative L2 error \(c.relativeL2)", file: file, line: line)
        XCTAssertLessThanOrEqual(c.maxAbsError, tolerance * max(c.maxAbsReference, 1e-30) * 10,
                                 "output \(name): max abs error \(c.maxAbsError) vs max |ref| \(c.maxAbsReference)", file: file, line: line)
    }
    return results
}
