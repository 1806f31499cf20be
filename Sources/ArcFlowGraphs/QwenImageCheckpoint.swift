// Reading a diffusers Qwen-Image transformer folder, and telling the two transformer families apart.

import Foundation
import IR
import Runtime

/// The fields of a diffusers `QwenImageTransformer2DModel` config.json this runtime uses.
public struct QwenImageConfig: Equatable {
    public var numLayers: Int
    public var attentionHeadDim: Int
    public var numAttentionHeads: Int
    public var jointAttentionDim: Int
    public var axesDimsRope: [Int]
    public var inChannels: Int
    public var outChannels: Int

    public var width: Int { attentionHeadDim * numAttentionHeads }
    /// Latent channels C: in_channels packs C × 2 × 2 (the pipeline packs, the model sees tokens).
    public var latentChannels: Int { inChannels / 4 }

    public init(numLayers: Int, attentionHeadDim: Int, numAttentionHeads: Int, jointAttentionDim: Int,
                axesDimsRope: [Int], inChannels: Int = 64, outChannels: Int = 16) {
        self.numLayers = numLayers
        self.attentionHeadDim = attentionHeadDim
        self.numAttentionHeads = numAttentionHeads
        self.jointAttentionDim = jointAttentionDim
        self.axesDimsRope = axesDimsRope
        self.inChannels = inChannels
        self.outChannels = outChannels
    }

    /// Parses and checks a config.json. The sizes must be present (an empty config would
    /// otherwise silently mean the 20B model); the rest default as in diffusers' __init__.
    public init(_ file: ConfigFile) throws {
        let path = file.path
        numLayers = try file.int("num_layers")
        attentionHeadDim = try file.int("attention_head_dim")
        numAttentionHeads = try file.int("num_attention_heads")
        jointAttentionDim = try file.int("joint_attention_dim")
        inChannels = try file.int("in_channels", default: 64)
        // diffusers: `out_channels or in_channels`, so an explicit null means in_channels (which the
        // 2×2 packing check below then refuses); absent means the signature's default, 16.
        outChannels = file.json["out_channels"] is NSNull ? inChannels : try file.int("out_channels", default: 16)
        axesDimsRope = file.has("axes_dims_rope") ? try file.ints("axes_dims_rope") : [16, 56, 56]
        let patch = try file.int("patch_size", default: 2)
        guard patch == 2 else {
            throw ArcError("\(path): patch_size \(patch) is not supported (Qwen-Image packs 2×2 latents: patch_size 2)")
        }
        // diffusers' QwenTimestepProjEmbeddings has no guidance embedder: a guidance-embedding
        // config cannot run there either.
        if try file.bool("guidance_embeds", default: false) {
            throw ArcError("\(path): guidance_embeds true is not supported (QwenImageTransformer2DModel has no guidance embedder)")
        }
        // Keys of the image-conditioned variants (diffusers ≥ 0.36, Qwen-Image-Layered): the extra
        // timestep condition adds a weight and an input, the 3D RoPE moves the image frame. Either
        // changes every output, so a config that sets one is refused rather than run as the base
        // model. zero_cond_t only changes the timestep of condition images, which text-to-image
        // has none of: its value does not matter here.
        for key in ["use_additional_t_cond", "use_layer3d_rope"] where try file.bool(key, default: false) {
            throw ArcError("\(path): \(key) true is not supported (a Qwen-Image-Layered variant; arcflow runs "
                           + "the text-to-image QwenImageTransformer2DModel, where it is false)")
        }
        guard inChannels % 4 == 0, outChannels * 4 == inChannels else {
            throw ArcError("\(path): in_channels \(inChannels) must be 4 × out_channels \(outChannels) (2×2 packed latents in and out)")
        }
        guard axesDimsRope.count == 3, axesDimsRope.allSatisfy({ $0 % 2 == 0 && $0 <= attentionHeadDim }),
              axesDimsRope.reduce(0, +) == attentionHeadDim else {
            throw ArcError("\(path): axes_dims_rope \(axesDimsRope) must be three even sizes summing to attention_head_dim \(attentionHeadDim)")
        }
    }
}

/// A diffusers Qwen-Image transformer folder: config.json plus one safetensors file or shards.
public struct QwenImageCheckpoint {
    public static let className = "QwenImageTransformer2DModel"
    /// The `_class_name` of its ArcFlow adapter (`arcflow-qwen-2steps`).
    public static let adapterClassName = "ArcQwenImageTransformer2DModel"

    public var directory: String
    public var config: QwenImageConfig
    public var store: WeightStore

    public static func load(_ dir: String) throws -> QwenImageCheckpoint {
        try requireDirectory(dir, holding: "a diffusers transformer folder with config.json")
        let file = try ConfigFile(path: "\(dir)/config.json")
        let name = file.json["_class_name"] as? String ?? "(none)"
        guard name == className else {
            throw ArcError("\(file.path): _class_name '\(name)' is not a Qwen-Image transformer (expected \(className))")
        }
        return QwenImageCheckpoint(directory: dir, config: try QwenImageConfig(file),
                                   store: try openWeightFolder(dir, stem: "diffusion_pytorch_model"))
    }

    /// Its ArcFlow adapter folder (same layout as FLUX's, its own class name).
    public static func adapter(_ dir: String) throws -> ArcFlowAdapter {
        try ArcFlowAdapter.load(dir, expecting: adapterClassName)
    }
}

/// The transformer families `compile --transformer` builds, told apart by config.json's `_class_name`.
public enum TransformerFamily: String {
    case flux, qwenImage = "qwen-image"

    /// Reads `DIR/config.json`. A config without `_class_name` is taken as FLUX (what this runtime
    /// always assumed), as is a folder without config.json (FluxCheckpoint.load then says what is
    /// missing, as it always did); any other class is a one-line error naming it.
    public static func of(_ dir: String) throws -> TransformerFamily {
        guard FileManager.default.fileExists(atPath: "\(dir)/config.json") else { return .flux }
        let file = try ConfigFile(path: "\(dir)/config.json")
        guard let raw = file.json["_class_name"], !(raw is NSNull) else { return .flux }
        switch raw as? String {
        case "FluxTransformer2DModel": return .flux
        case QwenImageCheckpoint.className: return .qwenImage
        default:
            throw ArcError("\(file.path): _class_name '\(raw)' is neither FluxTransformer2DModel nor \(QwenImageCheckpoint.className); "
                           + "arcflow compiles those two transformer families")
        }
    }
}
