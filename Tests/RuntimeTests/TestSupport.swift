// Helpers: compile a graph with the real toolchain and compare against the interpreter.

import Codegen
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
                                      configure: (inout CompileOptions) -> Void = { _ in }, inspect: (CompiledProgram) -> Void = { _ in },
                                      file: StaticString = #filePath, line: UInt = #line) throws -> [String: Comparison] {
    assertRoundTrips(module, file: file, line: line)
    let expected = try Interpreter.run(module, inputs: inputs) { key, _ in
        guard let w = weights[key] else { throw ArcError("no weight \(key)") }
        return w
    }
    var options = CompileOptions()
    options.cacheRoot = testCacheRoot
    options.pipeline.passes = passes
    configure(&options)
    let compiled = try ModelCompiler.build(module, weights: TensorStore(weights), options: options)
    inspect(compiled)
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

/// The default pass list, for kernel tests that also run the whole pipeline.
let defaultPipelineNames = defaultPipeline

/// Base of the per-family kernel tests: one graph per op with one subgraph per shape, compiled
/// and compared with the interpreter.
/// These are the tests of the generated C itself, so they build it as users get it: at -O3 even
/// when the test command sets `ARCFLOW_CC_OPT=-O1` for the model suites (strict aliasing,
/// vectorization and -Wmaybe-uninitialized differ between levels). Their graphs are small.
class KernelTestCase: XCTestCase {
    private var savedOptimization: String?

    override func setUp() {
        super.setUp()
        savedOptimization = ProcessInfo.processInfo.environment["ARCFLOW_CC_OPT"]
        setenv("ARCFLOW_CC_OPT", "-O3", 1)
    }

    override func tearDown() {
        if let s = savedOptimization { setenv("ARCFLOW_CC_OPT", s, 1) } else { unsetenv("ARCFLOW_CC_OPT") }
        super.tearDown()
    }

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
}

/// The prelude families up to and including `family` (each builds on those before it) compile
/// on their own with -Wall -Wextra -Werror, for this CPU, for AVX2 (x86-64-v3) and for the
/// portable path (x86-64), with the generator's other flags.
func assertPreludeCompilesWithoutWarnings(through family: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let families = CCodegen.preludeFamilies
    guard let last = families.firstIndex(where: { $0.name == family }) else {
        return XCTFail("no prelude family \(family)", file: file, line: line)
    }
    try assertCompilesWithoutWarnings(families[...last].map(\.text).joined(separator: "\n"), name: family, file: file, line: line)
}

/// `text` compiles with -Wall -Wextra -Werror for this CPU, x86-64-v3 and x86-64.
func assertCompilesWithoutWarnings(_ text: String, name: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let toolchain = try Toolchain.detect()
    let dir = try makeTemporaryDirectory("arcflow-prelude")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let source = "\(dir)/\(name).c"
    try text.write(toFile: source, atomically: true, encoding: .utf8)
    #if arch(x86_64)
    let arches = ["native", "x86-64-v3", "x86-64"]
    #else
    let arches = ["native"]
    #endif
    for arch in arches {
        let flags = toolchain.compileFlags.map { $0.hasPrefix("-march=") ? "-march=\(arch)" : $0 }
        let r = try runProcess(toolchain.compiler, flags + ["-Wall", "-Wextra", "-Werror", "-c", source, "-o", "\(dir)/out.o"])
        XCTAssertEqual(r.status, 0, "\(name) with -march=\(arch): \(r.error)", file: file, line: line)
    }
}
