// Training the teacher: rendered batches, the compiled train step, periodic EMA export and
// evaluation by the judge (CFG Euler sampling through a compiled sampler graph).

import ArcFlowGraphs
import Foundation
import Imaging
import IR
import Runtime
import ShapesWorld
import Training

/// Fresh renders per step, a pure function of (seed, step): resumes draw exactly the batches an
/// uninterrupted run would.
///
/// σ is logit-normal (SD3's law, m = 0, s = 1): it puts most steps at mid noise, where layout and
/// colour are decided, and few at the ends, where the x0 target is trivial (σ → 0) or the
/// prediction is the data mean (σ → 1). Captions are dropped (replaced by the empty caption in
/// the graph) with probability `dropout` so the model also learns the unconditional velocity
/// that classifier-free guidance needs.
public struct TeacherBatches: BatchProvider {
    public let config: TeacherConfig
    public let seed: UInt64
    public var dropout = 0.1
    /// The largest offset across a two-object prompt's relation in the rendered images
    /// (`ShapesWorld.layout`'s `across`; default: all the world allows).
    public var relationAcross = ShapesWorld.acrossLimit
    public init(config: TeacherConfig, seed: UInt64) { self.config = config; self.seed = seed }

    public func prompts(step: Int) -> [Prompt] {
        var sampler = PromptSampler(seed: (seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_5EED)
        return sampler.next(config.batch)
    }

    public func batch(step: Int) throws -> [String: [Float]] {
        let n = config.batch, s = TeacherConfig.side
        var rng = SeededGenerator(seed: seed &+ UInt64(step + 1) &* 0x9E37_79B9_7F4A_7C15)
        let ps = prompts(step: step)
        let x0 = ShapesWorld.renderBatch(ps, rng: &rng, across: relationAcross)
        let noise = rng.normals(n * 3 * s * s)
        let sigma = rng.normals(n).map { z -> Float in min(max(1 / (1 + Foundation.exp(-z)), 1e-4), 1 - 1e-4) }
        let keep = (0..<n).map { _ in rng.uniform() < Float(dropout) ? Float(0) : 1 }
        let ids = ps.flatMap { WorldVocabulary.encode($0).map(Float.init) }
        return ["x0": x0, "noise": noise, "sigma": sigma, "keep": keep, "input_ids": ids]
    }
}

/// Samples a fixed prompt set with a compiled one-step CFG Euler graph (run once per knot pair)
/// and judges the images.
public final class TeacherEvaluator {
    public let config: TeacherConfig
    public let prompts: [Prompt]
    public var guidance: Double
    /// The scale at each step's starting σ when set (a σ-dependent guidance, as
    /// `DistillRecipe.guidance(at:)`); `guidance` throughout otherwise.
    public var guidanceAt: ((Double) -> Double)?
    public var sigmas: [Double]
    public let shift: Double
    public let chunk: Int
    let noiseSeed: UInt64

    /// `count` one-object prompts (held-out pairs excluded), fixed by `seed`, as is the noise.
    public init(config: TeacherConfig, count: Int = 64, chunk: Int = 16, steps: Int = 28, shift: Double = 1,
                guidance: Double = 5, seed: UInt64 = 1234) {
        self.config = config
        var sampler = PromptSampler(seed: seed)
        sampler.twoObjects = 0
        self.prompts = sampler.next(count)
        self.chunk = chunk
        self.guidance = guidance
        self.sigmas = Schedule.eulerSigmas(steps: steps, shift: shift)
        self.shift = shift
        self.noiseSeed = seed
    }

    /// Images as bytes from the graph's [−1, 1] floats [count(+), 3, 64, 64], by the one
    /// conversion `generate` uses (`VAEDecoderGraph.rgb8`, diffusers' postprocess), so that the
    /// evaluation judges the bytes a user's PNG would hold.
    public static func images(_ t: [Float], count: Int) -> [Image8] {
        let s = TeacherConfig.side, size = 3 * s * s
        return (0..<count).map { k in
            Image8(width: s, height: s, channels: 3,
                   pixels: VAEDecoderGraph.rgb8(Tensor(.f32([1, 3, s, s]), Array(t[(k * size)..<((k + 1) * size)]))))
        }
    }

