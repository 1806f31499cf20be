// train: differentiate a loss graph, append AdamW, compile the step and run it on sampled batches.

import Foundation
import IR
import Passes
import Runtime
import Training

let trainSpec = CommandSpec(
    name: "train",
    usage: "train FILE.ir --weights W.safetensors --data D.safetensors --loss NAME --steps N --lr LR -o OUTDIR [options]",
    summary: "Train the weights of a graph with AdamW on rows sampled from a data file; resumable.",
    options: [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "initial weights (every weight the graph names)"),
        OptionSpec(names: ["--data"], value: "D.safetensors", help: "one tensor [N, ...] per graph input [B, ...], by name"),
        OptionSpec(names: ["--loss"], value: "NAME", help: "the graph output to minimize (its sum, if not a scalar)"),
        OptionSpec(names: ["--wrt"], value: "K1,K2,...", help: "weights to train (default: all)"),
        OptionSpec(names: ["--lr-scale"], value: "KEY=F", help: "multiply the lr of KEY (or KEY* prefix) by F; repeatable", repeatable: true),
        OptionSpec(names: ["--steps"], value: "N", help: "total optimizer steps (a resumed run continues up to N)"),
        OptionSpec(names: ["--lr"], value: "LR", help: "learning rate"),
        OptionSpec(names: ["--batch"], value: "B", help: "rows per step; must equal the graph inputs' leading dimension (default: that)"),
        OptionSpec(names: ["--warmup"], value: "W", help: "linear warm-up steps (default 0)"),
        OptionSpec(names: ["--warmup-start"], value: "F", help: "lr factor at the first warm-up step (default 0)"),
        OptionSpec(names: ["--cosine"], value: nil, help: "cosine decay to 0 after warm-up (default: constant)"),
        OptionSpec(names: ["--beta1"], value: "B1", help: "AdamW β1 (default 0.9)"),
        OptionSpec(names: ["--beta2"], value: "B2", help: "AdamW β2 (default 0.999)"),
        OptionSpec(names: ["--eps"], value: "E", help: "AdamW ε (default 1e-8)"),
        OptionSpec(names: ["--weight-decay"], value: "WD", help: "decoupled weight decay (default 0.01)"),
        OptionSpec(names: ["--clip"], value: "MAX", help: "clip the global gradient L2 norm to MAX (default: no clipping)"),
        OptionSpec(names: ["--ema"], value: "BETA", help: "keep an EMA of the trained weights (written to OUTDIR/ema.safetensors)"),
        OptionSpec(names: ["--save-every"], value: "N", help: "save OUTDIR/state.safetensors every N steps (default: at the end)"),
        OptionSpec(names: ["--resume"], value: "STATE.safetensors", help: "continue from a saved state"),
        OptionSpec(names: ["-o", "--output"], value: "OUTDIR", help: "output folder"),
        threadsOption,
        OptionSpec(names: ["--seed"], value: "S", help: "seed of the row sampler (default 0)"),
        OptionSpec(names: ["--quiet"], value: nil, help: "no progress line"),
    ],
    details: """
    The graph's inputs are fed from the data file: an input of shape [B, d...] reads the tensor of the same
    name with shape [N, d...] (the same N for all), and each step takes B rows sampled with replacement by a
    seeded counter-based RNG, the same rows for every tensor. Same seed and thread count: identical weights.
    OUTDIR gets state.safetensors (weights, adam_m/..., adam_v/..., ema/...; resumable bit-for-bit),
    weights.safetensors (all input weights, trained ones updated), train.csv and loss.png. Ctrl-C stops after
    the current step and saves (exit status 130).
    """)

