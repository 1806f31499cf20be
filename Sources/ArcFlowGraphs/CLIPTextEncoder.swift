// CLIP's text encoder (transformers 4.54.1 `CLIPTextModel`) as IR: FLUX's pooled prompt embedding.

import Foundation
import IR
import Runtime

/// The fields of a transformers `CLIPTextConfig` (text_encoder/config.json) the graph uses.
/// `projection_dim` is irrelevant: `CLIPTextModel` has no projection (FLUX uses `pooler_output`).
public struct CLIPTextConfig: Equatable {
    public var vocabSize: Int
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var intermediateSize: Int
    public var maxPositionEmbeddings: Int
    public var hiddenAct: NamedActivation
    public var layerNormEps: Double
    /// 2 selects transformers' legacy pooling (argmax of the ids); anything else, the first
    /// position whose id equals it. Absent from the config: 49407, transformers' CLIPTextConfig
    /// default (with the real 49408-token vocabulary the last id, so both rules agree there).
    public var eosTokenId: Int

    public var headDim: Int { hiddenSize / numAttentionHeads }

    public init(_ c: ConfigFile) throws {
        vocabSize = try c.int("vocab_size")
        hiddenSize = try c.int("hidden_size")
        numHiddenLayers = try c.int("num_hidden_layers")
        numAttentionHeads = try c.int("num_attention_heads")
        intermediateSize = try c.int("intermediate_size")
        maxPositionEmbeddings = try c.int("max_position_embeddings")
        hiddenAct = try NamedActivation.parse(c.has("hidden_act") ? try c.string("hidden_act") : "quick_gelu", key: "hidden_act", path: c.path)
        layerNormEps = c.has("layer_norm_eps") ? try c.double("layer_norm_eps") : 1e-5
        eosTokenId = c.has("eos_token_id") ? try c.int("eos_token_id", allowZero: true) : 49407
        guard hiddenSize % numAttentionHeads == 0 else {
            throw ArcError("\(c.path): hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numAttentionHeads)")
        }
    }
}

/// A transformers CLIPTextModel folder: config.json + model.safetensors (or index + shards).
/// Keys as transformers 4 writes them: `text_model.embeddings.token_embedding.weight`, …;
/// transformers 5 drops the `text_model.` prefix, and such a folder is read under the same keys.
public struct CLIPTextEncoder {
    public var directory: String
    public var config: CLIPTextConfig
    public var store: WeightStore

    public static func load(_ dir: String) throws -> CLIPTextEncoder {
        try requireDirectory(dir, holding: "a CLIPTextModel folder with config.json")
        let config = try CLIPTextConfig(ConfigFile(path: "\(dir)/config.json"))
        var store: WeightStore = try openWeightFolder(dir, stem: "model")
        if store.type(of: "text_model.embeddings.token_embedding.weight") == nil, store.type(of: "embeddings.token_embedding.weight") != nil {
            store = PrefixedKeyStore(store, adding: "text_model.")
        }
        return CLIPTextEncoder(directory: dir, config: config, store: store)
    }
}

