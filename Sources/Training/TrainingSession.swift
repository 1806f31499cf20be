// Resident training state: a compiled train step whose weights, moments and EMA stay in memory
// between calls, ping-ponging between two buffers; saved to and restored from safetensors.

import Foundation
import IR
import Runtime

/// Runs a compiled train-step graph repeatedly on resident state.
///
/// Every state tensor (parameter, `adam_m/…`, `adam_v/…`, `ema/…`) has two buffers. A step reads
/// one and writes the other, then the roles swap: the outputs become the next inputs with no
/// copy. Updating in place would halve the memory but needs the generated code to finish every
/// read of an input before any write of the output sharing its buffer, which the planner does
/// not promise across kernels (the skip `select` reads the old value last); two buffers need no
/// such promise. The pointer lists for both parities are built once, so a step allocates nothing.
public final class TrainingSession {
    public let step: TrainStepGraph
    public let executable: Executable
    /// Completed iterations, skipped ones included (the data sampler and schedule count these).
    public private(set) var stepCount = 0
    /// Updates actually applied: Adam's t of the next step is `appliedSteps + 1`. A skipped
    /// (non-finite) step does not advance it, as with torch's GradScaler skipping `step()`.
    public private(set) var appliedSteps = 0

    private struct Pair { var type: TensorType; var buffers: [UnsafeMutableRawPointer] }
    private var state: [String: Pair] = [:]
    private var data: [String: (type: TensorType, buffer: UnsafeMutableRawPointer)] = [:]
    private let scalars: [String: UnsafeMutablePointer<Float>]
    private let lossOut = UnsafeMutablePointer<Float>.allocate(capacity: 16)
    private let normOut = UnsafeMutablePointer<Float>.allocate(capacity: 16)
    /// Index of the buffer holding the current state.
    private var parity = 0
    private var inputLists: [[UnsafeRawPointer?]] = [[], []]
    private var outputLists: [[UnsafeMutableRawPointer?]] = [[], []]

