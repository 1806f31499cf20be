// A compiled text-to-image pipeline folder at run time: tokenizers (Swift) → compiled text
// encoders → compiled sampler → compiled VAE decoder → an 8-bit image. Each stage is an
// ordinary compiled model folder; this file only sequences them.

import ArcFlowGraphs
import Foundation
import IR
import Imaging
import Runtime
import ShapesWorld
import Tokenizers

/// `pipeline.json` of a compiled pipeline folder: what was compiled, and what a PNG's
/// `parameters` chunk reports.
public struct PipelineManifest: Codable, Equatable {
    public var format = "arcflow-pipeline"
    public var version = 1
    /// "flux" (a diffusers FluxPipeline: CLIP + T5, VAE) or "shapes" (the embedded default:
    /// the world's word tokenizer, one text encoder, pixels through a fixed space-to-depth).
    public var family = "flux"
    public var height: Int
    public var width: Int
    public var textTokens: Int
    public var sampler: String
    public var steps: Int
    public var guidance: Double?
    /// True classifier-free guidance scale (the sampler takes negative embeddings), if any.
    public var cfgScale: Double?
    public var sigmas: [Double]
    /// The diffusers folder and adapter it was compiled from (for people, not for loading).
    public var source: String
    public var adapter: String?
    /// SHA-256 over the stages' weight and library hashes: the "Model hash" of a PNG.
    public var modelHash: String
    /// The CLIP tokenizer's flavor ("slow" or "fast", `CLIPTokenizerFlavor`); absent in folders
    /// compiled before it was recorded: then the tokenizer folder's own (`saved(in:)`).
    public var clipTokenizer: String?

    public static let fileName = "pipeline.json"
    /// Stage folders inside a compiled pipeline.
    public static let stages = ["text_encoder", "text_encoder_2", "sampler", "vae_decoder"]
    /// Stage folders of a family: the shapes world has one text encoder and a pixel decoder.
    public static func stages(family: String) -> [String] {
        family == "shapes" ? ["text_encoder", "sampler", "pixel_decoder"] : stages
    }

    public init(family: String = "flux", height: Int, width: Int, textTokens: Int, sampler: String, steps: Int, guidance: Double?,
                cfgScale: Double? = nil, sigmas: [Double], source: String, adapter: String?, modelHash: String) {
        self.family = family; self.height = height; self.width = width; self.textTokens = textTokens; self.sampler = sampler
        self.steps = steps; self.guidance = guidance; self.cfgScale = cfgScale; self.sigmas = sigmas; self.source = source
        self.adapter = adapter; self.modelHash = modelHash
    }

    enum CodingKeys: String, CodingKey {
        case format, version, family, height, width, textTokens = "text_tokens", sampler, steps, guidance, cfgScale = "cfg_scale", sigmas
        case source, adapter, modelHash = "model_hash", clipTokenizer = "clip_tokenizer"
    }

    public func write(to folder: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(self), to: "\(folder)/\(PipelineManifest.fileName)")
    }

    public static func isPipeline(_ folder: String) -> Bool {
        FileManager.default.fileExists(atPath: "\(folder)/\(fileName)")
    }
}

/// Token ids of one prompt, as the two tokenizers give them (padded).
public struct PromptTokens: Equatable {
    public var clip: [Int]
    public var t5: [Int]
    /// The shapes world's word ids (its pipelines have no CLIP or T5).
    public var world: [Int]? = nil
}

/// Prompt embeddings: what the sampler takes.
public struct PromptEmbeddings {
    public var promptEmbeds: Tensor
    public var pooledPromptEmbeds: Tensor
    /// The unconditional branch of classifier-free guidance (the empty prompt), when the sampler has one.
    public var negative: (promptEmbeds: Tensor, pooledPromptEmbeds: Tensor)? = nil
}

/// A loaded compiled pipeline: tokenizers and the stage libraries, resident. FLUX has four
/// stages and two tokenizers; the shapes world (the embedded default) three and its word list.
public final class CompiledPipeline {
    public let folder: String
    public let manifest: PipelineManifest
    public let clipTokenizer: CLIPTokenizer?
    public let t5Tokenizer: T5Tokenizer?
    public let textEncoder: LoadedModel
    public let textEncoder2: LoadedModel?
    public let sampler: LoadedModel
    public let decoder: LoadedModel
    /// Embeddings of the empty prompt, computed once, for a sampler with classifier-free guidance.
    private var negativeCache: (Tensor, Tensor)?

