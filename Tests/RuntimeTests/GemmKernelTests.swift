// GEMM and convolution kernels (gemm.h and the GEMM calls the emitter writes) against the
// interpreter.
// Every op three or more shapes, including sizes that are not multiples of 8 or 16.

import Foundation
import IR
import Passes
import Runtime
import TestSupport
import XCTest
import Codegen

final class GemmKernelTests: KernelTestCase {
    func testPreludeFamilyCompilesWithoutWarnings() throws {
        try assertPreludeCompilesWithoutWarnings(through: "gemm.h")
    }

    /// What every library is built from compiles clean: the prelude object (every family with its
    /// entry points external, then api.h, which the compiler checks against their definitions) and
    /// the header of each generated translation unit (the inlined families and api.h). api.h
    /// declares exactly the families' AF__API functions.
    func testPreludeObjectAndKernelHeaderCompileWithoutWarnings() throws {
        try assertCompilesWithoutWarnings(CCodegen.preludeObjectSource, name: "prelude")
        try assertCompilesWithoutWarnings(CCodegen.kernelHeader, name: "kernel_header")
        func entryPoints(_ text: String) throws -> Set<String> {
            let re = try NSRegularExpression(pattern: "^AF__API [a-z]+ (af_[a-z0-9_]+)\\(", options: .anchorsMatchLines)
            return Set(re.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { String(text[Range($0.range(at: 1), in: text)!]) })
        }
        let api = CCodegen.preludeAPI
        let defined = try entryPoints(CCodegen.preludeFamilies.map(\.text).joined(separator: "\n"))
        XCTAssertEqual(defined.count, 22, "\(defined.sorted())")
        XCTAssertEqual(try entryPoints(api), defined)
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
            // M >= 512 with an unpacked B: our GEMM with B copied into panels (af_gemm_f32), N not
            // a multiple of the panel width, B transposed or not, a batch folded into M.
            ([520, 37], [37, 45], false, false),
            ([2, 300, 70], [33, 70], false, true),
            ([512, 300], [300, 16], false, false),
        ]
        let b = GraphBuilder(name: "matmul")
        for (k, c) in cases.enumerated() {
            let x = b.input("a\(k)", .f32(c.0)), y = b.input("b\(k)", .f32(c.1))
            b.output("y\(k)", b.matmul(x, y, transposeA: c.2, transposeB: c.3))
        }
        let g = try b.finish()
        try assertCompiledMatchesInterpreter(Module(g), inputs: randomInputs(g), inspect: { program in
            let own = program.program.sources.map { $0.text.components(separatedBy: "af_gemm_f32(in").count - 1 }.reduce(0, +)
            XCTAssertEqual(own, 3, "the three tall products run on af_gemm_f32")
        })
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

