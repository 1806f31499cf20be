// The training loop: batches in, one compiled step per batch, progress line, CSV log, loss plot,
// periodic atomic checkpoints, clean stop on Ctrl-C.

import Foundation
import Imaging
import IR
import Runtime

/// Supplies the data inputs of each step. For exact resume, a batch must be a pure function of
/// the step index (the data sampler below is counter-based for that reason).
public protocol BatchProvider {
    /// f32 values per data input, by name, for 0-based step `step`.
    func batch(step: Int) throws -> [String: [Float]]
}

/// Batches from a closure (e.g. images rendered on the fly).
public struct ClosureBatches: BatchProvider {
    let body: (Int) throws -> [String: [Float]]
    public init(_ body: @escaping (Int) throws -> [String: [Float]]) { self.body = body }
    public func batch(step: Int) throws -> [String: [Float]] { try body(step) }
}

/// Rows sampled from a safetensors file. Each graph input of shape [B, d…] reads the tensor of the
/// same name, shape [N, d…] (all with the same N); a step takes B rows, uniformly with
/// replacement, the same row index across all tensors. The RNG of step s is SplitMix64 seeded with
/// seed + (s+1)·φ64: counter-based, so its whole state is (seed, step) and a resumed run draws
/// exactly the rows an uninterrupted one would.
public final class SafeTensorsBatches: BatchProvider {
    public let rows: Int
    public let seed: UInt64
    private var tensors: [(name: String, rowSize: Int, batch: Int, values: [Float])] = []

    public init(path: String, inputs: [String: TensorType], seed: UInt64) throws {
        self.seed = seed
        let file = try SafeTensorsFile(path: path)
        var n: Int?
        for (name, type) in inputs.sorted(by: { $0.key < $1.key }) {
            guard type.rank >= 1 else { throw ArcError("data input '\(name)' is \(type): needs a leading batch axis") }
            guard let info = file.tensors[name] else {
                throw ArcError("\(path) has no tensor '\(name)' (expected [N,\(type.shape.dropFirst().map(String.init).joined(separator: ","))]); it has: \(file.names.joined(separator: ", "))")
            }
            guard info.shape.count == type.rank, Array(info.shape.dropFirst()) == Array(type.shape.dropFirst()), info.shape[0] > 0 else {
                throw ArcError("\(path): '\(name)' is \(info.type); the graph input is \(type), so it must be [N\(type.shape.dropFirst().map { ",\($0)" }.joined())] rows")
            }
            if let n, n != info.shape[0] { throw ArcError("\(path): '\(name)' has \(info.shape[0]) rows, other tensors \(n)") }
            n = info.shape[0]
            tensors.append((name, type.count / type.shape[0], type.shape[0], try file.floats(name)))
        }
        rows = n ?? 0
    }

    /// Row indices of step `step`.
    public func indices(step: Int, count: Int) -> [Int] {
        var rng = SeededGenerator(seed: seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15)
        return (0..<count).map { _ in Int(rng.next() % UInt64(rows)) }
    }

    public func batch(step: Int) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        guard let b = tensors.first?.batch else { return out }
        let idx = indices(step: step, count: b)
        for t in tensors {
            var v = [Float]()
            v.reserveCapacity(t.batch * t.rowSize)
            for r in idx { v += t.values[r * t.rowSize ..< (r + 1) * t.rowSize] }
            out[t.name] = v
        }
        return out
    }
}

/// Learning rate per step: linear warm-up from `warmupStartFactor`·lr to lr over `warmupSteps`
/// steps, then constant (ArcFlow's schedule) or, with `cosine`, a half cosine down to
/// `minFactor`·lr at `totalSteps`, starting at `decayStart` (a constant phase first: a long run
/// can hold its rate and anneal at the end, where a sampler's quality rises most).
public struct LRSchedule: Codable, Equatable {
    public var lr: Double
    public var warmupSteps = 0
    public var warmupStartFactor = 0.0
    public var cosine = false
    public var minFactor = 0.0
    public var totalSteps = 0
    public var decayStart = 0
    public init(lr: Double, warmupSteps: Int = 0, warmupStartFactor: Double = 0, cosine: Bool = false, minFactor: Double = 0,
                totalSteps: Int = 0, decayStart: Int = 0) {
        self.lr = lr; self.warmupSteps = warmupSteps; self.warmupStartFactor = warmupStartFactor
        self.cosine = cosine; self.minFactor = minFactor; self.totalSteps = totalSteps; self.decayStart = decayStart
    }

    /// The rate of 0-based step `step`.
    public func rate(step: Int) -> Double {
        if step < warmupSteps {
            return lr * (warmupStartFactor + (1 - warmupStartFactor) * Double(step) / Double(warmupSteps))
        }
        let start = max(warmupSteps, decayStart)
        guard cosine, totalSteps > start, step > start else { return lr }
        let x = min(1, Double(step - start) / Double(totalSteps - start))
        return lr * (minFactor + (1 - minFactor) * 0.5 * (1 + cos(Double.pi * x)))
    }
}

