// The reference interpreter: the definition of every op's meaning, and the oracle that every
// generated kernel is tested against. Plain Swift; accumulations and transcendental functions
// in f64, results rounded to f32 (or to the storage type of a convert).

/// A host tensor: a type and its elements as f32 (bf16/f16 tensors hold exactly representable values).
public struct Tensor: Equatable {
    public var type: TensorType
    public var data: [Float]

    public init(_ type: TensorType, _ data: [Float]) {
        precondition(data.count == type.count, "tensor data has \(data.count) elements for \(type)")
        self.type = type
        self.data = data
    }

    public init(zeros type: TensorType) { self.init(type, [Float](repeating: 0, count: type.count)) }
    public var shape: [Int] { type.shape }
    public var rank: Int { type.rank }
}

public enum Interpreter {
    public typealias WeightSource = (_ key: String, _ type: TensorType) throws -> Tensor

    /// Runs a module: the prologue (if any) first, its outputs then serve as weights of `@main`.
    public static func run(_ module: Module, inputs: [String: Tensor], weights: @escaping WeightSource) throws -> [String: Tensor] {
        var source = weights
        if let prologue = module.prologue {
            let lifted = try run(prologue, inputs: [:], weights: weights)
            source = { key, type in try lifted[key] ?? weights(key, type) }
        }
        return try run(module.main, inputs: inputs, weights: source)
    }

    public static func run(_ graph: Graph, inputs: [String: Tensor], weights: WeightSource) throws -> [String: Tensor] {
        var values = [Tensor?](repeating: nil, count: graph.nodes.count)
        var remaining = graph.useCounts()
        for (i, node) in graph.nodes.enumerated() {
            let v: Tensor
            switch node.op {
            case .input:
                guard let t = inputs[node.key!] else { throw ArcError("missing input '\(node.key!)' (\(node.type))") }
                guard t.type == node.type else { throw ArcError("input '\(node.key!)' is \(t.type), expected \(node.type)") }
                v = t
            case .weight:
                let t = try weights(node.key!, node.type)
                guard t.type == node.type else { throw ArcError("weight '\(node.key!)' is \(t.type), expected \(node.type)") }
                // quantize-weights: the weight stands for its int8 codes times their scales.
                if case .string("int8")? = node.attributes["quantize"], let axis = node.int("quant_axis"), let group = node.int("quant_group") {
                    v = int8Dequantized(t, axis: axis, group: group)
                } else {
                    v = t
                }
            default:
                v = try evaluate(node, node.operands.map { values[$0]! })
            }
            values[i] = v
            for o in node.operands {
                remaining[o] -= 1
                if remaining[o] == 0 { values[o] = nil }
            }
        }
        var out: [String: Tensor] = [:]
        for o in graph.outputs { out[o.name] = values[o.value]! }
        return out
    }

