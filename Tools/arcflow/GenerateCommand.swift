// generate: prompts to PNG files through a compiled pipeline, or prompt embeddings to latents
// through a compiled sampler; tokenize, encode and decode run single stages of a pipeline.

import ArcFlowGraphs
import Codegen
import DefaultModel
import Foundation
import Generation
import IR
import Imaging
import Runtime

let generateSpec = CommandSpec(
    name: "generate",
    usage: """
    generate --prompt TEXT [--seed S] -o IMG.png [--teacher [--steps N] [--guidance G] | [--baseline linear] [--steps N]]
           arcflow generate --prompts FILE [--seed S] -o DIR [--teacher … | --baseline linear]
           arcflow generate --grid PROMPTS_FILE [--seed S] -o GRID.png
           arcflow generate --model OUT --prompt TEXT (--seed S | --noise N.safetensors) -o IMG.png [--output-latents L.safetensors] [--guidance G]
           arcflow generate --model OUT --prompts FILE -o DIR [--seed S] [--shard K/N] [--guidance G]
           arcflow generate --model SAMPLER --embeddings E.safetensors (--noise N.safetensors | --seed S) --output-latents L.safetensors [--guidance G]
           arcflow generate --model CFG_SAMPLER --embeddings E.safetensors [--negative-embeddings NE.safetensors]
                            (--noise N.safetensors | --seed S) --output-latents L.safetensors [--true-cfg-scale S]
    """,
    summary: """
    Generate images: without --model, with the embedded default model (models/shapes: a 64×64 shapes-world
    model; the 2-step ArcFlow student unless --teacher or --baseline linear); with a compiled pipeline
    (arcflow compile --pipeline …): prompt → PNG; or run a compiled FLUX or Qwen-Image sampler alone (arcflow
    compile --transformer …): prompt embeddings and noise in, latents out (Qwen-Image: prompt_embeds only, no
    pooled embedding; a teacher compiled with true CFG also reads the negative's).
    """,
    options: [
        OptionSpec(names: ["--model"], value: "OUT", help: "compiled pipeline folder (or a compiled sampler, with --embeddings)"),
        OptionSpec(names: ["--prompt"], value: "TEXT", help: "the prompt (may be empty)"),
        OptionSpec(names: ["--prompts"], value: "FILE", help: "one prompt per line → DIR/00000.png, …; line i uses seed S + i"),
        OptionSpec(names: ["-o", "--output"], value: "IMG.png|DIR", help: "PNG to write (--prompt) or folder for the PNGs (--prompts)"),
        OptionSpec(names: ["--seed"], value: "S", help: "draw the noise from N(0, 1) with this seed (default 0; reproducible on any machine)"),
        OptionSpec(names: ["--noise"], value: "N.safetensors", help: "noise [1, C, H/8, W/8] (unpacked latent layout) instead of a seed"),
        OptionSpec(names: ["--shard"], value: "K/N", help: "with --prompts: render only the lines whose index mod N is K"),
        OptionSpec(names: ["--output-latents"], value: "L.safetensors", help: "also write the final latents [1, C, H/8, W/8]"),
        OptionSpec(names: ["--embeddings"], value: "E.safetensors", help: "sampler only: prompt_embeds and pooled_prompt_embeds instead of a prompt"),
        OptionSpec(names: ["--true-cfg-scale"], value: "S", help: "sampler only, a teacher compiled with --true-cfg-scale: another scale (> 1) for this run (default: the compiled one)"),
        OptionSpec(names: ["--negative-embeddings"], value: "NE.safetensors", help: "sampler only, true CFG: the negative prompt's embeddings (Qwen-Image: required; FLUX: else E's negative_*)"),
        OptionSpec(names: ["--teacher"], value: nil, help: "default model: the teacher (Euler with classifier-free guidance) instead of the ArcFlow student"),
        OptionSpec(names: ["--steps"], value: "N", help: "default model: the teacher's Euler steps (default 28, model.json's); a student's NFE (default 2, what it was distilled for; more to measure what the step count costs)"),
        OptionSpec(names: ["--guidance"], value: "G", help: "default model, with --teacher: classifier-free guidance scale (default: model.json's, 3 for the shipped model); a compiled FLUX model with a guidance embedder: its embedded guidance (default: the compiled one, 3.5 unless compile --guidance said otherwise)"),
        OptionSpec(names: ["--baseline"], value: "linear", help: "default model: the linear 2-step student (K = 1) instead of ArcFlow's"),
        OptionSpec(names: ["--grid"], value: "PROMPTS_FILE", help: "default model: one PNG, rows = prompts, columns = teacher 28 | ArcFlow 2 | linear 2"),
        OptionSpec(names: ["--default-model"], value: "DIR", help: "the default model's folder (default $ARCFLOW_DEFAULT_MODEL, else models/shapes of this package)"),
        threadsOption,
    ],
    details: """
    The default model is compiled on first use into $ARCFLOW_CACHE_DIR/default/<content hash> (default
    ~/.cache/arcflow), one pipeline folder per variant. For a seed, the teacher and both students start from the
    same noise (drawn in latent space), so their images compare pairwise. Prompts follow the shapes world's
    grammar ("a small red circle at the top left", "a green circle to the left of a white square").
    """)

func generateCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, generateSpec, maxPositional: 0)
    if !args.has("--model") { return try generateDefault(args) }
    for flag in ["--teacher", "--steps", "--baseline", "--grid", "--default-model"] where args.has(flag) {
        throw UsageError("\(flag) is for the embedded default model (no --model); a compiled pipeline fixes its sampler when compiled", generateSpec)
    }
    let modelPath = try args.required("--model", generateSpec)
    if args.has("--embeddings") { return try generateLatentsFromEmbeddings(args) }
    for flag in ["--negative-embeddings", "--true-cfg-scale"] where args.has(flag) {
        throw UsageError("\(flag) goes with --embeddings (a compiled sampler run alone)", generateSpec)
    }
    let loadStart = monotonicSeconds()
    try checkPromptArguments(args)
    let pipeline = try CompiledPipeline(folder: modelPath, threads: try threadCount(args, generateSpec))
    pipeline.guidance = try RunTimeScale.guidance.value(args, inputs: pipeline.sampler.executable.inputs, folder: modelPath,
                                                        compiled: pipeline.manifest.guidance ?? FluxModel.defaultGuidance)
    let m = pipeline.manifest
    stderrLine(String(format: "arcflow: loaded %@ (%@ sampler, %d steps, %d×%d) in %.2f s", modelPath, m.sampler, m.steps,
                      m.width, m.height, monotonicSeconds() - loadStart))
    try generateImages(args, pipeline)
}

/// A scale a compiled sampler reads at run time from an input f32[1]: the two of them, FLUX's
/// embedded guidance and a teacher's true-CFG scale, share the flag handling.
struct RunTimeScale {
    var flag: String, input: String
    /// The flag's rule (nil: the value is fine), for the usage error.
    var rule: (Double) -> String?
    /// Why a model may lack the input, for the error when the flag is given anyway.
    var missing: String

    static let guidance = RunTimeScale(flag: "--guidance", input: "guidance", rule: { $0.isFinite ? nil : "must be a finite number" },
                                       missing: "takes no guidance scale at run time (its transformer has no guidance embedder, or it was "
                                           + "compiled with the scale fixed by an older arcflow: recompile it)")
    /// > 1, as the diffusers pipelines guide only then.
    static let trueCFG = RunTimeScale(flag: "--true-cfg-scale", input: trueCFGScaleInput, rule: { $0 > 1 && $0.isFinite ? nil : "must be greater than 1" },
                                      missing: "takes no true-CFG scale at run time (compiled without --true-cfg-scale, or with the scale fixed "
                                          + "by an older arcflow: recompile it)")

    /// The flag's value, else `compiled` (the manifest's default); nil for a model without the
    /// input, where giving the flag is an error.
    func value(_ args: ParsedArguments, inputs: [Binding], folder: String, compiled: Double?) throws -> Double? {
        let given = try args.double(flag, generateSpec)
        if let v = given, let why = rule(v) { throw UsageError("\(flag) \(why), got \(v)", generateSpec) }
        guard inputs.contains(where: { $0.name == input }) else {
            if given != nil { throw ArcError("\(flag): \(folder) \(missing)") }
            return nil
        }
        guard let v = given ?? compiled else { throw ArcError("\(folder): manifest has no default for \(input); give \(flag)") }
        return v
    }
}

