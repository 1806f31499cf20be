// The decoder half of diffusers 0.35.1 `AutoencoderKL` as IR: FLUX latents → RGB.

import Foundation
import IR
import Runtime

/// The fields of a diffusers `AutoencoderKL` config (vae/config.json) the decoder uses.
public struct VAEConfig: Equatable {
    public var latentChannels: Int
    public var outChannels: Int
    /// The resnets' activation (`act_fn`, default silu); the one after `conv_norm_out` is SiLU
    /// whatever it says (diffusers' Decoder fixes `conv_act`).
    public var actFn: NamedActivation
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var normNumGroups: Int
    public var usePostQuantConv: Bool
    public var midBlockAddAttention: Bool
    public var scalingFactor: Double
    /// null in SD-style configs: no shift.
    public var shiftFactor: Double

    public init(_ c: ConfigFile) throws {
        if c.has("_class_name") {
            let name = try c.string("_class_name")
            guard name == "AutoencoderKL" else { throw ArcError("\(c.path): _class_name '\(name)' is not AutoencoderKL") }
        }
        latentChannels = try c.int("latent_channels")
        outChannels = try c.int("out_channels", default: 3)
        blockOutChannels = try c.ints("block_out_channels")
        layersPerBlock = try c.int("layers_per_block")
        normNumGroups = try c.int("norm_num_groups", default: 32)
        actFn = try NamedActivation.parse(c.has("act_fn") ? try c.string("act_fn") : "silu", key: "act_fn", path: c.path)
        usePostQuantConv = try c.bool("use_post_quant_conv", default: true)
        midBlockAddAttention = try c.bool("mid_block_add_attention", default: true)
        scalingFactor = try c.double("scaling_factor")
        guard scalingFactor != 0 else { throw ArcError("\(c.path): 'scaling_factor' must not be 0") }
        shiftFactor = try c.optionalDouble("shift_factor") ?? 0
        if let types = c.json["up_block_types"] as? [String], let bad = types.first(where: { $0 != "UpDecoderBlock2D" }) {
            throw ArcError("\(c.path): up_block_types entry '\(bad)' is not supported (UpDecoderBlock2D)")
        }
        for ch in blockOutChannels where ch % normNumGroups != 0 {
            throw ArcError("\(c.path): block_out_channels \(blockOutChannels) are not all multiples of norm_num_groups \(normNumGroups)")
        }
        if c.has("norm_type"), try c.string("norm_type") != "group" {
            throw ArcError("\(c.path): norm_type '\(try c.string("norm_type"))' is not supported (group)")
        }
    }

    /// Pixels per latent along each side: 2^(levels − 1).
    public var upscale: Int { 1 << (blockOutChannels.count - 1) }
}

/// A diffusers AutoencoderKL folder: config.json + diffusion_pytorch_model.safetensors (or
/// shards). Only the `decoder.*` and `post_quant_conv.*` tensors are read.
public struct VAEDecoder {
    public var directory: String
    public var config: VAEConfig
    public var store: WeightStore

    public static func load(_ dir: String) throws -> VAEDecoder {
        try requireDirectory(dir, holding: "an AutoencoderKL folder with config.json")
        let config = try VAEConfig(ConfigFile(path: "\(dir)/config.json"))
        return VAEDecoder(directory: dir, config: config, store: try openWeightFolder(dir, stem: "diffusion_pytorch_model"))
    }
}

/// FluxPipeline's decode: `vae.decode(latents / scaling_factor + shift_factor)`.
///
/// Input `latents` f32 [1, latent_channels, h, w] in the sampler's space (the graph un-scales
/// them first); output `image` f32 [1, out_channels, h·2^(n−1), w·2^(n−1)] as decoded, nominally
/// in [−1, 1] and NOT clamped: `rgb8` does diffusers' postprocess in Swift (one place, so a
/// compiled graph and the interpreter share it).
///
/// Structure (diffusers `Decoder`): [post_quant_conv 1×1] → conv_in 3×3 → mid block (ResnetBlock2D,
/// [single-head self-attention over the h·w positions], ResnetBlock2D) → up blocks over
/// reversed(block_out_channels), each layers_per_block + 1 ResnetBlock2D and, except the last,
/// nearest ×2 upsampling + 3×3 conv → GroupNorm → SiLU → conv_out 3×3 (the resnets' activation is
/// `act_fn`). All GroupNorms use
/// norm_num_groups and eps 1e-6; every output_scale_factor / rescale_output_factor is 1.
public enum VAEDecoderGraph {
    static let eps = 1e-6

