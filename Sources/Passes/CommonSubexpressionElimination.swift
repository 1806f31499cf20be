// cse: one value per distinct computation (same op, operands, attributes and payload).

import IR

public let commonSubexpressionElimination = Pass(name: "cse", summary: "merge identical computations") { module, _ in
    module.forEachGraph { g in
        g = eliminateCommonSubexpressions(g)
    }
}

func eliminateCommonSubexpressions(_ graph: Graph) -> Graph {
    var r = GraphRewriter(from: graph)
    var seen: [Node.StructuralKey: ValueID] = [:]
    for (i, node) in graph.nodes.enumerated() {
        var n = node
        n.operands = node.operands.map { r.map[$0] }
        // Inputs are the signature: two inputs are never the same value.
        let key = n.structuralKey
        if node.op != .input, let existing = seen[key] {
            r.map[i] = existing
            continue
        }
        n.operands = node.operands
        let id = r.copy(n, as: i)
        if node.op != .input { seen[key] = id }
    }
    return r.finish(outputs: graph.outputs)
}