    /// Evaluates one non-source node on concrete operands.
    public static func evaluate(_ node: Node, _ args: [Tensor]) throws -> Tensor {
        let type = node.type
        switch node.op {
        case .input, .weight:
            throw ArcError("sources are bound by run()")
        case .constant:
            switch node.constant! {
            case .splat(let v): return Tensor(type, [Float](repeating: v, count: type.count))
            case .dense(let d): return Tensor(type, d)
            }
        case .convert:
            return Tensor(type, args[0].data.map { roundToStorage($0, type.dtype) })
        case _ where node.op.isElementwiseUnary:
            let f = unaryFunction(node.op)
            return Tensor(type, args[0].data.map { Float(f(Double($0))) })
        case _ where node.op.isElementwiseBinary:
            let f = binaryFunction(node.op)
            let (a, b) = (args[0].data, args[1].data)
            return Tensor(type, (0..<a.count).map { Float(f(Double(a[$0]), Double(b[$0]))) })
        case .select:
            let (c, a, b) = (args[0].data, args[1].data, args[2].data)
            return Tensor(type, (0..<c.count).map { c[$0] != 0 ? a[$0] : b[$0] })
        case .reduce_sum, .reduce_max, .reduce_mean:
            return reduce(node, args[0])
        case .softmax, .log_softmax:
            return softmax(args[0], axis: node.int("axis")!, log: node.op == .log_softmax)
        case .layer_norm, .rms_norm:
            return norm(node, args)
        case .group_norm:
            return groupNorm(args[0], scale: args[1], bias: args[2], groups: node.int("groups")!, eps: node.float("eps")!)
        case .gather:
            return try gatherRows(args[0], indices: args[1], type: type)
        case .conv2d:
            return conv2d(args[0], args[1], stride: node.ints("stride") ?? [1, 1], padding: node.ints("padding") ?? [0, 0],
                          dilation: node.ints("dilation") ?? [1, 1], type: type)
        case .scatter_add:
            return try scatterAddRows(args[0], indices: args[1], type: type)
        case .attention_grad:
            let n = args.count
            return attentionGrad(args[0], args[1], args[2], bias: n == 6 ? args[3] : nil, out: args[n - 2], dout: args[n - 1],
                                 scale: node.float("scale")!, causal: node.flag("causal"), part: node.attributes["part"]!.stringValue!, type: type)
        case .matmul:
            return matmul(args[0], args[1], transposeA: node.flag("transpose_a"), transposeB: node.flag("transpose_b"), type: type)
        case .reshape:
            return Tensor(type, args[0].data)
        case .transpose:
            return transpose(args[0], perm: node.ints("perm")!, type: type)
        case .slice:
            let start = node.ints("start")!
            return gather(type) { idx in
                args[0].data[flatIndex(zip(idx, start).map { $0 + $1 }, args[0].shape)]
            }
        case .concat:
            let axis = node.int("axis")!
            var bounds: [Int] = [0]
            for a in args { bounds.append(bounds.last! + a.shape[axis]) }
            return gather(type) { idx in
                var j = 0
                while idx[axis] >= bounds[j + 1] { j += 1 }
                var src = idx
                src[axis] -= bounds[j]
                return args[j].data[flatIndex(src, args[j].shape)]
            }
        case .broadcast:
            let from = args[0].shape
            let offset = type.rank - from.count
            return gather(type) { idx in
                var src = [Int](repeating: 0, count: from.count)
                for i in 0..<from.count { src[i] = from[i] == 1 ? 0 : idx[offset + i] }
                return args[0].data[flatIndex(src, from)]
            }
        case .rope:
            return rope(args[0], cos: args[1], sin: args[2])
        case .attention:
            return attention(args[0], args[1], args[2], bias: args.count > 3 ? args[3] : nil, scale: node.float("scale")!, causal: node.flag("causal"))
        case .arc_step:
            return arcStep(args, delta: node.float("delta")!, components: node.int("components")!, positions: node.int("positions")!)
        case .fusion:
            let region = node.region!
            var inputs: [String: Tensor] = [:]
            for (i, a) in args.enumerated() { inputs[String(i)] = a }
            let out = try run(region, inputs: inputs) { key, _ in throw ArcError("fusion region reads weight '\(key)'") }
            return out[region.outputs[0].name]!
        default:
            throw ArcError("interpreter: no semantics for \(node.op.rawValue)")
        }
    }

    // MARK: Element-wise definitions

    static let sqrt2OverPi = (2.0 / Double.pi).squareRoot()

    /// GELU with the tanh approximation (FLUX's `gelu(approximate="tanh")`).
    public static func gelu(_ x: Double) -> Double {
        0.5 * x * (1 + Foundation_tanh(sqrt2OverPi * (x + 0.044715 * x * x * x)))
    }