    /// Binds the executable's inputs and outputs by name. Parameters start from `initial`, moments
    /// at zero, each EMA at its parameter.
    public init(step: TrainStepGraph, executable: Executable, initial: WeightStore) throws {
        self.step = step
        self.executable = executable
        var scalars: [String: UnsafeMutablePointer<Float>] = [:]
        for name in [TrainNames.lr, TrainNames.step, TrainNames.emaBeta] {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: 16)
            p.initialize(to: name == TrainNames.emaBeta ? 0.999 : 0)
            scalars[name] = p
        }
        self.scalars = scalars
        let stateNames = Set(step.stateNames)
        for b in executable.inputs {
            let type = TensorType(DType(rawValue: b.dtype) ?? .f32, b.shape)
            if stateNames.contains(b.name) {
                state[b.name] = Pair(type: type, buffers: (0..<2).map { _ in Self.allocate(type.byteCount) })
            } else if scalars[b.name] == nil {
                data[b.name] = (type, Self.allocate(type.byteCount))
            }
        }
        for name in step.stateNames where state[name] == nil {
            throw ArcError("compiled train step has no input '\(name)'")
        }
        for parity in 0..<2 {
            inputLists[parity] = try executable.inputs.map { b in
                if let s = state[b.name] { return UnsafeRawPointer(s.buffers[parity]) }
                if let s = scalars[b.name] { return UnsafeRawPointer(s) }
                if let d = data[b.name] { return UnsafeRawPointer(d.buffer) }
                throw ArcError("unbound train-step input '\(b.name)'")
            }
            outputLists[parity] = try executable.outputs.map { b in
                switch b.name {
                case TrainNames.loss: return UnsafeMutableRawPointer(lossOut)
                case TrainNames.gradNorm: return UnsafeMutableRawPointer(normOut)
                default:
                    guard let s = state[b.name] else { throw ArcError("train-step output '\(b.name)' is not a state tensor") }
                    return s.buffers[1 - parity]
                }
            }
        }
        for p in step.parameters {
            try initial.validate(p.key, state[p.key]!.type)
            let src = try initial.raw(p.key)
            memcpy(state[p.key]!.buffers[0], src, state[p.key]!.type.byteCount)
            for name in [TrainNames.m(p.key), TrainNames.v(p.key)] { memset(state[name]!.buffers[0], 0, state[name]!.type.byteCount) }
            if p.ema { memcpy(state[TrainNames.ema(p.key)]!.buffers[0], src, state[p.key]!.type.byteCount) }
        }
    }

    deinit {
        for s in state.values { s.buffers.forEach { free($0) } }
        for d in data.values { free(d.buffer) }
        scalars.values.forEach { $0.deallocate() }
        lossOut.deallocate(); normOut.deallocate()
    }

    private static func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        precondition(posix_memalign(&p, 64, max(bytes, 64)) == 0, "out of memory for \(bytes) bytes of training state")
        return p!
    }

    /// The data inputs and their types (what a batch must provide).
    public var dataTypes: [String: TensorType] { data.mapValues(\.type) }

    /// Copies one batch into the input buffers; every data input must be present with its count.
    public func setBatch(_ batch: [String: [Float]]) throws {
        for (name, d) in data {
            guard let values = batch[name] else {
                throw ArcError("batch has no '\(name)' (the train step's data inputs: \(data.keys.sorted().joined(separator: ", ")))")
            }
            guard values.count == d.type.count else { throw ArcError("batch '\(name)' has \(values.count) values, \(d.type) needs \(d.type.count)") }
            if d.type.dtype == .f32 {
                values.withUnsafeBytes { d.buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            } else {
                encodeFloats(values, d.type.dtype).withUnsafeBytes { d.buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
        }
    }

    /// One optimizer step (t = appliedSteps + 1) on the current batch. Returns the loss and the
    /// unclipped global gradient norm; a non-finite norm leaves the state unchanged.
    @discardableResult
    public func run(lr: Double, emaBeta: Double = 0.999) throws -> (loss: Float, gradNorm: Float) {
        scalars[TrainNames.lr]!.pointee = Float(lr)
        scalars[TrainNames.step]!.pointee = Float(appliedSteps + 1)
        scalars[TrainNames.emaBeta]!.pointee = Float(emaBeta)
        try executable.runRaw(inputs: inputLists[parity], outputs: outputLists[parity])
        parity = 1 - parity
        stepCount += 1
        // The graph's skip test is `norm ≤ greatest finite`, the same as isFinite for a norm ≥ 0.
        if normOut.pointee.isFinite { appliedSteps += 1 }
        return (lossOut.pointee, normOut.pointee)
    }

    /// The pointer lists the next step would use (for profiling a run by hand; it does not swap).
    public var currentInputs: [UnsafeRawPointer?] { inputLists[parity] }
    public var currentOutputs: [UnsafeMutableRawPointer?] { outputLists[parity] }

    /// Current values of a state tensor.
    public func tensor(_ name: String) throws -> Tensor {
        guard let s = state[name] else { throw ArcError("no state tensor '\(name)'") }
        return Tensor(s.type, decodeFloats(s.buffers[parity], s.type))
    }

    /// The buffer holding a state tensor's current value, valid until the next `run` or
    /// `restore`. Forward-only graphs that take the trained weights as inputs (the
    /// distillation's rollout policy, its EMA samples) read it in place, without a copy.
    public func buffer(_ name: String) throws -> UnsafeRawPointer {
        guard let s = state[name] else { throw ArcError("no state tensor '\(name)'") }
        return UnsafeRawPointer(s.buffers[parity])
    }

    /// Current raw bytes of a state tensor.
    public func bytes(_ name: String) throws -> [UInt8] {
        guard let s = state[name] else { throw ArcError("no state tensor '\(name)'") }
        return Array(UnsafeRawBufferPointer(start: s.buffers[parity], count: s.type.byteCount))
    }

    public static let stateFormat = "arcflow-train-state"

    /// Writes every state tensor plus `step`, `graph_sha256` and `extra` metadata, atomically.
    public func save(to path: String, metadata extra: [String: String] = [:]) throws {
        let records = try step.stateNames.map { name -> TensorRecord in
            let s = state[name]!
            return TensorRecord(name: name, dtype: s.type.dtype, shape: s.type.shape, payload: .raw(try bytes(name)))
        }
        var metadata = extra
        metadata["format"] = Self.stateFormat
        metadata["step"] = String(stepCount)
        metadata["adam_t"] = String(appliedSteps)
        metadata["graph_sha256"] = step.hash
        try writeSafeTensors(records, metadata: metadata, to: path)
    }

    /// Restores a saved state: the same train-step graph (by hash), every tensor with its exact
    /// type. Returns the file's metadata. Nothing changes unless everything checks out.
    @discardableResult
    public func restore(from path: String) throws -> [String: String] {
        let file = try SafeTensorsFile(path: path)
        let md = file.metadata
        guard md["format"] == Self.stateFormat else {
            throw ArcError("\(path) is not an arcflow training state (no format=\(Self.stateFormat) in its metadata)")
        }
        guard let s = md["step"], let steps = Int(s), steps >= 0, let ts = md["adam_t"], let t = Int(ts), t >= 0, t <= steps else {
            throw ArcError("\(path): metadata has no valid 'step' and 'adam_t'")
        }
        let hash = step.hash
        guard md["graph_sha256"] == hash else {
            throw ArcError("\(path) was saved by a different train-step graph (graph_sha256 \((md["graph_sha256"] ?? "none").prefix(12)), this run's \(hash.prefix(12))): same graph, trainable weights and optimizer settings are needed to resume")
        }
        for name in step.stateNames {
            guard let info = file.tensors[name] else {
                throw ArcError("\(path): missing state tensor '\(name)' (expected \(state[name]!.type))")
            }
            guard info.type == state[name]!.type else {
                throw ArcError("\(path): state tensor '\(name)' is \(info.type), expected \(state[name]!.type)")
            }
        }
        for name in step.stateNames {
            let src = try file.bytes(name)
            if let base = src.baseAddress { memcpy(state[name]!.buffers[parity], base, src.count) }
        }
        stepCount = steps
        appliedSteps = t
        return md
    }
}
