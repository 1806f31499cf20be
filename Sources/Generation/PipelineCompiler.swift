// compile --pipeline: a diffusers FluxPipeline folder (+ an ArcFlow adapter) → one compiled
// pipeline folder holding the four stage libraries, the tokenizer files and pipeline.json.

import ArcFlowGraphs
import Codegen
import Foundation
import IR
import Runtime
import Tokenizers

public struct PipelineCompileOptions {
    public var sampler: Sampler?
    public var steps: Int?
    public var height: Int
    public var width: Int
    public var textTokens = 512
    public var guidance: Double?
    /// Forces a fixed shift instead of the scheduler config's (teacher) or 3.2 (arc).
    public var shift: Double?
    /// The CLIP tokenizer to reproduce (nil: the one of the transformers that saved the folder).
    public var clipTokenizer: CLIPTokenizerFlavor?
    /// Per-stage compile options; `dumpIR`/`dumpC` are taken as parent folders, one per stage.
    public var compile = CompileOptions()
    public var progress: (String) -> Void = { _ in }

    public init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }
}

public enum PipelineCompiler {
    /// Compiles every stage into `output` (stage folders, then tokenizers, then pipeline.json
    /// last, so a folder without pipeline.json is never taken for a complete pipeline).
    @discardableResult
    public static func compile(pipeline dir: String, adapter adapterDir: String?, options o: PipelineCompileOptions,
                               output: String) throws -> PipelineManifest {
        let folder = try FluxPipelineFolder.load(dir)
        let adapter = try adapterDir.map { try ArcFlowAdapter.load($0) }
        // Only read at run time, but parsed here: a tokenizer this arcflow cannot read fails the
        // compile in a second instead of every later `generate`.
        let clip = try CLIPTokenizer(folder: folder.tokenizerDirectory, flavor: o.clipTokenizer)
        _ = try T5Tokenizer(folder: folder.tokenizer2Directory)
        // CLIP runs at the tokenizer's padded length (FluxPipeline's tokenizer_max_length), which its
        // position table must cover; the decoder's image must be RGB, what a PNG of it holds.
        let clipPositions = folder.textEncoder.config.maxPositionEmbeddings
        guard clip.maxLength <= clipPositions else {
            throw ArcError("\(folder.tokenizerDirectory): model_max_length \(clip.maxLength) is more than text_encoder/config.json's "
                           + "max_position_embeddings \(clipPositions)")
        }
        guard folder.vae.config.outChannels == 3 else {
            throw ArcError("\(folder.vae.directory)/config.json: out_channels \(folder.vae.config.outChannels) is not supported "
                           + "(arcflow writes RGB images: out_channels 3)")
        }
        let sampler = o.sampler ?? (adapter == nil ? .euler : .arc)
        let steps = o.steps ?? sampler.defaultSteps
        // Latents are the VAE's 1/f of the image (f = 2^(levels − 1), 8 for FLUX.1's VAE, as
        // FluxPipeline's vae_scale_factor), tokens 2×2 latents.
        let f = folder.vae.config.upscale
        guard o.height > 0, o.width > 0, o.height % (2 * f) == 0, o.width % (2 * f) == 0 else {
            throw ArcError("--height \(o.height) and --width \(o.width) must be positive multiples of \(2 * f) (this VAE's latents are 1/\(f) of the image, tokens 2×2 latents)")
        }
        var flux = FluxOptions(height: o.height, width: o.width)
        flux.latentSize = (o.height / f, o.width / f)
        flux.sampler = sampler
        flux.steps = steps
        flux.textTokens = o.textTokens
        flux.guidance = o.guidance
        flux.guidanceInput = true   // `generate --guidance G` without a new compile
        flux.shift = o.shift
        if sampler == .euler && o.shift == nil {
            // The teacher steps through exactly FluxPipeline's schedule (dynamic shifting with μ from
            // the packed image token count when the scheduler config asks for it).
            flux.sigmas = try folder.scheduler.sigmas(steps: steps, imageSeqLen: (o.height / (2 * f)) * (o.width / (2 * f)))
        }
        let fm = FileManager.default
        try fm.createDirectory(atPath: output, withIntermediateDirectories: true)
        TemporaryFiles.removeStale(in: output)
        // A recompile into the same folder first invalidates it: no stale pipeline.json over new stages.
        try? fm.removeItem(atPath: "\(output)/\(PipelineManifest.fileName)")

        let samplerProgram = try FluxModel.sampler(folder.transformer, adapter: adapter, options: flux)
        let stages: [Stage] = [
            ("text_encoder", { let p = try folder.textEncoderProgram(tokens: clip.maxLength); return (p.module, p.weights, ["stage": "clip"]) }),
            ("text_encoder_2", { let p = try folder.textEncoder2Program(tokens: o.textTokens); return (p.module, p.weights, ["stage": "t5"]) }),
            ("sampler", { (samplerProgram.module, samplerProgram.weights, samplerProgram.manifest) }),
            ("vae_decoder", { let p = try folder.vaeDecoderProgram(height: o.height, width: o.width); return (p.module, p.weights, ["stage": "vae_decoder"]) }),
        ]
        // Said once every input has been read (an error stays the only line).
        for note in adapter?.notes ?? [] { o.progress("note: \(note)") }
        o.progress("tokenizer: CLIP \(clip.flavor.rawValue) (" + (clip.flavor == .slow
            ? "transformers 4's CLIPTokenizer; --clip-tokenizer fast for transformers 5's)"
            : "the tokenizers library's, transformers 5's CLIPTokenizer; --clip-tokenizer slow for transformers 4's)"))
        let hashes = try compileStages(stages, options: o.compile, output: output, progress: o.progress)
        for (src, dst) in [(folder.tokenizerDirectory, "tokenizer"), (folder.tokenizer2Directory, "tokenizer_2")] {
            try copyFolder(src, to: "\(output)/\(dst)")
        }
        var manifest = PipelineManifest(
            height: o.height, width: o.width, textTokens: o.textTokens, sampler: sampler.rawValue, steps: steps,
            guidance: samplerProgram.manifest["guidance"].flatMap(Double.init), sigmas: samplerProgram.sigmas,
            source: (dir as NSString).standardizingPath, adapter: adapterDir.map { ($0 as NSString).standardizingPath },
            modelHash: SHA256.hash(hashes.joined(separator: "\n")))
        manifest.clipTokenizer = clip.flavor.rawValue
        try manifest.write(to: output)
        return manifest
    }

