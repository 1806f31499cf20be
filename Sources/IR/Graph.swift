// The IR's data structures: ops, nodes (SSA values), graphs and modules.

/// Index of a node in its graph; every node defines exactly one SSA value.
public typealias ValueID = Int

/// The op set: small and orthogonal, with a few composite ops (norms, rope, attention)
/// where a fused kernel is the point. `OpSemantics` gives their shape rules and
/// `Interpreter` their meaning.
public enum OpCode: String, CaseIterable, Hashable, Sendable {
    // Sources.
    case input, weight, constant
    // Element-wise unary.
    case neg, abs, exp, expm1, log, sqrt, rsqrt, tanh, sigmoid, silu, gelu, erf, sin, cos, convert
    // Element-wise binary; comparisons produce 1.0 or 0.0.
    case add, sub, mul, div, max, min, pow, greater, greater_equal
    // Element-wise ternary: select(c, a, b) = c != 0 ? a : b.
    case select
    // Reductions over a contiguous run of axes.
    case reduce_sum, reduce_max, reduce_mean
    // Normalizations over one axis (softmax) or the last axis (norms).
    case softmax, log_softmax, layer_norm, rms_norm
    // Per-group normalization of [N, C, spatial...] (the VAE's GroupNorm).
    case group_norm
    // Batched matrix multiply with optional transposes.
    case matmul
    // Data movement; gather picks rows of a table by (integer-valued) f32 indices, scatter_add
    // sums rows into a zero table at those indices (gather's transpose: embedding gradients).
    case reshape, transpose, slice, concat, broadcast, gather, scatter_add
    // 2-D convolution, NCHW activations, OIHW weights (cross-correlation, as PyTorch).
    case conv2d
    // Composite transformer ops; attention_grad is attention's backward (Derivatives.swift).
    case rope, attention, attention_grad
    // One closed-form ArcFlow step (reference §3.2), made by the fold-arc-integral pass.
    case arc_step
    // A fused kernel: the node's region computes its value from its operands.
    case fusion

    public var isSource: Bool { self == .input || self == .weight || self == .constant }

    public var isElementwiseUnary: Bool {
        switch self {
        case .neg, .abs, .exp, .expm1, .log, .sqrt, .rsqrt, .tanh, .sigmoid, .silu, .gelu, .erf, .sin, .cos, .convert: return true
        default: return false
        }
    }

    public var isElementwiseBinary: Bool {
        switch self {
        case .add, .sub, .mul, .div, .max, .min, .pow, .greater, .greater_equal: return true
        default: return false
        }
    }

    /// Ops computed independently per output element from same-indexed operand elements.
    public var isElementwise: Bool { isElementwiseUnary || isElementwiseBinary || self == .select }

    public var isReduction: Bool { self == .reduce_sum || self == .reduce_max || self == .reduce_mean }

    /// Ops that can head a fusion: they write the whole output first (a GEMM through OpenBLAS),
    /// then the fusion's element-wise chain runs over that buffer in place (epilogue fusion).
    public var isFusionHead: Bool { self == .matmul || self == .conv2d }
}

/// Attribute values. Floats are stored as Double and printed in shortest round-trip form.
public enum Attribute: Hashable, CustomStringConvertible, Sendable {
    case int(Int)
    case float(Double)
    case ints([Int])
    case string(String)
    case bool(Bool)

    public var description: String {
        switch self {
        case .int(let v): return String(v)
        case .float(let v): return formatFloat(v)
        case .ints(let v): return "[" + v.map(String.init).joined(separator: ",") + "]"
        case .string(let s): return quoteString(s)
        case .bool(let b): return b ? "true" : "false"
        }
    }

    public var intValue: Int? { if case .int(let v) = self { return v }; return nil }
    public var intsValue: [Int]? { if case .ints(let v) = self { return v }; return nil }
    public var boolValue: Bool? { if case .bool(let v) = self { return v }; return nil }
    public var stringValue: String? { if case .string(let v) = self { return v }; return nil }
    public var floatValue: Double? {
        switch self {
        case .float(let v): return v
        case .int(let v): return Double(v)
        default: return nil
        }
    }
}

/// Data of a `constant` node: one value repeated over the whole shape, or every element.
public enum ConstantData: Hashable, Sendable {
    case splat(Float)
    case dense([Float])

    public func value(at i: Int) -> Float {
        switch self {
        case .splat(let v): return v
        case .dense(let d): return d[i]
        }
    }
}

/// One SSA value and the op that defines it.
public struct Node: Hashable, Sendable {
    public var op: OpCode
    public var operands: [ValueID]
    public var type: TensorType
    /// Printed in sorted key order, so equal nodes print equally.
    public var attributes: [String: Attribute]
    /// Binding key of an `input` or `weight` (the name in the inputs/weights file).
    public var key: String?
    public var constant: ConstantData?
    /// Body of a `fusion`: its `input` nodes are keyed "0", "1", … after the operands.
    public var region: Graph?
    /// SSA name used by the printer; nil prints a number. Never purely numeric.
    public var name: String?
    /// Line in the source text, when parsed, for verifier messages.
    public var line: Int?