    public init(folder: String, threads: Int) throws {
        self.folder = folder
        let path = "\(folder)/\(PipelineManifest.fileName)"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ArcError("\(folder) is not a compiled pipeline (no \(PipelineManifest.fileName)); create one with `arcflow compile --pipeline DIR`")
        }
        do { manifest = try JSONDecoder().decode(PipelineManifest.self, from: data) } catch {
            throw ArcError("\(path) is not a valid pipeline manifest: \(error.localizedDescription)")
        }
        guard manifest.format == "arcflow-pipeline", manifest.version == 1 else {
            throw ArcError("\(path): format \(manifest.format) version \(manifest.version) is not one this arcflow reads; recompile")
        }
        func stage(_ name: String) throws -> LoadedModel {
            let m = try LoadedModel.load("\(folder)/\(name)")
            m.executable.setThreads(threads)
            return m
        }
        switch manifest.family {
        case "flux":
            guard let flavor = manifest.clipTokenizer.map(CLIPTokenizerFlavor.init(rawValue:)) ?? CLIPTokenizerFlavor.saved(in: "\(folder)/tokenizer") else {
                throw ArcError("\(path): clip_tokenizer '\(manifest.clipTokenizer ?? "")' is not slow or fast")
            }
            clipTokenizer = try CLIPTokenizer(folder: "\(folder)/tokenizer", flavor: flavor)
            t5Tokenizer = try T5Tokenizer(folder: "\(folder)/tokenizer_2")
            textEncoder2 = try stage("text_encoder_2")
            decoder = try stage("vae_decoder")
        case "shapes":
            (clipTokenizer, t5Tokenizer, textEncoder2) = (nil, nil, nil)
            decoder = try stage("pixel_decoder")
        default:
            throw ArcError("\(path): family '\(manifest.family)' is not one this arcflow reads (flux, shapes)")
        }
        textEncoder = try stage("text_encoder")
        sampler = try stage("sampler")
    }

    /// The scales a sampler may read at run time, each an input f32[1]; nil runs the compiled
    /// default. `guidance`: FLUX's embedded guidance (`generate --guidance G`); `cfgScale`: the
    /// true-CFG scale (the default model's teacher at another guidance).
    public var guidance: Double?
    public var cfgScale: Double?

    /// Whether the sampler has the input `name`.
    func reads(_ name: String) -> Bool { sampler.executable.inputs.contains { $0.name == name } }

    /// The scales a generation uses: the one set, else the compiled one (nil: none).
    public var effectiveGuidance: Double? { reads("guidance") ? guidance ?? manifest.guidance ?? FluxModel.defaultGuidance : manifest.guidance }
    public var effectiveCFGScale: Double? { reads(trueCFGScaleInput) ? cfgScale ?? manifest.cfgScale : manifest.cfgScale }

    /// Whether the sampler runs classifier-free guidance (takes negative embeddings).
    public var takesNegative: Bool { reads("negative_prompt_embeds") }

    /// The latent shape the sampler takes as noise: [1, C, H/8, W/8] (shapes: [1, 3p²/4, 2g, 2g]).
    public var noiseType: TensorType { sampler.executable.inputs.first { $0.name == "noise" }!.type }

    /// The starting noise of a seed: N(0, 1) drawn in latent space by the project's SplitMix64 +
    /// Box-Muller generator, the same numbers on every machine. Every pipeline with the same
    /// latent shape (the default model's teacher and both students) starts from the same noise
    /// for a seed, so their images compare pairwise. (For the pixel-space default, latent and
    /// pixel noise are one permutation apart: drawing in latent space loses nothing.)
    public func noise(seed: Int) -> Tensor { seededNoise(noiseType, seed: seed) }

    /// The prompt's ids; a shapes prompt outside the world's grammar is an error (ShapesWorld's).
    public func tokenize(_ prompt: String) throws -> PromptTokens {
        guard let clip = clipTokenizer, let t5 = t5Tokenizer else {
            return PromptTokens(clip: [], t5: [], world: try WorldVocabulary.encode(prompt))
        }
        return PromptTokens(clip: clip.encode(prompt), t5: try t5.encode(prompt, length: manifest.textTokens))
    }

    /// The text encoders (FLUX: T5's last hidden state and CLIP's pooled output; shapes: its one
    /// encoder gives both), plus the empty prompt's embeddings when the sampler guides.
    public func encode(_ prompt: String) throws -> PromptEmbeddings {
        var e = try encodeOnly(try tokenize(prompt))
        if takesNegative {
            if negativeCache == nil {
                let empty = manifest.family == "shapes" ? PromptTokens(clip: [], t5: [], world: WorldVocabulary.emptyCaption) : try tokenize("")
                let n = try encodeOnly(empty)
                negativeCache = (n.promptEmbeds, n.pooledPromptEmbeds)
            }
            e.negative = negativeCache
        }
        return e
    }

    func encodeOnly(_ tokens: PromptTokens) throws -> PromptEmbeddings {
        func ids(_ values: [Int], for model: LoadedModel) throws -> [String: Tensor] {
            let b = model.executable.inputs.first { $0.name == "input_ids" }!
            guard b.type.count == values.count else {
                throw ArcError("\(model.manifest.graph) takes \(b.type.count) token ids, the tokenizer gave \(values.count)")
            }
            return ["input_ids": Tensor(b.type, values.map(Float.init))]
        }
        if let world = tokens.world {
            let out = try textEncoder.executable.run(try ids(world, for: textEncoder))
            return PromptEmbeddings(promptEmbeds: out["prompt_embeds"]!, pooledPromptEmbeds: out["pooled_prompt_embeds"]!)
        }
        let clip = try textEncoder.executable.run(try ids(tokens.clip, for: textEncoder))
        let t5 = try textEncoder2!.executable.run(try ids(tokens.t5, for: textEncoder2!))
        return PromptEmbeddings(promptEmbeds: t5["prompt_embeds"]!, pooledPromptEmbeds: clip["pooled_prompt_embeds"]!)
    }

    /// Runs the sampler; `progress(nfe)` is called as each transformer evaluation finishes.
    public func sample(_ e: PromptEmbeddings, noise: Tensor, progress: @escaping (Int) -> Void = { _ in }) throws -> Tensor {
        let exe = sampler.executable
        // The unrolled sampler repeats the same evaluation `steps` times: kernel-step k of S
        // belongs to evaluation ⌊k·N/S⌋, exact up to the few steps of the shared prologue.
        let total = max(sampler.manifest.steps.count, 1), n = manifest.steps
        var reported = 0
        return try exe.library.withProgress({ k in
            let done = (k + 1) * n / total
            while reported < done { reported += 1; progress(reported) }
        }) {
            var inputs = ["noise": noise, "prompt_embeds": e.promptEmbeds, "pooled_prompt_embeds": e.pooledPromptEmbeds]
            for (name, value) in [("guidance", effectiveGuidance), (trueCFGScaleInput, effectiveCFGScale)] where reads(name) {
                guard let v = value else { throw ArcError("this sampler reads '\(name)' at run time, and no value is set or compiled") }
                inputs[name] = Tensor(.f32([1]), [Float(v)])
            }
            if takesNegative {
                guard let n = e.negative else { throw ArcError("this sampler uses classifier-free guidance: it needs negative prompt embeddings") }
                inputs["negative_prompt_embeds"] = n.promptEmbeds
                inputs["negative_pooled_prompt_embeds"] = n.pooledPromptEmbeds
            }
            return try finiteLatents(try exe.run(inputs)["latents"]!)
        }
    }

    /// The decoder (FLUX: the VAE, whose graph un-scales the latents first; shapes: the inverse
    /// space-to-depth) and diffusers' conversion to 8 bits (clamp to [−1, 1], then round).
    public func decode(_ latents: Tensor) throws -> Image8 {
        let b = decoder.executable.inputs.first { $0.name == "latents" }!
        guard latents.type.shape == b.type.shape else {
            throw ArcError("latents are \(latents.type), the decoder was compiled for \(b.type)")
        }
        return try image(fromDecoded: decoder.executable.run(["latents": latents])["image"]!)
    }
}