    /// The starting noise of each chunk of `chunk` prompts ([chunk, 3, 64, 64], padding rows
    /// included), in order: what `evaluate` samples from, so that another sampler (the distilled
    /// students) can start from exactly the same noise for paired comparisons.
    public func noiseChunks() -> [[Float]] {
        let s = TeacherConfig.side
        var rng = SeededGenerator(seed: noiseSeed)
        return stride(from: 0, to: prompts.count, by: chunk).map { _ in rng.normals(chunk * 3 * s * s) }
    }

    /// Samples every prompt with `weights` (the trained tensors, e.g. the EMA) and judges them.
    public func evaluate(weights: WeightStore, threads: Int) throws -> (accuracy: Double, images: [Image8], verdicts: [Verdict]) {
        var images: [Image8] = []
        for (index, x) in try sample(weights: weights, threads: threads).enumerated() {
            images += Self.images(x, count: min(chunk, prompts.count - index * chunk))
        }
        let verdicts = zip(images, prompts).map { ShapesWorld.judge($0, $1) }
        return (Double(verdicts.filter(\.passed).count) / Double(max(prompts.count, 1)), images, verdicts)
    }

    /// The sampler's final images before 8-bit conversion, one [chunk, 3, 64, 64] array per chunk
    /// of `noiseChunks` (padding rows sample the empty caption): what `evaluate` judges, and what
    /// the compiled teacher (`generate --teacher`) must reproduce from the same noise.
    public func sample(weights: WeightStore, threads: Int) throws -> [[Float]] {
        let store = TeacherGraphs.store(config, trained: weights)
        let graph = try TeacherGraphs.sampler(config, weights: store, count: chunk, steps: 1)
        let exe = try ModelCompiler.build(Module(graph), weights: store).load()
        exe.setThreads(threads)
        let s = TeacherConfig.side, l = config.text.tokens
        return try zip(stride(from: 0, to: prompts.count, by: chunk), noiseChunks()).map { start, noise in
            let ps = Array(prompts[start..<min(start + chunk, prompts.count)])
            let ids = (ps.map { WorldVocabulary.encode($0) } + [[Int]](repeating: TeacherGraphs.emptyCaption, count: chunk - ps.count))
                .flatMap { $0.map(Float.init) }
            var x = Tensor(.f32([chunk, 3, s, s]), noise)
            for i in 0..<(sigmas.count - 1) {
                let out = try exe.run(["noise": x, "input_ids": Tensor(.f32([chunk, l]), ids),
                                       "sigmas": Tensor(.f32([2]), [Float(sigmas[i]), Float(sigmas[i + 1])]),
                                       "guidance_scale": Tensor(.f32([1]), [Float(guidanceAt?(sigmas[i]) ?? guidance)])])
                x = out["images"]!
            }
            return x.data
        }
    }
}

/// Options of a teacher training run (`arcflow train-default`).
public struct TeacherRunOptions {
    public var directory: String
    public var steps = 30_000
    public var batch = 32
    public var lr = 4e-4
    public var warmup = 500
    /// The rate holds at `lr` up to this step, then falls by a half cosine to 5% at `steps`
    /// (nil: the last third of the run). The first run's accuracy crept up at a constant rate
    /// (0.55 at 14k steps, 0.6–0.66 at 16–17k); annealing is where a flow model's samples sharpen.
    public var decayStart: Int?
    public var saveEvery = 250
    public var evalEvery = 1000
    public var evalCount = 64
    public var guidance = 5.0
    public var shift = 1.0
    public var seed: UInt64 = 0
    /// Training layouts draw two-object scenes with at most this offset across the relation
    /// (nil: all the world allows, 14.5 px). Why it was tried: the teacher's relation failures
    /// are all pairs placed more than 16 px apart across the relation, as if its offsets spread
    /// past what it was shown. Measured (README, session 25): a 3,000-step fine-tune at 6 px moved
    /// the bulk of the offsets inward but not the tail past 16 px, which is what fails.
    public var relationAcross: Double?
    /// Start from these weights (a default-model folder or a flat f32 file, as distill-default's
    /// `--teacher-weights`) instead of the seed's random init; the optimizer state starts fresh.
    public var initWeights: String?
    /// The teacher's shape for a fresh run (nil: the standard teacher); a resumed run or one
    /// from `initWeights` takes the shape of those weights.
    public var shape: TeacherShape?
    public var threads = 2
    public var resume = false
    public var emaBeta = 0.999
    public var log: (String) -> Void = { print($0) }
    public init(directory: String) { self.directory = directory }
}

public enum TeacherRun {
    /// Trains (or resumes) the teacher in `o.directory`: state.safetensors (every `saveEvery`
    /// steps), train.csv, loss.png, train.log lines via `o.log`, and every `evalEvery` steps
    /// ema.safetensors (f32), eval.csv (step, accuracy, guidance, shift) and eval_<step>.png.
    public static func run(_ o: TeacherRunOptions) throws {
        let run = try prepare(o)
        try train(run.trainer, run.config, o, frozen: run.frozen)
    }

