// Graph + weights → passes → prologue run at compile time → C → cached library → model folder.

import Codegen
import Foundation
import IR
import Passes

/// What `compile` writes next to `model.so`: everything needed to load and call it, and the
/// hashes that say what it was built from.
public struct Manifest: Codable {
    public var abiVersion: Int
    public var codegenVersion: String
    public var graph: String
    public var inputs: [Binding]
    public var outputs: [Binding]
    public var weights: [Binding]
    public var arenaBytes: Int
    public var steps: [StepInfo]
    public var flops: Double
    public var gemmFlops: Double
    public var compiler: String
    public var commands: [String]
    public var irSHA256: String
    public var weightsSHA256: String
    public var librarySHA256: String
    /// Model-specific facts (e.g. the sampler and its σ schedule), for tools driving the model.
    public var model: [String: String]

    enum CodingKeys: String, CodingKey {
        case abiVersion = "abi_version", codegenVersion = "codegen_version", graph, inputs, outputs, weights
        case arenaBytes = "arena_bytes", steps, flops, gemmFlops = "gemm_flops", compiler, commands
        case irSHA256 = "ir_sha256", weightsSHA256 = "weights_sha256", librarySHA256 = "library_sha256", model
    }
}

public struct CompileOptions {
    public var pipeline = PipelineOptions()
    /// Writes `000_input.ir`, `001_<pass>.ir`, … here (`.unchanged.ir` for passes that did nothing).
    public var dumpIR: String?
    /// Writes the generated C here (`main.c`, `kernels_N.c`, and `prologue/` when there is one).
    public var dumpC: String?
    public var cacheRoot: String = BuildCache.defaultRoot()
    /// Storage type of the weights packed for our GEMM (`--weights-dtype`). f32 keeps the
    /// weights' values exactly (the library default); 16-bit panels halve weight bytes.
    public var weightsDType: WeightsDType = .f32
    /// `--compute`: bf16 runs the GEMMs over packed weights with bf16 products (vdpbf16ps, f32
    /// sums); their panels are then bf16 whatever the checkpoint (`weightsDType` auto or bf16).
    public var compute: GEMMCompute = .f32
    /// `-march` for the generated C instead of `native` (e.g. x86-64-v3 to build the AVX2 paths).
    public var march: String?
    /// A `@prologue` whose outputs (f32) fit in this many bytes runs whole, once; a larger one
    /// runs one output at a time while the weights are written (see `WeightProducer`), so that
    /// compiling a large checkpoint does not hold a second, f32 copy of it.
    public var wholePrologueBytes = 256 << 20
    public var log: (String) -> Void = { _ in }
    /// What a user should hear even without --verbose (e.g. weights rounded to 16 bits).
    public var notice: (String) -> Void = { _ in }
    public var model: [String: String] = [:]
    public init() {}
}

/// A compiled program in memory: the optimized module, its C, the verified library and the
/// producer of the weights `@main` reads (computed and packed one at a time when written).
public struct CompiledProgram {
    public var module: Module
    public var program: CProgram
    public var library: BuildCache.Entry
    /// The library, loaded once at build (it said how to pack the weights); `load` runs it.
    public var native: NativeLibrary
    public var producer: WeightProducer
    public var passTimings: [PassTiming]
    public var toolchain: Toolchain
    public var model: [String: String]

    /// Every weight `@main` reads, in memory (computed on first use).
    public var weights: WeightStore { get throws { try producer.materialize() } }

    /// Binds the weights (all in memory) to the library, ready to run.
    public func load() throws -> Executable {
        try Executable(library: native, inputs: program.inputs, outputs: program.outputs,
                       weights: program.weights, store: try weights)
    }
}