extension CompiledPipeline {
    /// Prompt → image in one call (text encoders, sampler, decoder), for callers that need no
    /// per-stage progress (reports, grids).
    public func generate(prompt: String, noise: Tensor) throws -> Image8 {
        try decode(try sample(try encode(prompt), noise: noise))
    }
}

/// N(0, 1) of `type` from `seed` (SplitMix64 + Box-Muller): the noise of every seeded generation.
public func seededNoise(_ type: TensorType, seed: Int) -> Tensor {
    var rng = SeededGenerator(seed: UInt64(seed))
    return Tensor(type, rng.normals(type.count))
}

/// [1, 3, H, W] in about [-1, 1] → an RGB8 image exactly as diffusers' postprocess.
public func image(fromDecoded t: Tensor) throws -> Image8 {
    guard t.rank == 4, t.shape[0] == 1, t.shape[1] == 3 else { throw ArcError("decoded image must be [1, 3, H, W], got \(t.type)") }
    return Image8(width: t.shape[3], height: t.shape[2], pixels: VAEDecoderGraph.rgb8(t))
}

/// Lines of a prompt file (UTF-8, LF or CRLF line ends, an optional byte-order mark); empty or
/// blank lines become nil (reported by line number). File-level problems (not found, not text,
/// too large) are one error for the whole file.
public func readPromptLines(_ path: String) throws -> [String?] {
    var text = Substring(try readInputText(path, what: "text"))
    if text.hasPrefix("\u{FEFF}") { text = text.dropFirst() }
    // "\r\n" is one Character in Swift: split on it as well as on "\n" (and drop a lone "\r").
    var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        .map { String($0.hasSuffix("\r") ? $0.dropLast() : $0) }
    if lines.last == "" { lines.removeLast() }   // a final newline ends the last line; it adds none
    if lines.isEmpty { throw ArcError("\(path) has no prompts") }
    return lines.map { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
}

/// The sampler's latents, refused when any is NaN or Inf: every input is checked finite, so one
/// comes from the weights (a NaN in an adapter tensor turns every latent into NaN), and an image
/// or latents file of them would look like a result.
public func finiteLatents(_ latents: Tensor) throws -> Tensor {
    let bad = latents.data.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
    guard bad == 0 else {
        throw ArcError("the sampler's latents hold \(bad) non-finite value\(bad == 1 ? "" : "s") of \(latents.data.count) "
                       + "(a NaN or Inf in the model's or the adapter's weights?); nothing written")
    }
    return latents
}
