// The embedded default model at run time: a variant (teacher, ArcFlow student, linear student)
// compiled from the default-model folder into an ordinary compiled pipeline folder (family
// "shapes"), cached by content hash, and the noise all variants share for a seed.

import ArcFlowGraphs
import Codegen
import Foundation
import Generation
import IR
import Runtime
import ShapesWorld

/// Which model of the default folder draws the image.
public enum DefaultVariant: Equatable, CustomStringConvertible {
    /// A student distilled for 2 NFE: its adapter folder ("arcflow": the ArcFlow student, K = 8;
    /// "linear": the K = 1 baseline) and the steps it samples with (2 unless measuring more).
    case student(adapter: String, steps: Int)
    /// The teacher: Euler with classifier-free guidance.
    case teacher(steps: Int, guidance: Double)

    /// The 2-NFE ArcFlow student.
    public static let arcflow = DefaultVariant.student(adapter: "arcflow", steps: 2)
    /// The linear 2-NFE baseline.
    public static let linear = DefaultVariant.student(adapter: "linear", steps: 2)

    public var adapterName: String? {
        switch self { case .student(let a, _): return a; case .teacher: return nil }
    }

    /// A student sampled with `steps` NFE (the teacher unchanged).
    public func studentSteps(_ steps: Int) -> DefaultVariant {
        switch self { case .student(let a, _): return .student(adapter: a, steps: steps); case .teacher: return self }
    }

    /// What a compile of the variant is called: the teacher's guidance is chosen at run time.
    public var compiledName: String {
        if case .teacher(let s, _) = self { return "teacher (\(s) Euler steps, CFG set at run time)" }
        return description
    }

    public var description: String {
        switch self {
        case .student(let a, let n): return "\(a == "arcflow" ? "ArcFlow" : a) \(n)-step student"
        case .teacher(let s, let g): return "teacher (\(s) Euler steps, CFG \(g))"
        }
    }
}

public enum DefaultPipeline {
    /// Bumped when the layout of a compiled default pipeline changes.
    static let version = "shapes-pipeline-1"

    /// The text encoder as its own graph: `input_ids` f32 [1, L] → `prompt_embeds` [1, L, W]
    /// and `pooled_prompt_embeds` [1, W] (the `<eos>` row), TeacherGraphs' one definition.
    public static func textEncoderGraph(_ c: TextEncoderConfig) throws -> Graph {
        let b = GraphBuilder(name: "world_text_encoder")
        let (hidden, pooled) = TeacherGraphs.textEncoder(b, c, ids: b.input("input_ids", .f32([1, c.tokens])))
        b.output("prompt_embeds", hidden)
        b.output("pooled_prompt_embeds", pooled)
        return try b.finish()
    }

    /// The sampler options of a variant: the latent grid from the codec, 12 text tokens, the
    /// teacher's shift from model.json (students: their adapter's `arcflow_shift`).
    public static func samplerOptions(_ folder: DefaultModelFolder, _ variant: DefaultVariant) -> FluxOptions {
        let side = folder.info.imageSize
        var o = FluxOptions(height: side, width: side)
        o.latentSize = (folder.codec.latentShape[2], folder.codec.latentShape[3])
        o.textTokens = folder.text.tokens
        switch variant {
        case .teacher(let steps, let g):
            o.sampler = .euler
            o.steps = steps
            o.cfgScale = g
            o.cfgScaleInput = true   // one compile serves every guidance (CompiledPipeline.cfgScale)
            o.shift = folder.info.teacher.shift
        case .student(_, let steps):
            o.sampler = .arc
            o.steps = steps
        }
        return o
    }