    public static func unaryFunction(_ op: OpCode) -> (Double) -> Double {
        switch op {
        case .neg: return { -$0 }
        case .abs: return { Swift.abs($0) }
        case .exp: return Foundation_exp
        case .expm1: return Foundation_expm1
        case .log: return Foundation_log
        case .sqrt: return { $0.squareRoot() }
        case .rsqrt: return { 1 / $0.squareRoot() }
        case .tanh: return Foundation_tanh
        case .sigmoid: return { 1 / (1 + Foundation_exp(-$0)) }
        case .silu: return { $0 / (1 + Foundation_exp(-$0)) }
        case .gelu: return gelu
        case .erf: return Foundation_erf
        case .sin: return Foundation_sin
        case .cos: return Foundation_cos
        default: fatalError("\(op) is not unary element-wise")
        }
    }

    public static func binaryFunction(_ op: OpCode) -> (Double, Double) -> Double {
        switch op {
        case .add: return (+)
        case .sub: return (-)
        case .mul: return (*)
        case .div: return (/)
        // C's fmax/fmin: a NaN operand yields the other operand.
        case .max: return { a, b in a.isNaN ? b : (b.isNaN ? a : Swift.max(a, b)) }
        case .min: return { a, b in a.isNaN ? b : (b.isNaN ? a : Swift.min(a, b)) }
        case .pow: return Foundation_pow
        case .greater: return { $0 > $1 ? 1 : 0 }
        case .greater_equal: return { $0 >= $1 ? 1 : 0 }
        default: fatalError("\(op) is not binary element-wise")
        }
    }

    // MARK: Index helpers

    static func flatIndex(_ idx: [Int], _ shape: [Int]) -> Int {
        var f = 0
        for i in 0..<shape.count { f = f * shape[i] + idx[i] }
        return f
    }

