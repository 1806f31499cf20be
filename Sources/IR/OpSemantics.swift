// Shape and type rules of every op, in one place: used by the builder, parser and verifier.

public enum OpSemantics {
    /// Infers the result type of `op`, or checks `declared` where the type cannot be inferred
    /// (sources, reshape, broadcast, convert). Throws a message without location; the verifier
    /// prefixes it with the line and the op.
    public static func resultType(_ op: OpCode, operands: [TensorType], attributes: [String: Attribute],
                                  declared: TensorType?, region: Graph? = nil) throws -> TensorType {
        func need(_ n: Int) throws {
            if operands.count != n { throw ArcError("expects \(n) operand\(n == 1 ? "" : "s"), got \(operands.count)") }
        }
        func needDeclared() throws -> TensorType {
            guard let d = declared else { throw ArcError("needs an explicit result type") }
            if d.shape.contains(where: { $0 < 0 }) { throw ArcError("negative dimension in \(d)") }
            return d
        }
        func needF32(_ types: [TensorType]) throws {
            if let t = types.first(where: { $0.dtype != .f32 }) {
                throw ArcError("computes in f32 but an operand is \(t); insert a convert")
            }
        }
        func axis(_ name: String, rank: Int) throws -> Int {
            guard let a = attributes[name]?.intValue else { throw ArcError("needs an integer attribute '\(name)'") }
            if a < 0 || a >= rank { throw ArcError("\(name) \(a) out of range for rank \(rank)") }
            return a
        }
        func float(_ name: String) throws -> Double {
            guard let v = attributes[name]?.floatValue else { throw ArcError("needs a float attribute '\(name)'") }
            return v
        }

        switch op {
        case .input, .weight, .constant:
            try need(0)
            return try needDeclared()

        case .convert:
            try need(1)
            let d = try needDeclared()
            if d.shape != operands[0].shape { throw ArcError("convert changes dtype only, not shape: \(operands[0]) to \(d)") }
            return d

        case _ where op.isElementwiseUnary:
            try need(1)
            try needF32(operands)
            return operands[0]

        case _ where op.isElementwiseBinary, .select:
            try need(op == .select ? 3 : 2)
            try needF32(operands)
            if let t = operands.first(where: { $0.shape != operands[0].shape }) {
                throw ArcError("operand shapes differ: \(operands[0]) and \(t); broadcast explicitly")
            }
            return operands[0]

        case .reduce_sum, .reduce_max, .reduce_mean:
            try need(1)
            try needF32(operands)
            let x = operands[0]
            guard let axes = attributes["axes"]?.intsValue, !axes.isEmpty else { throw ArcError("needs a non-empty 'axes' list") }
            for (i, a) in axes.enumerated() {
                if a < 0 || a >= x.rank { throw ArcError("axis \(a) out of range for \(x)") }
                if i > 0 && a != axes[i - 1] + 1 { throw ArcError("axes \(axes) must be increasing and contiguous") }
            }
            let keep = attributes["keepdims"]?.boolValue ?? false
            var shape: [Int] = []
            for (i, d) in x.shape.enumerated() {
                if axes.contains(i) { if keep { shape.append(1) } } else { shape.append(d) }
            }
            return x.with(shape: shape)

        case .softmax, .log_softmax:
            try need(1)
            try needF32(operands)
            _ = try axis("axis", rank: operands[0].rank)
            return operands[0]

        case .group_norm:
            // x [N, C, ...], scale [C], bias [C]; statistics over (C/groups channels × spatial).
            try need(3)
            try needF32(operands)
            _ = try float("eps")
            let x = operands[0]
            guard x.rank >= 2 else { throw ArcError("x must be [N, C, ...], got \(x)") }
            guard let groups = attributes["groups"]?.intValue, groups >= 1, x.shape[1] % groups == 0 else {
                throw ArcError("needs an integer 'groups' dividing the \(x.shape[1]) channels of \(x)")
            }
            for p in operands.dropFirst() where p.shape != [x.shape[1]] {
                throw ArcError("scale and bias must be f32[\(x.shape[1])] for \(x), got \(p)")
            }
            return x

        case .layer_norm, .rms_norm:
            let maxOperands = op == .layer_norm ? 3 : 2
            if operands.isEmpty || operands.count > maxOperands {
                throw ArcError("expects 1 to \(maxOperands) operands (x, optional scale\(op == .layer_norm ? ", optional bias" : "")), got \(operands.count)")
            }
            try needF32(operands)
            _ = try float("eps")
            let x = operands[0]
            guard let n = x.shape.last else { throw ArcError("needs rank >= 1, got \(x)") }
            for p in operands.dropFirst() where p.shape != [n] {
                throw ArcError("scale and bias must be f32[\(n)] for \(x), got \(p)")
            }
            return x

        case .matmul:
            try need(2)
            try needF32(operands)
            let (a, b) = (operands[0], operands[1])
            if a.rank < 2 || b.rank < 2 { throw ArcError("operands need rank >= 2, got \(a) and \(b)") }
            let ta = attributes["transpose_a"]?.boolValue ?? false
            let tb = attributes["transpose_b"]?.boolValue ?? false
            let m = ta ? a.shape[a.rank - 1] : a.shape[a.rank - 2]
            let ka = ta ? a.shape[a.rank - 2] : a.shape[a.rank - 1]
            let kb = tb ? b.shape[b.rank - 1] : b.shape[b.rank - 2]
            let n = tb ? b.shape[b.rank - 2] : b.shape[b.rank - 1]
            if ka != kb { throw ArcError("contraction sizes differ: \(a)\(ta ? "ᵀ" : "") · \(b)\(tb ? "ᵀ" : "") (\(ka) vs \(kb))") }
            let batchA = Array(a.shape.dropLast(2)), batchB = Array(b.shape.dropLast(2))
            if !batchB.isEmpty && batchB != batchA {
                throw ArcError("batch dimensions differ: \(a) and \(b) (the right operand may also be unbatched)")
            }
            return a.with(shape: batchA + [m, n])

        case .reshape:
            try need(1)
            let d = try needDeclared()
            if d.dtype != operands[0].dtype || d.count != operands[0].count {
                throw ArcError("cannot reshape \(operands[0]) to \(d)")
            }
            return d

        case .transpose:
            try need(1)
            let x = operands[0]
            guard let perm = attributes["perm"]?.intsValue, perm.sorted() == Array(0..<x.rank) else {
                throw ArcError("needs 'perm', a permutation of 0..<\(x.rank)")
            }
            return x.with(shape: perm.map { x.shape[$0] })

        case .slice:
            try need(1)
            let x = operands[0]
            guard let start = attributes["start"]?.intsValue, let end = attributes["end"]?.intsValue,
                  start.count == x.rank, end.count == x.rank else {
                throw ArcError("needs 'start' and 'end' lists of length \(x.rank)")
            }
            for i in 0..<x.rank where start[i] < 0 || start[i] > end[i] || end[i] > x.shape[i] {
                throw ArcError("slice [\(start[i]), \(end[i])) out of range for dimension \(i) of \(x)")
            }
            return x.with(shape: zip(start, end).map { $1 - $0 })

        case .concat:
            guard let first = operands.first else { throw ArcError("needs at least one operand") }
            let ax = try axis("axis", rank: first.rank)
            var shape = first.shape
            shape[ax] = 0
            for t in operands {
                var s = t.shape
                if s.count == first.rank { s[ax] = first.shape[ax] }
                if t.dtype != first.dtype || s != first.shape {
                    throw ArcError("operands must match except on axis \(ax): \(first) and \(t)")
                }
                // Checked: IR text can name one operand 2^16 times (found by fuzzing a sum that trapped).
                let (sum, overflow) = shape[ax].addingReportingOverflow(t.shape[ax])
                if overflow || sum > maxTensorBytes { throw ArcError("concatenated axis \(ax) is larger than the 2^48 limit") }
                shape[ax] = sum
            }
            return first.with(shape: shape)

        case .broadcast:
            try need(1)
            let d = try needDeclared()
            let x = operands[0]
            if d.dtype != x.dtype || !isBroadcastable(x.shape, to: d.shape) {
                throw ArcError("cannot broadcast \(x) to \(d)")
            }
            return d

        case .rope:
            try need(3)
            try needF32(operands)
            let (x, c, s) = (operands[0], operands[1], operands[2])
            if x.rank < 3 || x.shape[x.rank - 1] % 2 != 0 {
                throw ArcError("x must be [..., S, H, D] with even D, got \(x)")
            }
            let want = [x.shape[x.rank - 3], x.shape[x.rank - 1]]
            if c.shape != want || s.shape != want {
                throw ArcError("cos and sin must be f32\(want) for \(x), got \(c) and \(s)")
            }
            return x

        case .attention:
            // Optional 4th operand: an additive logit bias [H, Sq, Sk] shared by the batch (T5's
            // relative positions). `causal`: query i sees keys j <= i (CLIP's text encoder).
            if operands.count != 3 && operands.count != 4 { throw ArcError("expects q, k, v and an optional bias, got \(operands.count) operands") }
            try needF32(operands)
            let (q, k, v) = (operands[0], operands[1], operands[2])
            if q.rank != 4 || k.rank != 4 || v.rank != 4 {
                throw ArcError("q, k, v must be [B, S, H, D], got \(q), \(k), \(v)")
            }
            if k.shape != v.shape || q.shape[0] != k.shape[0] || q.shape[2] != k.shape[2] || q.shape[3] != k.shape[3] {
                throw ArcError("q \(q), k \(k), v \(v) disagree on batch, heads or head size")
            }
            if operands.count == 4 && operands[3].shape != [q.shape[2], q.shape[1], k.shape[1]] {
                throw ArcError("bias must be f32[\(q.shape[2]),\(q.shape[1]),\(k.shape[1])] ([H, Sq, Sk]), got \(operands[3])")
            }
            if attributes["causal"]?.boolValue == true && q.shape[1] != k.shape[1] {
                throw ArcError("causal attention needs as many queries as keys, got \(q) and \(k)")
            }
            _ = try float("scale")
            return q

        case .gather:
            // table [V, D...], indices f32[...] holding integers in [0, V) → [indices..., D...].
            try need(2)
            let (table, idx) = (operands[0], operands[1])
            if table.rank < 1 { throw ArcError("table must have rank >= 1, got \(table)") }
            if idx.dtype != .f32 { throw ArcError("indices must be f32 (integer values), got \(idx)") }
            return table.with(shape: idx.shape + Array(table.shape.dropFirst()))

        case .scatter_add:
            // updates [indices..., D...], indices f32[...] (integers in [0, V)) → declared [V, D...].
            try need(2)
            try needF32(operands)
            let d = try needDeclared()
            let (upd, idx) = (operands[0], operands[1])
            if d.rank < 1 || upd.shape != idx.shape + Array(d.shape.dropFirst()) {
                throw ArcError("updates \(upd) must be indices \(idx) followed by the row shape of \(d)")
            }
            return d

        case .attention_grad:
            // Operands q, k, v, [bias], out, dout (out = attention(q, k, v, [bias]), dout = ∂L/∂out).
            // part "qkv": [B, Sq + 2·Sk, H, D] holding ∂q | ∂k | ∂v along the sequence axis (one
            // kernel computes all three); part "bias": ∂bias [H, Sq, Sk] (summed over the batch).
            if operands.count != 5 && operands.count != 6 { throw ArcError("expects q, k, v, an optional bias, out and dout, got \(operands.count) operands") }
            let forward = try resultType(.attention, operands: Array(operands.dropLast(2)), attributes: attributes, declared: nil)
            if operands[operands.count - 2] != forward || operands[operands.count - 1] != forward {
                throw ArcError("out and dout must be \(forward), got \(operands[operands.count - 2]) and \(operands[operands.count - 1])")
            }
            let (q, k) = (operands[0], operands[1])
            switch attributes["part"]?.stringValue {
            case "qkv": return q.with(shape: [q.shape[0], q.shape[1] + 2 * k.shape[1], q.shape[2], q.shape[3]])
            case "bias":
                if operands.count != 6 { throw ArcError("part \"bias\" needs a bias operand") }
                return operands[3]
            default: throw ArcError("needs 'part', \"qkv\" or \"bias\"")
            }

        case .conv2d:
            // x [N, C, H, W], w [O, C, KH, KW]; stride [sh, sw], padding [ph, pw] (zeros, both sides),
            // dilation [dh, dw] (kernel taps dh, dw apart; default 1: the weight gradient of a strided
            // convolution is a dilated one).
            try need(2)
            try needF32(operands)
            let (x, w) = (operands[0], operands[1])
            if x.rank != 4 || w.rank != 4 { throw ArcError("x must be [N, C, H, W] and w [O, C, KH, KW], got \(x) and \(w)") }
            if w.shape[1] != x.shape[1] { throw ArcError("w \(w) expects \(w.shape[1]) input channels, x \(x) has \(x.shape[1])") }
            let stride = attributes["stride"]?.intsValue ?? [1, 1], pad = attributes["padding"]?.intsValue ?? [0, 0]
            let dil = attributes["dilation"]?.intsValue ?? [1, 1]
            if stride.count != 2 || pad.count != 2 || dil.count != 2 || stride.contains(where: { $0 < 1 }) || pad.contains(where: { $0 < 0 }) || dil.contains(where: { $0 < 1 }) {
                throw ArcError("'stride' and 'dilation' must be two integers >= 1 and 'padding' two integers >= 0")
            }
            // Attributes come from IR text: bounded before any arithmetic (a dilation or padding
            // of 2^62 overflowed here; found by fuzzing).
            if (stride + pad).contains(where: { $0 > 1 << 32 }) || dil.contains(where: { $0 > 1 << 16 }) {
                throw ArcError("'stride' and 'padding' must be at most 2^32 and 'dilation' at most 2^16, got \(stride), \(pad), \(dil)")
            }
            let kh = dil[0] * (w.shape[2] - 1) + 1, kw = dil[1] * (w.shape[3] - 1) + 1
            let ho = (x.shape[2] + 2 * pad[0] - kh) / stride[0] + 1
            let wo = (x.shape[3] + 2 * pad[1] - kw) / stride[1] + 1
            if x.shape[2] + 2 * pad[0] < kh || x.shape[3] + 2 * pad[1] < kw {
                throw ArcError("kernel \(w.shape[2])×\(w.shape[3]) (dilated \(kh)×\(kw)) is larger than the padded input \(x)")
            }
            return x.with(shape: [x.shape[0], w.shape[0], ho, wo])

        case .arc_step:
            // x [..., T, F]; means [..., T, K·F]; log-weights [..., T, K·P]; rates [..., T, (K−1)·P].
            try need(4)
            try needF32(operands)
            let (x, mu, lw, g) = (operands[0], operands[1], operands[2], operands[3])
            guard let k = attributes["components"]?.intValue, k >= 1,
                  let p = attributes["positions"]?.intValue, p >= 1 else {
                throw ArcError("needs integer attributes 'components' and 'positions'")
            }
            _ = try float("delta")
            // Bounded before k·f and (k−1)·p below can overflow (IR text may say components = 2^62).
            guard k <= 1 << 16, p <= 1 << 16 else { throw ArcError("'components' and 'positions' must be at most 65536, got \(k) and \(p)") }
            guard x.rank >= 1, let f = x.shape.last, f % p == 0 else { throw ArcError("x \(x): last dimension must be a multiple of positions \(p)") }
            let lead = Array(x.shape.dropLast())
            for (t, last) in [(mu, k * f), (lw, k * p), (g, (k - 1) * p)] where t.shape != lead + [last] {
                throw ArcError("operands must be x [..., F], means [..., K·F], log-weights [..., K·P], rates [..., (K−1)·P]; got \(x), \(mu), \(lw), \(g) for K = \(k), P = \(p)")
            }
            return x

        case .fusion:
            guard let body = region else { throw ArcError("needs a region") }
            let ins = body.inputs
            if ins.count != operands.count {
                throw ArcError("region has \(ins.count) inputs for \(operands.count) operands")
            }
            for (i, id) in ins.enumerated() where body[id].type != operands[i] || body[id].key != String(i) {
                throw ArcError("region input \(i) must be keyed \"\(i)\" with type \(operands[i]), got \(body[id].type)")
            }
            guard body.outputs.count == 1 else { throw ArcError("region must have exactly one output") }
            return body.type(body.outputs[0].value)

        default:
            throw ArcError("has no type rule")
        }
    }

    /// Numpy-style broadcasting, aligned on the right: each source dimension is 1 or equal.
    public static func isBroadcastable(_ from: [Int], to: [Int]) -> Bool {
        if from.count > to.count { return false }
        let offset = to.count - from.count
        for (i, d) in from.enumerated() where d != 1 && d != to[offset + i] { return false }
        return true
    }

    /// The common broadcast shape of two shapes, or nil.
    public static func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        let n = Swift.max(a.count, b.count)
        var out = [Int](repeating: 1, count: n)
        for i in 0..<n {
            let da = i < n - a.count ? 1 : a[i - (n - a.count)]
            let db = i < n - b.count ? 1 : b[i - (n - b.count)]
            if da != db && da != 1 && db != 1 { return nil }
            out[i] = da == 1 ? db : da
        }
        return out
    }
}
