// A diffusers FluxPipeline folder (`save_pretrained` layout): model_index.json, the scheduler
// config and the component subfolders, checked for presence and consistency.

import Foundation
import IR
import Runtime

/// diffusers 0.35.1 `FlowMatchEulerDiscreteScheduler` config (scheduler/scheduler_config.json).
public struct FlowMatchSchedulerConfig: Equatable {
    public var numTrainTimesteps: Int
    public var shift: Double
    public var useDynamicShifting: Bool
    public var baseShift: Double
    public var maxShift: Double
    public var baseImageSeqLen: Int
    public var maxImageSeqLen: Int
    /// nil: no stretch to a terminal value (0 too: diffusers stretches only when it is truthy).
    public var shiftTerminal: Double?
    /// The config file, for messages.
    public var path: String

    public init(_ c: ConfigFile) throws {
        path = c.path
        let name = try c.string("_class_name")
        guard name == "FlowMatchEulerDiscreteScheduler" else {
            throw ArcError("\(c.path): _class_name '\(name)' is not supported (FlowMatchEulerDiscreteScheduler)")
        }
        numTrainTimesteps = try c.int("num_train_timesteps", default: 1000)
        // The scheduler's timesteps are σ·num_train_timesteps, and FluxPipeline feeds them to a
        // transformer that embeds 1000·(t/1000): another count changes every timestep embedding.
        guard numTrainTimesteps == 1000 else {
            throw ArcError("\(c.path): num_train_timesteps \(numTrainTimesteps) is not supported (1000, which FLUX's timestep embedding assumes)")
        }
        shift = c.has("shift") ? try c.double("shift") : 1
        useDynamicShifting = try c.bool("use_dynamic_shifting", default: false)
        baseShift = c.has("base_shift") ? try c.double("base_shift") : 0.5
        maxShift = c.has("max_shift") ? try c.double("max_shift") : 1.15
        baseImageSeqLen = try c.int("base_image_seq_len", default: 256)
        maxImageSeqLen = try c.int("max_image_seq_len", default: 4096)
        shiftTerminal = try c.optionalDouble("shift_terminal").flatMap { $0 == 0 ? nil : $0 }
        if useDynamicShifting && baseImageSeqLen == maxImageSeqLen {
            throw ArcError("\(c.path): base_image_seq_len and max_image_seq_len are both \(baseImageSeqLen); dynamic shifting interpolates between them")
        }
        // use_flow_sigmas (a key of other schedulers' configs, kept by from_config) makes
        // FluxPipeline pass no σ and the scheduler step linspace(σ_max, σ_min, N) instead.
        for key in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling", "use_flow_sigmas"]
            where try c.bool(key, default: false) {
            throw ArcError("\(c.path): '\(key)' true is not supported")
        }
        if c.has("time_shift_type"), try c.string("time_shift_type") != "exponential" {
            throw ArcError("\(c.path): time_shift_type '\(try c.string("time_shift_type"))' is not supported (exponential)")
        }
    }

    /// FluxPipeline's μ for `imageSeqLen` packed tokens: linear in the sequence length between
    /// (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift).
    public func mu(imageSeqLen n: Int) -> Double {
        let m = (maxShift - baseShift) / Double(maxImageSeqLen - baseImageSeqLen)
        return Double(n) * m + (baseShift - m * Double(baseImageSeqLen))
    }

    /// The σ knots FluxPipeline steps through (N + 1 values, the last 0): t = linspace(1, 1/N, N)
    /// shifted by e^μ/(e^μ + 1/t − 1) with dynamic shifting, else s·t/(1 + (s − 1)·t), then
    /// stretched so the last non-zero σ is shift_terminal when set. In f64; the reference rounds
    /// to f32 at the end (compare with f32 tolerance). A schedule that is not finite and strictly
    /// decreasing to 0 (shift_terminal with one step: 0/0, where diffusers' σ are NaN) is an error.
    public func sigmas(steps n: Int, imageSeqLen: Int) throws -> [Double] {
        var t = (0..<n).map { n == 1 ? 1 : 1 - Double($0) * (1 - 1 / Double(n)) / Double(n - 1) }
        if useDynamicShifting {
            let e = Foundation.exp(mu(imageSeqLen: imageSeqLen))
            t = t.map { e / (e + (1 / $0 - 1)) }
        } else {
            t = t.map { shift * $0 / (1 + (shift - 1) * $0) }
        }
        if let terminal = shiftTerminal {
            let scale = (1 - t.last!) / (1 - terminal)
            t = t.map { 1 - (1 - $0) / scale }
        }
        let knots = t + [0]
        guard knots.allSatisfy(\.isFinite), zip(knots, knots.dropFirst()).allSatisfy({ $0 > $1 }) else {
            let shown = knots.prefix(6).map { String(format: "%.4g", $0) }.joined(separator: ", ") + (knots.count > 6 ? ", …" : "")
            throw ArcError("\(path) gives σ = [\(shown)] for \(n) step\(n == 1 ? "" : "s"), not finite and decreasing"
                           + (shiftTerminal != nil && n == 1 ? " (shift_terminal needs at least 2 steps)" : ""))
        }
        return knots
    }
}

