// distill-default: ArcFlow π-ID distillation of the default model's teacher into a 2-NFE student
// (LoRA + the ArcFlow head), or the linear baseline with --components 1; export as an adapter.

import DefaultModel
import Foundation
import IR
import Runtime

let distillDefaultSpec = CommandSpec(
    name: "distill-default",
    usage: "distill-default -o RUNDIR --teacher-weights MODELDIR|EMA.safetensors [--components K] [--iterations N] [options]\n       distill-default -o RUNDIR --export-adapter DIR",
    summary: "Distil the default teacher into a 2-step ArcFlow student (data-free π-ID); resumable; export the adapter.",
    options: [
        OptionSpec(names: ["-o", "--output"], value: "RUNDIR", help: "run folder (state, logs, evaluations, init-adapter/)"),
        OptionSpec(names: ["--teacher-weights"], value: "PATH", help: "the teacher: a default-model folder (e.g. models/shapes; f16, widened) or flat f32 weights (teacher + text encoder, e.g. a run's ema.safetensors)"),
        OptionSpec(names: ["--components"], value: "K", help: "mixture components of the ArcFlow head (default 8; 1 = the linear baseline)"),
        OptionSpec(names: ["--iterations"], value: "N", help: "total iterations (default 3000; a resumed run continues up to N)"),
        OptionSpec(names: ["--batch"], value: "B", help: "prompts per iteration, compiled into the graphs (default 8)"),
        OptionSpec(names: ["--lr"], value: "LR", help: "AdamW learning rate after warm-up (default 1e-4; the rates' layer ×0.1)"),
        OptionSpec(names: ["--decay-start"], value: "ITER", help: "hold the rate to ITER, then a half cosine to 5% at --iterations (default: constant, the reference's)"),
        OptionSpec(names: ["--warmup"], value: "W", help: "linear warm-up iterations from 0.001·lr; also the Karras EMA's copy phase (default 100)"),
        OptionSpec(names: ["--decay-iterations"], value: "D", help: "the teacher ratio falls from 1 to 0 over D iterations (default 600)"),
        OptionSpec(names: ["--rank"], value: "R", help: "LoRA rank, alpha = rank (default 32)"),
        OptionSpec(names: ["--lora-targets"], value: "T", help: "mlp (default: the reference's MLP and timestep targets) or mlp+attention (also q, k, v and output projections)"),
        OptionSpec(names: ["--shift"], value: "S", help: "σ = S·t/(1 + (S−1)·t) (default 1: the teacher's schedule)"),
        OptionSpec(names: ["--timestep-ratio"], value: "R", help: "the last step's share of raw time, R/(1 + R) at 2 steps: the steps meet at σ 1/(1 + R) before the shift (default 1, the reference's: σ 0.5); the adapter records it for the sampler"),
        OptionSpec(names: ["--guidance"], value: "G", help: "the teacher's classifier-free guidance scale for targets and evaluation (default 3, the shipped teacher's)"),
        OptionSpec(names: ["--early-guidance"], value: "G", help: "not the reference's: the teacher's guidance scale at σ > --guidance-split, where the layout is settled (--guidance below; default: --guidance throughout)"),
        OptionSpec(names: ["--guidance-split"], value: "S", help: "the σ where --early-guidance hands over to --guidance (default 0.5)"),
        OptionSpec(names: ["--endpoint-loss"], value: "W", help: "not the reference's: also fit where the last step's policy ends to the teacher's 28-step Euler solution from its start, weight W (default 0: π-ID only)"),
        OptionSpec(names: ["--trajectory-loss"], value: "W", help: "not the reference's: also fit the student's whole 2-step sample from each iteration's noise to the guided teacher's 28-step Euler solution from the same noise, backpropagated through both steps, weight W (default 0)"),
        OptionSpec(names: ["--trajectory-last-step"], value: nil, help: "--trajectory-loss: backpropagate through the last step only, run from the student's own state at σ 0.5 (the first step learns from π-ID alone)"),
        OptionSpec(names: ["--edge-weight"], value: "A", help: "--trajectory-loss: weight its squared error 1 + A at the colour edges of the teacher's solution, 1 elsewhere, mean 1 per image (default 0: uniform)"),
        OptionSpec(names: ["--shape-weights"], value: "C,S,T", help: "relative frequencies of circle, square and triangle in the distillation prompts (default 1,1,1; held-out pairs stay excluded)"),
        OptionSpec(names: ["--sharpen-loss"], value: "W", help: "not the reference's: also pull the student's final image toward the guided teacher's denoising of it, noised to σ' ≤ --score-sigma (score distillation, SDS), weight W (default 0)"),
        OptionSpec(names: ["--dmd-loss"], value: "W", help: "not the reference's: distribution matching (DMD): move the final image by the difference of a fake score (a teacher copy trained on the student's images) and the guided teacher at σ' ≤ --score-sigma, weight W (default 0)"),
        OptionSpec(names: ["--score-sigma"], value: "S", help: "the largest σ' of --sharpen-loss or --dmd-loss; σ' is uniform in [S/10, S] (default 0.5)"),
        OptionSpec(names: ["--score-all-steps"], value: nil, help: "--sharpen-loss/--dmd-loss: backpropagate through every step of the student's sample from noise, not only the last"),
        OptionSpec(names: ["--fake-lr"], value: "LR", help: "--dmd-loss: the fake score's AdamW rate (default 1e-4)"),
        OptionSpec(names: ["--fake-steps"], value: "N", help: "--dmd-loss: fake-score updates per iteration (default 1)"),
        OptionSpec(names: ["--fake-warmup"], value: "N", help: "--dmd-loss: the first N iterations train the fake score only (the DMD term's weight 0; default 0)"),
        OptionSpec(names: ["--adversarial-loss"], value: "W", help: "not the reference's: add W·(−mean D(final image)), backpropagated through both steps; D is the frozen teacher's features at the image noised to σ' ≤ --adversarial-sigma with small heads trained each iteration on renders of the prompts against the student's images (hinge; default 0)"),
        OptionSpec(names: ["--adversarial-sigma"], value: "S", help: "--adversarial-loss: the largest σ' at which D reads images; σ' is uniform in [S/10, S] (default 0.5)"),
        OptionSpec(names: ["--discriminator-lr"], value: "LR", help: "--adversarial-loss: the heads' AdamW rate (default 1e-3)"),
        OptionSpec(names: ["--discriminator-warmup"], value: "N", help: "--adversarial-loss: the first N iterations train only the heads (the term's weight 0; default 0)"),
        OptionSpec(names: ["--eval-every"], value: "N", help: "judge 2-NFE samples of the EMA student every N iterations (default 250; 0: never)"),
        OptionSpec(names: ["--eval-prompts"], value: "N", help: "one-object prompts per evaluation (default 64)"),
        OptionSpec(names: ["--save-every"], value: "N", help: "save the state every N iterations (default 50)"),
        OptionSpec(names: ["--seed"], value: "S", help: "seed of the head noise, LoRA init, prompts, noise and interval draws (default 0)"),
        OptionSpec(names: ["--init-adapter"], value: "DIR", help: "start from this exported adapter of the same K, rank and targets (e.g. models/shapes/arcflow) instead of a fresh head"),
        OptionSpec(names: ["--resume"], value: nil, help: "continue from RUNDIR/state.safetensors when it exists (bit-exact)"),
        OptionSpec(names: ["--export-adapter"], value: "DIR", help: "only write the ArcFlow adapter (f16) of RUNDIR's EMA to DIR and exit"),
        OptionSpec(names: ["--handoff"], value: "N", help: "only probe RUNDIR's EMA student (its K, rank, targets and loss from the state) on N report prompts per category: teacher, student, and each of its 2 steps handed to the teacher (table on stdout)"),
        threadsOption,
    ],
    details: """
    Each iteration rolls B prompts out from noise over 2 segments (teacher ratio ρ from 1 to 0 over D iterations,
    component dropout 0.1, 4 random intervals per segment, window 3/128), queries the teacher's CFG velocity at each
    sampled state, then takes one AdamW step (betas 0.9/0.95, no decay, clip 50) on 15·MSE between the student's
    window-averaged mean velocity and those targets; Karras EMA. RUNDIR gets init-adapter/ (f32), state.safetensors,
    train.csv, loss.png, and at each evaluation eval.csv (step, accuracy, teacher_accuracy, pixel_mae, …),
    eval_<iteration>.png and eval_teacher.png. Progress lines go to stdout.
    """)