    /// Compiles the train step (cached by the generated C) and binds a session at the initial
    /// weights, or at the saved state with `o.resume`; `frozen`: the weights it does not train.
    public static func prepare(_ o: TeacherRunOptions) throws
        -> (trainer: Trainer, compiled: CompiledProgram, config: TeacherConfig, frozen: [String: Tensor]) {
        let dir = o.directory
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let statePath = "\(dir)/state.safetensors"
        let resuming = o.resume && FileManager.default.fileExists(atPath: statePath)
        if !resuming { try Trainer.checkFreshStart(dir, resume: "--resume") }
        let c = try config(o, resuming: resuming)
        let initial = try o.initWeights.map { try TeacherRun.initialWeights(c, from: $0, seed: o.seed) } ?? TeacherWeights.random(c, seed: o.seed)
        // The weights this run starts from (a resumed run keeps its own), with the steps that
        // trained them, so that the exported EMA counts the whole chain ("30000 + 7000").
        if !resuming {
            let prior = try o.initWeights.flatMap { try trainedSteps(of: $0) }
            try TeacherWeights.write(initial, metadata: prior.map { ["trained_steps": $0] } ?? [:], to: "\(dir)/init.safetensors")
        }
        let trained = TensorStore(initial, label: "teacher init (seed \(o.seed))")
        let store = TeacherGraphs.store(c, trained: trained)
        let t0 = monotonicSeconds()
        let lossGraph = try TeacherGraphs.loss(c, weights: store)
        let params = TeacherWeights.trainable(c).map { TrainableParameter($0, ema: true) }
        let step = try OptimizerStep.build(lossGraph: lossGraph, loss: "loss", parameters: params,
                                           optimizer: OptimizerConfig(maxGradNorm: 1))
        var options = CompileOptions()
        options.model = ["train_step": step.hash]
        let compiled = try ModelCompiler.build(Module(step.graph), weights: store, options: options)
        let session = try TrainingSession(step: step, executable: try compiled.load(), initial: store)
        let parameterCount = TeacherWeights.layout(c).reduce(0) { $0 + $1.shape.reduce(1, *) }
        o.log(String(format: "teacher (%@): %d parameters, batch %d, train step %.1f GFLOP, compiled in %.0f s",
                     c.shape.description, parameterCount, c.batch, compiled.program.flops / 1e9, monotonicSeconds() - t0))

        let schedule = LRSchedule(lr: o.lr, warmupSteps: o.warmup, warmupStartFactor: 0.01, cosine: true, minFactor: 0.05,
                                  totalSteps: o.steps, decayStart: o.decayStart ?? o.steps - o.steps / 3)
        let config = TrainConfig(steps: o.steps, schedule: schedule, emaBeta: o.emaBeta, saveEvery: o.saveEvery,
                                 seed: o.seed, threads: o.threads, progress: false)
        var batches = TeacherBatches(config: c, seed: o.seed)
        if let across = o.relationAcross { batches.relationAcross = across }
        let trainer = Trainer(session: session, batches: batches, config: config, directory: dir)
        trainer.metadata = ["model": "shapes-teacher", "batch": String(c.batch), "lr": String(o.lr), "steps": String(o.steps),
                            "warmup": String(o.warmup), "decay_start": String(schedule.decayStart), "ema_beta": String(o.emaBeta),
                            "guidance": String(o.guidance), "shift": String(o.shift)]
        if let path = o.initWeights { trainer.metadata["init_weights"] = path }
        if let across = o.relationAcross { trainer.metadata["relation_across"] = String(across) }
        if resuming {
            let recorded = try SafeTensorsFile(path: statePath).metadata
            // The batches are a function of the layout prior too: a resumed run keeps its own.
            let saved = recorded["relation_across"].flatMap(Double.init)
            guard saved == o.relationAcross else {
                throw ArcError("\(statePath) was trained with --relation-across \(saved.map { String($0) } ?? "unset"), "
                               + "not \(o.relationAcross.map { String($0) } ?? "unset"): resume with the run's own layouts")
            }
            // Runs saved before these were recorded lack them: nothing to compare.
            for line in Trainer.resumeNotes(saved: recorded, now: trainer.metadata, keys: resumableSettings.filter { recorded[$0] != nil }) {
                o.log(line)
            }
            try trainer.resume(from: statePath)
            o.log("resumed at step \(session.stepCount)")
        }
        let frozen = Set(TeacherWeights.frozen(c))
        return (trainer, compiled, c, initial.filter { frozen.contains($0.key) })
    }