/// The checks of --prompt/--prompts/-o made before any (slow) load, so a mistake is the only line printed.
func checkPromptArguments(_ args: ParsedArguments) throws {
    if args.has("--prompt") == args.has("--prompts") { throw UsageError("give exactly one of --prompt and --prompts", generateSpec) }
    if args.has("--noise") && args.has("--seed") { throw UsageError("give --noise or --seed, not both", generateSpec) }
    let output = try args.required("--output", generateSpec)
    let seed = try args.int("--seed", generateSpec, default: 0, min: 0)!
    if args.has("--prompt") {
        guard output.lowercased().hasSuffix(".png") else { throw UsageError("-o must name a .png file, got '\(output)'", generateSpec) }
        try checkWritableParent(output)
    }
    if let file = args.value("--prompts") { try checkSeedRoom(seed, lines: try readPromptLines(file).count) }
}

/// --prompt or --prompts through a loaded pipeline (a compiled folder or the default model's).
func generateImages(_ args: ParsedArguments, _ pipeline: CompiledPipeline) throws {
    let m = pipeline.manifest
    let output = try args.required("--output", generateSpec)
    let seed = try args.int("--seed", generateSpec, default: 0, min: 0)!
    InterruptFlag.install()
    let promptLines = try args.value("--prompts").map(readPromptLines)
    if let prompt = args.value("--prompt") {
        if args.has("--shard") { throw UsageError("--shard goes with --prompts", generateSpec) }
        let noise: Tensor, seedText: String
        if let path = args.value("--noise") {
            noise = try readTensor(path, "noise", want: pipeline.noiseType, hint: "the pipeline was compiled for \(m.width)×\(m.height) pixels (width × height)")
            seedText = "noise file \((path as NSString).lastPathComponent)"
        } else {
            noise = pipeline.noise(seed: seed)
            seedText = String(seed)
        }
        let latents = try render(pipeline, prompt: prompt, noise: noise, seedText: seedText, to: output)
        if let l = args.value("--output-latents") {
            try writeSafeTensors([TensorRecord(name: "latents", dtype: .f32, shape: latents.shape, payload: .floats(latents.data))],
                                 metadata: ["sampler": m.sampler, "nfe": String(m.steps)], to: l)
        }
        return
    }

    // --prompts FILE -o DIR: the model stays loaded; a bad line is reported and skipped.
    if args.has("--noise") || args.has("--output-latents") {
        throw UsageError("--noise and --output-latents go with --prompt (each line of --prompts draws its noise from seed S + i)", generateSpec)
    }
    let file = args.value("--prompts")!
    let (shardIndex, shardCount) = try parseShard(args.value("--shard"))
    let lines = promptLines!
    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
    try checkWritableParent("\(output)/probe.png")
    var failures = 0, rendered = 0
    for (i, line) in lines.enumerated() where i % shardCount == shardIndex {
        guard let prompt = line else {
            stderrLine("arcflow generate: \(file):\(i + 1): empty line (no prompt); skipped")
            failures += 1
            continue
        }
        let path = "\(output)/" + String(format: "%05d.png", i)
        do {
            stderrLine("arcflow: [\(i + 1)/\(lines.count)] \(prompt)")
            _ = try render(pipeline, prompt: prompt, noise: pipeline.noise(seed: seed + i), seedText: String(seed + i), to: path)
            rendered += 1
        } catch let e as ArcError {
            stderrLine("arcflow generate: \(file):\(i + 1): \(e.message)")
            failures += 1
        }
    }
    print("rendered \(rendered) image\(rendered == 1 ? "" : "s") to \(output)\(shardCount > 1 ? " (shard \(shardIndex)/\(shardCount))" : "")"
          + (failures > 0 ? "; \(failures) line\(failures == 1 ? "" : "s") failed" : ""))
    if failures > 0 { throw ArcError("\(failures) prompt line\(failures == 1 ? "" : "s") of \(file) failed (see above)") }
}

