// T5's encoder (transformers 4.54.1 `T5EncoderModel`) as IR: FLUX's per-token prompt embeddings.

import Foundation
import IR
import Runtime

/// The fields of a transformers `T5Config` (text_encoder_2/config.json) the encoder uses.
public struct T5EncoderConfig: Equatable {
    /// `feed_forward_proj`: "relu", "gelu", "silu" (one wi) or "gated-…" (wi_0, wi_1). transformers
    /// maps "gated-gelu" to gelu_new (the tanh approximation, our `gelu` op); plain "gelu" is exact.
    public enum FeedForward: Equatable { case plain(NamedActivation), gated(NamedActivation) }

    public var vocabSize: Int
    public var dModel: Int
    public var dKV: Int
    public var dFF: Int
    public var numLayers: Int
    public var numHeads: Int
    public var feedForward: FeedForward
    public var relativeAttentionNumBuckets: Int
    public var relativeAttentionMaxDistance: Int
    public var layerNormEpsilon: Double

    public var inner: Int { numHeads * dKV }

    public init(_ c: ConfigFile) throws {
        vocabSize = try c.int("vocab_size")
        dModel = try c.int("d_model")
        dKV = try c.int("d_kv")
        dFF = try c.int("d_ff")
        numLayers = try c.int("num_layers")
        numHeads = try c.int("num_heads")
        let proj = c.has("feed_forward_proj") ? try c.string("feed_forward_proj") : "relu"
        let parts = proj.split(separator: "-").map(String.init)
        // transformers maps "gated-gelu" to gelu_new (the tanh approximation), a legacy name.
        func act(_ s: String) -> NamedActivation? { s == "gelu" && parts.count == 2 ? .geluNew : NamedActivation(rawValue: s) }
        if parts.count == 1, let a = act(parts[0]) {
            feedForward = .plain(a)
        } else if parts.count == 2, parts[0] == "gated", let a = act(parts[1]) {
            feedForward = .gated(a)
        } else {
            throw ArcError("\(c.path): unknown feed_forward_proj '\(proj)' (expected an activation or gated-<activation>, activations: "
                           + NamedActivation.allCases.map(\.rawValue).joined(separator: ", ") + ")")
        }
        relativeAttentionNumBuckets = try c.int("relative_attention_num_buckets", default: 32)
        relativeAttentionMaxDistance = try c.int("relative_attention_max_distance", default: 128)
        layerNormEpsilon = c.has("layer_norm_epsilon") ? try c.double("layer_norm_epsilon") : 1e-6
        // The bucket table needs a quarter of the buckets as exact distances and log-spaced ones
        // beyond them up to max_distance: fewer than 4 buckets, or a max_distance inside the
        // exact range, has no such table (log of 0, division by a non-positive scale).
        guard relativeAttentionNumBuckets >= 4 else {
            throw ArcError("\(c.path): relative_attention_num_buckets \(relativeAttentionNumBuckets) must be at least 4")
        }
        guard relativeAttentionMaxDistance > relativeAttentionNumBuckets / 4 else {
            throw ArcError("\(c.path): relative_attention_max_distance \(relativeAttentionMaxDistance) must exceed relative_attention_num_buckets / 4 (\(relativeAttentionNumBuckets / 4))")
        }
    }
}

/// A transformers T5EncoderModel folder: config.json + model.safetensors or
/// `model.safetensors.index.json` with its shards. The embedding is `shared.weight`, or
/// `encoder.embed_tokens.weight` when only that copy of the tied pair was saved.
public struct T5Encoder {
    public var directory: String
    public var config: T5EncoderConfig
    public var store: WeightStore

    public static func load(_ dir: String) throws -> T5Encoder {
        try requireDirectory(dir, holding: "a T5EncoderModel folder with config.json")
        let config = try T5EncoderConfig(ConfigFile(path: "\(dir)/config.json"))
        return T5Encoder(directory: dir, config: config, store: try openWeightFolder(dir, stem: "model"))
    }
}

/// `T5EncoderModel.forward(input_ids)[0]` without attention mask (as FluxPipeline calls it).
///
/// Input `input_ids` f32 [1, T]; output `prompt_embeds` [1, T, d_model].
///
/// Per block: x + o(attn(RMS(x))), x + ff(RMS(x)), with T5LayerNorm = RMS norm (no mean, no
/// bias), attention unscaled (scale 1: T5 folds it into the init) plus the relative position bias
/// [H, T, T] of block 0, shared by all blocks. The bias is gathered in-graph from block 0's
/// `relative_attention_bias.weight` [buckets, H] with a bucket table computed here, at build time
/// (a weight named `t5.relative_position_bucket`, f32 [T, T]): only the ids are dynamic.
public enum T5EncoderGraph {
    public static let bucketTableKey = "t5.relative_position_bucket"

