// Checks a graph's structure and types; messages name the op, its value and its source line.

public enum Verifier {
    public static func verify(_ module: Module) throws {
        for g in module.graphs { try verify(g) }
    }

    public static func verify(_ graph: Graph, isRegion: Bool = false) throws {
        let names = Printer.valueNames(graph)
        func fail(_ id: ValueID, _ message: String) -> ArcError {
            let node = graph[id]
            let at = node.line.map { "line \($0): " } ?? ""
            return ArcError("\(at)\(node.op.rawValue) %\(names[id]) in @\(graph.name): \(message)")
        }
        var seenNames = Set<String>()
        var inputKeys = Set<String>(), weightKeys = Set<String>()
        for (i, node) in graph.nodes.enumerated() {
            // Before anything multiplies the dimensions: IR text is input, and f32[2^62,4] must
            // be an error, not an overflow trap in `count` or in the memory planner.
            if let problem = sizeProblem(node.type) { throw fail(i, problem) }
            if let n = node.name {
                if n.isEmpty || n.allSatisfy(\.isNumber) { throw fail(i, "invalid value name '\(n)'") }
                if !seenNames.insert(n).inserted { throw fail(i, "value name %\(n) is used twice") }
            }
            for o in node.operands where o < 0 || o >= i {
                throw fail(i, "operand \(o) is not defined before its use")
            }
            switch node.op {
            case .input, .weight:
                guard let key = node.key, !key.isEmpty else { throw fail(i, "needs a non-empty name") }
                if node.op == .input && !inputKeys.insert(key).inserted { throw fail(i, "input \"\(key)\" declared twice") }
                if node.op == .weight && !weightKeys.insert(key).inserted { throw fail(i, "weight \"\(key)\" declared twice") }
                // One name for two tensors: a gradient, a binding or a --wrt list would pick one of them.
                if inputKeys.contains(key) && weightKeys.contains(key) { throw fail(i, "\"\(key)\" names both an input and a weight") }
                if node.op == .weight && isRegion { throw fail(i, "a fusion region cannot read weights; pass them as operands") }
            case .constant:
                guard let c = node.constant else { throw fail(i, "has no value") }
                if case .dense(let d) = c, d.count != node.type.count {
                    throw fail(i, "has \(d.count) values for \(node.type) (\(node.type.count) elements)")
                }
                if node.type.dtype != .f32 { throw fail(i, "constants are f32") }
            case .fusion:
                if isRegion { throw fail(i, "fusions do not nest") }
                if let r = node.region {
                    do { try verify(r, isRegion: true) } catch let e as ArcError { throw fail(i, "region: \(e.message)") }
                }
            default:
                break
            }
            let declared: TensorType? = node.type
            let inferred: TensorType
            do {
                inferred = try OpSemantics.resultType(node.op, operands: node.operands.map { graph[$0].type },
                                                      attributes: node.attributes, declared: declared, region: node.region)
            } catch let e as ArcError {
                throw fail(i, e.message)
            }
            if inferred != node.type { throw fail(i, "result type is \(inferred), but \(node.type) is declared") }
        }
        if graph.outputs.isEmpty { throw ArcError("graph @\(graph.name) has no outputs") }
        var outNames = Set<String>()
        for o in graph.outputs {
            if o.value < 0 || o.value >= graph.nodes.count { throw ArcError("output \"\(o.name)\" of @\(graph.name) names no value") }
            if !outNames.insert(o.name).inserted { throw ArcError("output \"\(o.name)\" of @\(graph.name) declared twice") }
        }
    }
}

/// The largest tensor the IR accepts, in bytes (2^48, 256 TiB): far above any model, and small
/// enough that sums of offsets and sizes in the memory planner and the C code never overflow.
public let maxTensorBytes = 1 << 48

/// Why `type` cannot be a tensor (a negative dimension, or more than `maxTensorBytes`), or nil.
public func sizeProblem(_ type: TensorType) -> String? {
    if let d = type.shape.first(where: { $0 < 0 }) { return "negative dimension \(d) in \(type)" }
    var bytes = type.dtype.byteSize
    for d in type.shape {
        let (p, overflow) = bytes.multipliedReportingOverflow(by: d)
        if overflow || p > maxTensorBytes { return "\(type) is larger than the 2^48-byte limit for one tensor" }
        bytes = p
    }
    return nil
}
