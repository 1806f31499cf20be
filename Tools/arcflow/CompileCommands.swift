// dump-ir and compile: the pass pipeline and the code generator from the command line.

import ArcFlowGraphs
import Codegen
import Foundation
import Generation
import IR
import Passes
import Runtime
import Tokenizers

let dumpIRSpec = CommandSpec(
    name: "dump-ir", usage: "dump-ir FILE [--passes LIST|--pass-pipeline default] [--dump-ir DIR] [--print-after PASS] [--weights W.safetensors] [--no-weights]",
    summary: "Print the graph after the passes (--passes none: the parsed graph unchanged).",
    options: pipelineOptionSpecs + [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "check weights against the graph and annotate each with its hash"),
        OptionSpec(names: ["--no-weights"], value: nil, help: "do not read or annotate weights (the default without --weights)"),
    ],
    details: passHelp)

func dumpIRCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, dumpIRSpec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", dumpIRSpec) }
    let module = try loadModule(file)
    var options = try pipelineOptions(args, dumpIRSpec)
    if let dir = args.value("--dump-ir") { try installIRDump(&options, directory: dir, input: module) }
    let (result, timings) = try runPipeline(module, options)
    var text = Printer.print(result)
    if let w = args.value("--weights"), !args.has("--no-weights") {
        text = try annotateWeights(text, result, store: try SafeTensorsStore(path: w))
    }
    print(text, terminator: "")
    if args.has("--time-passes") { printPassTimings(timings) }
}

/// Appends `// sha256:… ` to weight lines (comments: the text still parses to the same graph).
func annotateWeights(_ text: String, _ module: Module, store: WeightStore) throws -> String {
    var hashes: [String: String] = [:]
    for g in module.graphs {
        for n in g.nodes where n.op == .weight && hashes[n.key!] == nil {
            if let p = module.prologue, g.name != p.name, p.outputs.contains(where: { $0.name == n.key! }) { continue }
            try store.validate(n.key!, n.type)
            hashes[n.key!] = SHA256.hash(UnsafeRawBufferPointer(start: try store.raw(n.key!), count: n.type.byteCount))
        }
    }
    return text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
        guard line.contains(" = weight \""), let q1 = line.range(of: "weight \"") else { return String(line) }
        let rest = line[q1.upperBound...]
        guard let end = rest.firstIndex(of: "\""), let h = hashes[String(rest[..<end])] else { return String(line) }
        return "\(line)  // sha256:\(h.prefix(16))"
    }.joined(separator: "\n")
}

