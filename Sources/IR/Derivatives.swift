// Vector-Jacobian products of every op, written as IR with the builder: one place to visit when
// adding an op (next to its shape rule in OpSemantics and its meaning in Interpreter). Gradients
// are ordinary graphs, so they go through the same passes and kernels as the forward.

/// What a VJP rule sees: the forward node, its operands and result as values of the gradient
/// graph under construction, the cotangent ∂L/∂result (always f32, the result's shape), and
/// which operands want a cotangent back.
public struct VJPArguments {
    public let builder: GraphBuilder
    public let node: Node
    public let operands: [Value]
    public let result: Value
    public let cotangent: Value
    public let needed: [Bool]

    public init(builder: GraphBuilder, node: Node, operands: [Value], result: Value, cotangent: Value, needed: [Bool]) {
        self.builder = builder
        self.node = node
        self.operands = operands
        self.result = result
        self.cotangent = cotangent
        self.needed = needed
    }
}

public enum Derivatives {
    /// Operands through which no gradient flows: comparison results are piecewise constant (0/1),
    /// select's condition and gather's indices choose elements rather than being computed with.
    public static func nonDifferentiableOperands(_ node: Node) -> Set<Int> {
        switch node.op {
        case .greater, .greater_equal: return [0, 1]
        case .select: return [0]
        case .gather, .scatter_add: return [1]
        default: return []
        }
    }

    /// Ops with no VJP at all (the autodiff pass names them when they block a path to the loss).
    public static func hasVJP(_ op: OpCode) -> Bool {
        switch op {
        case .greater, .greater_equal, .arc_step, .attention_grad, .fusion: return false
        default: return true
        }
    }

