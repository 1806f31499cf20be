// train-default: train the embedded default model's teacher on the shapes world (hours of CPU).

import DefaultModel
import Foundation
import Imaging
import ShapesWorld
import IR
import Runtime

let trainDefaultSpec = CommandSpec(
    name: "train-default",
    usage: "train-default -o OUTDIR [--steps N] [--batch B] [--resume] [options]",
    summary: "Train the default model's teacher (FLUX MMDiT, pixel space) on rendered shapes; resumable.",
    options: [
        OptionSpec(names: ["-o", "--output"], value: "OUTDIR", help: "run folder (state, logs, EMA weights, evaluations)"),
        OptionSpec(names: ["--steps"], value: "N", help: "total optimizer steps (default 30000; a resumed run continues up to N)"),
        OptionSpec(names: ["--batch"], value: "B", help: "samples per step, compiled into the graph (default 32)"),
        OptionSpec(names: ["--resume"], value: nil, help: "continue from OUTDIR/state.safetensors when it exists"),
        OptionSpec(names: ["--lr"], value: "LR", help: "AdamW learning rate after warm-up (default 4e-4)"),
        OptionSpec(names: ["--warmup"], value: "W", help: "linear warm-up steps (default 500)"),
        OptionSpec(names: ["--decay-start"], value: "STEP", help: "hold the rate up to STEP, then a half cosine to 5% at --steps (default: the last third)"),
        OptionSpec(names: ["--save-every"], value: "N", help: "save the state every N steps (default 250)"),
        OptionSpec(names: ["--eval-every"], value: "N", help: "export the EMA and judge samples every N steps (default 1000; 0: never)"),
        OptionSpec(names: ["--eval-prompts"], value: "N", help: "one-object prompts per evaluation (default 64)"),
        OptionSpec(names: ["--guidance"], value: "G", help: "classifier-free guidance scale of the evaluation sampler (default 5, the run's history); with --export-teacher: the shipped teacher's (default 3)"),
        OptionSpec(names: ["--shift"], value: "S", help: "σ-schedule shift of the 28 Euler steps (default 1)"),
        OptionSpec(names: ["--seed"], value: "S", help: "seed of the initial weights and of the batches (default 0)"),
        OptionSpec(names: ["--relation-across"], value: "PX", help: "training layouts of two-object prompts keep the offset across the relation within PX (default 14.5: all the world allows, its 16 px less a 1.5 px margin); the judge keeps 16"),
        OptionSpec(names: ["--patch"], value: "P", help: "a fresh run's teacher: pixels per image-token side (default 8: 64 tokens; 4: 256 tokens)"),
        OptionSpec(names: ["--width"], value: "W", help: "a fresh run's teacher: transformer width, heads of 64 (default 192)"),
        OptionSpec(names: ["--double-blocks"], value: "N", help: "a fresh run's teacher: joint (double-stream) blocks (default 4); with --init-weights, more than its own adds blocks that start closed (the model computes what it did)"),
        OptionSpec(names: ["--single-blocks"], value: "N", help: "a fresh run's teacher: single-stream blocks after them (default 0); with --init-weights, as --double-blocks"),
        OptionSpec(names: ["--init-weights"], value: "PATH", help: "start from these weights instead of random ones: a default-model folder (e.g. models/shapes; f16, widened) or flat f32 weights (a run's ema.safetensors); the optimizer starts fresh"),
        OptionSpec(names: ["--export-teacher"], value: "DIR", help: "only write OUTDIR/ema.safetensors as a default-model folder DIR (transformer/, text_encoder/, model.json; f16) and exit"),
        OptionSpec(names: ["--initial-students"], value: nil, help: "with --export-teacher: also write untrained students DIR/arcflow (K = 8) and DIR/linear (K = 1) where absent (zero LoRA B, heads from the teacher; for trying the pipeline before distillation)"),
        OptionSpec(names: ["--evaluate"], value: "W.safetensors", help: "only sample and judge the eval prompts with these weights (OUTDIR/check.png) and exit"),
        OptionSpec(names: ["--profile"], value: "N", help: "only time N steps after one warm-up step (batch rendering and each kernel, to stderr) and exit"),
        threadsOption,
    ],
    details: """
    Each step renders a fresh batch from the shapes world (prompts from PromptSampler, held-out pairs excluded),
    a pure function of (seed, step), so --resume continues exactly. OUTDIR gets init.safetensors, state.safetensors,
    train.csv, loss.png, and at every evaluation ema.safetensors (f32), eval.csv and eval_<step>.png.
    Progress lines go to stdout (redirect to OUTDIR/train.log for a background run).
    """)

