// The ArcFlow student of the embedded default model: the teacher + LoRA + the ArcFlow head +
// a dense norm_out, as an ArcFlow adapter (reference §2, §5): its layout, initialisation and
// files, and the weight store its graphs read.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import Training

/// What is distilled: the teacher's sizes plus the head's K and the LoRA rank.
///
/// Rank 32 (α = r ⇒ scale 1): the adapted MLPs are 192 → 768 → 192, so r = 32 is 1/6 of the
/// narrow side, the same proportion as the reference's r = 256 against FLUX's 3072 (1/12) within
/// a factor 2, and the LoRA stays a small share of the teacher (about 0.45 M of 6.5 M
/// parameters) as ArcFlow's < 5% intends; smaller ranks were not measured.
public struct StudentConfig: Equatable {
    public var teacher: TeacherConfig
    /// K: mixture components of the ArcFlow head (1: the linear baseline, no γ layer).
    public var components: Int
    public var rank: Int
    /// σ of the per-(component, channel) noise added to the tiled teacher bias (§2.4).
    public var biasNoise = 0.05
    public var seed: UInt64 = 0
    /// LoRA on the attention projections too (`--lora-targets mlp+attention`): an experiment
    /// beyond the reference's targets, see `Student.loraTargets`.
    public var attentionLoRA = false
    /// The name of the target set in `--lora-targets` and in a run's state metadata.
    public var loraTargetsName: String { attentionLoRA ? "mlp+attention" : "mlp" }
    /// `attentionLoRA` for a target set's name; nil for a name that is neither.
    public static func attentionLoRA(named name: String) -> Bool? { ["mlp": false, "mlp+attention": true][name] }

    public init(teacher: TeacherConfig, components: Int, rank: Int = 32) {
        self.teacher = teacher; self.components = components; self.rank = rank
    }

    var flux: FluxConfig { teacher.flux }
    /// Packed channels per token (4C: 192 = 48·4 for the standard teacher).
    var channels: Int { flux.inChannels }
}