    /// Builds a tensor by visiting every output multi-index in row-major order.
    static func gather(_ type: TensorType, _ element: ([Int]) -> Float) -> Tensor {
        var out = [Float](repeating: 0, count: type.count)
        var idx = [Int](repeating: 0, count: type.rank)
        for f in 0..<type.count {
            out[f] = element(idx)
            var d = type.rank - 1
            while d >= 0 {
                idx[d] += 1
                if idx[d] < type.shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
        return Tensor(type, out)
    }

    /// Splits a shape around a contiguous run of axes: (outer, n, inner).
    public static func split(_ shape: [Int], axes: ClosedRange<Int>) -> (Int, Int, Int) {
        (shape[..<axes.lowerBound].reduce(1, *), shape[axes].reduce(1, *), shape[(axes.upperBound + 1)...].reduce(1, *))
    }

    // MARK: Structured ops

    static func reduce(_ node: Node, _ x: Tensor) -> Tensor {
        let axes = node.ints("axes")!
        let (outer, n, inner) = split(x.shape, axes: axes.first!...axes.last!)
        var out = [Float](repeating: 0, count: outer * inner)
        for o in 0..<outer {
            for j in 0..<inner {
                var acc: Double = node.op == .reduce_max ? -.infinity : 0
                for i in 0..<n {
                    let v = Double(x.data[(o * n + i) * inner + j])
                    acc = node.op == .reduce_max ? (v.isNaN || v > acc ? v : acc) : acc + v
                }
                if node.op == .reduce_mean { acc /= Double(n) }
                out[o * inner + j] = Float(acc)
            }
        }
        return Tensor(node.type, out)
    }

    static func softmax(_ x: Tensor, axis: Int, log: Bool) -> Tensor {
        let (outer, n, inner) = split(x.shape, axes: axis...axis)
        var out = x.data
        for o in 0..<outer {
            for j in 0..<inner {
                let at = { (i: Int) in (o * n + i) * inner + j }
                var m = -Double.infinity
                for i in 0..<n { m = Swift.max(m, Double(x.data[at(i)])) }
                var s = 0.0
                for i in 0..<n { s += Foundation_exp(Double(x.data[at(i)]) - m) }
                for i in 0..<n {
                    let d = Double(x.data[at(i)]) - m
                    out[at(i)] = Float(log ? d - Foundation_log(s) : Foundation_exp(d) / s)
                }
            }
        }
        return Tensor(x.type, out)
    }

    static func norm(_ node: Node, _ args: [Tensor]) -> Tensor {
        let x = args[0]
        let n = x.shape.last!
        let rows = n == 0 ? 0 : x.type.count / n
        let eps = node.float("eps")!
        let gamma = args.count > 1 ? args[1].data : nil
        let beta = args.count > 2 ? args[2].data : nil
        var out = x.data
        for r in 0..<rows {
            let row = x.data[(r * n)..<((r + 1) * n)].map(Double.init)
            var mean = 0.0, denom: Double
            if node.op == .layer_norm {
                mean = row.reduce(0, +) / Double(n)
                let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
                denom = (variance + eps).squareRoot()
            } else {
                denom = (row.reduce(0) { $0 + $1 * $1 } / Double(n) + eps).squareRoot()
            }
            for i in 0..<n {
                var y = (row[i] - mean) / denom
                if let g = gamma { y *= Double(g[i]) }
                if let b = beta { y += Double(b[i]) }
                out[r * n + i] = Float(y)
            }
        }
        return Tensor(x.type, out)
    }

    static func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool, transposeB: Bool, type: TensorType) -> Tensor {
        let m = type.shape[type.rank - 2], n = type.shape[type.rank - 1]
        let k = transposeA ? a.shape[a.rank - 2] : a.shape[a.rank - 1]
        let batch = type.shape.dropLast(2).reduce(1, *)
        let bBatched = b.rank > 2
        var out = [Float](repeating: 0, count: type.count)
        var acc = [Double](repeating: 0, count: n)
        a.data.withUnsafeBufferPointer { A in
            b.data.withUnsafeBufferPointer { B in
                for p in 0..<batch {
                    let aBase = p * m * k, bBase = bBatched ? p * k * n : 0
                    for i in 0..<m {
                        for j in 0..<n { acc[j] = 0 }
                        for l in 0..<k {
                            let av = Double(transposeA ? A[aBase + l * m + i] : A[aBase + i * k + l])
                            if av == 0 { continue }
                            if transposeB {
                                for j in 0..<n { acc[j] += av * Double(B[bBase + j * k + l]) }
                            } else {
                                let row = bBase + l * n
                                for j in 0..<n { acc[j] += av * Double(B[row + j]) }
                            }
                        }
                        for j in 0..<n { out[(p * m + i) * n + j] = Float(acc[j]) }
                    }
                }
            }
        }
        return Tensor(type, out)
    }

    static func transpose(_ x: Tensor, perm: [Int], type: TensorType) -> Tensor {
        let srcStrides = rowMajorStrides(x.shape)
        return gather(type) { idx in
            var f = 0
            for (d, p) in perm.enumerated() { f += idx[d] * srcStrides[p] }
            return x.data[f]
        }
    }

    /// Rotates adjacent channel pairs (2i, 2i+1) of x[..., S, H, D] by the angle whose cos and sin
    /// are tabulated per (s, channel), as diffusers' `apply_rotary_emb` with interleaved pairs.
    static func rope(_ x: Tensor, cos: Tensor, sin: Tensor) -> Tensor {
        let r = x.rank
        let (s, h, d) = (x.shape[r - 3], x.shape[r - 2], x.shape[r - 1])
        let lead = x.type.count / Swift.max(s * h * d, 1)
        var out = x.data
        for l in 0..<lead {
            for si in 0..<s {
                for hi in 0..<h {
                    let base = ((l * s + si) * h + hi) * d
                    for i in stride(from: 0, to: d, by: 2) {
                        let x0 = Double(x.data[base + i]), x1 = Double(x.data[base + i + 1])
                        let c0 = Double(cos.data[si * d + i]), s0 = Double(sin.data[si * d + i])
                        let c1 = Double(cos.data[si * d + i + 1]), s1 = Double(sin.data[si * d + i + 1])
                        out[base + i] = Float(x0 * c0 - x1 * s0)
                        out[base + i + 1] = Float(x1 * c1 + x0 * s1)
                    }
                }
            }
        }
        return Tensor(x.type, out)
    }

    /// φ(z) = expm1(z)/z with the reference's clamp z' = sgn(z)·max(|z|, 1e-4), sgn(0) = +1: the
    /// exact integral factor of exp(γ(σ_src − σ)) over a step, kept away from 0/0.
    public static func phi(_ z: Double) -> Double {
        let zc = z >= 0 ? Swift.max(z, 1e-4) : Swift.min(z, -1e-4)
        return Foundation_expm1(zc) / zc
    }

    /// One ArcFlow step in token layout: x − Δ·Σ_k softmax_k(ℓ)·φ(γ_k·Δ)·μ_k with γ_0 = 0 (φ = 1).
    /// Element (t, c·P + j) of x pairs with means (t, k·F + c·P + j), log-weights (t, k·P + j) and
    /// rates (t, (k−1)·P + j): weights and rates are per position j, shared over channels c.
    static func arcStep(_ args: [Tensor], delta: Double, components k: Int, positions p: Int) -> Tensor {
        let (x, mu, lw, g) = (args[0], args[1], args[2], args[3])
        let f = x.shape.last!
        let rows = f == 0 ? 0 : x.type.count / f
        var out = x.data
        var w = [Double](repeating: 0, count: k)
        for t in 0..<rows {
            for j in 0..<p {
                var m = -Double.infinity
                for c in 0..<k { m = Swift.max(m, Double(lw.data[(t * k + c) * p + j])) }
                var sum = 0.0
                for c in 0..<k { w[c] = Foundation_exp(Double(lw.data[(t * k + c) * p + j]) - m); sum += w[c] }
                for c in 0..<k {
                    let phiK = c == 0 ? 1 : phi(Double(g.data[(t * (k - 1) + c - 1) * p + j]) * delta)
                    w[c] = w[c] / sum * phiK
                }
                for ch in 0..<(f / p) {
                    var v = 0.0
                    for c in 0..<k { v += w[c] * Double(mu.data[t * k * f + c * f + ch * p + j]) }
                    out[t * f + ch * p + j] = Float(Double(x.data[t * f + ch * p + j]) - delta * v)
                }
            }
        }
        return Tensor(x.type, out)
    }

    /// Logits s_j = scale·q_i·k_j + bias_hij of query row i (batch bi, head hi) for keys 0..<visible,
    /// in f64; returns their maximum. Shared by attention and its backward so both see one definition.
    static func attentionLogits(_ q: Tensor, _ k: Tensor, _ bias: Tensor?, _ bi: Int, _ hi: Int, _ i: Int, _ visible: Int,
                                _ scale: Double, into logits: inout [Double]) -> Double {
        let (sq, h, d) = (q.shape[1], q.shape[2], q.shape[3])
        let sk = k.shape[1]
        let qb = ((bi * sq + i) * h + hi) * d
        var m = -Double.infinity
        for j in 0..<visible {
            let kb = ((bi * sk + j) * h + hi) * d
            var dot = 0.0
            for c in 0..<d { dot += Double(q.data[qb + c]) * Double(k.data[kb + c]) }
            logits[j] = dot * scale + (bias.map { Double($0.data[(hi * sq + i) * sk + j]) } ?? 0)
            m = Swift.max(m, logits[j])
        }
        return m
    }

    /// softmax(scale·q·kᵀ + bias)·v per batch and head, q/k/v laid out [B, S, H, D], bias
    /// [H, Sq, Sk]; with `causal`, query i attends to keys 0...i only.
    static func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, bias: Tensor? = nil, scale: Double, causal: Bool = false) -> Tensor {
        let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let sk = k.shape[1]
        var out = [Float](repeating: 0, count: q.type.count)
        var logits = [Double](repeating: 0, count: sk)
        var acc = [Double](repeating: 0, count: d)
        for bi in 0..<b {
            for hi in 0..<h {
                for i in 0..<sq {
                    let qb = ((bi * sq + i) * h + hi) * d
                    let visible = causal ? i + 1 : sk
                    let m = attentionLogits(q, k, bias, bi, hi, i, visible, scale, into: &logits)
                    var sum = 0.0
                    for c in 0..<d { acc[c] = 0 }
                    for j in 0..<visible {
                        let p = Foundation_exp(logits[j] - m)
                        sum += p
                        let vb = ((bi * sk + j) * h + hi) * d
                        for c in 0..<d { acc[c] += p * Double(v.data[vb + c]) }
                    }
                    for c in 0..<d { out[qb + c] = Float(acc[c] / sum) }
                }
            }
        }
        return Tensor(q.type, out)
    }