public enum ModelCompiler {
    /// Checks weights, runs the pipeline (dumping as asked), generates C and builds (or finds in
    /// the cache) the library. The weights are computed later, one at a time, as they are needed.
    public static func build(_ module: Module, weights: WeightStore, options: CompileOptions = CompileOptions()) throws -> CompiledProgram {
        try checkCompute(options)
        try Verifier.verify(module)
        for g in module.graphs {
            for n in g.nodes where n.op == .weight && !(module.prologue.map { p in p.outputs.contains { $0.name == n.key! } } ?? false) {
                try weights.validate(n.key!, n.type)
            }
        }

        var pipeline = options.pipeline
        if options.weightsDType == .int8 { pipeline.context.options["quantize-weights.dtype"] = "int8" }
        if let dir = options.dumpIR { try installIRDump(&pipeline, directory: dir, input: module) }
        var (optimized, timings) = try runPipeline(module, pipeline)
        // Codegen needs offsets; without plan-memory every value gets its own bytes.
        optimized.forEachGraph { g in if g.attributes["arena_bytes"] == nil { g = planArena(g, reuse: false) } }

        let toolchain = try Toolchain.detect(march: options.march)
        var cache = BuildCache(root: options.cacheRoot, toolchain: toolchain)
        cache.log = options.log

        let storage: (String) -> DType? = options.compute == .bf16 ? { _ in .bf16 }
            : weightStorage(options.weightsDType, prologue: optimized.prologue, weights: weights)
        var program = try CCodegen.generate(optimized.main, translationUnits: max(2, ProcessInfo.processInfo.activeProcessorCount),
                                            weightStorage: storage, compute: options.compute)
        try dumpC(program, options.dumpC)
        // LoRA fused into a 16-bit base is rounded to 16 bits (as diffusers' fuse then cast); a
        // reference that runs the adapter unfused in f32 differs by that rounding (~1e-4 to 1e-3).
        if options.weightsDType == .auto, options.compute == .f32, let p = optimized.prologue {
            // Only outputs that a LoRA factor reaches: casts, transposes and slices of one 16-bit
            // weight round back to the same values.
            let rounded = program.weights.filter { w in
                w.type.dtype != .f32 && sourceWeights(of: w.name, in: p).contains { $0.key!.contains(".lora_") }
            }
            if let first = rounded.first {
                options.notice("\(rounded.count) weight\(rounded.count == 1 ? "" : "s") computed at compile time (LoRA fused in f32) "
                               + "stored as \(first.type.dtype), the checkpoint's type (--weights-dtype auto); --weights-dtype f32 keeps them exact")
            }
        }
        let entry = try cache.library(for: program)
        options.log(entry.cacheHit ? "library cache hit \(entry.key.prefix(16))" : "built library \(entry.key.prefix(16))")
        // The weights are packed for the kernels just built: the library says its register tile's width.
        let native = try NativeLibrary(path: entry.path)
        program.stripPanels(native.gemmStrip)
        let producer = try WeightProducer(bindings: program.weights, source: weights, prologue: optimized.prologue,
                                          wholePrologueBytes: options.wholePrologueBytes, cache: cache,
                                          dumpC: options.dumpC, log: options.log)
        return CompiledProgram(module: optimized, program: program, library: entry, native: native, producer: producer,
                               passTimings: timings, toolchain: toolchain, model: options.model)
    }

    /// `--compute bf16` needs bf16 panels and, for this machine's library (no `march`), a CPU with
    /// AVX-512 BF16; a `march` build for another CPU gets the emulation (A rounded to bf16, f32
    /// FMAs: the same products; attention stays f32 there), which is what lets tests cover it anywhere.
    static func checkCompute(_ options: CompileOptions) throws {
        guard options.compute == .bf16 else { return }
        guard options.weightsDType == .auto || options.weightsDType == .bf16 else {
            throw ArcError("--compute bf16 multiplies bf16 weight panels: use --weights-dtype auto or bf16, not \(options.weightsDType.rawValue)")
        }
        #if arch(x86_64)
        if options.march == nil, !cpuHasAVX512BF16() {
            throw ArcError("--compute bf16 needs a CPU with AVX-512 BF16 (avx512_bf16 in /proc/cpuinfo), which this one lacks: use --compute f32")
        }
        #else
        throw ArcError("--compute bf16 needs an x86-64 CPU with AVX-512 BF16: use --compute f32")
        #endif
    }

