// The arcflow command line, run as a process: end to end on the examples, and one-line errors
// (non-zero exit, no stack trace) for every kind of bad input.

import Foundation
@testable import Codegen
import IR
import Passes
import Runtime
import TestSupport
import XCTest

final class CLITests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var dir = ""

    override func setUpWithError() throws {
        dir = try makeTemporaryDirectory("arcflow-cli")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    func arcflow(_ args: [String], env: [String: String] = [:]) throws -> CommandResult {
        try runArcflow(args, in: dir, environment: ["ARCFLOW_CACHE_DIR": dir + "/cache"].merging(env) { _, new in new })
    }

    func write(_ name: String, _ text: String) throws -> String {
        let p = "\(dir)/\(name)"
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    let mlpIR = CLITests.root.appendingPathComponent("examples/mlp.ir").path
    let blockIR = CLITests.root.appendingPathComponent("examples/transformer_block.ir").path

    // MARK: End to end

    func testTransformerBlockCompilesRunsAndMatchesInterpreter() throws {
        XCTAssertEqual(try arcflow(["random-weights", blockIR, "-o", "w.safetensors", "--seed", "3"]).status, 0)
        XCTAssertEqual(try arcflow(["random-inputs", blockIR, "-o", "in.safetensors", "--seed", "4"]).status, 0)
        let c = try arcflow(["compile", blockIR, "--weights", "w.safetensors", "-o", "model", "--dump-ir", "ir", "--dump-c"])
        XCTAssertEqual(c.status, 0, c.err)
        XCTAssertTrue(c.out.contains("library built"), c.out)

        // One dump per pass plus the input, numbered, each printing back identically.
        let dumps = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/ir").sorted()
        let changing: Set<String> = ["fuse-elementwise", "plan-memory"]   // the block has no constants, LoRA or weight math
        XCTAssertEqual(dumps, ["000_input.ir"] + defaultPipeline.enumerated().map { i, name in
            String(format: "%03d_%@%@.ir", i + 1, name, changing.contains(name) ? "" : ".unchanged")
        })
        for d in dumps {
            let text = try String(contentsOfFile: "\(dir)/ir/\(d)", encoding: .utf8)
            XCTAssertEqual(Printer.print(try Parser.parseVerified(text)), text, d)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/model/c/main.c"))

        let r = try arcflow(["run", "--model", "model", "--inputs", "in.safetensors", "-o", "out.safetensors", "--profile"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("attention"), "profile lists kernels: \(r.err)")
        try assertBlockOutputMatchesInterpreter("out.safetensors")

        // Same IR again: a cache hit.
        let again = try arcflow(["compile", blockIR, "--weights", "w.safetensors", "-o", "model2"])
        XCTAssertTrue(again.out.contains("library cache hit"), again.out)
    }

    /// The block's output `y` in `file` against the interpreter on w.safetensors and in.safetensors.
    func assertBlockOutputMatchesInterpreter(_ file: String, line: UInt = #line) throws {
        let module = try Parser.parseVerified(try String(contentsOfFile: blockIR, encoding: .utf8))
        let weights = try SafeTensorsStore(path: "\(dir)/w.safetensors"), inputs = try SafeTensorsStore(path: "\(dir)/in.safetensors")
        let expected = try Interpreter.run(module, inputs: ["x": try inputs.tensor("x")]) { k, _ in try weights.tensor(k) }
        let err = relativeL2(try SafeTensorsStore(path: "\(dir)/\(file)").tensor("y"), expected["y"]!)
        XCTAssertLessThan(err, 1e-5, "relative L2 \(err)", line: line)
    }

    /// clang builds link and run: a clang newer than the libomp found (the Swift toolchain's clang
    /// 21 beside Debian's libomp 14) calls __kmpc_dispatch_deinit after every dynamically scheduled
    /// loop (the GEMM's and attention's), which the prelude object then defines (common.h).
    func testClangBuildsLinkAndMatchInterpreter() throws {
        guard let clang = resolveExecutable("clang", ProcessInfo.processInfo.environment) else { throw XCTSkip("no clang in PATH") }
        XCTAssertEqual(try arcflow(["random-weights", blockIR, "-o", "w.safetensors", "--seed", "3"]).status, 0)
        XCTAssertEqual(try arcflow(["random-inputs", blockIR, "-o", "in.safetensors", "--seed", "4"]).status, 0)
        let c = try arcflow(["compile", blockIR, "--weights", "w.safetensors", "-o", "model"], env: ["ARCFLOW_CC": clang])
        XCTAssertEqual(c.status, 0, c.err)
        let compiles = try LoadedModel.readManifest("\(dir)/model").commands.filter { $0.contains(" -c ") }
        XCTAssertTrue(!compiles.isEmpty && compiles.allSatisfy { $0.hasPrefix(clang + " ") }, "\(compiles)")
        let r = try arcflow(["run", "--model", "model", "--inputs", "in.safetensors", "-o", "out.safetensors", "--threads", "2"])
        XCTAssertEqual(r.status, 0, r.err)
        try assertBlockOutputMatchesInterpreter("out.safetensors")
    }

    /// Every command the top help lists answers --help, fitted to $COLUMNS (100 without it): no line
    /// longer unless it is one unbreakable word, and the same words in the same order as unwrapped.
    func testHelpOnEveryCommand() throws {
        func help(_ args: [String], columns: Int) throws -> String {
            let r = try arcflow(args, env: ["COLUMNS": "\(columns)"])
            XCTAssertEqual(r.status, 0, "\(args)")
            return r.out
        }
        func assertFits(_ text: String, _ columns: Int, _ what: String) {
            for line in text.split(separator: "\n") where line.count > columns {
                XCTAssertFalse(line.drop { $0 == " " }.contains(" "), "\(what), \(columns) columns: \(line)")
            }
        }
        let top = try help(["--help"], columns: 100)
        let listed = top.components(separatedBy: "\ncommands:\n")[1].components(separatedBy: "\n\n")[0]
            .split(separator: "\n").filter { $0.hasPrefix("  ") && !$0.hasPrefix("   ") }.map { String($0.split(separator: " ")[0]) }
        XCTAssertEqual(listed.count, 18, top)
        for c in ["dump-ir", "compile", "generate", "run", "bench", "train", "distill-default", "average-adapters", "example"] {
            XCTAssertTrue(listed.contains(c), "\(c) missing from \(listed)")
        }
        for args in [["--help"]] + listed.map { [$0, "--help"] } {
            let wide = try help(args, columns: 100_000)
            if args.count > 1 { XCTAssertTrue(wide.hasPrefix("usage: arcflow \(args[0])"), wide) }
            for columns in [100, 60] {
                let text = try help(args, columns: columns)
                assertFits(text, columns, "\(args)")
                XCTAssertEqual(text.split(whereSeparator: \.isWhitespace), wide.split(whereSeparator: \.isWhitespace), "\(args) at \(columns)")
            }
        }
        let bad = try arcflow(["compile", "--frobnicate"], env: ["COLUMNS": "100"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.err.contains("unknown option --frobnicate"), bad.err)
        assertFits(bad.err.components(separatedBy: "\n").dropFirst().joined(separator: "\n"), 100, "usage after an error")
    }

    func testDumpIRWithNoPassesPrintsTheParsedGraph() throws {
        let r = try arcflow(["dump-ir", mlpIR, "--passes", "none"])
        XCTAssertEqual(r.out, try String(contentsOfFile: mlpIR, encoding: .utf8))
        let fused = try arcflow(["dump-ir", mlpIR, "--print-after", "fuse-elementwise", "--time-passes"])
        XCTAssertTrue(fused.out.contains("fusion"), fused.out)
        XCTAssertTrue(fused.err.contains("IR Dump After fuse-elementwise"), fused.err)
        XCTAssertTrue(fused.err.contains("pass timing"), fused.err)
    }

    // MARK: Bad input

    /// `--weights-dtype`: bf16 panels in the folder (half the f32 bytes for the packed weights,
    /// which the manifest records), results near the f32 build; a bad value is a usage error.
    func testWeightsDType() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        XCTAssertEqual(try arcflow(["random-inputs", mlpIR, "-o", "in.safetensors"]).status, 0)
        for dtype in ["f32", "bf16"] {
            let c = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", dtype, "--weights-dtype", dtype])
            XCTAssertEqual(c.status, 0, c.err)
            XCTAssertEqual(try arcflow(["run", "--model", dtype, "--inputs", "in.safetensors", "-o", "\(dtype).out.safetensors"]).status, 0)
            let m = try LoadedModel.readManifest("\(dir)/\(dtype)")
            let packed = m.weights.filter { $0.packing != nil }
            XCTAssertEqual(packed.map(\.name).sorted(), ["fc1.weight", "fc2.weight"])
            XCTAssertEqual(packed.first { $0.name == "fc1.weight" }?.shape, [8, 64, 32], "256 columns in 8 panels of 32, K = 64")
            XCTAssertTrue(packed.allSatisfy { $0.dtype == dtype })
        }
        let f32 = try SafeTensorsStore(path: "\(dir)/f32.out.safetensors").tensor("y")
        let bf16 = try SafeTensorsStore(path: "\(dir)/bf16.out.safetensors").tensor("y")
        XCTAssertLessThan(relativeL2(bf16, f32), 1e-2)
        XCTAssertGreaterThan(relativeL2(bf16, f32), 0, "bf16 panels round the weights")
        let bad = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "x", "--weights-dtype", "int4"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.err.contains("--weights-dtype must be auto, f32, bf16, f16 or int8, got 'int4'"), bad.err)
    }

    /// Compiles mlp.ir with w.safetensors into `folder` under `env`, which must build a library of its
    /// own (not another build's cache entry); the manifest's compile commands.
    func compileOwnEntry(_ folder: String, env: [String: String]) throws -> [String] {
        let c = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", folder], env: env)
        XCTAssertEqual(c.status, 0, c.err)
        XCTAssertTrue(c.out.contains("library built"), "\(env) is another build's cache entry: \(c.out)")
        let compiles = try LoadedModel.readManifest("\(dir)/\(folder)").commands.filter { $0.contains(" -c ") }
        XCTAssertFalse(compiles.isEmpty)
        return compiles
    }

    /// `ARCFLOW_CC_OPT` sets the optimization level of the generated C (the manifest's compile
    /// commands show it); each level is a cache entry of its own; a bad value is a one-line error.
    func testOptimizationLevel() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        for (level, folder) in [("-O2", "o2"), ("-O3", "o3")] {
            let compiles = try compileOwnEntry(folder, env: ["ARCFLOW_CC_OPT": level])
            XCTAssertTrue(compiles.allSatisfy { $0.contains(" \(level) ") }, "\(compiles)")
        }
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["ARCFLOW_CC_OPT": "-O9"]),
                           contains: "ARCFLOW_CC_OPT must be -O0, -O1, -O2, -O3 or -Os, got '-O9'")
    }

    /// `ARCFLOW_CC_DEFINES` sets prelude macros (`-D` in every compile command, a cache entry of its
    /// own, the same results); anything but `AF_` macros with plain values is a one-line error.
    func testPreludeDefines() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors", "--seed", "1"]).status, 0)
        XCTAssertEqual(try arcflow(["random-inputs", mlpIR, "-o", "in.safetensors", "--seed", "2"]).status, 0)
        for (defines, folder) in [("", "plain"), ("AF_GEMM_TPT=4L AF_GEMM_KC=128L", "tuned")] {
            let compiles = try compileOwnEntry(folder, env: ["ARCFLOW_CC_DEFINES": defines])
            XCTAssertTrue(compiles.allSatisfy { $0.contains(" -DAF_GEMM_TPT=4L -DAF_GEMM_KC=128L ") == !defines.isEmpty }, "\(compiles)")
            let r = try arcflow(["run", "--model", folder, "--inputs", "in.safetensors", "-o", "\(folder).safetensors"])
            XCTAssertEqual(r.status, 0, r.err)
        }
        // fc2's K = 256 runs as two K blocks of 128 in the tuned build: other sums, the same values
        let err = relativeL2(try SafeTensorsStore(path: "\(dir)/tuned.safetensors").tensor("y"),
                             try SafeTensorsStore(path: "\(dir)/plain.safetensors").tensor("y"))
        XCTAssertLessThan(err, 1e-6)
        for bad in ["-ffast-math", "GEMM_TPT=4", "AF_GEMM_TPT=$(rm)", "AF_X="] {
            assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["ARCFLOW_CC_DEFINES": bad]),
                               contains: "ARCFLOW_CC_DEFINES takes space-separated AF_NAME or AF_NAME=VALUE")
        }
    }

    func testUnparsableIR() throws {
        let f = try write("bad.ir", "graph @g {\n  %x = input \"x\" : f32[2,\n}\n")
        assertOneLineError(try arcflow(["dump-ir", f]), contains: "bad.ir:3:1: expected an integer, found '}'")
    }

    func testShapeMismatchNamesTheOp() throws {
        let f = try write("shape.ir", "graph @g {\n  %x = input \"x\" : f32[2,3]\n  %y = matmul %x, %x : f32[2,3]\n  output \"y\" %y\n}\n")
        assertOneLineError(try arcflow(["dump-ir", f]), contains: "shape.ir: line 3: matmul %y in @g: contraction sizes differ")
    }

    func testMissingAndMistypedWeights() throws {
        try writeSafeTensors([TensorRecord(name: "fc1.weight", dtype: .f32, shape: [64, 256], payload: .floats(Array(repeating: 0, count: 64 * 256)))],
                             to: "\(dir)/wrong.safetensors")
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "wrong.safetensors", "-o", "m"]),
                           contains: "weight 'fc1.weight' in wrong.safetensors is f32[64,256], expected f32[256,64]")
        try writeSafeTensors([TensorRecord(name: "fc1.weight", dtype: .bf16, shape: [256, 64], payload: .floats(Array(repeating: 0, count: 64 * 256)))],
                             to: "\(dir)/dtype.safetensors")
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "dtype.safetensors", "-o", "m"]),
                           contains: "weight 'fc1.weight' in dtype.safetensors is bf16[256,64], expected f32[256,64]")
        try writeSafeTensors([], to: "\(dir)/empty.safetensors")
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "empty.safetensors", "-o", "m"]),
                           contains: "missing weight 'fc1.weight' (expected f32[256,64])")
    }

    func testTruncatedAndLyingSafetensors() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        let full = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/w.safetensors"))
        try full.prefix(full.count - 100).write(to: URL(fileURLWithPath: "\(dir)/truncated.safetensors"))
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "truncated.safetensors", "-o", "m"]), contains: "truncated.safetensors")
        var lying = full
        lying.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Data($0) })
        try lying.write(to: URL(fileURLWithPath: "\(dir)/lying.safetensors"))
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "lying.safetensors", "-o", "m"]), contains: "lying.safetensors")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: "\(dir)/tiny.safetensors"))
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "tiny.safetensors", "-o", "m"]), contains: "tiny.safetensors")
    }

    func testNoCompilerAndCompilerFailure() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["ARCFLOW_CC": "/nonexistent/cc"]),
                           contains: "no C compiler found: ARCFLOW_CC=/nonexistent/cc is not an executable")
        assertOneLineError(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["PATH": "/nonexistent"]),
                           contains: "no C compiler found (looked for gcc, cc and clang in PATH)")
        // A "compiler" that answers --version but rejects every source.
        let fake = try write("fakecc", "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fakecc 1.0'; exit 0; fi\necho 'fakecc: error: no thanks' >&2\nexit 3\n")
        chmod(fake, 0o755)
        let r = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"], env: ["ARCFLOW_CC": fake])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("C compiler failed (exit 3): \(fake) -std=c11"), r.err)
        XCTAssertTrue(r.err.contains("fakecc: error: no thanks"), r.err)
        XCTAssertFalse(r.err.contains("Backtrace"))
    }

    func testCorruptedCacheEntryIsRebuiltNotLoaded() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        XCTAssertEqual(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]).status, 0)
        let cache = "\(dir)/cache"
        // Two entries: the library and the prelude object it links. Both corrupted, both rebuilt.
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache).filter { !$0.hasPrefix(".") }
        XCTAssertEqual(entries.count, 2)
        for e in entries {
            let file = FileManager.default.fileExists(atPath: "\(cache)/\(e)/lib.so") ? "lib.so" : "prelude.o"
            try Data("garbage".utf8).write(to: URL(fileURLWithPath: "\(cache)/\(e)/\(file)"))
        }
        let r = try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m", "-v"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err.components(separatedBy: "is corrupted; rebuilding").count - 1, 2, r.err)
        XCTAssertTrue(r.out.contains("library built"), r.out)
        // A corrupted model folder is refused, not loaded.
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: "\(dir)/m/model.so"))
        XCTAssertEqual(try arcflow(["random-inputs", mlpIR, "-o", "in.safetensors"]).status, 0)
        assertOneLineError(try arcflow(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "o.safetensors"]),
                           contains: "model.so does not match its manifest")
    }

    func testRunRejectsWrongInputs() throws {
        XCTAssertEqual(try arcflow(["random-weights", mlpIR, "-o", "w.safetensors"]).status, 0)
        XCTAssertEqual(try arcflow(["compile", mlpIR, "--weights", "w.safetensors", "-o", "m"]).status, 0)
        try writeSafeTensors([TensorRecord(name: "x", dtype: .f32, shape: [8, 65], payload: .floats(Array(repeating: 0, count: 8 * 65)))],
                             to: "\(dir)/in.safetensors")
        assertOneLineError(try arcflow(["run", "--model", "m", "--inputs", "in.safetensors", "-o", "o.safetensors"]),
                           contains: "input 'x' in in.safetensors is f32[8,65], expected f32[8,64]")
        assertOneLineError(try arcflow(["run", "--model", "nowhere", "--inputs", "in.safetensors", "-o", "o.safetensors"]),
                           contains: "nowhere is not a compiled model")
    }
}
