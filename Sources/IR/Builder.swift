// A small builder for graphs: typed values, implicit broadcasting, operator sugar.

/// A value under construction: its id in the builder's graph and its type.
public struct Value {
    public let id: ValueID
    public let type: TensorType
    public unowned let builder: GraphBuilder

    public var shape: [Int] { type.shape }
    public var rank: Int { type.rank }
}

/// Builds a graph op by op. Type errors do not trap: the first one is recorded (with the op)
/// and `finish()` throws it, so a model driven by a user's config fails with a message.
public final class GraphBuilder {
    public private(set) var graph: Graph
    public private(set) var firstError: ArcError?
    private var weightIDs: [String: ValueID] = [:]
    private var usedNames: Set<String> = []
    private var scopeAttributes: [String: Attribute] = [:]

    public init(name: String) { graph = Graph(name: name) }

    /// Tags every node appended inside `body` with `attributes` (e.g. `arc_step = 0`), so a
    /// pass can find the ops that together implement one composite computation.
    public func withAttributes<T>(_ attributes: [String: Attribute], _ body: () throws -> T) rethrows -> T {
        let saved = scopeAttributes
        scopeAttributes.merge(attributes) { _, new in new }
        defer { scopeAttributes = saved }
        return try body()
    }

    /// Appends a node after inferring its type. The returned value is usable even on error.
    @discardableResult
    public func append(_ op: OpCode, _ operands: [Value], attributes ownAttributes: [String: Attribute] = [:], type declared: TensorType? = nil,
                       key: String? = nil, constant: ConstantData? = nil, region: Graph? = nil, name: String? = nil) -> Value {
        let attributes = op.isSource ? ownAttributes : ownAttributes.merging(scopeAttributes) { own, _ in own }
        let type: TensorType
        do {
            type = try OpSemantics.resultType(op, operands: operands.map(\.type), attributes: attributes, declared: declared, region: region)
        } catch let e as ArcError {
            if firstError == nil { firstError = ArcError("\(op.rawValue) (value \(graph.nodes.count) of @\(graph.name)): \(e.message)") }
            type = declared ?? operands.first?.type ?? .f32([])
        } catch { fatalError("unexpected error \(error)") }
        let node = Node(op: op, operands: operands.map(\.id), type: type, attributes: attributes, key: key,
                        constant: constant, region: region, name: name.map(uniqueName))
        graph.nodes.append(node)
        return Value(id: graph.nodes.count - 1, type: type, builder: self)
    }

    /// The value with id `id` (for passes that rebuild a graph).
    public func value(_ id: ValueID) -> Value { Value(id: id, type: graph.nodes[id].type, builder: self) }

    private func uniqueName(_ raw: String) -> String {
        var base = String(raw.unicodeScalars.map { c -> Character in
            (c.properties.isAlphabetic && c.isASCII) || ("0"..."9").contains(c) || c == "_" || c == "." ? Character(c) : "_"
        })
        if base.isEmpty || base.allSatisfy(\.isNumber) { base = "v" + base }
        var name = base, k = 1
        while usedNames.contains(name) { name = "\(base)_\(k)"; k += 1 }
        usedNames.insert(name)
        return name
    }

    // MARK: Sources

    public func input(_ key: String, _ type: TensorType) -> Value {
        append(.input, [], type: type, key: key, name: key)
    }

    /// A named parameter bound at load time. Asking twice for the same key gives the same value.
    public func weight(_ key: String, _ type: TensorType) -> Value {
        if let id = weightIDs[key] {
            if graph.nodes[id].type != type && firstError == nil {
                firstError = ArcError("weight '\(key)' requested as \(type) and as \(graph.nodes[id].type)")
            }
            return value(id)
        }
        let v = append(.weight, [], type: type, key: key, name: key)
        weightIDs[key] = v.id
        return v
    }

    public func constant(_ v: Float, shape: [Int] = []) -> Value {
        append(.constant, [], type: .f32(shape), constant: .splat(v))
    }