    /// Whether /proc/cpuinfo lists avx512_bf16 among this CPU's flags.
    public static func cpuHasAVX512BF16() -> Bool { cpuFlags().contains("avx512_bf16") }

    /// AMX with bf16 tiles (Intel Xeons since Sapphire Rapids): `--compute bf16` GEMMs and plain
    /// attention run on the tile unit there (gemm.h, attention.h).
    public static func cpuHasAMXBF16() -> Bool { cpuFlags().isSuperset(of: ["amx_bf16", "amx_tile"]) }

    /// The storage type of each packed weight: the one asked for, or with `auto` the checkpoint's.
    /// A weight `@prologue` computes (LoRA fused in f32, a cast) takes the type of its largest
    /// source: the base weight, not the low-rank factors. The prologue itself ran in f32, so the
    /// fused weight is rounded once, as the reference loader's fuse then cast does.
    static func weightStorage(_ choice: WeightsDType, prologue: Graph?, weights: WeightStore) -> (String) -> DType? {
        switch choice {
        case .f32: return { _ in .f32 }
        case .bf16: return { _ in .bf16 }
        case .f16: return { _ in .f16 }
        case .auto, .int8:   // int8: the weights quantize-weights marked; the others as auto
            return { name in
                guard let p = prologue, p.outputs.contains(where: { $0.name == name }) else {
                    return weights.type(of: name)?.dtype ?? .f32
                }
                return sourceWeights(of: name, in: p).max { $0.type.count < $1.type.count }?.type.dtype ?? .f32
            }
        }
    }

    /// The weights a `@prologue` output is computed from (its cone's `weight` nodes, first found first).
    static func sourceWeights(of name: String, in p: Graph) -> [Node] {
        guard let out = p.outputs.first(where: { $0.name == name }) else { return [] }
        var stack = [out.value], seen = Set<ValueID>(), found: [Node] = []
        while let v = stack.popLast() {
            guard seen.insert(v).inserted else { continue }
            if p[v].op == .weight { found.append(p[v]) }
            stack += p[v].operands
        }
        return found
    }

    /// Writes what the library is built from: the generated C and the prelude object's source.
    static func dumpC(_ program: CProgram, _ dir: String?) throws {
        guard let dir else { return }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for s in program.sources + [program.prelude] { try writeAtomically(s.text, to: "\(dir)/\(s.name)") }
    }

    /// Writes the model folder: `model.so`, `weights.safetensors`, `manifest.json`, `model.ir`.
    /// The weights are streamed into their file one tensor at a time (`WeightProducer`).
    /// Writers of one folder take turns (flock on `.lock` in it); temporaries a killed writer
    /// left are removed; the manifest is removed first and written last, so a folder caught
    /// half-written is no model at all (loading says so) rather than new weights under an old
    /// manifest.
    public static func write(_ compiled: CompiledProgram, to folder: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let lock = try FileLock("\(folder)/.lock")
        defer { lock.unlock() }
        TemporaryFiles.removeStale(in: folder)
        if unlink("\(folder)/manifest.json") != 0 && errno != ENOENT {
            throw ArcError("cannot replace \(folder)/manifest.json: \(String(cString: strerror(errno)))")
        }
        let weights = try SafeTensorsWriter(path: "\(folder)/weights.safetensors",
                                            tensors: compiled.program.weights.map { ($0.name, $0.type.dtype, $0.shape) },
                                            metadata: ["format": "arcflow-weights"])
        try compiled.producer.forEach { _, bytes in try weights.append(bytes) }
        try weights.commit()
        let libData = try Data(contentsOf: URL(fileURLWithPath: compiled.library.path))
        try writeAtomically(libData, to: "\(folder)/model.so")
        let irText = Printer.print(compiled.module)
        try writeAtomically(irText, to: "\(folder)/model.ir")
        let manifest = Manifest(
            abiVersion: abiVersion, codegenVersion: codegenVersion, graph: compiled.module.main.name,
            inputs: compiled.program.inputs, outputs: compiled.program.outputs, weights: compiled.program.weights,
            arenaBytes: compiled.program.arenaBytes, steps: compiled.program.steps, flops: compiled.program.flops,
            gemmFlops: compiled.program.gemmFlops, compiler: compiled.toolchain.identity,
            commands: compiled.library.commands.map { $0.joined(separator: " ") },
            irSHA256: SHA256.hash(irText), weightsSHA256: weights.sha256!,
            librarySHA256: libData.withUnsafeBytes { SHA256.hash($0) }, model: compiled.model)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(manifest), to: "\(folder)/manifest.json")
    }
}