    /// The compiled pipeline folder of `variant`, compiling it on first use. The cache key hashes
    /// the content of every file the variant is compiled from, the variant, the codegen version
    /// and the arcflow executable (size and modification time: a rebuilt arcflow may build other
    /// graphs), so an edited model or a new arcflow never reuses a stale folder.
    /// The teacher's guidance is an input of its sampler, so one folder serves every scale: it is
    /// compiled (and keyed) with the folder's default, and `CompiledPipeline.cfgScale` sets another.
    public static func compiled(_ folder: DefaultModelFolder, _ requested: DefaultVariant, cacheRoot: String = BuildCache.defaultRoot(),
                                options: CompileOptions = CompileOptions(), progress: (String) -> Void = { _ in }) throws -> String {
        var variant = requested
        if case .teacher(let steps, _) = requested { variant = .teacher(steps: steps, guidance: folder.info.teacher.guidance) }
        var adapterDir: String?
        if let name = variant.adapterName {
            guard let dir = folder.adapterDirectory(name) else {
                throw ArcError("\(folder.directory) has no '\(folder.info.adapters[name] ?? name)' adapter folder (the \(variant)); "
                               + "distil one, or use --teacher")
            }
            adapterDir = dir
        }
        var files = ["model.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                     "text_encoder/config.json", "text_encoder/model.safetensors"].map { "\(folder.directory)/\($0)" }
        if let a = adapterDir { files += ["\(a)/config.json", "\(a)/diffusion_pytorch_model.safetensors"] }
        var hasher = SHA256()
        hasher.update("\(version)\n\(codegenVersion)\n\(variant)\n\(executableStamp())\n")
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else { throw ArcError("cannot read \(path)") }
            hasher.update("\((path as NSString).lastPathComponent) \(data.count)\n")
            data.withUnsafeBytes { hasher.update($0) }
        }
        let key = SHA256.hex(hasher.finalize())
        let output = "\(cacheRoot)/default/\(key.prefix(24))"
        if PipelineManifest.isPipeline(output) { return output }

        progress("compiling the \(variant.compiledName) (first use; cached in \(output))")
        let fm = FileManager.default
        // A staging folder named like the build cache's temporaries, so that the ones a killed
        // compile (Ctrl-C on first use) left behind are removed here by the next one.
        TemporaryFiles.removeStale(in: "\(cacheRoot)/default")
        let staging = TemporaryFiles.path(for: output)
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: staging) }
        let adapter = try adapterDir.map { try ArcFlowAdapter.load($0) }
        let flux = samplerOptions(folder, variant)
        let sampler = try FluxModel.sampler(folder.transformer, adapter: adapter, options: flux)
        let textWeights = folder.textWeights, text = folder.text, codec = folder.codec
        let stages: [PipelineCompiler.Stage] = [
            ("text_encoder", { (Module(try textEncoderGraph(text)), textWeights, ["stage": "world_text_encoder"]) }),
            ("sampler", { (sampler.module, sampler.weights, sampler.manifest) }),
            ("pixel_decoder", { (Module(try codec.decoderGraph()), TensorStore(), ["stage": "pixel_decoder"]) }),
        ]
        let hashes = try PipelineCompiler.compileStages(stages, options: options, output: staging, progress: progress)
        let manifest = PipelineManifest(
            family: "shapes", height: folder.info.imageSize, width: folder.info.imageSize, textTokens: text.tokens,
            sampler: flux.sampler.rawValue, steps: flux.steps!, guidance: nil, cfgScale: flux.cfgScale, sigmas: sampler.sigmas,
            source: (folder.directory as NSString).standardizingPath, adapter: adapterDir.map { ($0 as NSString).standardizingPath },
            modelHash: SHA256.hash(hashes.joined(separator: "\n")))
        try manifest.write(to: staging)
        // Publish the whole folder at once; a concurrent compile of the same key may have won.
        if rename(staging, output) != 0 && !PipelineManifest.isPipeline(output) {
            throw ArcError("cannot publish \(output): \(String(cString: strerror(errno)))")
        }
        return output
    }

    /// `variant` compiled (on first use) and loaded, its guidance set: what generating with it takes.
    public static func pipeline(_ folder: DefaultModelFolder, _ variant: DefaultVariant, threads: Int, cacheRoot: String = BuildCache.defaultRoot(),
                                options: CompileOptions = CompileOptions(), progress: (String) -> Void = { _ in }) throws -> CompiledPipeline {
        let p = try CompiledPipeline(folder: try compiled(folder, variant, cacheRoot: cacheRoot, options: options, progress: progress), threads: threads)
        if case .teacher(_, let g) = variant { p.cfgScale = g }
        return p
    }

    /// The running executable's path (Linux: /proc/self/exe, so a PATH lookup is resolved too).
    public static func executablePath() -> String {
        if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
        return CommandLine.arguments.first.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path } ?? ""
    }

    static func executableStamp() -> String {
        let path = executablePath()
        let a = try? FileManager.default.attributesOfItem(atPath: path)
        return "\(path) \(a?[.size] ?? 0) \((a?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
    }
}