    /// The settings a teacher run records that may change on resume (the schedule, the EMA, the
    /// evaluation's sampler), each said when it does (`Trainer.resumeNotes`).
    static let resumableSettings = ["lr", "steps", "warmup", "decay_start", "ema_beta", "guidance", "shift"]

    /// The run's teacher: a resumed run's from its own `init.safetensors`, a run from
    /// `--init-weights` that file's, else `o.shape` (the standard teacher when nil). A `o.shape`
    /// that contradicts the weights is an error, not silently dropped.
    static func config(_ o: TeacherRunOptions, resuming: Bool) throws -> TeacherConfig {
        let source = resuming ? "\(o.directory)/init.safetensors" : o.initWeights
        guard let source else { return try TeacherConfig.make(o.shape ?? TeacherShape(), batch: o.batch) }
        let store = resuming ? try SafeTensorsStore(path: source) : try DistillRun.openTeacherWeights(source, option: "--init-weights")
        let c = try TeacherConfig.inferred(from: store, batch: o.batch)
        guard let asked = o.shape, asked != c.shape else { return c }
        let grown = asked.width == c.shape.width && c.patch % asked.patch == 0
            && asked.doubleBlocks >= c.shape.doubleBlocks && asked.singleBlocks >= c.shape.singleBlocks
        if !resuming, grown { return try TeacherConfig.make(asked, batch: o.batch) }
        throw ArcError("\(source) holds a teacher of \(c.shape), not the \(asked) asked for; "
                       + (resuming ? "a resumed run keeps its shape"
                                   : "drop the shape options to continue that teacher (only a finer --patch that divides its own, "
                                     + "or more blocks, may differ)"))
    }

    /// Every weight of `layout(c)` as f32 from `path` (a default-model folder, widened, or a flat
    /// file), checked against the layout's shapes; a coarser-patch teacher's re-patched, one
    /// with fewer blocks deepened (its new blocks drawn from `seed`).
    static func initialWeights(_ c: TeacherConfig, from path: String, seed: UInt64 = 0) throws -> [String: Tensor] {
        let store = try DistillRun.openTeacherWeights(path, option: "--init-weights")
        // Weights of a coarser patch that c's divides warm-start a finer teacher (`repatched`),
        // weights with fewer blocks a deeper one (`deepened`); everything else must have c's shapes.
        var source = c
        if let e = store.type(of: "x_embedder.weight")?.shape, e.count == 2, e[1] != c.tokenChannels,
           let p = TeacherConfig.patch(tokenChannels: e[1]), p > c.patch, p % c.patch == 0 {
            source.patch = p
            source.flux.inChannels = e[1]
        }
        let blocks = TeacherConfig.blockCounts(in: store)
        source.flux.numLayers = min(blocks.double, c.flux.numLayers)
        source.flux.numSingleLayers = min(blocks.single, c.flux.numSingleLayers)
        var out: [String: Tensor] = [:]
        for (name, shape, _) in TeacherWeights.layout(source) {
            try store.validate(name, .f32(shape))
            out[name] = try store.tensor(name)
        }
        if source.flux.numLayers < c.flux.numLayers || source.flux.numSingleLayers < c.flux.numSingleLayers {
            guard source.flux.numLayers >= 1 else { throw ArcError("\(store.label): no transformer_blocks.0: not a teacher's weights") }
            var deeper = c
            deeper.patch = source.patch
            deeper.flux.inChannels = source.flux.inChannels
            out = TeacherWeights.deepened(out, from: source, to: deeper, seed: seed)
        }
        return source.patch == c.patch ? out : TeacherWeights.repatched(out, from: source.patch, to: c.patch)
    }

