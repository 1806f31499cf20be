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
///
/// Cones share work: a lifted modulation GEMM of Qwen-Image is one [1, 6·width] vector that six
/// outputs slice, and a timestep MLP feeds every block of its step. So a small intermediate that
/// several nodes read (`sharedIntermediates`) is computed once, by its own cone, kept in memory,
/// and read by the cones after it as a weight: without that, a 2-block Qwen-Image-20B-wide teacher
/// (28 steps, true CFG) ran each modulation GEMM once per slice, 6× over.
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
    /// Prologue nodes computed once and then read by later cones (`sharedIntermediates`), and
    /// their values, named by `intermediateName`, once computed.
    let intermediates: Set<ValueID>
    private let computed = TensorStore(label: "prologue intermediates")
    /// Cones run so far and their FLOPs: with shared intermediates computed once, the FLOPs match
    /// the whole prologue's (WeightStreamingTests checks it).
    private var coneRuns = 0, coneFlops = 0.0
    /// One arena for every cone, grown as needed: a fresh one per cone (a modulation GEMM's f32
    /// copy of its weight is 226 MB in Qwen-Image-20B) cost a page fault per 4 KiB every time,
    /// most of a 28-step Qwen teacher's compile.
    private var scratch: (pointer: UnsafeMutableRawPointer, bytes: Int)?

    deinit { scratch.map { free($0.pointer) } }

    /// The shared cone arena, at least `bytes` large.
    private func workspace(_ bytes: Int) throws -> UnsafeMutableRawPointer {
        if let s = scratch, s.bytes >= bytes { return s.pointer }
        scratch.map { free($0.pointer) }
        scratch = nil
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(bytes, 64)) == 0, let pointer = p else {
            throw ArcError("cannot allocate a \(bytes)-byte arena for the prologue")
        }
        scratch = (pointer, bytes)
        return pointer
    }
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
            intermediates = []
            base = try prologue.map { try WeightProducer.runWhole($0, source: source, cache: cache, dumpC: dumpC, log: log) } ?? source
            return
        }
        log("evaluating @prologue (\(prologue.outputs.count) weights, \(outputBytes) bytes in f32) one output at a time")
        self.prologue = prologue
        var index: [String: Int] = [:]
        for (k, o) in prologue.outputs.enumerated() { index[o.name] = k }
        streamed = index
        base = source
        intermediates = sharedIntermediates(prologue, budget: 512 << 20)
    }

    /// Runs the whole prologue once; its outputs, held in memory, layered over `source`.
    static func runWhole(_ prologue: Graph, source: WeightStore, cache: BuildCache, dumpC: String?,
                         log: (String) -> Void) throws -> WeightStore {
        let program = try CCodegen.generate(prologue)
        log("evaluating @prologue (\(prologue.outputs.count) weights, \(Int(program.flops)) FLOP) at compile time")
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
        if prologue != nil {
            log("prologue: \(coneRuns) cones run, \(Int(coneFlops)) FLOP in all (\(computed.names.count) shared intermediates computed once)")
        }
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
        try evaluate(prologue!.outputs[k].value)
    }

    /// The value of prologue node `root` (the caller deallocates it) and the stored weights its
    /// cone read. Shared intermediates below it are computed first (once: later cones read them).
    private func evaluate(_ root: ValueID) throws -> (TensorType, UnsafeMutableRawPointer, [String]) {
        let prologue = prologue!
        if intermediates.contains(root), let t = computed.type(of: intermediateName(root)) {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: max(t.byteCount, 1), alignment: 64)
            copy.copyMemory(from: try computed.raw(intermediateName(root)), byteCount: t.byteCount)
            return (t, copy, [])
        }
        let leaves = intermediates.subtracting([root])
        for i in coneLeaves(prologue, root: root, leaves: leaves) where computed.type(of: intermediateName(i)) == nil {
            let (t, value, read) = try evaluate(i)
            defer { value.deallocate(); read.forEach(source.evict) }
            computed.set(intermediateName(i), type: t, bytes: value, count: t.byteCount)
        }
        let cone = prologueCone(prologue, root: root, leaves: leaves)
        let program = try CCodegen.generate(cone)
        let entry = try cache.library(for: program)
        let library = try libraries[entry.path] ?? NativeLibrary(path: entry.path)
        libraries[entry.path] = library
        let exe = try Executable(library: library, inputs: [], outputs: program.outputs, weights: program.weights,
                                 store: LayeredStore(computed, over: source), workspace: try workspace(library.workspaceSize))
        let out = exe.allocateOutputs()
        do { try exe.runRaw(inputs: [], outputs: out) } catch { out.forEach { $0.deallocate() }; throw error }
        coneRuns += 1
        coneFlops += program.flops
        let type = program.outputs[0].type
        if intermediates.contains(root) { computed.set(intermediateName(root), type: type, bytes: out[0], count: type.byteCount) }
        return (type, out[0], program.weights.map(\.name).filter { computed.type(of: $0) == nil })
    }
}