/// A FluxPipeline folder: every component loaded (weights memory-mapped, nothing read yet) and
/// checked against the others. Errors are one line naming the file and key at fault.
public struct FluxPipelineFolder {
    public var directory: String
    public var scheduler: FlowMatchSchedulerConfig
    public var textEncoder: CLIPTextEncoder
    public var textEncoder2: T5Encoder
    public var transformer: FluxCheckpoint
    public var vae: VAEDecoder
    /// Tokenizer folders (read by the Swift tokenizers, not here): checked to exist.
    public var tokenizerDirectory: String
    public var tokenizer2Directory: String

    /// model_index.json key → accepted class names.
    static let components: [(key: String, classes: [String])] = [
        ("scheduler", ["FlowMatchEulerDiscreteScheduler"]),
        ("text_encoder", ["CLIPTextModel"]),
        ("text_encoder_2", ["T5EncoderModel"]),
        ("tokenizer", ["CLIPTokenizer", "CLIPTokenizerFast"]),
        ("tokenizer_2", ["T5TokenizerFast", "T5Tokenizer"]),
        ("transformer", ["FluxTransformer2DModel"]),
        ("vae", ["AutoencoderKL"]),
    ]

    public static func load(_ dir: String) throws -> FluxPipelineFolder {
        try requireDirectory(dir, holding: "a diffusers FluxPipeline folder with model_index.json")
        let index = try ConfigFile(path: "\(dir)/model_index.json")
        let name = try index.string("_class_name")
        guard name == "FluxPipeline" else {
            throw ArcError("\(index.path): _class_name '\(name)' is not FluxPipeline")
        }
        for (key, classes) in components {
            guard let entry = index.json[key] as? [Any], entry.count == 2, let cls = entry[1] as? String else {
                throw ArcError("\(index.path): missing key '\(key)' (expected [library, class name])")
            }
            guard classes.contains(cls) else {
                throw ArcError("\(index.path): '\(key)' is \(cls), expected \(classes.joined(separator: " or "))")
            }
            try requireDirectory("\(dir)/\(key)", holding: "the \(cls) component listed in model_index.json")
        }
        let scheduler = try FlowMatchSchedulerConfig(ConfigFile(path: "\(dir)/scheduler/scheduler_config.json"))
        let clip = try CLIPTextEncoder.load("\(dir)/text_encoder")
        let t5 = try T5Encoder.load("\(dir)/text_encoder_2")
        let transformer = try FluxCheckpoint.load("\(dir)/transformer")
        let vae = try VAEDecoder.load("\(dir)/vae")
        let tf = "\(dir)/transformer/config.json"
        guard transformer.config.jointAttentionDim == t5.config.dModel else {
            throw ArcError("\(tf): joint_attention_dim \(transformer.config.jointAttentionDim) differs from text_encoder_2 d_model \(t5.config.dModel)")
        }
        guard transformer.config.pooledProjectionDim == clip.config.hiddenSize else {
            throw ArcError("\(tf): pooled_projection_dim \(transformer.config.pooledProjectionDim) differs from text_encoder hidden_size \(clip.config.hiddenSize)")
        }
        guard transformer.config.latentChannels == vae.config.latentChannels else {
            throw ArcError("\(tf): in_channels \(transformer.config.inChannels) is not 4 × vae latent_channels \(vae.config.latentChannels)")
        }
        return FluxPipelineFolder(directory: dir, scheduler: scheduler, textEncoder: clip, textEncoder2: t5, transformer: transformer,
                                  vae: vae, tokenizerDirectory: "\(dir)/tokenizer", tokenizer2Directory: "\(dir)/tokenizer_2")
    }

    /// The three graphs of a prompt → image run (the transformer's comes from `FluxModel`):
    /// CLIP over 77 tokens, T5 over `textTokens`, the VAE decoder for height × width pixels.
    /// CLIP at `tokens` ids: the CLIP tokenizer's padded length (`model_max_length`, 77 in FLUX.1).
    public func textEncoderProgram(tokens: Int) throws -> ComponentProgram {
        try CLIPTextEncoderGraph.build(config: textEncoder.config, weights: textEncoder.store, tokens: tokens)
    }

    public func textEncoder2Program(tokens: Int) throws -> ComponentProgram {
        try T5EncoderGraph.build(config: textEncoder2.config, weights: textEncoder2.store, tokens: tokens)
    }

    public func vaeDecoderProgram(height: Int, width: Int) throws -> ComponentProgram {
        let f = vae.config.upscale
        guard height > 0, width > 0, height % f == 0, width % f == 0 else {
            throw ArcError("--height \(height) and --width \(width) must be positive multiples of \(f) (the VAE upsamples ×\(f))")
        }
        return try VAEDecoderGraph.build(config: vae.config, weights: vae.store, latentHeight: height / f, latentWidth: width / f)
    }
}