/// A compiled model folder, loaded.
public struct LoadedModel {
    public var manifest: Manifest
    public var executable: Executable

    /// The manifest of a compiled model folder, checked only for being one.
    public static func readManifest(_ folder: String) throws -> Manifest {
        let manifestPath = "\(folder)/manifest.json"
        guard FileManager.default.fileExists(atPath: manifestPath) else {
            throw ArcError("\(folder) is not a compiled model (no manifest.json); create one with `arcflow compile`")
        }
        do {
            return try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        } catch {
            throw ArcError("\(manifestPath) is not a valid manifest: \(error.localizedDescription)")
        }
    }

    /// Reads the manifest, checks the library against its recorded hash, binds the weights.
    public static func load(_ folder: String) throws -> LoadedModel {
        let manifest = try readManifest(folder)
        guard manifest.abiVersion == abiVersion else {
            throw ArcError("\(folder) was compiled for ABI \(manifest.abiVersion), this arcflow uses \(abiVersion); recompile it")
        }
        let lib = "\(folder)/model.so"
        guard (try? sha256(ofFile: lib)) == manifest.librarySHA256 else {
            throw ArcError("\(lib) does not match its manifest (corrupted or replaced); recompile the model")
        }
        let store = try SafeTensorsStore(path: "\(folder)/weights.safetensors")
        let exe = try Executable(library: try NativeLibrary(path: lib), inputs: manifest.inputs, outputs: manifest.outputs,
                                 weights: manifest.weights, store: store)
        return LoadedModel(manifest: manifest, executable: exe)
    }
}

/// Writes numbered dumps as the pipeline runs: `000_input.ir`, then `NNN_<pass>.ir` per pass,
/// named `NNN_<pass>.unchanged.ir` when the pass changed nothing.
public func installIRDump(_ options: inout PipelineOptions, directory dir: String, input: Module) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try writeAtomically(Printer.print(input), to: "\(dir)/000_input.ir")
    let previous = options.afterPass
    options.afterPass = { index, name, m, changed in
        try previous?(index, name, m, changed)
        let file = String(format: "%03d_%@%@.ir", index, name, changed ? "" : ".unchanged")
        try writeAtomically(Printer.print(m), to: "\(dir)/\(file)")
    }
}

/// Writes via a temporary file in the same directory and a rename: readers never see half a file.
public func writeAtomically(_ data: Data, to path: String) throws {
    let tmp = TemporaryFiles.path(for: path)
    do {
        try data.write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw ArcError("cannot write \(path): \(String(cString: strerror(errno)))") }
    } catch let e as ArcError {
        try? FileManager.default.removeItem(atPath: tmp)
        throw e
    } catch {
        try? FileManager.default.removeItem(atPath: tmp)
        throw ArcError("cannot write \(path): \(error.localizedDescription)")
    }
}

public func writeAtomically(_ text: String, to path: String) throws {
    try writeAtomically(Data(text.utf8), to: path)
}

