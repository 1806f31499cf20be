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
    let threads = try args.int("--threads", spec, default: physicalCoreCount(), min: 1)!
    let seed = UInt64(try args.int("--seed", spec, default: 0, min: 0)!)

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