    public func constant(_ data: [Float], shape: [Int]) -> Value {
        append(.constant, [], type: .f32(shape), constant: .dense(data))
    }

    public func output(_ name: String, _ v: Value) {
        graph.outputs.append(GraphOutput(name: name, value: v.id))
    }

    /// Verifies and returns the graph.
    public func finish() throws -> Graph {
        if let e = firstError { throw e }
        try Verifier.verify(graph)
        return graph
    }

    // MARK: Element-wise

    public func unary(_ op: OpCode, _ x: Value) -> Value { append(op, [x]) }

    /// Binary element-wise op with numpy broadcasting of both sides.
    public func binary(_ op: OpCode, _ a: Value, _ b: Value) -> Value {
        guard let shape = OpSemantics.broadcastShape(a.shape, b.shape) else {
            return append(op, [a, b]) // records the shape error
        }
        return append(op, [broadcast(a, to: shape), broadcast(b, to: shape)])
    }

    public func select(_ c: Value, _ a: Value, _ b: Value) -> Value {
        let shape = OpSemantics.broadcastShape(c.shape, a.shape).flatMap { OpSemantics.broadcastShape($0, b.shape) } ?? c.shape
        return append(.select, [broadcast(c, to: shape), broadcast(a, to: shape), broadcast(b, to: shape)])
    }

    public func scalar(_ v: Float) -> Value { constant(v) }

    // MARK: Structured ops

    public func reduce(_ op: OpCode, _ x: Value, axes: [Int], keepDims: Bool = false) -> Value {
        var attrs: [String: Attribute] = ["axes": .ints(axes.map { $0 < 0 ? $0 + x.rank : $0 })]
        if keepDims { attrs["keepdims"] = .bool(true) }
        return append(op, [x], attributes: attrs)
    }

    public func softmax(_ x: Value, axis: Int = -1) -> Value {
        append(.softmax, [x], attributes: ["axis": .int(axis < 0 ? axis + x.rank : axis)])
    }

    public func logSoftmax(_ x: Value, axis: Int = -1) -> Value {
        append(.log_softmax, [x], attributes: ["axis": .int(axis < 0 ? axis + x.rank : axis)])
    }

    public func layerNorm(_ x: Value, scale: Value? = nil, bias: Value? = nil, eps: Double) -> Value {
        append(.layer_norm, [x] + [scale, bias].compactMap { $0 }, attributes: ["eps": .float(eps)])
    }

    public func rmsNorm(_ x: Value, scale: Value? = nil, eps: Double) -> Value {
        append(.rms_norm, [x] + [scale].compactMap { $0 }, attributes: ["eps": .float(eps)])
    }

    public func matmul(_ a: Value, _ b: Value, transposeA: Bool = false, transposeB: Bool = false) -> Value {
        var attrs: [String: Attribute] = [:]
        if transposeA { attrs["transpose_a"] = .bool(true) }
        if transposeB { attrs["transpose_b"] = .bool(true) }
        return append(.matmul, [a, b], attributes: attrs)
    }

    /// A PyTorch Linear: y = x·Wᵀ + b with W stored (out, in).
    public func linear(_ x: Value, weight: Value, bias: Value?) -> Value {
        let y = matmul(x, weight, transposeB: true)
        return bias.map { binary(.add, y, $0) } ?? y
    }

    public func reshape(_ x: Value, _ shape: [Int]) -> Value {
        shape == x.shape ? x : append(.reshape, [x], type: x.type.with(shape: shape))
    }

    public func transpose(_ x: Value, _ perm: [Int]) -> Value {
        perm == Array(0..<x.rank) ? x : append(.transpose, [x], attributes: ["perm": .ints(perm)])
    }

    public func slice(_ x: Value, start: [Int], end: [Int]) -> Value {
        if start.allSatisfy({ $0 == 0 }) && end == x.shape { return x }
        return append(.slice, [x], attributes: ["start": .ints(start), "end": .ints(end)])
    }