let compileSpec = CommandSpec(
    name: "compile",
    usage: """
    compile FILE --weights W.safetensors -o DIR [--dump-ir DIR] [--dump-c] [--passes LIST] [--verbose]
           arcflow compile --pipeline DIR [--adapter DIR] [--sampler arc|euler] [--steps N] --height H --width W
                           [--text-tokens T] [--guidance G] [--shift S] [--clip-tokenizer slow|fast] [--dump-ir DIR] -o OUT
           arcflow compile --transformer DIR [--adapter DIR] [--sampler arc|euler] [--steps N] (--height H --width W | --latent-size HxW)
                           [--text-tokens T] [--guidance G] [--true-cfg-scale S] [--shift S] [--dump-ir DIR] -o OUT
           arcflow compile --transformer QWEN_DIR (--adapter DIR | --sampler euler [--true-cfg-scale S]) [--steps N]
                           [--negative-text-tokens T2] --height H --width W --text-tokens T [--shift S] [--dump-ir DIR] -o OUT
    """,
    summary: """
    Compile an IR graph and its weights into a model folder (model.so, weights.safetensors, manifest.json, model.ir);
    a diffusers FluxPipeline folder (text encoders, transformer + sampler, VAE decoder, tokenizers) into a pipeline
    folder for `arcflow generate --prompt`; or a FLUX or Qwen-Image transformer alone with its sampler (the family
    comes from the folder's config.json `_class_name`).
    With --adapter the sampler is ArcFlow's (arc, 2 steps, shift 3.2); without, the teacher (euler, 28 steps, the
    schedule of scheduler/scheduler_config.json as diffusers' FluxPipeline computes it; --shift S fixes the shift).
    """,
    options: [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "the weights an IR FILE names"),
        OptionSpec(names: ["-o", "--output"], value: "DIR", help: "model folder to write"),
        OptionSpec(names: ["--pipeline"], value: "DIR", help: "FLUX: diffusers pipeline folder (model_index.json, text_encoder*, tokenizer*, transformer, vae, scheduler)"),
        OptionSpec(names: ["--transformer"], value: "DIR", help: "FLUX or Qwen-Image (by _class_name): diffusers transformer folder (config.json + safetensors or shards)"),
        OptionSpec(names: ["--adapter"], value: "DIR", help: "ArcFlow adapter folder, FLUX or Qwen-Image (needed by --sampler arc)"),
        OptionSpec(names: ["--sampler"], value: "arc|euler", help: "FLUX: ArcFlow closed-form sampler or the teacher's Euler (default arc)"),
        OptionSpec(names: ["--steps"], value: "N", help: "FLUX: sampler steps = transformer evaluations (default 2 arc, 28 euler)"),
        OptionSpec(names: ["--height"], value: "H", help: "FLUX: image height in pixels, a multiple of 16"),
        OptionSpec(names: ["--width"], value: "W", help: "FLUX: image width in pixels, a multiple of 16"),
        OptionSpec(names: ["--text-tokens"], value: "T", help: "prompt tokens (FLUX: default 512, T5's padded length; Qwen-Image: required, the prompt's own length)"),
        OptionSpec(names: ["--guidance"], value: "G", help: "FLUX: embedded guidance, the default of `generate --guidance` (default 3.5; only for guidance-distilled models)"),
        OptionSpec(names: ["--shift"], value: "S", help: "FLUX: fixed σ shift instead of the default (the adapter's arcflow_shift, else 3.2, for arc; the scheduler config's for euler: --shift replaces that whole schedule, shift_terminal included)"),
        OptionSpec(names: ["--clip-tokenizer"], value: "slow|fast", help: "--pipeline: the CLIP tokenizer to reproduce: transformers 4's CLIPTokenizer (slow) or the tokenizers library's, transformers 5's (fast); default: that of the transformers that saved tokenizer/ (fast when its tokenizer_config.json says \"backend\": \"tokenizers\")"),
        OptionSpec(names: ["--latent-size"], value: "HxW", help: "--transformer: the latent grid directly (pixel-space models such as the embedded default), instead of --height/--width ÷ 8"),
        OptionSpec(names: ["--true-cfg-scale"], value: "S", help: "--transformer, --sampler euler: true classifier-free guidance with a negative prompt (negative_prompt_embeds, and FLUX's negative_pooled_prompt_embeds), combined as the family's diffusers pipeline does; the default of `generate --true-cfg-scale`"),
        OptionSpec(names: ["--negative-text-tokens"], value: "T2", help: "Qwen-Image, --true-cfg-scale: the negative prompt's tokens when not --text-tokens (QwenImagePipeline encodes each prompt at its own length; then two evaluations per step instead of one batch of 2)"),
        OptionSpec(names: ["--weights-dtype"], value: "auto|f32|bf16|f16|int8",
                   help: "storage type of the GEMM weight panels (default auto: the checkpoint's; f32 keeps weights exact; int8: symmetric, quantize-weights, --pass-option quantize-weights.group=32|channel)"),
        OptionSpec(names: ["--compute"], value: "f32|bf16",
                   help: "GEMM arithmetic over the weight panels (default f32); bf16: fast mode, bf16 panels × activations rounded to bf16, f32 sums (vdpbf16ps; needs a CPU with AVX-512 BF16)"),
        OptionSpec(names: ["--dump-c"], value: nil, help: "also write the generated C to DIR/c/"),
        OptionSpec(names: ["--cache-dir"], value: "DIR", help: "library cache (default $ARCFLOW_CACHE_DIR or ~/.cache/arcflow)"),
        OptionSpec(names: ["-v", "--verbose"], value: nil, help: "say what happens (cache hits, prologue, timings)"),
    ] + pipelineOptionSpecs,
    details: passHelp)

func compileCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, compileSpec, maxPositional: 1)
    let out = try args.required("--output", compileSpec)
    let start = monotonicSeconds()
    var options = try compileOptions(args, compileSpec, output: out)
    let dtype = args.value("--weights-dtype") ?? "auto"
    guard let weightsDType = WeightsDType(rawValue: dtype) else {
        throw UsageError("--weights-dtype must be auto, f32, bf16, f16 or int8, got '\(dtype)'", compileSpec)
    }
    options.weightsDType = weightsDType
    let compute = args.value("--compute") ?? "f32"
    guard let gemmCompute = GEMMCompute(rawValue: compute) else {
        throw UsageError("--compute must be f32 or bf16, got '\(compute)'", compileSpec)
    }
    options.compute = gemmCompute
    if let pipeline = args.value("--pipeline") {
        if !args.positional.isEmpty || args.has("--weights") || args.has("--transformer") || args.has("--latent-size") || args.has("--true-cfg-scale") {
            throw UsageError("--pipeline compiles a diffusers pipeline folder; give no IR FILE, --weights, --transformer, --latent-size or --true-cfg-scale with it", compileSpec)
        }
        let (height, width) = try imageSize(args)
        var o = PipelineCompileOptions(height: height, width: width)
        o.sampler = try samplerOption(args)
        o.steps = try args.int("--steps", compileSpec, min: 1)
        if let flavor = args.value("--clip-tokenizer") {
            guard let f = CLIPTokenizerFlavor(rawValue: flavor) else { throw UsageError("--clip-tokenizer must be slow or fast, got '\(flavor)'", compileSpec) }
            o.clipTokenizer = f
        }
        o.textTokens = try args.int("--text-tokens", compileSpec, default: 512, min: 1)!
        o.guidance = try args.double("--guidance", compileSpec)
        o.shift = try positiveShift(args)
        o.compile = options
        o.compile.dumpC = args.has("--dump-c") ? out + "/c" : nil
        o.progress = { stderrLine("arcflow: \($0)") }
        let m = try PipelineCompiler.compile(pipeline: pipeline, adapter: args.value("--adapter"), options: o, output: out)
        print("compiled pipeline: \(m.sampler) sampler, \(m.steps) steps, \(m.width)×\(m.height) (width × height), \(m.textTokens) T5 tokens → \(out) "
              + "(\(String(format: "%.1f", monotonicSeconds() - start)) s)")
        if gemmCompute == .bf16 { warnIfBF16Slow(try LoadedModel.load("\(out)/sampler")) }
        return
    }
    let module: Module, store: WeightStore
    if let transformer = args.value("--transformer") {
        if !args.positional.isEmpty || args.has("--weights") {
            throw UsageError("--transformer compiles a FLUX or Qwen-Image folder; give no IR FILE or --weights with it", compileSpec)
        }
        if args.has("--clip-tokenizer") { throw UsageError("--clip-tokenizer goes with --pipeline (a transformer alone takes embeddings)", compileSpec) }
        let program = try transformerProgram(args, transformer: transformer)
        (module, store) = (program.module, program.weights)
        options.model = program.manifest
    } else {
        for flag in ["--adapter", "--sampler", "--steps", "--height", "--width", "--text-tokens", "--guidance", "--shift", "--latent-size", "--true-cfg-scale", "--negative-text-tokens", "--clip-tokenizer"] where args.has(flag) {
            throw UsageError("\(flag) needs --pipeline or --transformer", compileSpec)
        }
        guard let file = args.positional.first else { throw UsageError("give an IR FILE (or --transformer DIR)", compileSpec) }
        module = try loadModule(file)
        store = try SafeTensorsStore(path: try args.required("--weights", compileSpec))
    }
    let compiled = try ModelCompiler.build(module, weights: store, options: options)
    try ModelCompiler.write(compiled, to: out)   // weights computed and written one at a time
    let loadStart = monotonicSeconds()
    // What `generate` will do: checks the folder. Under the folder's lock, because a concurrent
    // compile to the same folder rewrites it under that lock (manifest removed first).
    let model: LoadedModel
    do {
        let lock = try FileLock("\(out)/.lock"); defer { lock.unlock() }
        do { model = try LoadedModel.load(out) } catch {
            // Not a model folder then: without its manifest nothing takes it for one.
            try? FileManager.default.removeItem(atPath: "\(out)/manifest.json")
            throw error
        }
    }
    let loaded = monotonicSeconds()
    if args.has("--time-passes") { printPassTimings(compiled.passTimings) }
    let p = compiled.program
    let kernels = Set(p.steps.map(\.kernel)).count
    print("compiled @\(compiled.module.main.name): \(p.steps.count) steps, \(kernels) kernels, arena \(formatBytes(p.arenaBytes)), "
          + String(format: "%.2f GFLOP per run", p.flops / 1e9) + " → \(out)")
    print("library \(compiled.library.cacheHit ? "cache hit" : "built") \(compiled.library.key.prefix(16)); "
          + "compiled and loaded in \(formatMS(loaded - start)) (load \(formatMS(loaded - loadStart)))")
    if gemmCompute == .bf16 { warnIfBF16Slow(model) }
}