    public static func build(config: VAEConfig, weights: WeightStore, latentHeight: Int, latentWidth: Int) throws -> ComponentProgram {
        let c = config
        guard latentHeight >= 1, latentWidth >= 1 else { throw ArcError("VAE decoder: latent size must be positive") }
        let b = GraphBuilder(name: "vae_decoder")
        let w = WeightBinder(b, weights)
        let z = b.input("latents", .f32([1, c.latentChannels, latentHeight, latentWidth]))
        var x = z / Float(c.scalingFactor) + Float(c.shiftFactor)
        if c.usePostQuantConv { x = try w.conv(x, "post_quant_conv", out: c.latentChannels, kernel: 1) }
        let top = c.blockOutChannels.last!
        x = try w.conv(x, "decoder.conv_in", out: top, kernel: 3)
        x = try resnet(w, x, "decoder.mid_block.resnets.0", out: top, groups: c.normNumGroups, act: c.actFn)
        if c.midBlockAddAttention { x = try attention(w, x, "decoder.mid_block.attentions.0", groups: c.normNumGroups) }
        x = try resnet(w, x, "decoder.mid_block.resnets.1", out: top, groups: c.normNumGroups, act: c.actFn)
        let reversed = Array(c.blockOutChannels.reversed())
        for (i, out) in reversed.enumerated() {
            for j in 0...c.layersPerBlock {
                x = try resnet(w, x, "decoder.up_blocks.\(i).resnets.\(j)", out: out, groups: c.normNumGroups, act: c.actFn)
            }
            if i < reversed.count - 1 {
                x = try w.conv(upsampleNearest2x(x), "decoder.up_blocks.\(i).upsamplers.0.conv", out: out, kernel: 3)
            }
        }
        x = try w.groupNorm(x, "decoder.conv_norm_out", groups: c.normNumGroups, eps: eps).apply(.silu)
        x = try w.conv(x, "decoder.conv_out", out: c.outChannels, kernel: 3)
        b.output("image", x)
        return ComponentProgram(module: Module(try b.finish()), weights: weights)
    }

    /// ResnetBlock2D without time embedding: x' + conv2(act(GN2(conv1(act(GN1 x))))), x' = x or
    /// its 1×1 `conv_shortcut` when the channel count changes; act is the config's `act_fn`.
    static func resnet(_ w: WeightBinder, _ x: Value, _ p: String, out: Int, groups: Int, act: NamedActivation) throws -> Value {
        var h = act.apply(try w.groupNorm(x, "\(p).norm1", groups: groups, eps: eps))
        h = try w.conv(h, "\(p).conv1", out: out, kernel: 3)
        h = act.apply(try w.groupNorm(h, "\(p).norm2", groups: groups, eps: eps))
        h = try w.conv(h, "\(p).conv2", out: out, kernel: 3)
        let shortcut = x.shape[1] == out ? x : try w.conv(x, "\(p).conv_shortcut", out: out, kernel: 1)
        return shortcut + h
    }

    /// The mid-block Attention (one head of size C): GroupNorm, then q/k/v/out linear layers over
    /// the h·w positions as tokens, scale 1/√C, residual added.
    static func attention(_ w: WeightBinder, _ x: Value, _ p: String, groups: Int) throws -> Value {
        let (c, hh, ww) = (x.shape[1], x.shape[2], x.shape[3])
        let n = hh * ww
        let t = try w.groupNorm(x, "\(p).group_norm", groups: groups, eps: eps).reshaped([1, c, n]).transposed([0, 2, 1])
        func proj(_ m: String) throws -> Value { try w.linear(t, "\(p).\(m)", out: c, in: c).reshaped([1, n, 1, c]) }
        let o = w.b.attention(try proj("to_q"), try proj("to_k"), try proj("to_v"), scale: 1 / Double(c).squareRoot())
        let y = try w.linear(o.reshaped([1, n, c]), "\(p).to_out.0", out: c, in: c)
        return x + y.transposed([0, 2, 1]).reshaped([1, c, hh, ww])
    }

    /// Nearest-neighbour ×2 (F.interpolate scale_factor 2): each pixel repeated into a 2×2 block,
    /// as reshape → broadcast → reshape.
    static func upsampleNearest2x(_ x: Value) -> Value {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        return x.reshaped([n, c, h, 1, w, 1]).broadcast(to: [n, c, h, 2, w, 2]).reshaped([n, c, 2 * h, 2 * w])
    }

    /// diffusers' postprocess + numpy_to_pil: v = clamp(x/2 + 0.5, 0, 1), round(255·v) (half to
    /// even, as numpy), in f32. `image` [1, 3, H, W] → H·W·3 bytes, row-major RGB (PNG order).
    public static func rgb8(_ image: Tensor) -> [UInt8] {
        let (c, h, w) = (image.shape[1], image.shape[2], image.shape[3])
        var out = [UInt8](repeating: 0, count: h * w * c)
        for ch in 0..<c {
            for p in 0..<(h * w) {
                let v = Swift.min(Swift.max(image.data[ch * h * w + p] / 2 + 0.5, 0), 1)
                out[p * c + ch] = UInt8((v * 255).rounded(.toNearestOrEven))
            }
        }
        return out
    }
}