    public init(op: OpCode, operands: [ValueID] = [], type: TensorType, attributes: [String: Attribute] = [:],
                key: String? = nil, constant: ConstantData? = nil, region: Graph? = nil, name: String? = nil, line: Int? = nil) {
        self.op = op
        self.operands = operands
        self.type = type
        self.attributes = attributes
        self.key = key
        self.constant = constant
        self.region = region
        self.name = name
        self.line = line
    }

    public func int(_ key: String) -> Int? { attributes[key]?.intValue }
    public func ints(_ key: String) -> [Int]? { attributes[key]?.intsValue }
    public func float(_ key: String) -> Double? { attributes[key]?.floatValue }
    public func flag(_ key: String) -> Bool { attributes[key]?.boolValue ?? false }

    /// Structural identity (op, operands, type, attributes, payload): what CSE compares.
    public var structuralKey: StructuralKey {
        StructuralKey(op: op, operands: operands, type: type, attributes: attributes, key: key, constant: constant, region: region)
    }

    public struct StructuralKey: Hashable {
        var op: OpCode, operands: [ValueID], type: TensorType, attributes: [String: Attribute]
        var key: String?, constant: ConstantData?, region: Graph?
    }
}

/// A named graph output.
public struct GraphOutput: Hashable, Sendable {
    public var name: String
    public var value: ValueID
    public init(name: String, value: ValueID) { self.name = name; self.value = value }
}

/// A graph: nodes in topological order (operands always precede users) and named outputs.
public struct Graph: Hashable, Sendable {
    public var name: String
    public var nodes: [Node]
    public var outputs: [GraphOutput]
    /// Graph-level facts decided by passes, e.g. `arena_bytes` from plan-memory.
    public var attributes: [String: Attribute]

    public init(name: String, nodes: [Node] = [], outputs: [GraphOutput] = [], attributes: [String: Attribute] = [:]) {
        self.name = name
        self.nodes = nodes
        self.outputs = outputs
        self.attributes = attributes
    }

    public subscript(_ id: ValueID) -> Node {
        get { nodes[id] }
        set { nodes[id] = newValue }
    }

    public func type(_ id: ValueID) -> TensorType { nodes[id].type }

    public var inputs: [ValueID] { nodes.indices.filter { nodes[$0].op == .input } }
    public var weights: [ValueID] { nodes.indices.filter { nodes[$0].op == .weight } }

    /// For each value, the nodes that use it (graph outputs not included).
    public func users() -> [[ValueID]] {
        var users = [[ValueID]](repeating: [], count: nodes.count)
        for (i, n) in nodes.enumerated() { for o in n.operands { users[o].append(i) } }
        return users
    }

    /// Use counts including graph outputs.
    public func useCounts() -> [Int] {
        var counts = [Int](repeating: 0, count: nodes.count)
        for n in nodes { for o in n.operands { counts[o] += 1 } }
        for o in outputs { counts[o.value] += 1 }
        return counts
    }
}

/// A compilation unit: the run-time graph `@main`, and after lifting, a `@prologue` graph whose
/// outputs are weights of `@main` computed once at compile time from the stored weights.
public struct Module: Hashable, Sendable {
    public var graphs: [Graph]
    public init(graphs: [Graph]) { self.graphs = graphs }
    public init(_ graph: Graph) { self.graphs = [graph] }

    public static let prologueName = "prologue"

    /// The run-time entry: every graph but the prologue (a module has at most one of each).
    public var main: Graph {
        get { graphs.first { $0.name != Module.prologueName } ?? graphs[0] }
        set {
            if let i = graphs.firstIndex(where: { $0.name != Module.prologueName }) { graphs[i] = newValue } else { graphs.append(newValue) }
        }
    }

    public var prologue: Graph? {
        get { graphs.first { $0.name == Module.prologueName } }
        set {
            graphs.removeAll { $0.name == Module.prologueName }
            if let p = newValue { graphs.insert(p, at: 0) }
        }
    }
}

/// Shortest round-trip text of a float attribute; always has a '.', 'e', "inf" or "nan" so it
/// never reads back as an integer.
public func formatFloat(_ v: Double) -> String {
    if v.isNaN { return "nan" }
    if v.isInfinite { return v < 0 ? "-inf" : "inf" }
    let s = v.description
    return s.contains(".") || s.contains("e") ? s : s + ".0"
}

/// Shortest round-trip text of an f32 constant element.
public func formatFloat32(_ v: Float) -> String {
    if v.isNaN { return "nan" }
    if v.isInfinite { return v < 0 ? "-inf" : "inf" }
    let s = v.description
    return s.contains(".") || s.contains("e") ? s : s + ".0"
}

public func quoteString(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if c.value < 0x20 { out += "\\u{\(String(c.value, radix: 16))}" } else { out.unicodeScalars.append(c) }
        }
    }
    return out + "\""
}