/// `--compute bf16` on a CPU whose bf16 dot products are not much faster than its f32 FMAs
/// (measured by the compiled library, on the default thread count): say so on stderr.
func warnIfBF16Slow(_ model: LoadedModel) {
    if let warning = model.executable.library.computeBF16Warning() { stderrLine("arcflow: \(warning)") }
}

/// The FLUX module for `compile --transformer`.
func fluxProgram(_ args: ParsedArguments, transformer: String) throws -> FluxProgram {
    let spec = compileSpec
    if args.has("--negative-text-tokens") {
        throw UsageError("--negative-text-tokens is for Qwen-Image; FLUX's true CFG takes a negative prompt as long as the prompt", spec)
    }
    let checkpoint = try FluxCheckpoint.load(transformer)
    let adapter = try args.value("--adapter").map { try ArcFlowAdapter.load($0) }
    var o: FluxOptions
    if let l = args.value("--latent-size") {
        if args.has("--height") || args.has("--width") { throw UsageError("give --latent-size or --height/--width, not both", spec) }
        let parts = l.lowercased().split(separator: "x").map { Int($0) }
        guard parts.count == 2, let lh = parts[0], let lw = parts[1] else { throw UsageError("--latent-size expects HxW (e.g. 16x16), got '\(l)'", spec) }
        o = FluxOptions(height: lh, width: lw)
        o.latentSize = (lh, lw)
    } else {
        let (height, width) = try imageSize(args)
        o = FluxOptions(height: height, width: width)
    }
    o.cfgScale = try args.double("--true-cfg-scale", spec)
    o.cfgScaleInput = true   // `generate --true-cfg-scale S` without a new compile
    (o.sampler, o.shift, o.steps, o.textTokens) = try transformerSamplerFlags(args, hasAdapter: adapter != nil)
    o.guidance = try args.double("--guidance", spec)
    o.guidanceInput = true   // `generate --guidance G` without a new compile
    let program = try FluxModel.sampler(checkpoint, adapter: adapter, options: o)
    // Said once the model is built, so that an error stays the only line.
    for note in adapter?.notes ?? [] { stderrLine("arcflow: note: \(note)") }
    return program
}

func compileOptions(_ args: ParsedArguments, _ spec: CommandSpec, output: String) throws -> CompileOptions {
    var options = CompileOptions()
    options.pipeline = try pipelineOptions(args, spec)
    if args.has("--dump-c") { options.dumpC = output + "/c" }
    options.dumpIR = args.value("--dump-ir")
    if let c = args.value("--cache-dir") { options.cacheRoot = c }
    let verbose = args.has("--verbose")
    options.log = { message in if verbose { stderrLine("arcflow: \(message)") } }
    options.notice = { stderrLine("arcflow: note: \($0)") }
    return options
}

func samplerOption(_ args: ParsedArguments) throws -> Sampler? {
    guard let s = args.value("--sampler") else { return nil }
    guard let sampler = Sampler(rawValue: s) else { throw UsageError("--sampler must be arc or euler, got '\(s)'", compileSpec) }
    return sampler
}

/// The sampler flags that `compile --transformer` reads alike for FLUX and Qwen-Image; the
/// default sampler, arc, needs an adapter (the ArcFlow head lives there).
func transformerSamplerFlags(_ args: ParsedArguments, hasAdapter: Bool) throws -> (sampler: Sampler, shift: Double?, steps: Int?, textTokens: Int) {
    let sampler = try samplerOption(args)
    if sampler == nil && !hasAdapter {
        throw UsageError("the default --sampler arc needs --adapter; or give --sampler euler for the teacher", compileSpec)
    }
    return (sampler ?? .arc, try positiveShift(args), try args.int("--steps", compileSpec, min: 1),
            try args.int("--text-tokens", compileSpec, default: 512, min: 1)!)
}

func positiveShift(_ args: ParsedArguments) throws -> Double? {
    guard let s = try args.double("--shift", compileSpec) else { return nil }
    guard s > 0 else { throw UsageError("--shift must be positive, got \(s)", compileSpec) }
    return s
}

/// `--height` and `--width`, both required for FLUX compiles.
func imageSize(_ args: ParsedArguments) throws -> (Int, Int) {
    guard let h = try args.int("--height", compileSpec) else { throw UsageError("missing required option --height", compileSpec) }
    guard let w = try args.int("--width", compileSpec) else { throw UsageError("missing required option --width", compileSpec) }
    return (h, w)
}
