// A loaded, ready-to-run program: library, bound weights, one arena allocated once.

import Codegen
import Foundation
import IR

public final class Executable {
    public let library: NativeLibrary
    public let inputs: [Binding]
    public let outputs: [Binding]
    public let weights: [Binding]
    /// Keeps mapped or owned weight memory alive while the pointers are in use.
    private let store: WeightStore
    private let weightPointers: [UnsafeRawPointer?]
    private let arena: UnsafeMutableRawPointer
    private let ownsArena: Bool

    /// Binds every weight by name, checking dtype and shape. `workspace` (64-byte aligned, at least
    /// the library's workspace size, the caller's to free) is used as the arena instead of a new
    /// one: runs one after another can share one (WeightProducer's prologue cones).
    public init(library: NativeLibrary, inputs: [Binding], outputs: [Binding], weights: [Binding], store: WeightStore,
                workspace: UnsafeMutableRawPointer? = nil) throws {
        self.library = library
        self.inputs = inputs
        self.outputs = outputs
        self.weights = weights
        self.store = store
        // Panels laid out for another build's register tile would be read as wrong numbers.
        if let w = weights.first(where: { $0.packing.map { $0.stripped && $0.strip != library.gemmStrip } ?? false }) {
            throw ArcError("weight \(w.name) is packed in strips of \(w.packing!.strip) columns, but \(library.path) reads strips of "
                           + "\(library.gemmStrip) (compiled for another CPU or by another arcflow); recompile the model")
        }
        weightPointers = try weights.map { w in
            try store.validate(w.name, w.type)
            return try store.raw(w.name)
        }
        ownsArena = workspace == nil
        if let workspace {
            arena = workspace
            return
        }
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 64, max(library.workspaceSize, 64)) == 0, let arena = p else {
            throw ArcError("cannot allocate a \(library.workspaceSize)-byte arena")
        }
        self.arena = arena
    }

    deinit { if ownsArena { free(arena) } }

    public func setThreads(_ n: Int) { library.setThreads(n) }

    /// Runs on host tensors, checking names, dtypes and shapes of the inputs.
    public func run(_ values: [String: Tensor]) throws -> [String: Tensor] {
        let ins = try encodeInputs(values), outs = allocateOutputs()
        defer { (ins + outs).forEach { $0.deallocate() } }
        try runRaw(inputs: ins.map { UnsafeRawPointer($0) }, outputs: outs)
        return decodeOutputs(outs)
    }

    /// The inputs encoded in their dtypes into 64-byte aligned buffers, in binding order; the
    /// caller deallocates them. Names, dtypes and shapes are checked.
    public func encodeInputs(_ values: [String: Tensor]) throws -> [UnsafeMutableRawPointer] {
        let known = Set(inputs.map(\.name))
        if let extra = values.keys.sorted().first(where: { !known.contains($0) }) {
            throw ArcError("unexpected input '\(extra)' (the graph's inputs: \(inputs.map(\.name).joined(separator: ", ")))")
        }
        let encoded: [[UInt8]] = try inputs.map { b in
            guard let t = values[b.name] else { throw ArcError("missing input '\(b.name)' (expected \(b.type))") }
            guard t.type == b.type else { throw ArcError("input '\(b.name)' is \(t.type), expected \(b.type)") }
            return encodeFloats(t.data, t.type.dtype)
        }
        return encoded.map { bytes in
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
            bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
            return p
        }
    }

    /// One aligned buffer per output, in binding order; the caller deallocates them.
    public func allocateOutputs() -> [UnsafeMutableRawPointer] {
        outputs.map { UnsafeMutableRawPointer.allocate(byteCount: max($0.type.byteCount, 1), alignment: 64) }
    }

    public func decodeOutputs(_ buffers: [UnsafeMutableRawPointer]) -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for (k, b) in outputs.enumerated() { result[b.name] = Tensor(b.type, decodeFloats(buffers[k], b.type)) }
        return result
    }

    /// Runs on raw buffers in binding order. `times` (one slot per step) accumulates seconds.
    public func runRaw(inputs: [UnsafeRawPointer?], outputs: [UnsafeMutableRawPointer?],
                       times: UnsafeMutablePointer<Double>? = nil, gemmOnly: Bool = false) throws {
        guard inputs.count == self.inputs.count, outputs.count == self.outputs.count else {
            throw ArcError("expected \(self.inputs.count) inputs and \(self.outputs.count) outputs")
        }
        library.run(workspace: arena, weights: weightPointers, inputs: inputs, outputs: outputs, times: times, gemmOnly: gemmOnly)
    }
}