    /// The `trained_steps` a teacher's weights record: a default-model folder's model.json, or a
    /// flat file's metadata (an `ema.safetensors`, a run's `init.safetensors`); nil when unrecorded.
    static func trainedSteps(of path: String) throws -> String? {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            return try DefaultModelFolder.load(path).info.trainedSteps
        }
        return try SafeTensorsStore(path: path).files.first?.metadata["trained_steps"]
    }

    /// The steps behind a run's EMA at `step`: its own, after those of the weights it started from.
    static func chainedSteps(_ step: Int, after prior: String?) -> String {
        prior.map { "\($0) + \(step)" } ?? String(step)
    }

    static func train(_ trainer: Trainer, _ c: TeacherConfig, _ o: TeacherRunOptions, frozen: [String: Tensor]) throws {
        let dir = o.directory, session = trainer.session
        let evaluator = TeacherEvaluator(config: c, count: o.evalCount, shift: o.shift, guidance: o.guidance)
        let evalPath = "\(dir)/eval.csv"
        var window: [StepRecord] = []
        var last = monotonicSeconds()
        trainer.afterStep = { r in
            window.append(r)
            if r.step % 50 == 0 {
                let now = monotonicSeconds()
                let mean = window.map(\.loss).reduce(0, +) / Double(window.count)
                o.log(String(format: "step %d  loss %.4f (mean of %d)  lr %.3g  grad_norm %.3g  %.2f steps/s",
                             r.step, mean, window.count, r.lr, r.gradNorm, Double(window.count) / (now - last)))
                window.removeAll(); last = now
            }
            if o.evalEvery > 0 && r.step % o.evalEvery == 0 {
                try trainer.save()
                let acc = try evaluate(trainer: trainer, config: c, frozen: frozen, evaluator: evaluator, directory: dir,
                                       evalPath: evalPath, log: o.log)
                _ = acc
                last = monotonicSeconds()
            }
        }
        try trainer.run()
        o.log("done at step \(session.stepCount)")
    }

    /// Every teacher weight as f32 by name: the session's EMA of the trained ones, and the
    /// `frozen` ones (`TeacherWeights.frozen`) as they were initialised.
    public static func ema(_ session: TrainingSession, _ c: TeacherConfig, frozen: [String: Tensor]) throws -> [String: Tensor] {
        var out = frozen
        for k in TeacherWeights.trainable(c) { out[k] = try session.tensor(TrainNames.ema(k)) }
        return out
    }

    static func evaluate(trainer: Trainer, config c: TeacherConfig, frozen: [String: Tensor], evaluator: TeacherEvaluator,
                         directory dir: String, evalPath: String, log: (String) -> Void) throws -> Double {
        let t0 = monotonicSeconds()
        let weights = try ema(trainer.session, c, frozen: frozen)
        let step = trainer.session.stepCount
        let prior = try trainedSteps(of: "\(dir)/init.safetensors")
        try TeacherWeights.write(weights, metadata: ["format": "arcflow-weights", "trained_steps": chainedSteps(step, after: prior)],
                                 to: "\(dir)/ema.safetensors")
        let (acc, images, _) = try evaluator.evaluate(weights: TensorStore(weights, label: "EMA at step \(step)"), threads: trainer.config.threads)
        try writeAtomically(PNG.encode(ShapesWorld.contactSheet(images)), to: "\(dir)/eval_\(step).png")
        let header = FileManager.default.fileExists(atPath: evalPath) ? "" : "step,accuracy,guidance,shift,prompts\n"
        let row = header + "\(step),\(acc),\(evaluator.guidance),\(evaluator.shift),\(evaluator.prompts.count)\n"
        if let h = FileHandle(forWritingAtPath: evalPath) {
            h.seekToEndOfFile(); h.write(row.data(using: .utf8)!); h.closeFile()
        } else {
            try writeAtomically(row, to: evalPath)
        }
        log(String(format: "eval at step %d: one-object accuracy %.3f (%d prompts, CFG %.1f, 28 Euler steps) in %.0f s",
                   step, acc, evaluator.prompts.count, evaluator.guidance, monotonicSeconds() - t0))
        return acc
    }
}