/// Prompt → PNG with a progress line per stage and per step; the PNG is written atomically.
func render(_ p: CompiledPipeline, prompt: String, noise: Tensor, seedText: String, to path: String) throws -> Tensor {
    let m = p.manifest
    var t = monotonicSeconds()
    func lap() -> Double { let now = monotonicSeconds(); defer { t = now }; return now - t }
    let embeddings = try p.encode(prompt)
    stderrLine(String(format: "arcflow:   text encoders %.2f s", lap()))
    InterruptFlag.check()
    var last = t
    let latents = try p.sample(embeddings, noise: noise) { step in
        let now = monotonicSeconds()
        stderrLine(String(format: "arcflow:   step %d/%d  %.2f s/step", step, m.steps, now - last))
        last = now
        InterruptFlag.check()
    }
    let sampling = lap()
    let image = try p.decode(latents)
    // FLUX decodes latents with its VAE; the embedded default's pixels are unpatchified (no VAE).
    let decoder = m.family == "shapes" ? "pixel decoder" : "VAE decoder"
    stderrLine(String(format: "arcflow:   sampler %.2f s (%.2f s/step), %@ %.2f s", sampling, sampling / Double(m.steps), decoder, lap()))
    let parameters = "\(prompt)\nSteps: \(m.steps), Sampler: \(m.sampler == "arc" ? "ArcFlow" : "Euler (flow matching)"), "
        + (p.effectiveGuidance.map { "Guidance: \($0), " } ?? "") + (p.effectiveCFGScale.map { "CFG scale: \($0), " } ?? "")
        + "Seed: \(seedText), Size: \(m.width)x\(m.height), "
        + "Model hash: \(m.modelHash.prefix(10)), Model: \((m.source as NSString).lastPathComponent)"
        + (m.adapter.map { ", Adapter: \(($0 as NSString).lastPathComponent)" } ?? "")
        + ", Noise hash: \(noiseHash(noise)), Generator: arcflow"
    InterruptFlag.check()
    try writeAtomically(PNG.encode(image, text: [("parameters", parameters)]), to: path)
    print("wrote \(path) (\(image.width)×\(image.height))")
    return latents
}

/// Ctrl-C: checked between steps and stages; output files are written atomically, so stopping
/// at a check never leaves a partial PNG.
enum InterruptFlag {
    nonisolated(unsafe) static var raised: sig_atomic_t = 0
    static func install() { signal(SIGINT) { _ in InterruptFlag.raised = 1 } }
    static func check() {
        if raised != 0 {
            stderrLine("arcflow: interrupted; no partial file written")
            exit(130)
        }
    }
}

func parseShard(_ s: String?) throws -> (Int, Int) {
    guard let s else { return (0, 1) }
    let parts = s.split(separator: "/").map { Int($0) }
    guard parts.count == 2, let k = parts[0], let n = parts[1], n >= 1, k >= 0, k < n else {
        throw UsageError("--shard expects K/N with 0 <= K < N, got '\(s)'", generateSpec)
    }
    return (k, n)
}

/// Fails early (before minutes of sampling) when the output folder cannot be written.
func checkWritableParent(_ path: String) throws {
    let dir = (path as NSString).deletingLastPathComponent
    let d = dir.isEmpty ? "." : dir
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
        throw ArcError("cannot write \(path): folder \(d) does not exist")
    }
    guard access(d, W_OK) == 0 else { throw ArcError("cannot write \(path): folder \(d) is not writable") }
}

/// The first 10 hex digits of the noise's SHA-256: in a PNG's parameters, it shows which images
/// started from the same noise (the default model's variants do, for one seed).
func noiseHash(_ t: Tensor) -> String {
    t.data.withUnsafeBytes { String(SHA256.hash($0).prefix(10)) }
}

/// Reads tensor `name` of shape `want` from a safetensors file (16-bit floats converted).
func readTensor(_ path: String, _ name: String, want: TensorType, hint: String) throws -> Tensor {
    let file = try SafeTensorsStore(path: path)
    guard let t = file.type(of: name) else {
        throw ArcError("\(path) has no tensor '\(name)' (expected f32\(want.shape)); it has: \(file.names.joined(separator: ", "))")
    }
    guard t.shape == want.shape else { throw ArcError("\(path): '\(name)' has shape \(t.shape), expected \(want.shape) (\(hint))") }
    return try finiteTensor(path, name, want, try file.tensor(name).data)
}

/// A NaN or Inf in an input would spread through every step and give a black or noise image with
/// exit status 0; the sampler cannot recover from one, so it is refused before any work is done.
func finiteTensor(_ path: String, _ name: String, _ type: TensorType, _ data: [Float]) throws -> Tensor {
    if let i = data.firstIndex(where: { !$0.isFinite }) {
        throw ArcError("\(path): '\(name)' has a non-finite value (\(data[i])) at element \(i); it must be finite")
    }
    return Tensor(type, data)
}