    /// Matmuls whose right operand is a weight run our GEMM over packed panels: odd M, N and K;
    /// tails of the row tile (14 or 6), the taller row blocks of a large M, the 32-column panel (a last panel of 1-16 columns
    /// runs the one-vector tile: N = 33, 100, 300, 45, 40, 70) and the 256-deep K block (512 with bf16 compute); row blocks
    /// sharing the row tiles and panel groups chosen for the thread count; M = 1 (f32: its own
    /// kernel), serial and parallel, bare and fused; A
    /// batched (folded into M); both orientations; one weight read by two GEMMs; a GEMM-headed
    /// fusion (bias, GELU, residual). A weight also read element-wise, and one used as the left
    /// operand, stay unpacked (OpenBLAS). The oracle is the interpreter on the weights rounded to
    /// the storage type: the kernel's arithmetic is f32 on exactly those values. With `compute`
    /// bf16 the inputs are bf16 values too (the GEMM rounds A to bf16, which then changes nothing),
    /// so only the order of the f32 sums differs from the oracle; K = 257, 65, 7 and 1 give odd
    /// last K blocks (an unpaired k).
    @discardableResult
    func checkPackedGEMM(_ dtype: WeightsDType, compute: GEMMCompute = .f32, march: String? = nil,
                         file: StaticString = #filePath, line: UInt = #line) throws -> CProgram {
        let storage: DType = dtype == .bf16 || compute == .bf16 ? .bf16 : dtype == .f16 ? .f16 : .f32
        let cases: [(a: [Int], n: Int, transposed: Bool)] = [
            ([1, 300], 33, true), ([13, 7], 1, false), ([29, 65], 100, true), ([2, 15, 257], 31, false),
            ([257, 512], 64, true), ([130, 96], 300, false), ([3, 1], 45, true),
            // 18 row tiles in one row block (the last tile 12 rows) × 24 panels in 2 groups.
            ([250, 40], 768, true),
            // Three K blocks of bf16 compute (512, 512, then an odd 7) and five of f32 and 16-bit
            // (AVX2's f32: three, kc 512).
            ([20, 1031], 40, true),
            // M = 1 in parallel (f32: af__gemv): 35 panels, four at a time, the last pass partial.
            ([1, 1000], 1100, true),
            // 50 row tiles over 3 row blocks (17 + 17 + 16) × 3 panels in 2 groups (the count that
            // splits the tiles evenly over 2 threads: 3 × 1 would leave one waiting), three K blocks.
            ([700, 600], 70, true),
        ]
        let b = GraphBuilder(name: "packed_gemm_\(dtype.rawValue)")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 21)
        func weight(_ name: String, _ shape: [Int]) -> Value {
            weights[name] = Tensor(.f32(shape), rng.normals(shape.reduce(1, *)).map { roundToStorage($0, storage) })
            return b.weight(name, .f32(shape))
        }
        for (i, c) in cases.enumerated() {
            let k = c.a.last!
            let w = weight("w\(i)", c.transposed ? [c.n, k] : [k, c.n])
            b.output("y\(i)", b.matmul(b.input("x\(i)", .f32(c.a)), w, transposeB: c.transposed))
        }
        // A fusion headed by the GEMM; a weight shared by two GEMMs.
        let x = b.input("xf", .f32([37, 45])), wf = weight("wf", [70, 45]), bias = weight("bf", [70])
        let r = b.input("rf", .f32([37, 70]))
        b.output("fused", r + b.linear(x, weight: wf, bias: bias).apply(.gelu))
        b.output("shared", b.linear(b.input("xs", .f32([5, 45])), weight: wf, bias: nil))
        b.output("row_fused", b.linear(b.input("xr", .f32([1, 45])), weight: wf, bias: bias).apply(.silu))
        // Fusions the GEMM finishes in its store: bias; bias + GELU; bias + SiLU (M = 33 > 14, N = 70).
        let xe2 = b.input("xe2", .f32([33, 45]))
        let wb = weight("wb", [70, 45])
        b.output("bias", b.linear(xe2, weight: wb, bias: bias))
        b.output("bias_gelu", b.linear(xe2, weight: weight("wg", [70, 45]), bias: bias).apply(.gelu))
        b.output("bias_silu", b.linear(xe2, weight: weight("ws", [70, 45]), bias: bias).apply(.silu))
        // Not packable: read element-wise too; the left operand.
        let we = weight("we", [9, 20])
        b.output("elementwise", b.linear(b.input("xe", .f32([4, 20])), weight: we, bias: nil) + b.slice(we, start: [0, 0], end: [4, 9]))
        let wl = weight("wl", [6, 11])
        b.output("left", b.matmul(wl, b.input("xl", .f32([11, 8]))))
        let g = try b.finish()
        var program: CProgram?
        let inputs = randomInputs(g, transform: { compute == .bf16 ? roundToStorage($0, .bf16) : $0 })
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, weights: weights, passes: ["fuse-elementwise", "plan-memory"],
                                             configure: { $0.weightsDType = dtype; $0.compute = compute; $0.march = march },
                                             inspect: { program = $0.program }, file: file, line: line)
        let packed = program!.weights.filter { $0.packing != nil }
        XCTAssertEqual(packed.map(\.name).sorted(), (cases.indices.map { "w\($0)" } + ["wf", "wb", "wg", "ws"]).sorted(), file: file, line: line)
        XCTAssertTrue(packed.allSatisfy { $0.dtype == storage.rawValue }, "\(packed)", file: file, line: line)
        let calls = program!.sources.map { $0.text.components(separatedBy: "af_gemm_packed(in").count - 1 }.reduce(0, +)
        XCTAssertEqual(calls, cases.count + 6, "one packed GEMM call per kernel", file: file, line: line)
        // The three epilogues are in the GEMM's store: a bias operand with act 0, 1 (GELU), 2 (SiLU).
        let text = program!.sources.map(\.text).joined()
        let dt = compute == .bf16 ? "3" : "[0-2]"   // dt 3: bf16 panels with bf16 compute
        for act in 0...2 {
            XCTAssertNotNil(text.range(of: "af_gemm_packed\\(in[0-9]+, 45L, in[0-9]+, \(dt), in[0-9]+, \(act), out", options: .regularExpression),
                            "act \(act)", file: file, line: line)
        }
        return program!
    }

    func testPackedWeightGEMM() throws {
        for dtype in [WeightsDType.f32, .bf16, .f16] {
            let program = try checkPackedGEMM(dtype)
            // The run function passes 16-bit panels with their own pointer type (a mismatch is
            // only a warning in gcc 12, an error in gcc 14).
            let toolchain = try Toolchain.detect()
            let dir = try makeTemporaryDirectory("arcflow-packed-c")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            for source in program.sources {
                try source.text.write(toFile: "\(dir)/\(source.name)", atomically: true, encoding: .utf8)
                let r = try runProcess(toolchain.compiler, toolchain.compileFlags + ["-Werror=incompatible-pointer-types", "-fsyntax-only", "\(dir)/\(source.name)"])
                XCTAssertEqual(r.status, 0, "\(source.name): \(r.error)")
            }
        }
    }

    /// The panel-outer loop order (gemm.h: where a task's C block and one K block of its A pass
    /// 0.3 of L2), in one pass over K or in passes of a few K blocks, gives the K-outer order's
    /// sums bit for bit. `ARCFLOW_GEMM_L2` stands in for the cache (as computed for 1 and 2
    /// threads): 64 MB runs everything K-outer; 2 MB runs 1000 x 2048 x 300 and 700 x 1024 x 1100
    /// panel-outer in one pass and one sub-block per task; 1 MB the 700-row GEMM in passes of 3 of
    /// its 5 K blocks, the others in one pass, all in two sub-blocks (the 250-row GEMM, one row
    /// block, with the A that all tasks share on 2 threads); 512 KB the 700- and 250-row ones in
    /// passes of 2, the 1000-row one in three sub-blocks; 256 KB all three K-outer again (no pass
    /// of 2 K blocks keeps 7 row tiles in a sub-block).
    func testPackedGEMMPanelOuterOrderSumsAlike() throws {
        let b = GraphBuilder(name: "packed_gemm_orders")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 29)
        for (i, c) in [(m: 1000, k: 300, n: 2048), (m: 250, k: 600, n: 768), (m: 700, k: 1100, n: 1024)].enumerated() {
            weights["w\(i)"] = Tensor(.f32([c.n, c.k]), rng.normals(c.n * c.k))
            b.output("y\(i)", b.matmul(b.input("x\(i)", .f32([c.m, c.k])), b.weight("w\(i)", .f32([c.n, c.k])), transposeB: true))
        }
        let g = try b.finish()
        let inputs = randomInputs(g)
        defer { unsetenv("ARCFLOW_GEMM_L2") }
        setenv("ARCFLOW_GEMM_L2", "67108864", 1)
        var program: CompiledProgram?
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, weights: weights, passes: ["plan-memory"],
                                             inspect: { program = $0 })
        let calls = program!.program.sources.map { $0.text.components(separatedBy: "af_gemm_packed(in").count - 1 }.reduce(0, +)
        XCTAssertEqual(calls, 3, "every GEMM over packed panels")
        let executable = try program!.load()
        let kOuter = try executable.run(inputs)
        XCTAssertEqual(Set(kOuter.keys), ["y0", "y1", "y2"])
        // Zeros first, K-outer, so that rows a run leaves unwritten cannot keep the right values.
        let zeros = inputs.mapValues { Tensor($0.type, [Float](repeating: 0, count: $0.type.count)) }
        for l2 in ["2097152", "1048576", "524288", "262144"] {
            setenv("ARCFLOW_GEMM_L2", "67108864", 1)
            _ = try executable.run(zeros)
            setenv("ARCFLOW_GEMM_L2", l2, 1)
            let got = try executable.run(inputs)
            for name in ["y0", "y1", "y2"] { XCTAssertTrue(got[name] == kOuter[name], "\(name) with L2 = \(l2) differs") }
        }
    }

    /// One row (af__gemv_f32) sums as the blocked path does, bit for bit: the same weights against
    /// the same row alone and as row 0 of two, whose last K block is 232, 6 and 10 deep (K = 1000,
    /// 1030 and 1290): gemm.h promises it, and a change to either path's K blocks must keep it.
    func testOneRowSumsAsTheBlockedPath() throws {
        let b = GraphBuilder(name: "gemv_vs_blocked")
        var weights: [String: Tensor] = [:]
        var rng = SeededGenerator(seed: 31)
        for (i, k) in [1000, 1030, 1290].enumerated() {
            weights["w\(i)"] = Tensor(.f32([300, k]), rng.normals(300 * k))
            for (name, m) in [("one", 1), ("two", 2)] {
                b.output("\(name)\(i)", b.matmul(b.input("\(name)\(i)", .f32([m, k])), b.weight("w\(i)", .f32([300, k])), transposeB: true))
            }
        }
        let g = try b.finish()
        var inputs = randomInputs(g)
        for i in 0..<3 {   // row 0 of the two-row GEMM is the one-row GEMM's row
            let k = inputs["one\(i)"]!.type.count
            inputs["two\(i)"] = Tensor(inputs["two\(i)"]!.type, inputs["one\(i)"]!.data + inputs["two\(i)"]!.data[k...])
        }
        var program: CompiledProgram?
        try assertCompiledMatchesInterpreter(Module(g), inputs: inputs, weights: weights, passes: ["plan-memory"],
                                             inspect: { program = $0 })
        let out = try program!.load().run(inputs)
        for i in 0..<3 { XCTAssertTrue(out["one\(i)"]!.data == Array(out["two\(i)"]!.data[..<300]), "K case \(i)") }
    }

    /// The AVX2 path (6 x 16 tiles), built for x86-64-v3 on any x86-64 machine.
    func testPackedWeightGEMMOnAVX2() throws {
        #if arch(x86_64)
        for dtype in [WeightsDType.f32, .bf16, .f16] { try checkPackedGEMM(dtype, march: "x86-64-v3") }
        #endif
    }

    /// `--compute bf16`: vdpbf16ps on this CPU (skipped without AVX-512 BF16, where compiling for
    /// it is an error, checked below), the emulation (A rounded, f32 FMAs) in the AVX2 build.
    func testPackedWeightGEMMComputeBF16() throws {
        #if arch(x86_64)
        try checkPackedGEMM(.auto, compute: .bf16, march: "x86-64-v3")
        try checkPackedGEMM(.bf16, compute: .bf16, march: "x86-64")
        guard ModelCompiler.cpuHasAVX512BF16() else { throw XCTSkip("this CPU lacks avx512_bf16") }
        let program = try checkPackedGEMM(.auto, compute: .bf16)
        XCTAssertTrue(program.prelude.text.contains("af__gemm_tile_dp"))
        #endif
    }

    /// Panels are packed in strips of the built library's register-tile width (16 columns for AVX2,
    /// each strip's K rows contiguous), a manifest from before strips reads as whole rows, and a
    /// library refuses panels packed for another width instead of reading wrong numbers.
    func testPanelsArePackedInTheLibrarysStrips() throws {
        #if arch(x86_64)
        // W [N = 45, K = 3] (x·Wᵀ): two panels, the first in strips of 16 columns.
        let w = (0..<135).map { Float($0 + 1) }
        let packing = WeightPacking(panel: 32, source: [45, 3], transposed: true, strip: 16)
        let panels = w.withUnsafeBufferPointer { packWeightPanels($0, packing, dtype: .f32) }.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        XCTAssertEqual(panels.count, 2 * 3 * 32)
        for j in 0..<64 {
            for k in 0..<3 {
                XCTAssertEqual(panels[(j / 32) * 96 + (j % 32) / 16 * 48 + k * 16 + j % 16], j < 45 ? w[j * 3 + k] : 0, "k \(k) j \(j)")
            }
        }
        let b = GraphBuilder(name: "strips")
        b.output("y", b.linear(b.input("x", .f32([20, 3])), weight: b.weight("w", .f32([45, 3])), bias: nil))
        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        options.march = "x86-64-v3"
        let compiled = try ModelCompiler.build(Module(try b.finish()), weights: TensorStore(["w": Tensor(.f32([45, 3]), w)]), options: options)
        XCTAssertEqual(compiled.program.weights.first?.packing?.strip, 16)
        let exe = try compiled.load()
        XCTAssertEqual(exe.library.gemmStrip, 16)
        let x = (0..<60).map { Float($0 % 7) - 3 }
        let y = try exe.run(["x": Tensor(.f32([20, 3]), x)])["y"]!.data
        for i in 0..<20 {
            for j in 0..<45 { XCTAssertEqual(y[i * 45 + j], (0..<3).reduce(Float(0)) { $0 + x[i * 3 + $1] * w[j * 3 + $1] }, "y[\(i), \(j)]") }
        }
        var wrong = compiled.program.weights
        wrong[0].packing!.strip = 32
        XCTAssertThrowsError(try Executable(library: exe.library, inputs: compiled.program.inputs, outputs: compiled.program.outputs,
                                            weights: wrong, store: try compiled.weights)) { error in
            XCTAssertTrue("\(error)".contains("packed in strips of 32 columns") && "\(error)".contains("recompile"), "\(error)")
        }
        let old = #"{"panel": 32, "source": [45, 3], "transposed": true}"#
        XCTAssertEqual(try JSONDecoder().decode(WeightPacking.self, from: Data(old.utf8)).strip, 32)
        #endif
    }

    /// `--compute bf16` panels are stored in pairs of k (the operand layout of vdpbf16ps and of
    /// AMX's B tiles), K padded with zeros to a multiple of 32; the program says so, and a
    /// manifest written before pair panels existed still reads (plain rows).
    func testComputeBF16PanelsHoldPairsOfK() throws {
        // W [N = 3, K = 5] (x·Wᵀ): one panel, K padded to 32 pair-rows' worth (16 pairs).
        let w = (0..<15).map { Float($0 + 1) }
        let packing = WeightPacking(panel: 32, source: [3, 5], transposed: true, pairs: true)
        XCTAssertEqual(packing.physicalType(.bf16), TensorType(.bf16, [1, 32, 32]))
        let bytes = w.withUnsafeBufferPointer { packWeightPanels($0, packing, dtype: .bf16) }
        let panel = bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        XCTAssertEqual(panel.count, 32 * 32)
        for j in 0..<32 {
            for k in 0..<32 {
                let expected = j < 3 && k < 5 ? bf16Bits(w[j * 5 + k]) : 0
                XCTAssertEqual(panel[k / 2 * 64 + 2 * j + k % 2], expected, "k \(k) j \(j)")
            }
        }
        let b = GraphBuilder(name: "pairs")
        b.output("y", b.linear(b.input("x", .f32([4, 5])), weight: b.weight("w", .f32([3, 5])), bias: nil))
        let program = try CCodegen.generate(planArena(try b.finish(), reuse: false), weightStorage: { _ in .bf16 }, compute: .bf16)
        XCTAssertEqual(program.weights.first?.packing?.pairs, true)
        XCTAssertEqual(program.weights.first?.type, TensorType(.bf16, [1, 32, 32]))
        let old = #"{"panel": 32, "source": [3, 5], "transposed": true}"#
        XCTAssertEqual(try JSONDecoder().decode(WeightPacking.self, from: Data(old.utf8)), WeightPacking(panel: 32, source: [3, 5], transposed: true))
    }

    /// The bf16 dot-product peak a library measures: present where it was built for AVX-512 BF16,
    /// absent from an AVX2 build; the unit that runs bf16 compute (AMX tiles where the CPU has
    /// them); and the warning `compile --compute bf16` prints from the two peaks.
    func testBF16PeakAndSlowBF16Warning() throws {
        let b = GraphBuilder(name: "bf16_peak")
        b.output("y", b.input("x", .f32([4])).apply(.exp))
        let module = Module(try b.finish())
        var options = CompileOptions()
        options.cacheRoot = testCacheRoot
        options.march = "x86-64-v3"
        let v3 = try ModelCompiler.build(module, weights: TensorStore([:]), options: options).load().library
        XCTAssertNil(v3.bf16PeakGFLOPS())
        XCTAssertEqual(v3.bf16ComputeUnit(), "f32", "emulated: f32 FMAs on A rounded to bf16")
        if ModelCompiler.cpuHasAVX512BF16() {
            options.march = nil
            let library = try ModelCompiler.build(module, weights: TensorStore([:]), options: options).load().library
            let (bf16, f32) = (try XCTUnwrap(library.bf16PeakGFLOPS()), library.fmaPeakGFLOPS())
            print("bf16 dot-product peak \(bf16) GFLOP/s, f32 FMA peak \(f32) GFLOP/s")
            XCTAssertGreaterThan(bf16, 0)
            // With AMX, bf16 compute (and the peak) runs on the tile unit: the process got the tile
            // state from the kernel (the peak's TDPBF16PS ran, or the process would have died).
            XCTAssertEqual(library.bf16ComputeUnit(), ModelCompiler.cpuHasAMXBF16() ? "amx" : "vdpbf16ps")
        }
        XCTAssertNil(NativeLibrary.computeBF16Warning(bf16Peak: 400, fmaPeak: 200))
        let warning = try XCTUnwrap(NativeLibrary.computeBF16Warning(bf16Peak: 210, fmaPeak: 200))
        XCTAssertTrue(warning.contains("--compute bf16 will likely be slower") && warning.contains("210") && warning.contains("1.05×"), warning)
    }

    /// `--compute bf16` with f32 or f16 panels is refused, naming the flags.
    func testComputeBF16NeedsBF16Panels() throws {
        let b = GraphBuilder(name: "compute_bf16_f32")
        b.output("y", b.linear(b.input("x", .f32([3, 4])), weight: b.weight("w", .f32([5, 4])), bias: nil))
        let g = try b.finish()
        for dtype in [WeightsDType.f32, .f16] {
            var options = CompileOptions()
            options.cacheRoot = testCacheRoot
            options.weightsDType = dtype
            options.compute = .bf16
            XCTAssertThrowsError(try ModelCompiler.build(Module(g), weights: TensorStore(["w": Tensor(.f32([5, 4]), Array(repeating: 0.5, count: 20))]),
                                                         options: options)) { error in
                XCTAssertTrue("\(error)".contains("--compute bf16") && "\(error)".contains("--weights-dtype auto or bf16, not \(dtype.rawValue)"), "\(error)")
            }
        }
    }

    /// The portable path (no vector intrinsics).
    func testPackedWeightGEMMPortable() throws {
        #if arch(x86_64)
        try checkPackedGEMM(.bf16, march: "x86-64")
        #endif
    }
}