func trainCommand(_ argv: [String]) throws {
    let spec = trainSpec
    let args = try parseArguments(argv, spec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", spec) }
    let weightsPath = try args.required("--weights", spec)
    let dataPath = try args.required("--data", spec)
    let lossName = try args.required("--loss", spec)
    let out = try args.required("--output", spec)
    let steps = try args.int("--steps", spec, min: 0) ?? { throw UsageError("missing required option --steps", spec) }()
    let lr = try args.double("--lr", spec) ?? { throw UsageError("missing required option --lr", spec) }()
    let threads = try threadCount(args, spec)
    let seed = UInt64(try args.int("--seed", spec, default: 0, min: 0)!)
    if args.value("--resume") == nil { try Trainer.checkFreshStart(out, resume: "--resume \(out)/state.safetensors") }

    let module = try loadModule(file)
    guard module.prologue == nil else { throw ArcError("\(file) has a @prologue; train the graph before lifting") }
    let graph = module.main
    let store = try SafeTensorsStore(path: weightsPath)
    var seen = Set<String>()
    let allWeights = graph.nodes.filter { $0.op == .weight && seen.insert($0.key!).inserted }.map { $0.key! }
    let wrt = args.value("--wrt").map { $0.split(separator: ",").map(String.init) } ?? allWeights
    for k in wrt where !allWeights.contains(k) {
        throw UsageError("--wrt '\(k)' is not a weight of @\(graph.name) (weights: \(allWeights.joined(separator: ", ")))", spec)
    }
    var scales: [(String, Double)] = []
    for s in args.all("--lr-scale") {
        let parts = s.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let f = Double(parts[1]), f.isFinite else { throw UsageError("--lr-scale expects KEY=F, got '\(s)'", spec) }
        scales.append((String(parts[0]), f))
    }
    let emaBeta = try args.double("--ema", spec)
    let parameters = wrt.map { key -> TrainableParameter in
        let scale = scales.last { $0.0 == key || ($0.0.hasSuffix("*") && key.hasPrefix($0.0.dropLast())) }?.1 ?? 1
        return TrainableParameter(key, lrScale: scale, ema: emaBeta != nil)
    }
    var adam = AdamW()
    adam.beta1 = try args.double("--beta1", spec, default: adam.beta1)!
    adam.beta2 = try args.double("--beta2", spec, default: adam.beta2)!
    adam.eps = try args.double("--eps", spec, default: adam.eps)!
    adam.weightDecay = try args.double("--weight-decay", spec, default: adam.weightDecay)!
    let optimizer = OptimizerConfig(adamW: adam, maxGradNorm: try args.double("--clip", spec))

    let step = try OptimizerStep.build(lossGraph: graph, loss: lossName, parameters: parameters, optimizer: optimizer)
    var options = CompileOptions()
    options.model = ["train_step": step.hash]
    let compiled = try ModelCompiler.build(Module(step.graph), weights: store, options: options)
    let session = try TrainingSession(step: step, executable: try compiled.load(), initial: store)

    let dataTypes = session.dataTypes
    if let b = try args.int("--batch", spec, min: 1), let bad = dataTypes.first(where: { $0.value.shape.first != b }) {
        throw ArcError("--batch \(b) does not match graph input '\(bad.key)' \(bad.value): the batch size is compiled into the graph; regenerate it with batch \(b)")
    }
    let batches = try SafeTensorsBatches(path: dataPath, inputs: dataTypes, seed: seed)
    let schedule = LRSchedule(lr: lr, warmupSteps: try args.int("--warmup", spec, default: 0, min: 0)!,
                              warmupStartFactor: try args.double("--warmup-start", spec, default: 0)!,
                              cosine: args.has("--cosine"), totalSteps: steps)
    let config = TrainConfig(steps: steps, schedule: schedule, emaBeta: emaBeta ?? 0.999,
                             saveEvery: try args.int("--save-every", spec, default: 0, min: 0)!, seed: seed, threads: threads,
                             progress: !args.has("--quiet"))
    let trainer = Trainer(session: session, batches: batches, config: config, directory: out)
    trainer.metadata = ["graph": file, "loss": lossName, "data": dataPath]
    if let resume = args.value("--resume") { try trainer.resume(from: resume) }
    let startStep = session.stepCount
    let completed = try trainer.run()
    try trainer.exportWeights(original: store, to: "\(out)/weights.safetensors")
    if emaBeta != nil { try trainer.exportWeights(original: store, to: "\(out)/ema.safetensors", useEMA: true) }
    let ran = trainer.history.filter { $0.step > startStep }
    let summary = ran.isEmpty ? "no steps to run (state is at step \(session.stepCount))"
        : String(format: "steps %d-%d, loss %.5g → %.5g", startStep + 1, session.stepCount, ran.first!.loss, ran.last!.loss)
    print("trained \(wrt.count) weights: \(summary); wrote state.safetensors, weights.safetensors, train.csv, loss.png to \(out)")
    if !completed { exit(130) }
}

let trainBenchSpec = CommandSpec(
    name: "train-bench", usage: "train-bench FILE.ir --weights W.safetensors --loss NAME [--runs N] [--warmup N] [--threads N] [--json]",
    summary: "Time one train step (forward + backward + AdamW) against the forward alone, in the same run.",
    options: [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "weights (every weight the graph names; all are trained)"),
        OptionSpec(names: ["--loss"], value: "NAME", help: "the loss output"),
        OptionSpec(names: ["--runs"], value: "N", help: "timed runs of each (default 5)"),
        OptionSpec(names: ["--warmup"], value: "N", help: "untimed runs of each first (default 1)"),
        threadsOption,
        OptionSpec(names: ["--json"], value: nil, help: "print one JSON object"),
        OptionSpec(names: ["--profile"], value: nil, help: "also print time per kernel of the train step (to stderr)"),
    ],
    details: "Inputs are seeded N(0,1). Runs alternate forward, step, forward, …, so both see the same machine state. GFLOP/s counts GEMM and attention FLOPs of each compiled graph.")