/// The weight name a shared intermediate is bound under in the cones that read it.
func intermediateName(_ id: ValueID) -> String { "#prologue.\(id)" }

/// Prologue nodes worth computing once for several cones: computed (not a source), read more than
/// once (by two nodes, or a node and the outputs), and small (at most 16 MiB each, `budget` in all,
/// in node order), so that holding them all costs little next to the weights a cone streams
/// (Qwen-Image-20B's 28-step teacher: 28 × 60 × 2 modulation vectors of 72 KiB, 248 MiB).
func sharedIntermediates(_ prologue: Graph, budget: Int) -> Set<ValueID> {
    var uses = [Int](repeating: 0, count: prologue.nodes.count)
    for n in prologue.nodes { for o in n.operands { uses[o] += 1 } }
    for o in prologue.outputs { uses[o.value] += 1 }
    var chosen: Set<ValueID> = [], bytes = 0
    for (i, n) in prologue.nodes.enumerated() where !n.op.isSource && uses[i] > 1 && n.type.byteCount <= 16 << 20 {
        guard bytes + n.type.byteCount <= budget else { break }
        bytes += n.type.byteCount
        chosen.insert(i)
    }
    return chosen
}

/// The nodes of `leaves` that the cone of `root` reaches first (those it reads instead of computing).
func coneLeaves(_ prologue: Graph, root: ValueID, leaves: Set<ValueID>) -> [ValueID] {
    var seen = Set<ValueID>(), found: [ValueID] = []
    var stack = [root]
    while let i = stack.popLast() {
        guard seen.insert(i).inserted else { continue }
        if leaves.contains(i) { found.append(i); continue }
        stack += prologue[i].operands
    }
    return found.sorted()
}

/// The nodes `root` depends on, as a graph of its own with one output, planned afresh; the nodes
/// of `leaves` it reaches are not computed but read as weights named by `intermediateName`. Value names and
/// source lines are dropped and the names fixed, so the C of two cones that differ only in which
/// weights they read is the same text, and one cached library serves both (a FLUX model has
/// hundreds of weights but a handful of shapes).
func prologueCone(_ prologue: Graph, root: ValueID, leaves: Set<ValueID>) -> Graph {
    var needed = [Bool](repeating: false, count: prologue.nodes.count)
    var stack = [root]
    while let i = stack.popLast() {
        if needed[i] { continue }
        needed[i] = true
        if !leaves.contains(i) { stack += prologue[i].operands }
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
    for i in prologue.nodes.indices where needed[i] {
        r.copy(leaves.contains(i) ? Node(op: .weight, type: prologue[i].type, key: intermediateName(i)) : anonymous(prologue[i]), as: i)
    }
    return planArena(r.finish(outputs: [GraphOutput(name: "value", value: root)]), reuse: true)
}