    /// GroupNorm: per sample and group of C/groups channels, normalize over those channels and
    /// all spatial positions (biased variance, as PyTorch), then per-channel scale and bias.
    static func groupNorm(_ x: Tensor, scale: Tensor, bias: Tensor, groups: Int, eps: Double) -> Tensor {
        let (n, c) = (x.shape[0], x.shape[1])
        let spatial = x.shape.dropFirst(2).reduce(1, *)
        let per = c / groups * spatial
        var out = x.data
        for ni in 0..<n {
            for g in 0..<groups {
                let base = (ni * c + g * (c / groups)) * spatial
                var mean = 0.0
                for e in 0..<per { mean += Double(x.data[base + e]) }
                mean /= Double(Swift.max(per, 1))
                var variance = 0.0
                for e in 0..<per { let d = Double(x.data[base + e]) - mean; variance += d * d }
                variance /= Double(Swift.max(per, 1))
                let inv = 1 / (variance + eps).squareRoot()
                for e in 0..<per {
                    let ch = g * (c / groups) + e / spatial
                    out[base + e] = Float((Double(x.data[base + e]) - mean) * inv * Double(scale.data[ch]) + Double(bias.data[ch]))
                }
            }
        }
        return Tensor(x.type, out)
    }

    /// Rows of `table` picked by integer-valued indices; an index that is not an integer in
    /// [0, V) is an error (a wrong token id must not read memory it does not own).
    static func gatherRows(_ table: Tensor, indices: Tensor, type: TensorType) throws -> Tensor {
        let rows = table.shape[0]
        let width = table.shape.dropFirst().reduce(1, *)
        var out = [Float](repeating: 0, count: type.count)
        for (p, f) in indices.data.enumerated() {
            guard f >= 0, f < Float(rows), f == f.rounded() else { throw ArcError("gather: index \(f) is not a row of a table with \(rows) rows") }
            let r = Int(f)
            for e in 0..<width { out[p * width + e] = table.data[r * width + e] }
        }
        return Tensor(type, out)
    }