/// B's panels (see `WeightPacking`) from the f32 weight `w`, row-major `packing.source`, rounded
/// to `dtype` (to nearest even).
public func packWeightPanels(_ w: UnsafeBufferPointer<Float>, _ packing: WeightPacking, dtype: DType) -> [UInt8] {
    precondition(w.count == packing.k * packing.n, "packWeightPanels: \(w.count) values for \(packing.source)")
    let bytes = packing.physicalType(dtype).byteCount
    return [UInt8](unsafeUninitializedCapacity: bytes) { out, count in
        packWeightPanels(w.baseAddress!, packing, dtype: dtype, into: UnsafeMutableRawPointer(out.baseAddress!))
        count = bytes
    }
}

/// The same, written straight into `out` (`packing.physicalType(dtype).byteCount` bytes): no
/// intermediate copy, since a compile packs weights of hundreds of MB one after another.
public func packWeightPanels(_ w: UnsafePointer<Float>, _ packing: WeightPacking, dtype: DType, into out: UnsafeMutableRawPointer) {
    func pack<T>(_ out: UnsafeMutablePointer<T>, zero: T, _ convert: (Float) -> T) {
        let (k, n, nr, kp) = (packing.k, packing.n, packing.panel, packing.paddedK)
        out.initialize(repeating: zero, count: packing.panels * kp * nr)
        let (pairs, transposed, ns) = (packing.pairs, packing.transposed, packing.strip)
        for j in 0..<n {
            // Element (kk, j): row kk of its strip, or in a pair panel half kk % 2 of pair row kk / 2.
            let column = (j / nr) * kp * nr + (pairs ? 2 * (j % nr) : (j % nr) / ns * kp * ns + j % ns)
            for kk in 0..<k {
                out[pairs ? column + kk / 2 * 2 * nr + kk % 2 : column + kk * ns] = convert(transposed ? w[j * k + kk] : w[kk * n + j])
            }
        }
    }
    if dtype == .i8 { return packInt8Panels(w, packing, into: out) }
    switch dtype {
    case .i8: break
    case .f32: pack(out.assumingMemoryBound(to: Float.self), zero: 0) { $0 }
    case .bf16: pack(out.assumingMemoryBound(to: UInt16.self), zero: 0) { bf16Bits($0) }
    case .f16: pack(out.assumingMemoryBound(to: UInt16.self), zero: 0) { f16Bits($0) }
    }
}

/// int8 panels (gemm_int8.h) of the f32 weight `w`: per panel, the scales of each group of
/// `packing.group` along K for its 32 columns, then the codes, K rows of 32 (zero past N). Codes
/// and scales are `int8Scale`/`int8Code`'s, the interpreter's (`int8Dequantized`).
func packInt8Panels(_ w: UnsafePointer<Float>, _ packing: WeightPacking, into out: UnsafeMutableRawPointer) {
    let (k, n, nr) = (packing.k, packing.n, packing.panel)
    let group = packing.group!
    let panelBytes = int8PanelBytes(k: k, group: group, panel: nr), scaleBytes = (k + group - 1) / group * nr * 4
    memset(out, 0, packing.panels * panelBytes)
    for j in 0..<n {
        let panel = out + (j / nr) * panelBytes
        let scales = panel.assumingMemoryBound(to: Float.self), codes = (panel + scaleBytes).assumingMemoryBound(to: Int8.self)
        let column = j % nr
        func value(_ kk: Int) -> Float { packing.transposed ? w[j * k + kk] : w[kk * n + j] }
        for start in stride(from: 0, to: k, by: group) {
            let end = min(k, start + group)
            var maxAbs: Float = 0
            for kk in start..<end { maxAbs = max(maxAbs, abs(value(kk))) }
            let scale = int8Scale(maxAbs: maxAbs)
            scales[(start / group) * nr + column] = scale
            for kk in start..<end { codes[kk * nr + column] = int8Code(value(kk), scale: scale) }
        }
    }
}