func trainBenchCommand(_ argv: [String]) throws {
    let spec = trainBenchSpec
    let args = try parseArguments(argv, spec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", spec) }
    let graph = try loadModule(file).main
    let store = try SafeTensorsStore(path: try args.required("--weights", spec))
    let lossName = try args.required("--loss", spec)
    let runs = try args.int("--runs", spec, default: 5, min: 1)!, warmup = try args.int("--warmup", spec, default: 1, min: 0)!
    let threads = try threadCount(args, spec)
    var seen = Set<String>()
    let keys = graph.nodes.filter { $0.op == .weight && seen.insert($0.key!).inserted }.map { $0.key! }
    let step = try OptimizerStep.build(lossGraph: graph, loss: lossName, parameters: keys.map { TrainableParameter($0) },
                                       optimizer: OptimizerConfig(maxGradNorm: 1))
    let t0 = monotonicSeconds()
    let forward = try ModelCompiler.build(Module(graph), weights: store)
    let trainCompiled = try ModelCompiler.build(Module(step.graph), weights: store)
    let compileSeconds = monotonicSeconds() - t0
    let fwd = try forward.load(), session = try TrainingSession(step: step, executable: try trainCompiled.load(), initial: store)
    fwd.setThreads(threads)
    session.executable.setThreads(threads)
    var rng = SeededGenerator(seed: 0)
    var inputs: [String: Tensor] = [:]
    for b in fwd.inputs { inputs[b.name] = Tensor(TensorType(.f32, b.shape), rng.normals(b.shape.reduce(1, *))) }
    try session.setBatch(inputs.mapValues(\.data))
    let ins = try fwd.encodeInputs(inputs), outs = fwd.allocateOutputs()
    defer { (ins + outs).forEach { $0.deallocate() } }
    var tf: [Double] = [], ts: [Double] = []
    for k in 0..<(warmup + runs) {
        var a = monotonicSeconds()
        try fwd.runRaw(inputs: ins.map { UnsafeRawPointer($0) }, outputs: outs)
        var b = monotonicSeconds()
        if k >= warmup { tf.append(b - a) }
        a = monotonicSeconds()
        try session.run(lr: 1e-4)
        b = monotonicSeconds()
        if k >= warmup { ts.append(b - a) }
    }
    let mf = median(tf), ms = median(ts)
    let ff = forward.program.flops, fs = trainCompiled.program.flops
    let peak = fwd.library.fmaPeakGFLOPS()
    if args.has("--json") {
        let obj: [String: Any] = ["graph": graph.name, "threads": threads, "runs": runs, "forward_ms_median": mf * 1000,
                                  "step_ms_median": ms * 1000, "step_over_forward": ms / mf, "forward_gflop": ff / 1e9, "step_gflop": fs / 1e9,
                                  "forward_gflop_per_s": ff / mf / 1e9, "step_gflop_per_s": fs / ms / 1e9, "fma_peak_gflop_per_s": peak,
                                  "compile_seconds": compileSeconds]
        print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
    } else {
        print("@\(graph.name): \(runs) runs, \(threads) threads, measured FMA peak " + String(format: "%.0f GFLOP/s", peak))
        print(String(format: "  forward   : median %9.3f ms  (min %.3f)  %7.1f GFLOP/s  (%.3f GFLOP)", mf * 1000, tf.min()! * 1000, ff / mf / 1e9, ff / 1e9))
        print(String(format: "  train step: median %9.3f ms  (min %.3f)  %7.1f GFLOP/s  (%.3f GFLOP; forward + backward + AdamW)", ms * 1000, ts.min()! * 1000, fs / ms / 1e9, fs / 1e9))
        print(String(format: "  step / forward: %.2f×;  step at %.0f%% of FMA peak", ms / mf, 100 * fs / ms / 1e9 / peak))
    }
    if args.has("--profile") {
        var times = [Double](repeating: 0, count: trainCompiled.program.steps.count)
        try times.withUnsafeMutableBufferPointer { t in
            try session.executable.runRaw(inputs: session.currentInputs, outputs: session.currentOutputs, times: t.baseAddress)
        }
        printProfile(trainCompiled.program.steps, times, runs: 1)
    }
}