    /// The cotangents of the operands (nil where not needed or not differentiable), each f32 with
    /// its operand's shape. `fusion` is not here: the autodiff pass inlines regions first, so a
    /// fusion is differentiated through its body. `arc_step` is differentiated as the primitive ops
    /// the sampler writes, before fold-arc-integral folds them.
    public static func vjp(_ a: VJPArguments) throws -> [Value?] {
        let b = a.builder, g = a.cotangent, node = a.node
        let x = a.operands.first, y = a.result
        func one(_ v: Value) -> [Value?] { [v] }
        switch node.op {
        case .input, .weight, .constant:
            return []

        // MARK: Element-wise unary: g · f'(x), written with y = f(x) where that is cheaper.
        case .neg: return one(-g)
        case .abs:
            // sign(x) with sign(0) = 0, as torch.abs's gradient.
            return one(g * (b.binary(.greater, x!, b.scalar(0)) - b.binary(.greater, b.scalar(0), x!)))
        case .exp: return one(g * y)
        case .expm1: return one(g * (y + 1))
        case .log: return one(g / x!)
        case .sqrt: return one(g * 0.5 / y)
        case .rsqrt: return one(g * -0.5 * y * y * y)        // d x^(-1/2) = -½ x^(-3/2) = -½ y³
        case .tanh: return one(g * (1 - y * y))
        case .sigmoid: return one(g * y * (1 - y))
        case .silu:
            let s = b.unary(.sigmoid, x!)                       // silu' = s·(1 + x·(1 − s))
            return one(g * s * (1 + x! * (1 - s)))
        case .gelu:
            // 0.5·x·(1 + tanh u), u = c·(x + 0.044715x³): ½(1 + t) + ½x(1 − t²)·c·(1 + 3·0.044715x²).
            let c = Float((2.0 / Double.pi).squareRoot())
            let x2 = x! * x!
            let t = b.unary(.tanh, c * (x! + 0.044715 * x2 * x!))
            return one(g * (0.5 * (1 + t) + 0.5 * x! * (1 - t * t) * (c * (1 + 0.134145 * x2))))
        case .erf:
            return one(g * Float(2 / Double.pi.squareRoot()) * b.unary(.exp, -(x! * x!)))
        case .sin: return one(g * b.unary(.cos, x!))
        case .cos: return one(-(g * b.unary(.sin, x!)))
        case .convert:
            // Straight through: the rounding to a storage type has derivative 1 almost everywhere.
            return one(g)

        // MARK: Element-wise binary
        case .add: return [g, g]
        case .sub: return [g, -g]
        case .mul: return [g * a.operands[1], g * a.operands[0]]
        case .div: return [g / a.operands[1], -(g * y / a.operands[1])]
        case .pow:
            let (base, e) = (a.operands[0], a.operands[1])
            // e·base^(e−1), taken as 0 where e = 0 (torch masks the 0·inf of base = 0 there).
            let db = a.needed[0] ? b.select(b.binary(.greater, b.unary(.abs, e), b.scalar(0)), g * e * b.binary(.pow, base, e - 1), b.scalar(0)) : nil
            // y·log(base), taken as 0 where base = 0 (torch masks the 0·(−inf) there too).
            let de = a.needed[1] ? b.select(b.binary(.greater, b.unary(.abs, base), b.scalar(0)), g * y * b.unary(.log, base), b.scalar(0)) : nil
            return [db, de]
        case .max, .min:
            // The winner gets g, a tie gives g/2 to each side (torch.maximum/minimum): the mask
            // ½·([a > b] + [a ≥ b]) is 1, ½ or 0 (swap the sides for min). The forward is C's
            // fmax/fmin (torch.fmax/fmin), which returns the other operand where one is NaN, so
            // that operand gets g: + [a = a]·[b ≠ b] (both comparisons are false against NaN).
            let (l, r) = (a.operands[0], a.operands[1])
            func wins(_ p: Value, _ q: Value) -> Value {
                let (u, v) = node.op == .max ? (p, q) : (q, p)
                let isNumber = { (x: Value) in b.binary(.greater_equal, x, x) }
                return 0.5 * (b.binary(.greater, u, v) + b.binary(.greater_equal, u, v)) + isNumber(p) * (1 - isNumber(q))
            }
            return [a.needed[0] ? g * wins(l, r) : nil, a.needed[1] ? g * wins(r, l) : nil]
        case .greater, .greater_equal:
            return [nil, nil]
        case .select:
            let zero = b.constant(0, shape: g.shape)
            return [nil, b.select(a.operands[0], g, zero), b.select(a.operands[0], zero, g)]

        // MARK: Reductions: spread g back over the reduced axes.
        case .reduce_sum, .reduce_mean, .reduce_max:
            let axes = node.ints("axes")!
            var kept = x!.shape
            for ax in axes { kept[ax] = 1 }
            let spread = g.reshaped(kept).broadcast(to: x!.shape)
            switch node.op {
            case .reduce_sum: return one(spread)
            case .reduce_mean: return one(spread * (1 / Float(axes.map { x!.shape[$0] }.reduce(1, *))))
            default:
                // torch.amax: g is split evenly among the elements equal to the maximum (x ≥ max ⇔ x = max).
                let hit = b.binary(.greater_equal, x!, y.reshaped(kept).broadcast(to: x!.shape))
                let count = b.reduce(.reduce_sum, hit, axes: axes, keepDims: true).broadcast(to: x!.shape)
                return one(spread * hit / count)
            }

        // MARK: Normalizations
        case .softmax:
            let axis = node.int("axis")!
            let dot = b.reduce(.reduce_sum, g * y, axes: [axis], keepDims: true).broadcast(to: y.shape)
            return one(y * (g - dot))
        case .log_softmax:
            let axis = node.int("axis")!
            let total = b.reduce(.reduce_sum, g, axes: [axis], keepDims: true).broadcast(to: y.shape)
            return one(g - b.unary(.exp, y) * total)
        case .layer_norm, .rms_norm:
            return normVJP(a)
        case .group_norm:
            return groupNormVJP(a)

        // MARK: Matrix multiply
        case .matmul:
            return matmulVJP(a)

        // MARK: Data movement
        case .reshape:
            return one(g.reshaped(x!.shape))
        case .transpose:
            let perm = node.ints("perm")!
            var inverse = perm
            for (i, p) in perm.enumerated() { inverse[p] = i }
            return one(g.transposed(inverse))
        case .slice:
            // Pad back with zeros on each sliced axis.
            let start = node.ints("start")!, end = node.ints("end")!
            var d = g
            for ax in 0..<x!.rank where start[ax] > 0 || end[ax] < x!.shape[ax] {
                var parts: [Value] = []
                var s = d.shape
                if start[ax] > 0 { s[ax] = start[ax]; parts.append(b.constant(0, shape: s)) }
                parts.append(d)
                if end[ax] < x!.shape[ax] { s[ax] = x!.shape[ax] - end[ax]; parts.append(b.constant(0, shape: s)) }
                d = b.concat(parts, axis: ax)
            }
            return one(d)
        case .concat:
            let axis = node.int("axis")!
            var offset = 0
            return a.operands.enumerated().map { k, v in
                defer { offset += v.shape[axis] }
                return a.needed[k] ? b.slice(g, axis: axis, offset..<(offset + v.shape[axis])) : nil
            }
        case .broadcast:
            return one(sumToShape(g, x!.shape))
        case .gather:
            return [b.append(.scatter_add, [g, a.operands[1]], type: .f32(a.operands[0].shape)), nil]
        case .scatter_add:
            return [b.gather(g, a.operands[1]), nil]
        case .conv2d:
            return conv2dVJP(a)

        // MARK: Composite transformer ops
        case .rope:
            return ropeVJP(a)
        case .attention:
            return attentionVJP(a)

        case .arc_step:
            throw ArcError("arc_step has no VJP: differentiate the sampler's primitive ops before fold-arc-integral")
        case .attention_grad:
            throw ArcError("attention_grad has no VJP (no second derivatives of attention)")
        case .fusion:
            throw ArcError("fusion: inline the region before differentiating")
        }
    }

