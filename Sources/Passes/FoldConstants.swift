// fold-constants: evaluates small all-constant subgraphs and removes arithmetic identities.

import IR

/// Largest dense constant the pass creates. Bigger results stay as computations: constants
/// are printed in the IR and emitted into C, weights never are.
public let foldedConstantLimit = 4096

public let foldConstants = Pass(name: "fold-constants",
                                summary: "evaluate small constant subgraphs (never weights); x*1, x+0 → x") { module, _ in
    try module.forEachGraph { g in g = try foldConstantsIn(g) }
}

func foldConstantsIn(_ graph: Graph) throws -> Graph {
    var r = GraphRewriter(from: graph)
    func constantOf(_ newID: ValueID) -> ConstantData? {
        let n = r.graph[newID]
        return n.op == .constant ? n.constant : nil
    }
    func isSplat(_ newID: ValueID, _ v: Float) -> Bool { constantOf(newID) == .splat(v) }

    for (i, node) in graph.nodes.enumerated() {
        let ops = node.operands.map { r.map[$0] }
        // Identities: the result is an operand (same type guaranteed by element-wise typing).
        if node.op == .mul, let keep = ops.indices.first(where: { isSplat(ops[1 - $0], 1) }) { r.map[i] = ops[keep]; continue }
        if node.op == .add, let keep = ops.indices.first(where: { isSplat(ops[1 - $0], 0) }) { r.map[i] = ops[keep]; continue }
        if (node.op == .sub || node.op == .div) && isSplat(ops[1], node.op == .sub ? 0 : 1) { r.map[i] = ops[0]; continue }

        let foldable = !node.op.isSource && node.op != .fusion && !ops.isEmpty && ops.allSatisfy { constantOf($0) != nil }
        if foldable {
            let splats = ops.compactMap { id -> Float? in if case .splat(let v)? = constantOf(id) { return v }; return nil }
            let shapeOnly = node.op == .broadcast || node.op == .reshape || node.op == .transpose || node.op == .slice
            if splats.count == ops.count && (node.op.isElementwise || shapeOnly) {
                // Splat in, splat out: evaluate one element whatever the size.
                let one = Node(op: node.op, operands: [], type: .f32([]), attributes: [:])
                let value: Float
                if shapeOnly { value = splats[0] }
                else {
                    var scalarNode = one
                    scalarNode.type = node.type.with(shape: [])
                    value = try Interpreter.evaluate(scalarNode, splats.map { Tensor(node.type.with(shape: []), [$0]) }).data[0]
                }
                if node.type.dtype == .f32 {
                    r.map[i] = r.append(Node(op: .constant, type: node.type, constant: .splat(value), name: node.name))
                    continue
                }
            } else if node.type.count <= foldedConstantLimit && node.type.dtype == .f32 {
                let args = ops.map { id -> Tensor in
                    let n = r.graph[id]
                    return Tensor(n.type, (0..<n.type.count).map { n.constant!.value(at: $0) })
                }
                let t = try Interpreter.evaluate(node, args)
                // All-equal results stay splats: later folds (broadcasts) keep them free.
                let data: ConstantData = t.data.allSatisfy({ $0 == t.data.first }) && !t.data.isEmpty ? .splat(t.data[0]) : .dense(t.data)
                r.map[i] = r.append(Node(op: .constant, type: node.type, constant: data, name: node.name))
                continue
            }
        }
        r.copy(node, as: i)
    }
    return eliminateDeadCode(r.finish(outputs: graph.outputs))
}