/// The sampler-only path: prompt embeddings and noise (or a seed) to latents.
func generateLatentsFromEmbeddings(_ args: ParsedArguments) throws {
    let embeddingsPath = try args.required("--embeddings", generateSpec)
    let outPath = try args.required("--output-latents", generateSpec)
    for flag in ["--prompt", "--prompts", "--output", "--shard"] where args.has(flag) {
        throw UsageError("\(flag) does not go with --embeddings (which runs a compiled sampler alone)", generateSpec)
    }
    if args.has("--noise") == args.has("--seed") { throw UsageError("give exactly one of --noise and --seed", generateSpec) }
    let (model, _) = try loadModel(args, generateSpec)
    try checkNegativeEmbeddings(args, model)
    let m = model.manifest
    // The run-time scales, as inputs [1] (those the model reads).
    var scales: [String: Tensor] = [:]
    for (scale, compiled) in [(RunTimeScale.guidance, m.model["guidance"].flatMap(Double.init) ?? FluxModel.defaultGuidance),
                              (RunTimeScale.trueCFG, m.model["true_cfg_scale"].flatMap(Double.init))] {
        if let v = try scale.value(args, inputs: model.executable.inputs, folder: try args.required("--model", generateSpec), compiled: compiled) {
            scales[scale.input] = Tensor(.f32([1]), [Float(v)])
        }
    }
    if isQwenImageSampler(model) { return try generateQwenImageLatents(args, model, embeddings: embeddingsPath, output: outPath, scales: scales) }
    guard m.model["family"] == "flux", let nfe = Int(m.model["nfe"] ?? "") else {
        throw ArcError("\(try args.required("--model", generateSpec)) is not a compiled FLUX sampler; use `arcflow run` for IR graphs")
    }
    func binding(_ name: String) -> Binding { model.executable.inputs.first { $0.name == name }! }
    let hint = "the model was compiled for \(m.model["width"] ?? "?")×\(m.model["height"] ?? "?") pixels (width × height) and \(m.model["text_tokens"] ?? "?") text tokens"
    var inputs = ["prompt_embeds": try readTensor(embeddingsPath, "prompt_embeds", want: binding("prompt_embeds").type, hint: hint),
                  "pooled_prompt_embeds": try readTensor(embeddingsPath, "pooled_prompt_embeds", want: binding("pooled_prompt_embeds").type, hint: hint)]
    inputs.merge(scales) { $1 }
    if model.executable.inputs.contains(where: { $0.name == negativeEmbeddingsInput }) {
        // A sampler compiled with --true-cfg-scale: the unconditional branch comes from
        // --negative-embeddings (negative_* names, or a file made for --embeddings), else from the
        // --embeddings file's negative_* tensors.
        let cfgHint = "this sampler was compiled with --true-cfg-scale \(m.model["true_cfg_scale"] ?? "")"
        let source = args.value("--negative-embeddings") ?? embeddingsPath
        let names = try SafeTensorsStore(path: source).names
        let own = args.has("--negative-embeddings") && !names.contains(negativeEmbeddingsInput)
        for name in [negativeEmbeddingsInput, "negative_pooled_prompt_embeds"] {
            let stored = own ? String(name.dropFirst("negative_".count)) : name
            inputs[name] = try readTensor(source, stored, want: binding(name).type, hint: cfgHint)
        }
    }
    if let noisePath = args.value("--noise") {
        inputs["noise"] = try readTensor(noisePath, "noise", want: binding("noise").type, hint: hint)
    } else {
        inputs["noise"] = seededNoise(binding("noise").type, seed: try args.int("--seed", generateSpec, min: 0)!)
    }
    try runSampler(model, inputs, nfe: nfe, label: "", metadata: [:], to: outPath)
}

/// Runs a compiled sampler alone (FLUX or Qwen-Image) and writes its `latents`: one progress
/// line before (`label` names the family, `note` adds e.g. true CFG), one timing line after.
func runSampler(_ model: LoadedModel, _ inputs: [String: Tensor], nfe: Int, label: String, note: String = "",
                metadata: [String: String], to path: String) throws {
    let sampler = model.manifest.model["sampler"] ?? ""
    stderrLine("arcflow: \(label)\(sampler) sampler, \(nfe) transformer evaluation\(nfe == 1 ? "" : "s")\(note)…")
    let start = monotonicSeconds()
    let out = try model.executable.run(inputs)
    let seconds = monotonicSeconds() - start
    let latents = try finiteLatents(out["latents"]!)
    try writeSafeTensors([TensorRecord(name: "latents", dtype: .f32, shape: latents.shape, payload: .floats(latents.data))],
                         metadata: ["sampler": sampler, "nfe": String(nfe)].merging(metadata) { $1 }, to: path)
    print(String(format: "generated %@ in %.3f s (%.3f s per NFE) → %@", "\(latents.type)", seconds, seconds / Double(nfe), path))
}
