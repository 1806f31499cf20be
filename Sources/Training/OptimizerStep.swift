// The optimizer step as IR: loss graph → gradient graph → one train-step graph that also clips,
// applies AdamW, keeps an EMA and skips non-finite steps. It compiles like any other graph.

import Foundation
import IR
import Passes

/// Decoupled AdamW as torch.optim.AdamW (amsgrad off, maximize off).
public struct AdamW: Codable, Equatable {
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var eps = 1e-8
    public var weightDecay = 0.01
    public init(beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
}

/// A weight the step updates; the others stay weights (frozen, bound at load time).
public struct TrainableParameter: Codable, Equatable {
    public var key: String
    /// Multiplies the learning rate (and so the decoupled decay) of this tensor, e.g. 0.1.
    public var lrScale: Double
    /// Keep an EMA of this tensor (inputs/outputs `ema/<key>`).
    public var ema: Bool
    public init(_ key: String, lrScale: Double = 1, ema: Bool = false) { self.key = key; self.lrScale = lrScale; self.ema = ema }
}

public struct OptimizerConfig: Codable, Equatable {
    public var adamW = AdamW()
    /// Global-L2-norm clipping as torch.nn.utils.clip_grad_norm_; nil: no clipping (the norm is
    /// still computed, reported and used for the non-finite skip).
    public var maxGradNorm: Double?
    public init(adamW: AdamW = AdamW(), maxGradNorm: Double? = nil) { self.adamW = adamW; self.maxGradNorm = maxGradNorm }
}

/// Names of the train-step graph's inputs and outputs. A state output carries the name of the
/// input it replaces, so the runtime can feed step t's outputs to step t+1 by name.
public enum TrainNames {
    public static let lr = "lr", step = "step", emaBeta = "ema_beta", loss = "loss", gradNorm = "grad_norm"
    public static func m(_ key: String) -> String { "adam_m/" + key }
    public static func v(_ key: String) -> String { "adam_v/" + key }
    public static func ema(_ key: String) -> String { "ema/" + key }
}

/// A train-step graph and what the runtime needs to know about it.
public struct TrainStepGraph {
    public var graph: Graph
    public var parameters: [TrainableParameter]
    public var optimizer: OptimizerConfig
    /// Inputs fed from batches (every input that is neither state nor a scalar control).
    public var dataInputs: [String]
    /// State tensor names in a fixed order: each parameter, then its m, v and (if kept) EMA.
    public var stateNames: [String] {
        parameters.flatMap { p in [p.key, TrainNames.m(p.key), TrainNames.v(p.key)] + (p.ema ? [TrainNames.ema(p.key)] : []) }
    }
    /// Identifies the step for resume: the printed graph includes every hyper-parameter
    /// compiled into it (β, ε, decay, clip, lr scales) and all shapes.
    public var hash: String { SHA256.hash(Printer.print(graph)) }
}

public typealias GradientFunction = (_ graph: Graph, _ loss: String, _ wrt: [String]) throws -> Graph

public enum OptimizerStep {
    /// Differentiates `lossGraph` (output `loss`) with respect to the parameters and appends the
    /// optimizer. `gradients` is the autodiff entry point (replaceable in tests).
    public static func build(lossGraph: Graph, loss: String, parameters: [TrainableParameter], optimizer: OptimizerConfig,
                             gradients: GradientFunction = { try gradientGraph($0, loss: $1, wrt: $2) }) throws -> TrainStepGraph {
        let grad = try gradients(lossGraph, loss, parameters.map(\.key))
        return try apply(to: grad, parameters: parameters, optimizer: optimizer)
    }