    /// A stage of a pipeline: its folder name and how to build its module, weights and manifest facts.
    public typealias Stage = (name: String, make: () throws -> (Module, WeightStore, [String: String]))

    /// Compiles each stage into `output/<name>` (one ordinary compiled model folder each) and
    /// returns the weight and library hashes the pipeline's model hash is made of.
    public static func compileStages(_ stages: [Stage], options: CompileOptions, output: String,
                                     progress: (String) -> Void) throws -> [String] {
        var hashes: [String] = []
        for (name, make) in stages {
            let start = monotonicSeconds()
            let (module, weights, facts) = try make()
            var o = options
            o.dumpIR = options.dumpIR.map { "\($0)/\(name)" }
            o.dumpC = options.dumpC.map { "\($0)/\(name)" }
            o.model = facts
            let compiled = try ModelCompiler.build(module, weights: weights, options: o)
            try ModelCompiler.write(compiled, to: "\(output)/\(name)")
            let m = try LoadedModel.readManifest("\(output)/\(name)")
            hashes += [m.weightsSHA256, m.librarySHA256]
            progress(String(format: "%@: %d kernels, %.2f GFLOP per run, compiled in %.1f s", name,
                            compiled.program.steps.count, compiled.program.flops / 1e9, monotonicSeconds() - start))
        }
        return hashes
    }

    /// Copies the regular files of a tokenizer folder (replacing an older copy atomically per file).
    public static func copyFolder(_ src: String, to dst: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: dst, withIntermediateDirectories: true)
        for name in try fm.contentsOfDirectory(atPath: src).sorted() {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: "\(src)/\(name)", isDirectory: &isDir), !isDir.boolValue,
                  let data = fm.contents(atPath: "\(src)/\(name)") else { continue }
            try writeAtomically(data, to: "\(dst)/\(name)")
        }
    }
}