    /// Sums rows of `updates` [P..., D...] into a zero table [V, D...] at integer-valued indices
    /// [P...] (gather's transpose), in f64; an index outside [0, V) is an error, as for gather.
    static func scatterAddRows(_ updates: Tensor, indices: Tensor, type: TensorType) throws -> Tensor {
        let rows = type.shape[0]
        let width = type.shape.dropFirst().reduce(1, *)
        var acc = [Double](repeating: 0, count: type.count)
        for (p, f) in indices.data.enumerated() {
            guard f >= 0, f < Float(rows), f == f.rounded() else { throw ArcError("scatter_add: index \(f) is not a row of a table with \(rows) rows") }
            let r = Int(f)
            for e in 0..<width { acc[r * width + e] += Double(updates.data[p * width + e]) }
        }
        return Tensor(type, acc.map { Float($0) })
    }

    /// Attention's backward, per batch, head and query row i, with P = softmax(s), s_ij = scale·q_i·k_j + bias_hij:
    ///   ∂v_j += P_ij·dout_i;  dP_ij = dout_i·v_j;  ds_ij = P_ij·(dP_ij − Δ_i), Δ_i = dout_i·out_i (= Σ_j P_ij·dP_ij);
    ///   ∂q_i += scale·ds_ij·k_j;  ∂k_j += scale·ds_ij·q_i;  ∂bias_hij += ds_ij (summed over the batch).
    /// Part "qkv" returns [B, Sq + 2·Sk, H, D] = ∂q | ∂k | ∂v along the sequence axis; "bias" returns ∂bias.
    static func attentionGrad(_ q: Tensor, _ k: Tensor, _ v: Tensor, bias: Tensor?, out: Tensor, dout: Tensor,
                              scale: Double, causal: Bool, part: String, type: TensorType) -> Tensor {
        let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let sk = k.shape[1]
        let total = sq + 2 * sk
        var result = [Double](repeating: 0, count: type.count)
        var p = [Double](repeating: 0, count: sk)
        for bi in 0..<b {
            for hi in 0..<h {
                for i in 0..<sq {
                    let qb = ((bi * sq + i) * h + hi) * d
                    let visible = causal ? i + 1 : sk
                    let m = attentionLogits(q, k, bias, bi, hi, i, visible, scale, into: &p)
                    var sum = 0.0
                    for j in 0..<visible { p[j] = Foundation_exp(p[j] - m); sum += p[j] }
                    var delta = 0.0
                    for c in 0..<d { delta += Double(dout.data[qb + c]) * Double(out.data[qb + c]) }
                    for j in 0..<visible {
                        let pj = p[j] / sum
                        let kb = ((bi * sk + j) * h + hi) * d
                        var dp = 0.0
                        for c in 0..<d { dp += Double(dout.data[qb + c]) * Double(v.data[kb + c]) }
                        let ds = pj * (dp - delta)
                        if part == "bias" { result[(hi * sq + i) * sk + j] += ds; continue }
                        let at = { (row: Int, c: Int) in ((bi * total + row) * h + hi) * d + c }
                        for c in 0..<d {
                            result[at(i, c)] += scale * ds * Double(k.data[kb + c])
                            result[at(sq + j, c)] += scale * ds * Double(q.data[qb + c])
                            result[at(sq + sk + j, c)] += pj * Double(dout.data[qb + c])
                        }
                    }
                }
            }
        }
        return Tensor(type, result.map { Float($0) })
    }

