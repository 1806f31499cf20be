// Example graphs shipped in examples/: an MLP, an MLP with a regression loss (for training) and a
// full transformer block.

import Foundation
import IR
import Runtime

public enum ExampleGraphs {
    /// Two linears with a GELU between and a log-softmax on top.
    public static func mlp(batch: Int = 8, inputs: Int = 64, hidden: Int = 256, classes: Int = 10) throws -> Graph {
        let b = GraphBuilder(name: "mlp")
        let x = b.input("x", .f32([batch, inputs]))
        let h = b.linear(x, weight: b.weight("fc1.weight", .f32([hidden, inputs])), bias: b.weight("fc1.bias", .f32([hidden])))
        let y = b.linear(h.apply(.gelu), weight: b.weight("fc2.weight", .f32([classes, hidden])), bias: b.weight("fc2.bias", .f32([classes])))
        b.output("y", b.logSoftmax(y, axis: -1))
        return try b.finish()
    }

    /// A regression MLP with its loss, for training: `loss` = mean((fc2(gelu(fc1(x))) − target)²),
    /// an f32[] scalar. `mlpRegressionData` makes a learnable task for it.
    public static func mlpRegression(batch: Int = 32, inputs: Int = 8, hidden: Int = 64, outputs: Int = 4) throws -> Graph {
        let b = GraphBuilder(name: "mlp_regression")
        let x = b.input("x", .f32([batch, inputs]))
        let target = b.input("target", .f32([batch, outputs]))
        let h = b.linear(x, weight: b.weight("fc1.weight", .f32([hidden, inputs])), bias: b.weight("fc1.bias", .f32([hidden])))
        let y = b.linear(h.apply(.gelu), weight: b.weight("fc2.weight", .f32([outputs, hidden])), bias: b.weight("fc2.bias", .f32([outputs])))
        let d = y - target
        b.output("loss", b.reduce(.reduce_mean, d * d, axes: [0, 1]))
        return try b.finish()
    }

    /// `rows` samples of y = sin(x·W) with x ~ N(0, 1) [rows, inputs] and a fixed W ~ N(0, 1/inputs)
    /// [inputs, outputs], both from `seed`: tensors "x" and "target" for `mlpRegression`.
    public static func mlpRegressionData(rows: Int, inputs: Int = 8, outputs: Int = 4, seed: UInt64 = 0) -> [String: Tensor] {
        var rng = SeededGenerator(seed: seed)
        let w = rng.normals(inputs * outputs).map { $0 / Float(inputs).squareRoot() }
        let x = rng.normals(rows * inputs)
        var y = [Float](repeating: 0, count: rows * outputs)
        for r in 0..<rows {
            for o in 0..<outputs {
                var acc: Float = 0
                for i in 0..<inputs { acc += x[r * inputs + i] * w[i * outputs + o] }
                y[r * outputs + o] = sin(acc)
            }
        }
        return ["x": Tensor(.f32([rows, inputs]), x), "target": Tensor(.f32([rows, outputs]), y)]
    }

    /// A pre-norm transformer block as in diffusion transformers: LayerNorm → Q/K/V projections
    /// → per-head RMSNorm on Q and K → attention → output projection → residual; LayerNorm →
    /// MLP with GELU (tanh) → residual.
    /// With `loss`, also an input "target" like y and an output "loss" = mean((y − target)²).
    public static func transformerBlock(tokens: Int = 1024, width: Int = 768, heads: Int = 12, mlpRatio: Int = 4, loss: Bool = false) throws -> Graph {
        guard heads > 0, width % heads == 0 else { throw ArcError("width \(width) is not a multiple of heads \(heads)") }
        let dh = width / heads
        let b = GraphBuilder(name: "transformer_block")
        let x = b.input("x", .f32([1, tokens, width]))
        func linear(_ v: Value, _ name: String, _ out: Int, _ inp: Int) -> Value {
            b.linear(v, weight: b.weight("\(name).weight", .f32([out, inp])), bias: b.weight("\(name).bias", .f32([out])))
        }
        func layerNorm(_ v: Value, _ name: String) -> Value {
            b.layerNorm(v, scale: b.weight("\(name).weight", .f32([width])), bias: b.weight("\(name).bias", .f32([width])), eps: 1e-6)
        }
        let h = layerNorm(x, "norm1")
        func heads4(_ v: Value) -> Value { v.reshaped([1, tokens, heads, dh]) }
        let q = b.rmsNorm(heads4(linear(h, "attn.to_q", width, width)), scale: b.weight("attn.norm_q.weight", .f32([dh])), eps: 1e-6)
        let k = b.rmsNorm(heads4(linear(h, "attn.to_k", width, width)), scale: b.weight("attn.norm_k.weight", .f32([dh])), eps: 1e-6)
        let v = heads4(linear(h, "attn.to_v", width, width))
        let a = b.attention(q, k, v, scale: 1 / Double(dh).squareRoot()).reshaped([1, tokens, width])
        let x1 = x + linear(a, "attn.to_out", width, width)
        let m = linear(linear(layerNorm(x1, "norm2"), "mlp.fc1", mlpRatio * width, width).apply(.gelu), "mlp.fc2", width, mlpRatio * width)
        let y = x1 + m
        b.output("y", y)
        if loss {
            let d = y - b.input("target", y.type)
            b.output("loss", b.reduce(.reduce_mean, d * d, axes: [0, 1, 2]))
        }
        return try b.finish()
    }
}
