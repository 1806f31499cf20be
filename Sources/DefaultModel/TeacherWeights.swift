// Every weight of the teacher and text encoder with its shape, and PyTorch-default random init.

import Foundation
import IR
import Runtime

public enum TeacherWeights {
    /// How PyTorch's constructors initialise a tensor.
    public enum Init: Equatable {
        /// nn.Linear weight and bias: U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a = √5).
        case uniform(fanIn: Int)
        /// nn.Embedding: N(0, 1).
        case normal
        /// Norm scales: ones; norm biases: zeros.
        case ones, zeros
    }

    /// (name, shape, init) in a fixed order (the order random numbers are drawn in).
    public static func layout(_ c: TeacherConfig) -> [(name: String, shape: [Int], init: Init)] {
        var out: [(String, [Int], Init)] = []
        func linear(_ m: String, _ o: Int, _ i: Int) {
            out.append(("\(m).weight", [o, i], .uniform(fanIn: i)))
            out.append(("\(m).bias", [o], .uniform(fanIn: i)))
        }
        func layerNorm(_ m: String, _ d: Int) { out.append(("\(m).weight", [d], .ones)); out.append(("\(m).bias", [d], .zeros)) }
        let t = c.text, f = c.flux, d = f.width, dh = f.attentionHeadDim
        out.append(("text_model.embeddings.token_embedding.weight", [t.vocabSize, t.width], .normal))
        out.append(("text_model.embeddings.position_embedding.weight", [t.tokens, t.width], .normal))
        for i in 0..<t.layers {
            let p = "text_model.encoder.layers.\(i)"
            layerNorm("\(p).layer_norm1", t.width)
            for m in ["q_proj", "k_proj", "v_proj", "out_proj"] { linear("\(p).self_attn.\(m)", t.width, t.width) }
            layerNorm("\(p).layer_norm2", t.width)
            linear("\(p).mlp.fc1", t.intermediate, t.width)
            linear("\(p).mlp.fc2", t.width, t.intermediate)
        }
        layerNorm("text_model.final_layer_norm", t.width)

        linear("x_embedder", d, f.inChannels)
        linear("context_embedder", d, f.jointAttentionDim)
        linear("time_text_embed.timestep_embedder.linear_1", d, 256)
        linear("time_text_embed.timestep_embedder.linear_2", d, d)
        linear("time_text_embed.text_embedder.linear_1", d, f.pooledProjectionDim)
        linear("time_text_embed.text_embedder.linear_2", d, d)
        for i in 0..<f.numLayers {
            let p = "transformer_blocks.\(i)"
            linear("\(p).norm1.linear", 6 * d, d)
            linear("\(p).norm1_context.linear", 6 * d, d)
            for m in ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"] { linear("\(p).attn.\(m)", d, d) }
            for m in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] { out.append(("\(p).attn.\(m).weight", [dh], .ones)) }
            for ff in ["ff", "ff_context"] { linear("\(p).\(ff).net.0.proj", 4 * d, d); linear("\(p).\(ff).net.2", d, 4 * d) }
        }
        for i in 0..<f.numSingleLayers {
            let p = "single_transformer_blocks.\(i)"
            linear("\(p).norm.linear", 3 * d, d)
            linear("\(p).proj_mlp", 4 * d, d)
            for m in ["to_q", "to_k", "to_v"] { linear("\(p).attn.\(m)", d, d) }
            for m in ["norm_q", "norm_k"] { out.append(("\(p).attn.\(m).weight", [dh], .ones)) }
            linear("\(p).proj_out", d, 5 * d)
        }
        linear("norm_out.linear", 2 * d, d)
        linear("proj_out", f.inChannels, d)
        return out
    }

    /// Trained weight names: everything in `layout` (RoPE tables are computed, never trained)
    /// except `frozen`.
    public static func trainable(_ c: TeacherConfig) -> [String] {
        let skip = Set(frozen(c))
        return layout(c).map(\.name).filter { !skip.contains($0) }
    }

    /// Weights that do not reach the output, so the loss has no gradient for them: the text-side
    /// output (`to_add_out`, `ff_context`) of a double block whose text rows nothing reads (the
    /// last one, with no single blocks: the shipped teacher). They keep their initial values, as
    /// PyTorch's AdamW skips a parameter whose gradient is None; the exported model still has them.
    public static func frozen(_ c: TeacherConfig) -> [String] {
        let f = c.flux
        return (0..<f.numLayers).filter { !f.textOutputIsRead(block: $0) }.flatMap { i in
            ["attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"].flatMap { m in
                ["weight", "bias"].map { "transformer_blocks.\(i).\(m).\($0)" }
            }
        }
    }

    /// Random initial weights, f32, a pure function of `seed`.
    public static func random(_ c: TeacherConfig, seed: UInt64) -> [String: Tensor] {
        var rng = SeededGenerator(seed: seed)
        var out: [String: Tensor] = [:]
        for (name, shape, kind) in layout(c) {
            let n = shape.reduce(1, *)
            let values: [Float]
            switch kind {
            case .uniform(let fanIn):
                let bound = Float(1 / Double(fanIn).squareRoot())
                values = (0..<n).map { _ in (2 * rng.uniform() - 1) * bound }
            case .normal: values = rng.normals(n)
            case .ones: values = [Float](repeating: 1, count: n)
            case .zeros: values = [Float](repeating: 0, count: n)
            }
            out[name] = Tensor(.f32(shape), values)
        }
        return out
    }

    /// A teacher's weights for a finer patch (`train-default --init-weights … --patch`), a warm
    /// start rather than a copy: the patch-`q` model on a 64-pixel image computes what the
    /// patch-`p` model (p = r·q) computes on that image enlarged r× by pixel repetition, on the
    /// token grid r× wider. So the embedding of a q-patch sums the p-embedding's weights over
    /// each r×r block of pixels (the repeated pixel), and the head averages its r×r output pixels
    /// (x0 of the enlarged image, sampled back). The trunk and text encoder are unchanged; what
    /// is new to it is the finer grid (positions, object sizes in tokens), which training adapts.
    public static func repatched(_ w: [String: Tensor], from p: Int, to q: Int) -> [String: Tensor] {
        precondition(p % q == 0, "a finer patch divides the coarser one")
        let r = p / q
        var out = w
        /// Coarse channel index of fine channel (ch, y, x) and sub-pixel (dy, dx); channels are ch·p² + y·p + x.
        func coarse(_ ch: Int, _ y: Int, _ x: Int, _ dy: Int, _ dx: Int) -> Int { ch * p * p + (r * y + dy) * p + r * x + dx }
        let fine = (0..<3).flatMap { ch in (0..<q).flatMap { y in (0..<q).map { x in (ch, y, x) } } }
        let embed = w["x_embedder.weight"]!, d = embed.shape[0]
        var e = [Float](repeating: 0, count: d * 3 * q * q)
        for o in 0..<d {
            for (i, (ch, y, x)) in fine.enumerated() {
                for dy in 0..<r { for dx in 0..<r { e[o * 3 * q * q + i] += embed.data[o * 3 * p * p + coarse(ch, y, x, dy, dx)] } }
            }
        }
        out["x_embedder.weight"] = Tensor(.f32([d, 3 * q * q]), e)
        let head = w["proj_out.weight"]!, bias = w["proj_out.bias"]!, scale = 1 / Float(r * r)
        var hw = [Float](repeating: 0, count: 3 * q * q * d), hb = [Float](repeating: 0, count: 3 * q * q)
        for (i, (ch, y, x)) in fine.enumerated() {
            for dy in 0..<r {
                for dx in 0..<r {
                    let j = coarse(ch, y, x, dy, dx)
                    hb[i] += scale * bias.data[j]
                    for k in 0..<d { hw[i * d + k] += scale * head.data[j * d + k] }
                }
            }
        }
        out["proj_out.weight"] = Tensor(.f32([3 * q * q, d]), hw)
        out["proj_out.bias"] = Tensor(.f32([3 * q * q]), hb)
        return out
    }

    /// A teacher's weights with more blocks (`train-default --init-weights … --double-blocks N
    /// --single-blocks M`), a warm start that computes exactly what `w` computes: the new blocks
    /// (double ones after `w`'s doubles, single ones after its singles) take `c`'s random init
    /// with their residual gates' modulation rows zeroed (DiT's adaLN-Zero), so each adds
    /// nothing until training opens its gates; the gates' gradients are not zero, their inputs
    /// being the blocks' outputs. A double block whose text output `w`'s model never read (the
    /// last one without single blocks) holds untrained text-side weights: its text gates are
    /// zeroed too, so its text stream passes its input on to the new blocks unchanged.
    public static func deepened(_ w: [String: Tensor], from source: TeacherConfig, to c: TeacherConfig, seed: UInt64) -> [String: Tensor] {
        let s = source.flux, f = c.flux, d = f.width
        precondition(f.numLayers >= s.numLayers && f.numSingleLayers >= s.numSingleLayers && f.width == s.width,
                     "a deeper teacher keeps the width and every block")
        var out = random(c, seed: seed)
        for (name, t) in w { out[name] = t }
        /// Zeroes the modulation rows of chunks `chunks` (each `d` rows) of linear `m`.
        func closeGates(_ m: String, _ chunks: [Int]) {
            for part in ["weight", "bias"] {
                let t = out["\(m).\(part)"]!, row = t.shape.count == 2 ? t.shape[1] : 1
                var v = t.data
                for k in chunks { for i in (k * d * row)..<((k + 1) * d * row) { v[i] = 0 } }
                out["\(m).\(part)"] = Tensor(t.type, v)
            }
        }
        for i in s.numLayers..<f.numLayers {
            closeGates("transformer_blocks.\(i).norm1.linear", [2, 5])
            closeGates("transformer_blocks.\(i).norm1_context.linear", [2, 5])
        }
        for i in 0..<s.numLayers where !s.textOutputIsRead(block: i) && f.textOutputIsRead(block: i) {
            closeGates("transformer_blocks.\(i).norm1_context.linear", [2, 5])
        }
        for i in s.numSingleLayers..<f.numSingleLayers { closeGates("single_transformer_blocks.\(i).norm.linear", [2]) }
        return out
    }

    /// Writes tensors as a safetensors file in `dtype` (f32 for training state, f16 to ship).
    public static func write(_ tensors: [String: Tensor], dtype: DType = .f32, metadata: [String: String] = [:], to path: String) throws {
        let records = tensors.keys.sorted().map { k in
            TensorRecord(name: k, dtype: dtype, shape: tensors[k]!.type.shape, payload: .floats(tensors[k]!.data))
        }
        try writeSafeTensors(records, metadata: metadata, to: path)
    }
}
