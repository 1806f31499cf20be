// dce: drops values no output depends on (inputs stay: they are the graph's signature).

import IR

public let deadCodeElimination = Pass(name: "dce", summary: "remove values no output depends on") { module, _ in
    module.forEachGraph { $0 = eliminateDeadCode($0) }
}

public func eliminateDeadCode(_ graph: Graph) -> Graph {
    var live = [Bool](repeating: false, count: graph.nodes.count)
    for o in graph.outputs { live[o.value] = true }
    for i in graph.nodes.indices.reversed() {
        if graph[i].op == .input { live[i] = true }
        if live[i] { for o in graph[i].operands { live[o] = true } }
    }
    if !live.contains(false) { return graph }
    var r = GraphRewriter(from: graph)
    for (i, node) in graph.nodes.enumerated() where live[i] { r.copy(node, as: i) }
    return r.finish(outputs: graph.outputs)
}