public struct TrainConfig: Codable, Equatable {
    /// Total steps: a resumed run continues up to this count.
    public var steps: Int
    public var schedule: LRSchedule
    public var emaBeta = 0.999
    /// With a value w: the Karras EMA of ArcFlow (reference §6.5) instead of the constant
    /// `emaBeta`: β = min((1 − 1/t)^8, 1), t = max(step + 1 − w, 1), so β = 0 (the EMA copies the
    /// weights) for the first w steps, then the average lengthens with the run.
    public var karrasEMAOffset: Int?
    /// Save state every N steps (0: only at the end or on Ctrl-C).
    public var saveEvery = 0
    public var seed: UInt64 = 0
    public var threads = 1
    /// Print the progress line (stderr).
    public var progress = true
    public init(steps: Int, schedule: LRSchedule, emaBeta: Double = 0.999, saveEvery: Int = 0, seed: UInt64 = 0, threads: Int = 1, progress: Bool = true) {
        self.steps = steps; self.schedule = schedule; self.emaBeta = emaBeta; self.saveEvery = saveEvery
        self.seed = seed; self.threads = threads; self.progress = progress
    }

    /// The EMA decay of 0-based step `step`.
    public func emaBeta(step: Int) -> Double {
        guard let w = karrasEMAOffset else { return emaBeta }
        let t = Double(max(step + 1 - w, 1))
        return min(Foundation.pow(1 - 1 / t, 8), 1)
    }
}

/// One row of `train.csv`.
public struct StepRecord: Equatable {
    public var step: Int
    public var loss: Double
    public var lr: Double
    public var gradNorm: Double
    public var seconds: Double
    public init(step: Int, loss: Double, lr: Double, gradNorm: Double, seconds: Double) {
        self.step = step; self.loss = loss; self.lr = lr; self.gradNorm = gradNorm; self.seconds = seconds
    }
}

/// Set by the SIGINT handler; a C signal handler can only touch global state.
private var stopRequested: sig_atomic_t = 0

public final class Trainer {
    public let session: TrainingSession
    public let batches: BatchProvider
    public let config: TrainConfig
    /// Where `state.safetensors`, `train.csv` and `loss.png` go; nil writes nothing.
    public let directory: String?
    public private(set) var history: [StepRecord] = []
    /// Extra metadata for the state file (e.g. the command line).
    public var metadata: [String: String] = [:]
    public var logScalePlot = true
    /// Called after every step (after any periodic save), e.g. to log or evaluate; a long hook
    /// delays training but never changes it (batches are functions of the step).
    public var afterStep: ((StepRecord) throws -> Void)?
    /// Called after every save, e.g. to save state the run keeps beside the session's.
    public var afterSave: (() throws -> Void)?

    public init(session: TrainingSession, batches: BatchProvider, config: TrainConfig, directory: String?) {
        self.session = session
        self.batches = batches
        self.config = config
        self.directory = directory
    }

    public var statePath: String? { directory.map { "\($0)/state.safetensors" } }
    private var resumed = false

    /// Refuses a fresh start in a folder that holds a saved run: starting over would overwrite
    /// its state, log and curves. `resume` names the way to continue it.
    public static func checkFreshStart(_ directory: String, resume: String) throws {
        guard FileManager.default.fileExists(atPath: "\(directory)/state.safetensors") else { return }
        throw ArcError("\(directory) holds a saved run (state.safetensors): continue it with \(resume), "
                       + "or choose another output folder (nothing was overwritten)")
    }

    /// One line per setting in `keys` whose value in `now` (this run's metadata) differs from the
    /// saved run's, "unset" where absent: a setting that does not change the train step's graph
    /// (resume checks that by hash) may change on resume, but it changes the run from there on,
    /// so it is said, not silent.
    public static func resumeNotes(saved: [String: String], now: [String: String], keys: [String]) -> [String] {
        keys.compactMap { key in
            let (was, is_) = (saved[key] ?? "unset", now[key] ?? "unset")
            return was == is_ ? nil : "note: resuming with \(key) \(is_) where the run so far had \(was); the new value applies from here"
        }
    }