    public static func build(config: T5EncoderConfig, weights: WeightStore, tokens: Int) throws -> ComponentProgram {
        let c = config
        guard tokens >= 1 else { throw ArcError("T5 encoder: tokens must be positive") }
        let b = GraphBuilder(name: "t5_encoder")
        let buckets = relativePositionBuckets(tokens: tokens, numBuckets: c.relativeAttentionNumBuckets,
                                              maxDistance: c.relativeAttentionMaxDistance)
        let generated = TensorStore([bucketTableKey: Tensor(.f32([tokens, tokens]), buckets.map(Float.init))],
                                    label: "T5 bucket table")
        let w = WeightBinder(b, LayeredStore(generated, over: weights))
        let (t, d, h) = (tokens, c.dModel, c.numHeads)
        let ids = b.input("input_ids", .f32([1, t]))
        let embKey = weights.type(of: "shared.weight") != nil || weights.type(of: "encoder.embed_tokens.weight") == nil
            ? "shared.weight" : "encoder.embed_tokens.weight"
        var x = b.gather(try w.weight(embKey, [c.vocabSize, d]), ids)

        let table = try w.weight("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", [c.relativeAttentionNumBuckets, h])
        let bias = b.gather(table, try w.weight(bucketTableKey, [t, t])).transposed([2, 0, 1])

        for i in 0..<c.numLayers {
            let p = "encoder.block.\(i).layer"
            let n = b.rmsNorm(x, scale: try w.weight("\(p).0.layer_norm.weight", [d]), eps: c.layerNormEpsilon)
            func heads(_ m: String) throws -> Value {
                try w.linear(n, "\(p).0.SelfAttention.\(m)", out: c.inner, in: d, bias: false).reshaped([1, t, h, c.dKV])
            }
            let o = b.attention(try heads("q"), try heads("k"), try heads("v"), scale: 1, bias: bias)
            x = x + (try w.linear(o.reshaped([1, t, c.inner]), "\(p).0.SelfAttention.o", out: d, in: c.inner, bias: false))
            let m = b.rmsNorm(x, scale: try w.weight("\(p).1.layer_norm.weight", [d]), eps: c.layerNormEpsilon)
            let ff = "\(p).1.DenseReluDense"
            let hidden: Value
            switch c.feedForward {
            case .plain(let a):
                hidden = a.apply(try w.linear(m, "\(ff).wi", out: c.dFF, in: d, bias: false))
            case .gated(let a):
                hidden = a.apply(try w.linear(m, "\(ff).wi_0", out: c.dFF, in: d, bias: false))
                    * (try w.linear(m, "\(ff).wi_1", out: c.dFF, in: d, bias: false))
            }
            x = x + (try w.linear(hidden, "\(ff).wo", out: d, in: c.dFF, bias: false))
        }
        x = b.rmsNorm(x, scale: try w.weight("encoder.final_layer_norm.weight", [d]), eps: c.layerNormEpsilon)
        b.output("prompt_embeds", x)
        return ComponentProgram(module: Module(try b.finish()), weights: LayeredStore(generated, over: weights))
    }

    /// T5's bidirectional relative-position buckets, table[q][k] for relative position k − q:
    /// half the buckets for each sign; distances below a quarter of the buckets get one bucket
    /// each, larger ones share log-spaced buckets up to max_distance (clamped to the last). The
    /// log-spaced index is computed in f32 and truncated, as PyTorch does.
    public static func relativePositionBuckets(tokens: Int, numBuckets: Int, maxDistance: Int) -> [Int] {
        let half = numBuckets / 2, maxExact = half / 2
        var out = [Int](repeating: 0, count: tokens * tokens)
        for q in 0..<tokens {
            for k in 0..<tokens {
                let rel = k - q, n = abs(rel)
                var bucket = rel > 0 ? half : 0
                if n < maxExact {
                    bucket += n
                } else {
                    let ratio = Float(Foundation.log(Float(n) / Float(maxExact)))
                    let scale = Float(Foundation.log(Double(maxDistance) / Double(maxExact)))
                    // Clamped in f32 before the conversion: an Int of an f32 beyond Int.max traps.
                    let large = maxExact + Int(min(ratio / scale * Float(half - maxExact), Float(half)))
                    bucket += min(large, half - 1)
                }
                out[q * tokens + k] = bucket
            }
        }
        return out
    }
}