    /// Cross-correlation of x [N, C, H, W] with w [O, C, KH, KW] (taps `dilation` apart), zero
    /// padding, f64 accumulation.
    static func conv2d(_ x: Tensor, _ w: Tensor, stride: [Int], padding: [Int], dilation: [Int] = [1, 1], type: TensorType) -> Tensor {
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (o, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
        let (ho, wo) = (type.shape[2], type.shape[3])
        var out = [Float](repeating: 0, count: type.count)
        for ni in 0..<n {
            for oc in 0..<o {
                for y in 0..<ho {
                    for xo in 0..<wo {
                        var acc = 0.0
                        for ic in 0..<c {
                            for dy in 0..<kh {
                                let iy = y * stride[0] - padding[0] + dy * dilation[0]
                                if iy < 0 || iy >= h { continue }
                                for dx in 0..<kw {
                                    let ix = xo * stride[1] - padding[1] + dx * dilation[1]
                                    if ix < 0 || ix >= wd { continue }
                                    acc += Double(x.data[((ni * c + ic) * h + iy) * wd + ix]) * Double(w.data[((oc * c + ic) * kh + dy) * kw + dx])
                                }
                            }
                        }
                        out[((ni * o + oc) * ho + y) * wo + xo] = Float(acc)
                    }
                }
            }
        }
        return Tensor(type, out)
    }
}
