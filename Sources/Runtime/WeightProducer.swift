// The weights a compiled program binds, produced one tensor at a time: prologue outputs evaluated
// per output from the memory-mapped checkpoint, packed into GEMM panels, handed on, dropped.

import Codegen
import Foundation
import IR
import Passes

/// Produces `bindings` (a program's weights, in binding order), one tensor at a time, so that a
/// compile writing a model folder holds about one tensor's worth of memory beyond the pages of the
/// checkpoint it is reading, whatever the model's size (issue 8: FLUX.1-dev is 23.8 GB in bf16).
///
/// Each weight is taken from `@prologue` (weight-only math: casts, LoRA fusion, in f32 from the
/// untouched base) or straight from the checkpoint, then packed into GEMM panels in its storage
/// type. A prologue whose outputs fit in `wholePrologueBytes` runs once, whole, before anything
/// else (one library; what small models and tests do); a larger one runs output by output: the
/// cone of operations each output needs is cut out, planned and compiled on its own (cones of the
/// same shapes share a library through the build cache), run, and its result dropped after
/// packing. Checkpoint pages a tensor has been read from are handed back to the kernel
/// (`WeightStore.evict`), so the mapped checkpoint does not stay resident either.
public final class WeightProducer {
    public let bindings: [Binding]
    /// The weights the program was compiled against (the checkpoint, mapped).
    let source: WeightStore
    /// Where a binding's unpacked value comes from when it is not streamed: the whole prologue's
    /// outputs layered over `source`, or `source` itself.
    let base: WeightStore
    let prologue: Graph?
    /// Prologue output name → index, for the outputs evaluated one at a time.
    let streamed: [String: Int]
    let cache: BuildCache
    let log: (String) -> Void
    /// Libraries loaded for prologue cones, by path (cones of one shape share one).
    private var libraries: [String: NativeLibrary] = [:]
    private var materialized: WeightStore?

    init(bindings: [Binding], source: WeightStore, prologue: Graph?, wholePrologueBytes: Int,
         cache: BuildCache, dumpC: String?, log: @escaping (String) -> Void) throws {
        self.bindings = bindings
        self.source = source
        self.cache = cache
        self.log = log
        let outputBytes = prologue.map { p in p.outputs.reduce(0) { $0 + p[$1.value].type.byteCount } } ?? 0
        if let prologue, outputBytes > wholePrologueBytes, let dir = dumpC {
            try ModelCompiler.dumpC(try CCodegen.generate(prologue), "\(dir)/prologue")   // to read; it runs by cones
        }
        guard let prologue, outputBytes > wholePrologueBytes else {
            self.prologue = nil
            streamed = [:]
            base = try prologue.map { try WeightProducer.runWhole($0, source: source, cache: cache, dumpC: dumpC, log: log) } ?? source
            return
        }
        log("evaluating @prologue (\(prologue.outputs.count) weights, \(outputBytes) bytes in f32) one output at a time")
        self.prologue = prologue
        var index: [String: Int] = [:]
        for (k, o) in prologue.outputs.enumerated() { index[o.name] = k }
        streamed = index
        base = source
    }

    /// Runs the whole prologue once; its outputs, held in memory, layered over `source`.
    static func runWhole(_ prologue: Graph, source: WeightStore, cache: BuildCache, dumpC: String?,
                         log: (String) -> Void) throws -> WeightStore {
        log("evaluating @prologue (\(prologue.outputs.count) weights) at compile time")
        let program = try CCodegen.generate(prologue)
        try ModelCompiler.dumpC(program, dumpC.map { "\($0)/prologue" })
        let entry = try cache.library(for: program)
        let exe = try Executable(library: try NativeLibrary(path: entry.path), inputs: [], outputs: program.outputs,
                                 weights: program.weights, store: source)
        let lifted = TensorStore(label: "prologue outputs")
        let buffers = exe.allocateOutputs()
        defer { buffers.forEach { $0.deallocate() } }
        try exe.runRaw(inputs: [], outputs: buffers)
        for (k, b) in program.outputs.enumerated() {
            lifted.set(b.name, type: b.type, bytes: buffers[k], count: b.type.byteCount)
        }
        return LayeredStore(lifted, over: source)
    }

