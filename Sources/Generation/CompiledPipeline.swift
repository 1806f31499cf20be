// A compiled text-to-image pipeline folder at run time: tokenizers (Swift) → compiled text
// encoders → compiled sampler → compiled VAE decoder → an 8-bit image. Each stage is an
// ordinary compiled model folder; this file only sequences them.

import ArcFlowGraphs
import Foundation
import IR
import Imaging
import Runtime
import Tokenizers

/// `pipeline.json` of a compiled pipeline folder: what was compiled, and what a PNG's
/// `parameters` chunk reports.
public struct PipelineManifest: Codable, Equatable {
    public var format = "arcflow-pipeline"
    public var version = 1
    public var family = "flux"
    public var height: Int
    public var width: Int
    public var textTokens: Int
    public var sampler: String
    public var steps: Int
    public var guidance: Double?
    public var sigmas: [Double]
    /// The diffusers folder and adapter it was compiled from (for people, not for loading).
    public var source: String
    public var adapter: String?
    /// SHA-256 over the stages' weight and library hashes: the "Model hash" of a PNG.
    public var modelHash: String

    public static let fileName = "pipeline.json"
    /// Stage folders inside a compiled pipeline.
    public static let stages = ["text_encoder", "text_encoder_2", "sampler", "vae_decoder"]

    enum CodingKeys: String, CodingKey {
        case format, version, family, height, width, textTokens = "text_tokens", sampler, steps, guidance, sigmas
        case source, adapter, modelHash = "model_hash"
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
}

/// Prompt embeddings: what the sampler takes.
public struct PromptEmbeddings {
    public var promptEmbeds: Tensor
    public var pooledPromptEmbeds: Tensor
}

/// A loaded compiled pipeline: tokenizers and the four stage libraries, resident.
public final class CompiledPipeline {
    public let folder: String
    public let manifest: PipelineManifest
    public let clipTokenizer: CLIPTokenizer
    public let t5Tokenizer: T5Tokenizer
    public let textEncoder: LoadedModel
    public let textEncoder2: LoadedModel
    public let sampler: LoadedModel
    public let decoder: LoadedModel

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
        clipTokenizer = try CLIPTokenizer(folder: "\(folder)/tokenizer")
        t5Tokenizer = try T5Tokenizer(folder: "\(folder)/tokenizer_2")
        func stage(_ name: String) throws -> LoadedModel {
            let m = try LoadedModel.load("\(folder)/\(name)")
            m.executable.setThreads(threads)
            return m
        }
        textEncoder = try stage("text_encoder")
        textEncoder2 = try stage("text_encoder_2")
        sampler = try stage("sampler")
        decoder = try stage("vae_decoder")
    }

    /// The latent shape the sampler takes as noise: [1, C, H/8, W/8].
    public var noiseType: TensorType { sampler.executable.inputs.first { $0.name == "noise" }!.type }

    public func tokenize(_ prompt: String) -> PromptTokens {
        PromptTokens(clip: clipTokenizer.encode(prompt), t5: t5Tokenizer.encode(prompt, length: manifest.textTokens))
    }

    /// Both text encoders: T5's last hidden state and CLIP's pooled output.
    public func encode(_ prompt: String) throws -> PromptEmbeddings {
        let tokens = tokenize(prompt)
        func ids(_ values: [Int], for model: LoadedModel) throws -> [String: Tensor] {
            let b = model.executable.inputs.first { $0.name == "input_ids" }!
            guard b.type.count == values.count else {
                throw ArcError("\(model.manifest.graph) takes \(b.type.count) token ids, the tokenizer gave \(values.count)")
            }
            return ["input_ids": Tensor(b.type, values.map(Float.init))]
        }
        let clip = try textEncoder.executable.run(try ids(tokens.clip, for: textEncoder))
        let t5 = try textEncoder2.executable.run(try ids(tokens.t5, for: textEncoder2))
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
            try exe.run(["noise": noise, "prompt_embeds": e.promptEmbeds, "pooled_prompt_embeds": e.pooledPromptEmbeds])["latents"]!
        }
    }

    /// The VAE decoder (its graph un-scales the latents first) and diffusers' conversion to 8 bits.
    public func decode(_ latents: Tensor) throws -> Image8 {
        let b = decoder.executable.inputs.first { $0.name == "latents" }!
        guard latents.type.shape == b.type.shape else {
            throw ArcError("latents are \(latents.type), the decoder was compiled for \(b.type)")
        }
        return try image(fromDecoded: decoder.executable.run(["latents": latents])["image"]!)
    }
}

/// [1, 3, H, W] in about [-1, 1] → an RGB8 image exactly as diffusers' postprocess.
public func image(fromDecoded t: Tensor) throws -> Image8 {
    guard t.rank == 4, t.shape[0] == 1, t.shape[1] == 3 else { throw ArcError("decoded image must be [1, 3, H, W], got \(t.type)") }
    return Image8(width: t.shape[3], height: t.shape[2], pixels: VAEDecoderGraph.rgb8(t))
}

/// Lines of a prompt file (UTF-8); empty or blank lines become nil (reported by line number).
/// File-level problems (not found, not text, too large) are one error for the whole file.
public func readPromptLines(_ path: String) throws -> [String?] {
    let text = try readInputText(path, what: "text")
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { String($0.hasSuffix("\r") ? $0.dropLast() : $0) }
    if lines.last == "" { lines.removeLast() }   // a final newline ends the last line; it adds none
    if lines.isEmpty { throw ArcError("\(path) has no prompts") }
    return lines.map { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
}