    // MARK: Helpers

    /// The transpose of `broadcast`: sums g over the axes a broadcast to g's shape created or
    /// stretched, then reshapes to `shape`.
    public static func sumToShape(_ g: Value, _ shape: [Int]) -> Value {
        let b = g.builder
        if g.shape == shape { return g }
        let lead = g.rank - shape.count
        var d = lead > 0 ? b.reduce(.reduce_sum, g, axes: Array(0..<lead)) : g
        // Runs of adjacent stretched axes reduce in one op.
        var ax = 0
        while ax < shape.count {
            guard shape[ax] == 1 && d.shape[ax] != 1 else { ax += 1; continue }
            var end = ax
            while end + 1 < shape.count && shape[end + 1] == 1 && d.shape[end + 1] != 1 { end += 1 }
            d = b.reduce(.reduce_sum, d, axes: Array(ax...end), keepDims: true)
            ax = end + 1
        }
        return d.reshaped(shape)
    }

    /// Sum over every axis but the last: the gradient of a per-channel scale or bias.
    static func sumRows(_ v: Value) -> Value {
        v.rank <= 1 ? v : v.builder.reduce(.reduce_sum, v, axes: Array(0..<(v.rank - 1)))
    }

    /// layer_norm / rms_norm over the last axis, x̂ = (x − μ)·r with r = 1/√(var + ε) (μ = 0 and
    /// var = mean(x²) for RMS): ∂x = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = g·γ (no mean(ĝ) term
    /// for RMS), ∂γ = Σ_rows g·x̂, ∂β = Σ_rows g.
    static func normVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder, g = a.cotangent, x = a.operands[0]
        let eps = a.node.float("eps")!
        let last = x.rank - 1, shape = x.shape
        func rowMean(_ v: Value) -> Value { b.reduce(.reduce_mean, v, axes: [last], keepDims: true).broadcast(to: shape) }
        let centered = a.node.op == .layer_norm ? x - rowMean(x) : x
        let r = b.unary(.rsqrt, rowMean(centered * centered) + Float(eps))
        let xhat = centered * r
        let gamma = a.operands.count > 1 ? a.operands[1] : nil
        let gh = gamma.map { g * $0.broadcast(to: shape) } ?? g
        var dx: Value? = nil
        if a.needed[0] {
            let inner = a.node.op == .layer_norm ? gh - rowMean(gh) : gh
            dx = r * (inner - xhat * rowMean(gh * xhat))
        }
        var out: [Value?] = [dx]
        if a.operands.count > 1 { out.append(a.needed[1] ? sumRows(g * xhat) : nil) }
        if a.operands.count > 2 { out.append(a.needed[2] ? sumRows(g) : nil) }
        return out
    }

    /// GroupNorm is a layer norm of x viewed as [N, G, (C/G)·spatial] followed by a per-channel
    /// affine map, so its VJP is the layer-norm one on that view.
    static func groupNormVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder, g = a.cotangent, x = a.operands[0]
        let groups = a.node.int("groups")!, eps = a.node.float("eps")!
        let (n, c) = (x.shape[0], x.shape[1])
        let view = [n, groups, x.type.count / Swift.max(n * groups, 1)]
        var channel = [Int](repeating: 1, count: x.rank)
        channel[1] = c
        func perChannel(_ v: Value) -> Value { v.reshaped(channel).broadcast(to: x.shape) }
        func rowMean(_ v: Value) -> Value { b.reduce(.reduce_mean, v, axes: [2], keepDims: true).broadcast(to: view) }
        let xv = x.reshaped(view)
        let centered = xv - rowMean(xv)
        let r = b.unary(.rsqrt, rowMean(centered * centered) + Float(eps))
        let xhatView = centered * r
        let xhat = xhatView.reshaped(x.shape)
        /// Σ over the batch and spatial axes → [C].
        func sumChannels(_ v: Value) -> Value {
            let s = v.rank > 2 ? b.reduce(.reduce_sum, v, axes: Array(2..<v.rank)) : v
            return b.reduce(.reduce_sum, s, axes: [0])
        }
        var dx: Value? = nil
        if a.needed[0] {
            let gh = (g * perChannel(a.operands[1])).reshaped(view)
            dx = (r * (gh - rowMean(gh) - xhatView * rowMean(gh * xhatView))).reshaped(x.shape)
        }
        return [dx, a.needed[1] ? sumChannels(g * xhat) : nil, a.needed[2] ? sumChannels(g) : nil]
    }

    /// y = op(A)·op(B) per batch. ∂op(A) = g·op(B)ᵀ and ∂op(B) = op(A)ᵀ·g, each written as one
    /// matmul with transpose flags on the stored operands. An unbatched B is shared by the batch,
    /// so its gradient sums over it: folded into the GEMM's contraction when A is not transposed.
    static func matmulVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder, g = a.cotangent
        let (lhs, rhs) = (a.operands[0], a.operands[1])
        let ta = a.node.flag("transpose_a"), tb = a.node.flag("transpose_b")
        let batch = Array(g.shape.dropLast(2))
        var out: [Value?] = [nil, nil]
        if a.needed[0] {
            if !ta {
                out[0] = b.matmul(g, rhs, transposeB: !tb)              // g·Bᵀ (B = rhs or rhsᵀ)
            } else {
                // A stored as [k, m]: ∂A = (g·op(B)ᵀ)ᵀ = op(B)·gᵀ.
                let r = rhs.rank == g.rank ? rhs : rhs.broadcast(to: batch + rhs.shape)
                out[0] = b.matmul(r, g, transposeA: tb, transposeB: true)
            }
        }
        if a.needed[1] {
            if rhs.rank < g.rank && !ta {
                // Fold the batch into the contraction: [batch·m, k]ᵀ · [batch·m, n].
                let rows = g.type.count / g.shape[g.rank - 1]
                let l2 = lhs.reshaped([rows, lhs.shape[lhs.rank - 1]]), g2 = g.reshaped([rows, g.shape[g.rank - 1]])
                out[1] = tb ? b.matmul(g2, l2, transposeA: true) : b.matmul(l2, g2, transposeA: true)
            } else {
                // !tb: ∂B = op(A)ᵀ·g;  tb: ∂B = gᵀ·op(A).
                var d = tb ? b.matmul(g, lhs, transposeA: true, transposeB: ta) : b.matmul(lhs, g, transposeA: !ta)
                if rhs.rank < g.rank { d = b.reduce(.reduce_sum, d, axes: Array(0..<batch.count)) }
                out[1] = d
            }
        }
        return out
    }

    /// Reverses `axis` of a small tensor (a convolution kernel) with unit slices.
    static func flip(_ v: Value, axis: Int) -> Value {
        let n = v.shape[axis]
        if n <= 1 { return v }
        return v.builder.concat((0..<n).reversed().map { v.builder.slice(v, axis: axis, $0..<($0 + 1)) }, axis: axis)
    }

    /// x [N, C, H, W] ⋆ w [O, C, KH, KW], stride s, padding p, dilation d.
    /// ∂x: the output gradient with s − 1 zeros inserted between elements (pure data movement),
    /// correlated with the flipped, channel-transposed kernel (the transposed convolution); rows
    /// the forward never read (the remainder of a strided sweep) get zeros.
    /// ∂w[o,c,a,b] = Σ x_pad[n,c,y·s + a·d, …]·g[n,o,y,…]: a convolution of xᵀ [C, N, H, W] with gᵀ
    /// [O, N, Ho, Wo] as the kernel, stride d and dilation s, cut to KH×KW and transposed back.
    static func conv2dVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder, g = a.cotangent
        let (x, w) = (a.operands[0], a.operands[1])
        let s = a.node.ints("stride") ?? [1, 1], p = a.node.ints("padding") ?? [0, 0], d = a.node.ints("dilation") ?? [1, 1]
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (o, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
        let (ho, wo) = (g.shape[2], g.shape[3])
        func conv(_ u: Value, _ k: Value, stride: [Int], padding: [Int], dilation: [Int]) -> Value {
            b.append(.conv2d, [u, k], attributes: ["stride": .ints(stride), "padding": .ints(padding), "dilation": .ints(dilation)])
        }
        var out: [Value?] = [nil, nil]
        if a.needed[0] {
            var gd = g
            if s[0] > 1 {
                let z = b.constant(0, shape: [n, o, ho, s[0] - 1, gd.shape[3]])
                gd = b.concat([gd.reshaped([n, o, ho, 1, gd.shape[3]]), z], axis: 3).reshaped([n, o, ho * s[0], gd.shape[3]])
                gd = b.slice(gd, axis: 2, 0..<((ho - 1) * s[0] + 1))
            }
            if s[1] > 1 {
                let rows = gd.shape[2]
                let z = b.constant(0, shape: [n, o, rows, wo, s[1] - 1])
                gd = b.concat([gd.reshaped([n, o, rows, wo, 1]), z], axis: 4).reshaped([n, o, rows, wo * s[1]])
                gd = b.slice(gd, axis: 3, 0..<((wo - 1) * s[1] + 1))
            }
            // With padding d(K−1) on both sides, output position u holds input position u − p, up to
            // the last one the forward read; crop to the input, then zeros where it read nothing.
            let wf = flip(flip(w.transposed([1, 0, 2, 3]), axis: 2), axis: 3)
            var dx = conv(gd, wf, stride: [1, 1], padding: [d[0] * (kh - 1), d[1] * (kw - 1)], dilation: d)
            let full = [h, wd]
            for ax in 0..<2 {
                let hi = Swift.min(dx.shape[2 + ax], p[ax] + full[ax])
                guard hi > p[ax] else { dx = b.constant(0, shape: x.shape); break }
                dx = b.slice(dx, axis: 2 + ax, p[ax]..<hi)
                if dx.shape[2 + ax] < full[ax] {
                    var zs = dx.shape
                    zs[2 + ax] = full[ax] - dx.shape[2 + ax]
                    dx = b.concat([dx, b.constant(0, shape: zs)], axis: 2 + ax)
                }
            }
            out[0] = dx
        }
        if a.needed[1] {
            let dw = conv(x.transposed([1, 0, 2, 3]), g.transposed([1, 0, 2, 3]), stride: d, padding: p, dilation: s)
            out[1] = b.slice(dw, start: [0, 0, 0, 0], end: [c, o, kh, kw]).transposed([1, 0, 2, 3])
        }
        return out
    }

    /// Swaps the channels of each adjacent pair (2i, 2i+1) along the last axis.
    static func swapPairs(_ v: Value) -> Value {
        let shape = v.shape, d = shape.last!
        let pairs = v.reshaped(Array(shape.dropLast()) + [d / 2, 2])
        let r = pairs.rank
        return v.builder.concat([v.builder.slice(pairs, axis: r - 1, 1..<2), v.builder.slice(pairs, axis: r - 1, 0..<1)], axis: r - 1).reshaped(shape)
    }

    /// rope is linear in x: out₀ = x₀c₀ − x₁s₀, out₁ = x₁c₁ + x₀s₁, so ∂x₀ = g₀c₀ + g₁s₁ and
    /// ∂x₁ = g₁c₁ − g₀s₀: rope of g with the sin table negated and pair-swapped (the rotation by
    /// −angle when the pair shares its angle, exact for any table). ∂cos, ∂sin sum over the
    /// batch and heads.
    static func ropeVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder, g = a.cotangent
        let (x, cos, sin) = (a.operands[0], a.operands[1], a.operands[2])
        var out: [Value?] = [nil, nil, nil]
        if a.needed[0] { out[0] = b.rope(g, cos: cos, sin: -swapPairs(sin)) }
        /// Σ over every axis but S (rank − 3) and D (last) → [S, D].
        func table(_ v: Value) -> Value {
            let r = v.rank
            let noHeads = b.reduce(.reduce_sum, v, axes: [r - 2])
            return r > 3 ? b.reduce(.reduce_sum, noHeads, axes: Array(0..<(r - 3))) : noHeads
        }
        if a.needed[1] { out[1] = table(g * x) }
        if a.needed[2] {
            // ∂s₀ = −g₀x₁, ∂s₁ = g₁x₀: g · swap(x) · (−1, +1).
            let d = x.shape.last!
            let sign = b.constant((0..<d).map { $0 % 2 == 0 ? -1 : 1 }, shape: [d])
            out[2] = table(g * swapPairs(x) * sign)
        }
        return out
    }

    /// One `attention_grad` kernel call gives ∂q, ∂k, ∂v together (it recomputes the softmax
    /// from q and k tile by tile, never storing an Sq×Sk matrix); a bias gets a second call.
    static func attentionVJP(_ a: VJPArguments) -> [Value?] {
        let b = a.builder
        let ops = a.operands
        let (sq, sk) = (ops[0].shape[1], ops[1].shape[1])
        var attrs = a.node.attributes.filter { $0.key == "scale" || $0.key == "causal" }
        var out = [Value?](repeating: nil, count: ops.count)
        if a.needed[0] || a.needed[1] || a.needed[2] {
            attrs["part"] = .string("qkv")
            let all = b.append(.attention_grad, ops + [a.result, a.cotangent], attributes: attrs)
            let ranges = [0..<sq, sq..<(sq + sk), (sq + sk)..<(sq + 2 * sk)]
            for k in 0..<3 where a.needed[k] { out[k] = b.slice(all, axis: 1, ranges[k]) }
        }
        if ops.count == 4 && a.needed[3] {
            attrs["part"] = .string("bias")
            out[3] = b.append(.attention_grad, ops + [a.result, a.cotangent], attributes: attrs)
        }
        return out
    }
}