    /// Slices `range` out of one axis, keeping the others whole.
    public func slice(_ x: Value, axis: Int, _ range: Range<Int>) -> Value {
        let ax = axis < 0 ? axis + x.rank : axis
        var start = [Int](repeating: 0, count: x.rank), end = x.shape
        start[ax] = range.lowerBound
        end[ax] = range.upperBound
        return slice(x, start: start, end: end)
    }

    /// Splits one axis into `parts` equal chunks.
    public func chunk(_ x: Value, _ parts: Int, axis: Int) -> [Value] {
        let ax = axis < 0 ? axis + x.rank : axis
        let size = x.shape[ax] / parts
        return (0..<parts).map { slice(x, axis: ax, $0 * size ..< ($0 + 1) * size) }
    }

    public func concat(_ xs: [Value], axis: Int) -> Value {
        if xs.count == 1 { return xs[0] }
        let ax = axis < 0 ? axis + (xs.first?.rank ?? 0) : axis
        return append(.concat, xs, attributes: ["axis": .int(ax)])
    }

    public func broadcast(_ x: Value, to shape: [Int]) -> Value {
        x.shape == shape ? x : append(.broadcast, [x], type: x.type.with(shape: shape))
    }

    public func convert(_ x: Value, to dtype: DType) -> Value {
        x.type.dtype == dtype ? x : append(.convert, [x], type: x.type.with(dtype: dtype))
    }

    public func rope(_ x: Value, cos: Value, sin: Value) -> Value { append(.rope, [x, cos, sin]) }

    public func attention(_ q: Value, _ k: Value, _ v: Value, scale: Double, bias: Value? = nil, causal: Bool = false) -> Value {
        append(.attention, [q, k, v] + (bias.map { [$0] } ?? []),
               attributes: causal ? ["scale": .float(scale), "causal": .bool(true)] : ["scale": .float(scale)])
    }

    /// Rows of `table` [V, D...] at `indices` (f32 holding integers): embedding lookup.
    public func gather(_ table: Value, _ indices: Value) -> Value { append(.gather, [table, indices]) }

    /// NCHW convolution with OIHW weights; add the bias with a broadcast afterwards.
    public func conv2d(_ x: Value, _ w: Value, stride: Int = 1, padding: Int = 0) -> Value {
        append(.conv2d, [x, w], attributes: ["stride": .ints([stride, stride]), "padding": .ints([padding, padding])])
    }

    public func groupNorm(_ x: Value, scale: Value, bias: Value, groups: Int, eps: Double) -> Value {
        append(.group_norm, [x, scale, bias], attributes: ["groups": .int(groups), "eps": .float(eps)])
    }
}

// MARK: Operator sugar for model code

public extension Value {
    static func + (a: Value, b: Value) -> Value { a.builder.binary(.add, a, b) }
    static func - (a: Value, b: Value) -> Value { a.builder.binary(.sub, a, b) }
    static func * (a: Value, b: Value) -> Value { a.builder.binary(.mul, a, b) }
    static func / (a: Value, b: Value) -> Value { a.builder.binary(.div, a, b) }
    static func + (a: Value, b: Float) -> Value { a + a.builder.scalar(b) }
    static func - (a: Value, b: Float) -> Value { a - a.builder.scalar(b) }
    static func * (a: Value, b: Float) -> Value { a * a.builder.scalar(b) }
    static func / (a: Value, b: Float) -> Value { a / a.builder.scalar(b) }
    static func + (a: Float, b: Value) -> Value { b.builder.scalar(a) + b }
    static func - (a: Float, b: Value) -> Value { b.builder.scalar(a) - b }
    static func * (a: Float, b: Value) -> Value { b.builder.scalar(a) * b }
    static prefix func - (a: Value) -> Value { a.builder.unary(.neg, a) }

    func reshaped(_ shape: [Int]) -> Value { builder.reshape(self, shape) }
    func transposed(_ perm: [Int]) -> Value { builder.transpose(self, perm) }
    func broadcast(to shape: [Int]) -> Value { builder.broadcast(self, to: shape) }
    func apply(_ op: OpCode) -> Value { builder.unary(op, self) }
}