/// `CLIPTextModel.forward(input_ids)` without attention mask (as FluxPipeline calls it).
///
/// Input `input_ids` f32 [1, L] (token ids as integer-valued floats; L ≤ max_position_embeddings,
/// FLUX: 77). Outputs `last_hidden_state` [1, L, hidden] (after final_layer_norm) and
/// `pooled_prompt_embeds` [1, hidden], transformers' `pooler_output`.
///
/// Layers: token + position embeddings (gather; positions 0..<L), then per layer the pre-LN
/// residual pair x + out_proj(attn(LN1 x)), x + fc2(act(fc1(LN2 x))) with causal self-attention
/// scaled by 1/√head_dim, then final_layer_norm.
///
/// Pooling picks one row of the final hidden state in-graph, from the ids, exactly as
/// transformers does: with `eos_token_id == 2` (legacy configs, FLUX.1's) the row at argmax(ids)
/// (the first maximum: the first `<|endoftext|>`, the largest id), else the first position whose
/// id equals `eos_token_id` (position 0 when none does, as torch's argmax of all zeros). Both
/// reduce to "first 1 of a 0/1 mask": score = 2L·mask + (L − position) is largest exactly at that
/// position (or at 0 for an all-zero mask) and all scores differ, so `score >= max(score)` is a
/// one-hot row, and one-hot · hidden is the pooled vector. Every value stays a small integer,
/// exact in f32.
public enum CLIPTextEncoderGraph {
    public static func build(config: CLIPTextConfig, weights: WeightStore, tokens: Int = 77) throws -> ComponentProgram {
        let c = config
        guard tokens >= 1, tokens <= c.maxPositionEmbeddings else {
            throw ArcError("CLIP text encoder: \(tokens) tokens, but max_position_embeddings is \(c.maxPositionEmbeddings)")
        }
        let b = GraphBuilder(name: "clip_text_encoder")
        let w = WeightBinder(b, weights)
        let (l, d) = (tokens, c.hiddenSize)
        let ids = b.input("input_ids", .f32([1, l]))
        let table = try w.weight("text_model.embeddings.token_embedding.weight", [c.vocabSize, d])
        let positions = try w.weight("text_model.embeddings.position_embedding.weight", [c.maxPositionEmbeddings, d])
        var h = b.gather(table, ids) + b.slice(positions, axis: 0, 0..<l).reshaped([1, l, d])
        for i in 0..<c.numHiddenLayers {
            let p = "text_model.encoder.layers.\(i)"
            let x = try w.layerNorm(h, "\(p).layer_norm1", width: d, eps: c.layerNormEps)
            func heads(_ m: String) throws -> Value {
                try w.linear(x, "\(p).self_attn.\(m)", out: d, in: d).reshaped([1, l, c.numAttentionHeads, c.headDim])
            }
            let o = b.attention(try heads("q_proj"), try heads("k_proj"), try heads("v_proj"),
                                scale: 1 / Double(c.headDim).squareRoot(), causal: true)
            h = h + (try w.linear(o.reshaped([1, l, d]), "\(p).self_attn.out_proj", out: d, in: d))
            let y = try w.layerNorm(h, "\(p).layer_norm2", width: d, eps: c.layerNormEps)
            let f = c.hiddenAct.apply(try w.linear(y, "\(p).mlp.fc1", out: c.intermediateSize, in: d))
            h = h + (try w.linear(f, "\(p).mlp.fc2", out: d, in: c.intermediateSize))
        }
        h = try w.layerNorm(h, "text_model.final_layer_norm", width: d, eps: c.layerNormEps)
        b.output("last_hidden_state", h)

        let mask: Value
        if c.eosTokenId == 2 {
            mask = b.binary(.greater_equal, ids, b.reduce(.reduce_max, ids, axes: [1], keepDims: true))
        } else {
            // |id − eos| < 0.5 ⇔ id == eos for integer-valued ids.
            mask = b.binary(.greater, b.scalar(0.5), (ids - Float(c.eosTokenId)).apply(.abs))
        }
        let oneHot = firstOneHot(b, mask)
        b.output("pooled_prompt_embeds", b.matmul(oneHot, h.reshaped([l, d])))
        return ComponentProgram(module: Module(try b.finish()), weights: weights)
    }

    /// mask [1, L] of 0/1 → one-hot [1, L] at its first 1 (at 0 if it has none).
    static func firstOneHot(_ b: GraphBuilder, _ mask: Value) -> Value {
        let l = mask.shape[1]
        let rank = b.constant((0..<l).map { Float(l - $0) }, shape: [1, l])
        let score = mask * Float(2 * l) + rank
        return b.binary(.greater_equal, score, b.reduce(.reduce_max, score, axes: [1], keepDims: true))
    }

}