    /// Appends clipping, AdamW, EMA and the non-finite skip to a gradient graph (outputs `loss`
    /// and `grad:<key>` per parameter, each key a weight of that graph).
    public static func apply(to gradients: Graph, parameters: [TrainableParameter], optimizer: OptimizerConfig) throws -> TrainStepGraph {
        guard !parameters.isEmpty else { throw ArcError("nothing to train: no trainable weights given") }
        if let dup = Dictionary(grouping: parameters, by: \.key).first(where: { $0.value.count > 1 }) {
            throw ArcError("trainable weight '\(dup.key)' listed twice")
        }
        let g = gradients
        func output(_ name: String) throws -> ValueID {
            guard let o = g.outputs.first(where: { $0.name == name }) else {
                throw ArcError("gradient graph @\(g.name) has no output '\(name)'")
            }
            return o.value
        }
        let lossID = try output("loss")
        guard g[lossID].type == .f32([]) else { throw ArcError("loss must be f32[], got \(g[lossID].type)") }
        let trainable = Set(parameters.map(\.key))
        for p in parameters {
            guard let n = g.nodes.first(where: { $0.op == .weight && $0.key == p.key }) else {
                throw ArcError("trainable '\(p.key)' is not a weight of @\(g.name) (weights: \(g.nodes.filter { $0.op == .weight }.map { $0.key! }.joined(separator: ", ")))")
            }
            guard n.type.dtype == .f32 else {
                throw ArcError("trainable weight '\(p.key)' is \(n.type); training keeps f32 master weights, convert it first")
            }
        }
        let dataInputs = g.nodes.filter { $0.op == .input }.map { $0.key! }
        let reserved = Set([TrainNames.lr, TrainNames.step, TrainNames.emaBeta]).union(parameters.flatMap { p in
            [p.key, TrainNames.m(p.key), TrainNames.v(p.key), TrainNames.ema(p.key)] })
        if let clash = dataInputs.first(where: { reserved.contains($0) }) {
            throw ArcError("graph input '\(clash)' clashes with a name the train step uses for its state or controls")
        }

        // Copy the gradient graph; trainable weights become inputs (state fed each step).
        let b = GraphBuilder(name: g.name + "_train_step")
        var map = [ValueID](repeating: -1, count: g.nodes.count)
        var paramValue: [String: Value] = [:]
        for (i, n) in g.nodes.enumerated() {
            if n.op == .weight, let k = n.key, trainable.contains(k) {
                if let v = paramValue[k] { map[i] = v.id; continue }
                let v = b.input(k, n.type)
                paramValue[k] = v
                map[i] = v.id
                continue
            }
            map[i] = b.append(n.op, n.operands.map { b.value(map[$0]) }, attributes: n.attributes, type: n.type,
                              key: n.key, constant: n.constant, region: n.region, name: n.name).id
        }
        let loss = b.value(map[lossID])
        var grads: [String: Value] = [:]
        for p in parameters {
            let gv = b.value(map[try output(gradientOutputName(p.key))])
            guard gv.type == paramValue[p.key]!.type else {
                throw ArcError("gradient of '\(p.key)' is \(gv.type), the weight is \(paramValue[p.key]!.type)")
            }
            grads[p.key] = gv
        }

        let lr = b.input(TrainNames.lr, .f32([]))
        let t = b.input(TrainNames.step, .f32([]))
        let emaBeta = parameters.contains(where: \.ema) ? b.input(TrainNames.emaBeta, .f32([])) : nil

        // Global L2 norm over all gradients, as clip_grad_norm_ (its value is reported unclipped).
        var sumSquares: Value?
        for p in parameters {
            let gv = grads[p.key]!
            let s = b.reduce(.reduce_sum, gv * gv, axes: Array(0..<gv.rank))
            sumSquares = sumSquares.map { $0 + s } ?? s
        }
        let norm = b.unary(.sqrt, sumSquares!)
        /// `greatestFinite ≥ norm` is 0 for NaN (every comparison with NaN is false) and for +∞:
        /// one comparison covers both ways a step can go bad. (The C backend never uses -ffast-math.)
        let finite = b.binary(.greater_equal, b.scalar(Float.greatestFiniteMagnitude), norm)
        let clip: Value? = optimizer.maxGradNorm.map { maxNorm in
            b.binary(.min, b.scalar(1), b.scalar(Float(maxNorm)) / (norm + 1e-6))
        }

        let a = optimizer.adamW
        /// Bias corrections 1 − βᵗ as −expm1(t·ln β): ln β is taken in f64, and expm1 keeps full
        /// f32 precision where 1 − βᵗ is tiny (β₂ = 0.999 at t = 1), which pow-then-subtract loses.
        func biasCorrection(_ beta: Double) -> Value { -(t * Float(log(beta))).apply(.expm1) }
        let bc1 = biasCorrection(a.beta1)
        let bc2Sqrt = b.unary(.sqrt, biasCorrection(a.beta2))

        for p in parameters {
            let param = paramValue[p.key]!
            var gv = grads[p.key]!
            if let clip { gv = gv * clip }
            let m = b.input(TrainNames.m(p.key), param.type), v = b.input(TrainNames.v(p.key), param.type)
            let lrK = p.lrScale == 1 ? lr : lr * Float(p.lrScale)
            // Decoupled decay first, then Adam, in torch's order of operations.
            let decayed = a.weightDecay == 0 ? param : param * (1 - lrK * Float(a.weightDecay))
            let m1 = m + (gv - m) * Float(1 - a.beta1)                       // exp_avg.lerp_(g, 1 − β₁)
            let v1 = v * Float(a.beta2) + (gv * gv) * Float(1 - a.beta2)     // exp_avg_sq·β₂ + (1 − β₂)·g²
            let stepSize = lrK / bc1
            let denom = b.unary(.sqrt, v1) / bc2Sqrt + Float(a.eps)
            let p1 = decayed - stepSize * (m1 / denom)
            b.output(p.key, b.select(finite, p1, param))
            b.output(TrainNames.m(p.key), b.select(finite, m1, m))
            b.output(TrainNames.v(p.key), b.select(finite, v1, v))
            if p.ema, let emaBeta {
                let e = b.input(TrainNames.ema(p.key), param.type)
                let e1 = e + (p1 - e) * (1 - emaBeta)                         // ema.lerp_(p, 1 − β)
                b.output(TrainNames.ema(p.key), b.select(finite, e1, e))
            }
        }
        var graph = try b.finish()
        // loss and grad_norm first: the driver reads them by position as well as by name.
        let extra = [GraphOutput(name: TrainNames.loss, value: loss.id), GraphOutput(name: TrainNames.gradNorm, value: norm.id)]
        graph.outputs = extra + graph.outputs
        try Verifier.verify(graph)
        return TrainStepGraph(graph: graph, parameters: parameters, optimizer: optimizer, dataInputs: dataInputs)
    }
}