func distillDefaultCommand(_ argv: [String]) throws {
    let spec = distillDefaultSpec
    let args = try parseArguments(argv, spec, maxPositional: 0)
    let dir = try args.required("--output", spec)
    if let out = args.value("--export-adapter") {
        let s = try DistillExport.export(stateFile: "\(dir)/state.safetensors", to: out)
        print("wrote the ArcFlow adapter (K = \(s.components), rank \(s.rank), f16, EMA) to \(out)")
        return
    }
    var o = DistillOptions(directory: dir, teacherWeights: try args.required("--teacher-weights", spec))
    o.components = try args.int("--components", spec, default: o.components, min: 1)!
    o.iterations = try args.int("--iterations", spec, default: o.iterations, min: 0)!
    o.recipe.batch = try args.int("--batch", spec, default: o.recipe.batch, min: 1)!
    o.lr = try args.double("--lr", spec, default: o.lr)!
    o.warmup = try args.int("--warmup", spec, default: o.warmup, min: 0)!
    o.decayStart = try args.int("--decay-start", spec, min: 0)
    o.recipe.decayIterations = try args.int("--decay-iterations", spec, default: o.recipe.decayIterations, min: 0)!
    o.rank = try args.int("--rank", spec, default: o.rank, min: 1)!
    let targets = args.value("--lora-targets") ?? "mlp"
    guard let attention = StudentConfig.attentionLoRA(named: targets) else {
        throw UsageError("--lora-targets must be mlp or mlp+attention, got '\(targets)'", spec)
    }
    o.attentionLoRA = attention
    o.recipe.shift = try args.double("--shift", spec, default: o.recipe.shift)!
    guard o.recipe.shift > 0 else { throw UsageError("--shift must be positive", spec) }
    o.recipe.timestepRatio = try args.double("--timestep-ratio", spec, default: o.recipe.timestepRatio)!
    guard o.recipe.timestepRatio > 0, o.recipe.timestepRatio.isFinite else { throw UsageError("--timestep-ratio must be a positive number", spec) }
    o.recipe.guidance = try args.double("--guidance", spec, default: o.recipe.guidance)!
    o.recipe.earlyGuidance = try args.double("--early-guidance", spec)
    o.recipe.guidanceSplit = try args.double("--guidance-split", spec, default: o.recipe.guidanceSplit)!
    guard o.recipe.guidanceSplit > 0, o.recipe.guidanceSplit < 1 else { throw UsageError("--guidance-split must be in (0, 1)", spec) }
    o.recipe.endpointWeight = try args.double("--endpoint-loss", spec, default: 0)!
    guard o.recipe.endpointWeight >= 0 else { throw UsageError("--endpoint-loss must be at least 0", spec) }
    o.recipe.trajectoryWeight = try args.double("--trajectory-loss", spec, default: 0)!
    guard o.recipe.trajectoryWeight >= 0 else { throw UsageError("--trajectory-loss must be at least 0", spec) }
    o.recipe.trajectoryLastStep = args.has("--trajectory-last-step")
    guard !o.recipe.trajectoryLastStep || args.has("--trajectory-loss") else {
        throw UsageError("--trajectory-last-step needs --trajectory-loss", spec)
    }
    o.recipe.edgeWeight = try args.double("--edge-weight", spec, default: 0)!
    guard o.recipe.edgeWeight >= 0, o.recipe.edgeWeight.isFinite else { throw UsageError("--edge-weight must be a finite number at least 0", spec) }
    guard o.recipe.edgeWeight == 0 || o.recipe.trajectoryWeight > 0 else { throw UsageError("--edge-weight needs --trajectory-loss", spec) }
    if let w = args.value("--shape-weights") {
        let v = w.split(separator: ",", omittingEmptySubsequences: false).map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 3, v.allSatisfy({ ($0 ?? -1) >= 0 && $0!.isFinite }), v.reduce(0, { $0 + ($1 ?? 0) }) > 0 else {
            throw UsageError("--shape-weights takes three finite non-negative numbers (circle, square, triangle), not all zero; got '\(w)'", spec)
        }
        o.recipe.shapeWeights = v.map { $0! }
    }
    guard !(args.has("--sharpen-loss") && args.has("--dmd-loss")) else { throw UsageError("--sharpen-loss and --dmd-loss exclude each other", spec) }
    o.recipe.dmd = args.has("--dmd-loss")
    o.recipe.scoreWeight = try args.double(o.recipe.dmd ? "--dmd-loss" : "--sharpen-loss", spec, default: 0)!
    guard o.recipe.scoreWeight >= 0 else { throw UsageError("--sharpen-loss and --dmd-loss must be at least 0", spec) }
    o.recipe.scoreSigma = try args.double("--score-sigma", spec, default: o.recipe.scoreSigma)!
    guard o.recipe.scoreSigma > 0, o.recipe.scoreSigma <= 1 else { throw UsageError("--score-sigma must be in (0, 1]", spec) }
    o.recipe.fakeLR = try args.double("--fake-lr", spec, default: o.recipe.fakeLR)!
    guard o.recipe.fakeLR > 0 else { throw UsageError("--fake-lr must be positive", spec) }
    o.recipe.fakeSteps = try args.int("--fake-steps", spec, default: o.recipe.fakeSteps, min: 1)!
    o.recipe.scoreAllSteps = args.has("--score-all-steps")
    o.recipe.fakeWarmup = try args.int("--fake-warmup", spec, default: 0, min: 0)!
    o.recipe.adversarialWeight = try args.double("--adversarial-loss", spec, default: 0)!
    guard o.recipe.adversarialWeight >= 0 else { throw UsageError("--adversarial-loss must be at least 0", spec) }
    o.recipe.adversarialSigma = try args.double("--adversarial-sigma", spec, default: o.recipe.adversarialSigma)!
    guard o.recipe.adversarialSigma > 0, o.recipe.adversarialSigma <= 1 else { throw UsageError("--adversarial-sigma must be in (0, 1]", spec) }
    o.recipe.discriminatorLR = try args.double("--discriminator-lr", spec, default: o.recipe.discriminatorLR)!
    guard o.recipe.discriminatorLR > 0 else { throw UsageError("--discriminator-lr must be positive", spec) }
    o.recipe.discriminatorWarmup = try args.int("--discriminator-warmup", spec, default: 0, min: 0)!
    o.evalEvery = try args.int("--eval-every", spec, default: o.evalEvery, min: 0)!
    o.evalCount = try args.int("--eval-prompts", spec, default: o.evalCount, min: 1)!
    o.saveEvery = try args.int("--save-every", spec, default: o.saveEvery, min: 0)!
    o.recipe.seed = UInt64(try args.int("--seed", spec, default: 0, min: 0)!)
    o.resume = args.has("--resume")
    o.initAdapter = args.value("--init-adapter")
    o.threads = try threadCount(args, spec)
    let start = Date()
    o.log = { line in print(String(format: "[%6.0fs] ", Date().timeIntervalSince(start)) + line) }
    if let n = try args.int("--handoff", spec, min: 1) {
        guard FileManager.default.fileExists(atPath: "\(dir)/state.safetensors") else { throw ArcError("\(dir) has no state.safetensors to probe") }
        // The run's own student and train step (resume checks its hash), unless given here.
        let md = try SafeTensorsFile(path: "\(dir)/state.safetensors").metadata
        if !args.has("--components"), let k = md["components"].flatMap(Int.init) { o.components = k }
        if !args.has("--rank"), let r = md["rank"].flatMap(Int.init) { o.rank = r }
        if !args.has("--lora-targets"), let a = md["lora_targets"].flatMap(StudentConfig.attentionLoRA(named:)) { o.attentionLoRA = a }
        if !args.has("--endpoint-loss"), let w = md["endpoint_weight"].flatMap(Double.init) { o.recipe.endpointWeight = w }
        if !args.has("--trajectory-loss"), let w = md["trajectory_weight"].flatMap(Double.init) { o.recipe.trajectoryWeight = w }
        if md["trajectory_last_step"] == "1" { o.recipe.trajectoryLastStep = true }
        if !args.has("--edge-weight"), let w = md["edge_weight"].flatMap(Double.init) { o.recipe.edgeWeight = w }
        if !args.has("--sharpen-loss"), !args.has("--dmd-loss") {
            if let w = md["sharpen_weight"].flatMap(Double.init) { o.recipe.scoreWeight = w }
            if let w = md["dmd_weight"].flatMap(Double.init) { o.recipe.scoreWeight = w; o.recipe.dmd = true }
        }
        if !args.has("--score-sigma"), let v = md["score_sigma"].flatMap(Double.init) { o.recipe.scoreSigma = v }
        if !args.has("--fake-lr"), let v = md["fake_lr"].flatMap(Double.init) { o.recipe.fakeLR = v }
        if !args.has("--fake-steps"), let v = md["fake_steps"].flatMap(Int.init) { o.recipe.fakeSteps = v }
        if md["score_all_steps"] == "1" { o.recipe.scoreAllSteps = true }
        if !args.has("--fake-warmup"), let v = md["fake_warmup"].flatMap(Int.init) { o.recipe.fakeWarmup = v }
        if !args.has("--adversarial-loss"), let w = md["adversarial_weight"].flatMap(Double.init) { o.recipe.adversarialWeight = w }
        if !args.has("--adversarial-sigma"), let v = md["adversarial_sigma"].flatMap(Double.init) { o.recipe.adversarialSigma = v }
        if !args.has("--shift"), let v = md["shift"].flatMap(Double.init) { o.recipe.shift = v }
        if !args.has("--timestep-ratio"), let v = md["timestep_ratio"].flatMap(Double.init) { o.recipe.timestepRatio = v }
        if !args.has("--guidance"), let v = md["guidance"].flatMap(Double.init) { o.recipe.guidance = v }
        if !args.has("--early-guidance"), let v = md["early_guidance"].flatMap(Double.init) { o.recipe.earlyGuidance = v }
        if !args.has("--guidance-split"), let v = md["guidance_split"].flatMap(Double.init) { o.recipe.guidanceSplit = v }
        o.resume = true
        let (columns, prompts) = try DistillHandoff.run(try DistillRun.prepare(o), perCategory: n, log: o.log)
        print(DefaultReport.markdown(columns, prompts: prompts, seed: 1234, threads: o.threads))
        return
    }
    try DistillRun.prepare(o).train()
}