    /// Continues from a saved state; the log of the run that saved it (rows up to its step) is
    /// read back from `train.csv` in the output folder when there is one.
    public func resume(from path: String) throws {
        try session.restore(from: path)
        resumed = true
        guard let dir = directory, let text = try? String(contentsOfFile: "\(dir)/train.csv", encoding: .utf8) else { return }
        history = text.split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(separator: ",").map { Double($0) }
            guard f.count == 5, let s = f[0], Int(s) <= session.stepCount else { return nil }
            return StepRecord(step: Int(s), loss: f[1] ?? .nan, lr: f[2] ?? .nan, gradNorm: f[3] ?? .nan, seconds: f[4] ?? .nan)
        }
    }

    /// Runs up to `config.steps`. Returns false when stopped by Ctrl-C (after finishing the
    /// current step and saving).
    @discardableResult
    public func run() throws -> Bool {
        session.executable.setThreads(config.threads)
        if let directory {
            if !resumed && session.stepCount == 0 { try Self.checkFreshStart(directory, resume: "a resume") }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        stopRequested = 0
        let previous = signal(SIGINT) { _ in stopRequested = 1 }
        // SIGTERM too: a background run stopped by its session or `kill` saves like Ctrl-C.
        let previousTerm = signal(SIGTERM) { _ in stopRequested = 1 }
        defer { signal(SIGINT, previous); signal(SIGTERM, previousTerm) }
        let start = monotonicSeconds(), firstStep = session.stepCount
        var lastPrint = 0.0
        var completed = true
        while session.stepCount < config.steps {
            let s = session.stepCount
            let t0 = monotonicSeconds()
            try session.setBatch(try batches.batch(step: s))
            let lr = config.schedule.rate(step: s)
            let (loss, norm) = try session.run(lr: lr, emaBeta: config.emaBeta(step: s))
            let now = monotonicSeconds()
            let record = StepRecord(step: s + 1, loss: Double(loss), lr: lr, gradNorm: Double(norm), seconds: now - t0)
            history.append(record)
            if config.progress && (now - lastPrint > 0.1 || session.stepCount == config.steps) {
                lastPrint = now
                let rate = Double(session.stepCount - firstStep) / max(now - start, 1e-9)
                let line = String(format: "\rstep %d/%d  loss %.5g  lr %.3g  grad_norm %.4g  %.2f steps/s ",
                                  record.step, config.steps, record.loss, lr, record.gradNorm, rate)
                FileHandle.standardError.write(line.data(using: .utf8)!)
            }
            if stopRequested != 0 { completed = false; break }
            if config.saveEvery > 0 && session.stepCount % config.saveEvery == 0 && session.stepCount < config.steps { try save() }
            try afterStep?(record)
        }
        if config.progress {
            FileHandle.standardError.write((completed ? "\n" : "\nstopped by Ctrl-C after step \(session.stepCount); saving\n").data(using: .utf8)!)
        }
        try save()
        return completed
    }

    /// Writes the state, the CSV log and the loss plot (each atomically).
    public func save() throws {
        guard let dir = directory else { return }
        var md = metadata
        md["seed"] = String(config.seed)
        md["rng"] = "splitmix64 counter-based: rows of step s from seed + (s+1)*0x9E3779B97F4A7C15; next step \(session.stepCount)"
        /// Sorted keys: the state file must be a pure function of the state (byte-identical resumes).
        let json = JSONEncoder()
        json.outputFormatting = [.sortedKeys]
        md["config"] = String(decoding: try json.encode(config), as: UTF8.self)
        md["optimizer"] = String(decoding: try json.encode(session.step.optimizer), as: UTF8.self)
        md["parameters"] = String(decoding: try json.encode(session.step.parameters), as: UTF8.self)
        try session.save(to: "\(dir)/state.safetensors", metadata: md)
        try writeAtomically(csv(), to: "\(dir)/train.csv")
        try writeAtomically(PNG.encode(LossPlot.draw(history, logScale: logScalePlot), text: [("Software", "arcflow train")]), to: "\(dir)/loss.png")
        try afterSave?()
    }

    public func csv() -> String {
        "step,loss,lr,grad_norm,seconds\n" + history.map { r in
            "\(r.step),\(r.loss),\(r.lr),\(r.gradNorm),\(String(format: "%.6f", r.seconds))"
        }.joined(separator: "\n") + (history.isEmpty ? "" : "\n")
    }

    /// Writes every tensor of `original` (same names and dtypes), trained ones replaced by their
    /// current values (or their EMA with `useEMA`, where kept).
    public func exportWeights(original: WeightStore, to path: String, useEMA: Bool = false) throws {
        let trained = Dictionary(uniqueKeysWithValues: session.step.parameters.map { ($0.key, $0) })
        let records = try original.names.map { name -> TensorRecord in
            let type = original.type(of: name)!
            if let p = trained[name] {
                let source = useEMA && p.ema ? TrainNames.ema(name) : name
                return TensorRecord(name: name, dtype: type.dtype, shape: type.shape, payload: .raw(try session.bytes(source)))
            }
            return TensorRecord(name: name, dtype: type.dtype, shape: type.shape,
                                payload: .raw(Array(UnsafeRawBufferPointer(start: try original.raw(name), count: type.byteCount))))
        }
        try writeSafeTensors(records, metadata: ["format": "arcflow-weights", "trained_steps": String(session.stepCount)], to: path)
    }
}