public enum Student {
    /// The adapted linears (module, out, in): FLUX's targets (§5.1) where they exist here, the
    /// last double block's `ff_context` excepted when there are no single blocks: its text output
    /// then reaches nothing (as Qwen-Image's LoRA skips block 59).
    ///
    /// `attention` adds every double block's attention projections (q, k, v and the output, both
    /// streams; the last block's `to_add_out` excepted, as `ff_context`). FLUX's targets adapt
    /// the attention output of its 38 single blocks through their `proj_out`; a model of double
    /// blocks only has no such module, so its attention stays frozen under the reference's targets.
    public static func loraTargets(_ f: FluxConfig, attention: Bool = false) -> [(module: String, out: Int, in: Int)] {
        let d = f.width
        var out: [(String, Int, Int)] = []
        for i in 0..<f.numLayers {
            let textOut = f.textOutputIsRead(block: i)
            var streams = ["ff"]
            if textOut { streams.append("ff_context") }
            for s in streams {
                out.append(("transformer_blocks.\(i).\(s).net.0.proj", 4 * d, d))
                out.append(("transformer_blocks.\(i).\(s).net.2", d, 4 * d))
            }
            guard attention else { continue }
            for m in ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"] + (textOut ? ["to_add_out"] : []) {
                out.append(("transformer_blocks.\(i).attn.\(m)", d, d))
            }
        }
        for i in 0..<f.numSingleLayers {
            out.append(("single_transformer_blocks.\(i).proj_mlp", 4 * d, d))
            out.append(("single_transformer_blocks.\(i).proj_out", d, 5 * d))
        }
        out.append(("time_text_embed.timestep_embedder.linear_1", d, 256))
        out.append(("time_text_embed.timestep_embedder.linear_2", d, d))
        return out
    }

    /// Every adapter tensor (key, shape) in the order random numbers are drawn: LoRA pairs, then
    /// norm_out, then the head. K = 1 has no `proj_out_loggamma` (its 0 rows are left out).
    public static func layout(_ s: StudentConfig) -> [(key: String, shape: [Int])] {
        let d = s.flux.width, k = s.components, r = s.rank
        var out: [(String, [Int])] = []
        for t in loraTargets(s.flux, attention: s.attentionLoRA) {
            out.append(("\(t.module).lora_A.weight", [r, t.in]))
            out.append(("\(t.module).lora_B.weight", [t.out, r]))
        }
        out.append(("norm_out.linear.weight", [2 * d, d]))
        out.append(("norm_out.linear.bias", [2 * d]))
        out.append(("proj_out_means.weight", [k * s.channels, d]))
        out.append(("proj_out_means.bias", [k * s.channels]))
        out.append(("proj_out_logweights.weight", [k * 4, d]))
        out.append(("proj_out_logweights.bias", [k * 4]))
        if k > 1 {
            out.append(("proj_out_loggamma.weight", [(k - 1) * 4, d]))
            out.append(("proj_out_loggamma.bias", [(k - 1) * 4]))
        }
        return out
    }

    /// The initial rates (§2.4): K − 1 log-spaced values from 0.2 to 4.0 whose logarithms are
    /// the bias. The reference uses the bias directly as the rate, so the initial rates are
    /// ln 0.2 … ln 4 (decaying and growing modes), not 0.2 … 4; we keep that quirk.
    public static func initialRateBias(_ k: Int) -> [Float] {
        let m = k - 1
        return (0..<m).map { i in
            let g = m == 1 ? 0.2 : 0.2 * Foundation.pow(20.0, Double(i) / Double(m - 1))
            return Float(Foundation.log(g))
        }
    }

    /// The initial adapter from the teacher's weights (§2.4 adapted to x0 prediction):
    /// - LoRA A ~ N(0, (1/r)²), B = 0: no change at init;
    /// - norm_out copied (then trained densely);
    /// - `proj_out_means` = the teacher's `proj_out` tiled K times (row k·4C + cp = teacher row
    ///   cp), bias plus N(0, biasNoise²) drawn per (k, channel c) and shared by the 4 sub-positions
    ///   of c (packed cp = c·4 + j, noise index k·C + cp/4): every component's x0 mean starts at
    ///   the teacher's x0, so every velocity mean at the teacher's velocity (up to the noise);
    /// - log-weights 0 (uniform), rates as `initialRateBias`, repeated for the 4 sub-positions.
    public static func initialAdapter(_ s: StudentConfig, teacher: WeightStore) throws -> [String: Tensor] {
        let d = s.flux.width, k = s.components, c = s.channels
        var rng = SeededGenerator(seed: s.seed)
        var out: [String: Tensor] = [:]
        func teacherTensor(_ key: String, _ shape: [Int]) throws -> Tensor {
            guard let t = teacher.type(of: key) else { throw ArcError("\(teacher.label): missing teacher tensor '\(key)' (expected \(shape))") }
            guard t.shape == shape else { throw ArcError("\(teacher.label): '\(key)' is \(t.shape), expected \(shape) for this teacher config") }
            return Tensor(.f32(shape), try teacher.tensor(key).data)
        }
        for (key, shape) in layout(s) where key.contains(".lora_") {
            let n = shape.reduce(1, *)
            out[key] = key.hasSuffix("lora_A.weight")
                ? Tensor(.f32(shape), rng.normals(n).map { $0 / Float(s.rank) })
                : Tensor(.f32(shape), [Float](repeating: 0, count: n))
        }
        out["norm_out.linear.weight"] = try teacherTensor("norm_out.linear.weight", [2 * d, d])
        out["norm_out.linear.bias"] = try teacherTensor("norm_out.linear.bias", [2 * d])
        let w = try teacherTensor("proj_out.weight", [c, d]).data, bias = try teacherTensor("proj_out.bias", [c]).data
        let noise = rng.normals(k * c / 4).map { $0 * Float(s.biasNoise) }
        out["proj_out_means.weight"] = Tensor(.f32([k * c, d]), (0..<k).flatMap { _ in w })
        out["proj_out_means.bias"] = Tensor(.f32([k * c]), (0..<(k * c)).map { f in bias[f % c] + noise[f / 4] })
        out["proj_out_logweights.weight"] = Tensor(.f32([k * 4, d]), [Float](repeating: 0, count: k * 4 * d))
        out["proj_out_logweights.bias"] = Tensor(.f32([k * 4]), [Float](repeating: 0, count: k * 4))
        if k > 1 {
            let rates = initialRateBias(k)
            out["proj_out_loggamma.weight"] = Tensor(.f32([(k - 1) * 4, d]), [Float](repeating: 0, count: (k - 1) * 4 * d))
            out["proj_out_loggamma.bias"] = Tensor(.f32([(k - 1) * 4]), (0..<((k - 1) * 4)).map { rates[$0 / 4] })
        }
        return out
    }

    /// The graph keys of the trained tensors (`adapter:<key>`), with the reference's lr ×0.1 on
    /// the rates. K = 1 trains no log-weights: log-softmax over one component is 0 whatever the
    /// layer says (it is still written to the adapter, as zeros, for the file format).
    public static func trainable(_ s: StudentConfig) -> [TrainableParameter] {
        layout(s).compactMap { key, _ in
            if s.components == 1 && key.hasPrefix("proj_out_logweights.") { return nil }
            return TrainableParameter("adapter:" + key, lrScale: key.hasPrefix("proj_out_loggamma.") ? 0.1 : 1, ema: true)
        }
    }

    /// The adapter's `config.json` (§5.2) plus our keys: the shift and timestep ratio the student
    /// was distilled at (its knots) and that its head predicts x0 means (velocity means are
    /// (x_src − m_k)/σ_src).
    public static func configJSON(_ s: StudentConfig, shift: Double, timestepRatio: Double = 1) -> String {
        let f = s.flux
        let fields: [(String, String)] = [
            ("_class_name", "\"\(ArcFlowAdapter.className)\""),
            ("num_gaussians", "\(s.components)"), ("logweights_channels", "4"),
            ("in_channels", "\(f.inChannels)"), ("out_channels", "\(f.inChannels)"), ("patch_size", "1"),
            ("num_layers", "\(f.numLayers)"), ("num_single_layers", "\(f.numSingleLayers)"),
            ("attention_head_dim", "\(f.attentionHeadDim)"), ("num_attention_heads", "\(f.numAttentionHeads)"),
            ("joint_attention_dim", "\(f.jointAttentionDim)"), ("pooled_projection_dim", "\(f.pooledProjectionDim)"),
            ("guidance_embeds", "false"), ("axes_dims_rope", "[\(f.axesDimsRope.map(String.init).joined(separator: ", "))]"),
            ("arcflow_shift", "\(shift)"), ("arcflow_timestep_ratio", "\(timestepRatio)"), ("arcflow_prediction", "\"x0\""),
        ]
        return "{\n" + fields.map { "  \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}\n"
    }

    /// Writes an adapter folder: `diffusion_pytorch_model.safetensors` (metadata policy_config
    /// {"type": "ArcFlow"}) and `config.json`, each atomically. f32 for the training init, f16
    /// to ship (as the reference's checkpoints).
    public static func writeAdapter(_ tensors: [String: Tensor], _ s: StudentConfig, shift: Double, timestepRatio: Double = 1, dtype: DType,
                                    to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (key, shape) in layout(s) {
            guard let t = tensors[key] else { throw ArcError("adapter export: missing tensor '\(key)' (expected \(shape))") }
            guard t.type.shape == shape else { throw ArcError("adapter export: '\(key)' is \(t.type.shape), expected \(shape)") }
        }
        let records = layout(s).map { key, shape in TensorRecord(name: key, dtype: dtype, shape: shape, payload: .floats(tensors[key]!.data)) }
        try writeSafeTensors(records, metadata: ["policy_config": "{\"type\": \"ArcFlow\"}"], to: "\(dir)/diffusion_pytorch_model.safetensors")
        try writeAtomically(configJSON(s, shift: shift, timestepRatio: timestepRatio), to: "\(dir)/config.json")
    }
}

/// The weights a student or teacher graph names: `adapter:<key>` from the adapter, the RoPE
/// tables computed, everything else (teacher, text encoder) from the teacher's file.
final class StudentWeights: WeightStore {
    let teacher: WeightStore, adapter: WeightStore?
    init(teacher: WeightStore, adapter: WeightStore?) { self.teacher = teacher; self.adapter = adapter }
    var label: String { teacher.label }
    var names: [String] { teacher.names + (adapter?.names.map { "adapter:" + $0 } ?? []) }
    func type(of name: String) -> TensorType? {
        if name.hasPrefix("adapter:") { return adapter?.type(of: String(name.dropFirst(8))) }
        return teacher.type(of: name)
    }
    func raw(_ name: String) throws -> UnsafeRawPointer {
        if name.hasPrefix("adapter:") {
            guard let a = adapter else { throw ArcError("no adapter for '\(name)'") }
            return try a.raw(String(name.dropFirst(8)))
        }
        return try teacher.raw(name)
    }
}