func trainDefaultCommand(_ argv: [String]) throws {
    let spec = trainDefaultSpec
    let args = try parseArguments(argv, spec, maxPositional: 0)
    var o = TeacherRunOptions(directory: try args.required("--output", spec))
    if let dir = args.value("--export-teacher") {
        let ema = try SafeTensorsStore(path: "\(o.directory)/ema.safetensors")
        var tensors: [String: Tensor] = [:]
        for name in ema.names { tensors[name] = try ema.tensor(name) }
        let steps = ema.files.first?.metadata["trained_steps"] ?? "?"
        let c = try TeacherConfig.inferred(from: ema)
        try DefaultModelExport.write(tensors, config: c, trainedSteps: steps,
                                     teacher: .init(steps: 28, guidance: try args.double("--guidance", spec, default: DefaultTeacherSampling.guidance)!,
                                                    shift: try args.double("--shift", spec, default: 1)!), to: dir)
        print("wrote the default model (teacher EMA after \(steps) steps, \(tensors.count) tensors, f16) to \(dir): "
              + "transformer/, text_encoder/, model.json; adapters go in \(dir)/arcflow and \(dir)/linear")
        if args.has("--initial-students") {
            let folder = try DefaultModelFolder.load(dir)
            for (name, k) in [("arcflow", 8), ("linear", 1)] where folder.adapterDirectory(name) == nil {
                try DefaultModelExport.writeInitialStudent(teacher: folder, components: k, to: "\(dir)/\(name)")
                print("wrote an untrained K = \(k) student to \(dir)/\(name) (not distilled: it samples like the unguided teacher)")
            }
        }
        return
    }
    o.steps = try args.int("--steps", spec, default: o.steps, min: 0)!
    o.batch = try args.int("--batch", spec, default: o.batch, min: 1)!
    o.resume = args.has("--resume")
    o.lr = try args.double("--lr", spec, default: o.lr)!
    o.warmup = try args.int("--warmup", spec, default: o.warmup, min: 0)!
    o.decayStart = try args.int("--decay-start", spec, min: 0)
    o.saveEvery = try args.int("--save-every", spec, default: o.saveEvery, min: 0)!
    o.evalEvery = try args.int("--eval-every", spec, default: o.evalEvery, min: 0)!
    o.evalCount = try args.int("--eval-prompts", spec, default: o.evalCount, min: 1)!
    o.guidance = try args.double("--guidance", spec, default: o.guidance)!
    o.shift = try args.double("--shift", spec, default: o.shift)!
    o.seed = UInt64(try args.int("--seed", spec, default: 0, min: 0)!)
    if let across = try args.double("--relation-across", spec) {
        guard across > 0, across <= ShapesWorld.acrossLimit else {
            throw ArcError("--relation-across \(across): expected a width in (0, \(ShapesWorld.acrossLimit)] pixels")
        }
        o.relationAcross = across
    }
    o.initWeights = args.value("--init-weights")
    o.threads = try threadCount(args, spec)
    let shapeOptions = ["--patch", "--width", "--double-blocks", "--single-blocks"]
    if shapeOptions.contains(where: args.has) {
        // From --init-weights, an option not given keeps that teacher's value (a deeper or finer
        // teacher of it); a fresh run's default is the standard teacher's.
        let standard = try o.initWeights.map {
            try TeacherConfig.inferred(from: DistillRun.openTeacherWeights($0, option: "--init-weights")).shape
        } ?? TeacherShape()
        o.shape = TeacherShape(patch: try args.int("--patch", spec, default: standard.patch, min: 4)!,
                               width: try args.int("--width", spec, default: standard.width, min: 64)!,
                               doubleBlocks: try args.int("--double-blocks", spec, default: standard.doubleBlocks, min: 1)!,
                               singleBlocks: try args.int("--single-blocks", spec, default: standard.singleBlocks, min: 0)!)
    }
    let start = Date()
    o.log = { line in
        print(String(format: "[%6.0fs] ", Date().timeIntervalSince(start)) + line)
    }
    if let path = args.value("--evaluate") {
        let weights = try DistillRun.openTeacherWeights(path, option: "--evaluate")
        let evaluator = TeacherEvaluator(config: try TeacherConfig.inferred(from: weights, batch: o.batch), count: o.evalCount,
                                         shift: o.shift, guidance: o.guidance)
        let t0 = monotonicSeconds()
        let (acc, images, verdicts) = try evaluator.evaluate(weights: weights, threads: o.threads)
        try FileManager.default.createDirectory(atPath: o.directory, withIntermediateDirectories: true)
        try writeAtomically(PNG.encode(ShapesWorld.contactSheet(images)), to: "\(o.directory)/check.png")
        for (p, v) in zip(evaluator.prompts, verdicts).prefix(8) { print("\(p): \(v)") }
        print(String(format: "one-object accuracy %.3f over %d prompts (CFG %.1f, shift %.2f) in %.0f s",
                     acc, images.count, o.guidance, o.shift, monotonicSeconds() - t0))
        return
    }
    if let n = try args.int("--profile", spec, min: 1) {
        let (trainer, compiled, _, _) = try TeacherRun.prepare(o)
        let session = trainer.session
        session.executable.setThreads(o.threads)
        var times = [Double](repeating: 0, count: compiled.program.steps.count)
        var render = 0.0, wall = 0.0
        // One step first, not counted: it faults in the arena and the weights' pages (2-3× a
        // step), which would otherwise land on whichever kernels touch new memory first.
        for k in 0...n {
            let t0 = monotonicSeconds()
            try session.setBatch(try trainer.batches.batch(step: session.stepCount))
            let t1 = monotonicSeconds()
            try times.withUnsafeMutableBufferPointer { t in   // the kernels add their times in
                try session.executable.runRaw(inputs: session.currentInputs, outputs: session.currentOutputs,
                                              times: k == 0 ? nil : t.baseAddress)
            }
            let t2 = monotonicSeconds()
            if k == 0 {
                print(String(format: "warm-up step: batch %.3f s, train step %.3f s (not counted)", t1 - t0, t2 - t1))
                continue
            }
            render += t1 - t0; wall += t2 - t1
            print(String(format: "step %d: batch %.3f s, train step %.3f s", k, t1 - t0, t2 - t1))
        }
        print(String(format: "mean: batch %.3f s, train step %.3f s (%.1f GFLOP/s): %.2f steps/s",
                     render / Double(n), wall / Double(n), compiled.program.flops / (wall / Double(n)) / 1e9, Double(n) / (render + wall)))
        printProfile(compiled.program.steps, times, runs: n)
        return
    }
    try TeacherRun.run(o)
}