    /// Hands each binding's bytes (its dtype and shape, packed where it says so) to `body`, in
    /// binding order; the bytes are valid only during the call.
    public func forEach(_ body: (Binding, UnsafeRawBufferPointer) throws -> Void) throws {
        if let m = materialized {
            for b in bindings { try body(b, UnsafeRawBufferPointer(start: try m.raw(b.name), count: b.type.byteCount)) }
            return
        }
        var packedCount = 0, packedBytes = 0
        var lastReport = monotonicSeconds()
        for (i, b) in bindings.enumerated() {
            try produce(b) { try body(b, $0) }
            if b.packing != nil { packedCount += 1; packedBytes += b.type.byteCount }
            if monotonicSeconds() - lastReport > 5 {
                log("weights: \(i + 1)/\(bindings.count) (\(b.name))")
                lastReport = monotonicSeconds()
            }
        }
        if packedCount > 0 { log("packed \(packedCount) GEMM weights into panels (\(packedBytes) bytes)") }
    }

    /// Every binding in memory at once (to run the program in this process: tests, training).
    public func materialize() throws -> WeightStore {
        if let m = materialized { return m }
        let store = TensorStore(label: source.label)
        try forEach { b, bytes in store.set(b.name, type: b.type, bytes: bytes.baseAddress, count: bytes.count) }
        materialized = store
        return store
    }

    /// One binding: its unpacked value (a prologue cone's output, or stored), then packed.
    private func produce(_ b: Binding, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var read: [String] = [b.name]
        var owned: UnsafeMutableRawPointer?
        defer { owned?.deallocate(); read.forEach(source.evict) }
        let type: TensorType, value: UnsafeRawPointer
        if let k = streamed[b.name] {
            (type, owned, read) = try evaluateCone(k)
            value = UnsafeRawPointer(owned!)
        } else {
            guard let t = base.type(of: b.name) else { throw ArcError("missing weight '\(b.name)' in \(base.label)") }
            (type, value) = (t, try base.raw(b.name))
        }
        guard let p = b.packing else {
            guard type == b.type else { throw ArcError("weight '\(b.name)' in \(base.label) is \(type), expected \(b.type)") }
            return try body(UnsafeRawBufferPointer(start: value, count: type.byteCount))
        }
        guard type.dtype == .f32, type.shape == p.source else {
            throw ArcError("weight '\(b.name)': expected f32\(p.source) to pack into GEMM panels, found \(type)")
        }
        let panels = UnsafeMutableRawPointer.allocate(byteCount: max(b.type.byteCount, 1), alignment: 64)
        defer { panels.deallocate() }
        packWeightPanels(value.assumingMemoryBound(to: Float.self), p, dtype: b.type.dtype, into: panels)
        try body(UnsafeRawBufferPointer(start: panels, count: b.type.byteCount))
    }

    /// Runs the cone of prologue output `k` alone: its value (the caller deallocates it) and the
    /// names of the stored weights it read.
    private func evaluateCone(_ k: Int) throws -> (TensorType, UnsafeMutableRawPointer, [String]) {
        let cone = prologueCone(prologue!, output: k)
        let program = try CCodegen.generate(cone)
        let entry = try cache.library(for: program)
        let library = try libraries[entry.path] ?? NativeLibrary(path: entry.path)
        libraries[entry.path] = library
        let exe = try Executable(library: library, inputs: [], outputs: program.outputs, weights: program.weights, store: source)
        let out = exe.allocateOutputs()
        do { try exe.runRaw(inputs: [], outputs: out) } catch { out.forEach { $0.deallocate() }; throw error }
        return (program.outputs[0].type, out[0], program.weights.map(\.name))
    }
}

/// The nodes output `k` of `prologue` depends on, as a graph of its own with one output, planned
/// afresh. Value names and source lines are dropped and the names fixed, so the C of two cones
/// that differ only in which weights they read is the same text, and one cached library serves
/// both (a FLUX model has hundreds of weights but a handful of shapes).
func prologueCone(_ prologue: Graph, output k: Int) -> Graph {
    var needed = [Bool](repeating: false, count: prologue.nodes.count)
    var stack = [prologue.outputs[k].value]
    while let i = stack.popLast() {
        if needed[i] { continue }
        needed[i] = true
        stack += prologue[i].operands
    }
    func anonymous(_ n: Node) -> Node {
        var n = n
        n.name = nil
        n.line = nil
        if var r = n.region {
            r.nodes = r.nodes.map(anonymous)
            n.region = r
        }
        return n
    }
    var r = GraphRewriter(from: Graph(name: "prologue_cone", nodes: prologue.nodes))
    for i in prologue.nodes.indices where needed[i] { r.copy(anonymous(prologue[i]), as: i) }
    return planArena(r.finish(outputs: [GraphOutput(name: "value", value: prologue.outputs[k].value)]), reuse: true)
}
