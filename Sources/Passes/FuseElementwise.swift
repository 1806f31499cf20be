// fuse-elementwise: chains of element-wise ops (and the broadcasts feeding them) become one
// kernel; a GEMM or convolution whose only user is such a chain becomes that kernel's head
// (epilogue fusion: a conv2d's bias add and SiLU run over its output in place).

import IR

public let fuseElementwise = Pass(name: "fuse-elementwise",
                                  summary: "fuse element-wise chains and broadcasts into one loop; fold epilogues into GEMMs") { module, _ in
    module.forEachGraph { g in g = fuseElementwiseOps(g) }
}

func fuseElementwiseOps(_ graph: Graph) -> Graph {
    let users = graph.users()
    let outputs = Set(graph.outputs.map(\.value))
    var group = [Int](repeating: -1, count: graph.nodes.count)   // group id = its root's value id
    var hasHead = Set<Int>()

    // Walk backwards so a node joins its consumers' group when all of them share one.
    for i in graph.nodes.indices.reversed() {
        let node = graph[i]
        // The one group all users belong to, if every user is an element-wise member of it
        // (a GEMM head reads its operands from memory, so they stay outside).
        let consumerGroups = Set(users[i].map { graph[$0].op.isElementwise ? group[$0] : -1 })
        let single = !outputs.contains(i) && !users[i].isEmpty && consumerGroups.count == 1 ? consumerGroups.first! : -1
        if node.op.isElementwise {
            group[i] = single >= 0 ? single : i
        } else if node.op.isFusionHead, single >= 0, users[i].count == 1, !hasHead.contains(single),
                  graph[single].type.shape == node.type.shape {
            // A GEMM's (or convolution's) result feeds exactly one element-wise chain: write
            // it into the chain's output and run the chain over it in place.
            group[i] = single
            hasHead.insert(single)
        }
    }

    var r = GraphRewriter(from: graph)
    var members: [Int: [ValueID]] = [:]
    for i in graph.nodes.indices where group[i] >= 0 { members[group[i], default: []].append(i) }

    for (i, node) in graph.nodes.enumerated() {
        if group[i] >= 0 {
            guard group[i] == i else { continue }
            let (region, operands) = makeRegion(graph, members: members[i]!, root: i)
            let label = kernelLabel(region)
            r.map[i] = r.append(Node(op: .fusion, operands: operands.map { r.map[$0] }, type: node.type,
                                     attributes: ["kernel": .string(label)], region: region, name: node.name))
        } else {
            r.copy(node, as: i)
        }
    }
    return eliminateDeadCode(r.finish(outputs: graph.outputs))
}

/// Builds the region of one group: external values become region inputs "0", "1", …;
/// splat constants are copied in; broadcasts of external values are copied in as loads.
private func makeRegion(_ graph: Graph, members: [ValueID], root: ValueID) -> (Graph, [ValueID]) {
    let memberSet = Set(members)
    var region = Graph(name: "region")
    var operands: [ValueID] = []
    var inputOf: [ValueID: ValueID] = [:]   // main id → region id of the input
    var local: [ValueID: ValueID] = [:]     // main id → region id

    func input(_ id: ValueID) -> ValueID {
        if let r = inputOf[id] { return r }
        region.nodes.append(Node(op: .input, type: graph[id].type, key: String(operands.count), name: "in\(operands.count)"))
        operands.append(id)
        inputOf[id] = region.nodes.count - 1
        return region.nodes.count - 1
    }
    func operand(_ id: ValueID) -> ValueID {
        if let l = local[id] { return l }
        let n = graph[id]
        if n.op == .constant, case .splat = n.constant {
            region.nodes.append(Node(op: .constant, type: n.type, constant: n.constant))
        } else if n.op == .broadcast {
            let src = graph[n.operands[0]]
            if src.op == .constant, case .splat(let v)? = src.constant {
                region.nodes.append(Node(op: .constant, type: n.type, constant: .splat(v)))
            } else {
                let s = input(n.operands[0])
                region.nodes.append(Node(op: .broadcast, operands: [s], type: n.type))
            }
        } else {
            return input(id)
        }
        local[id] = region.nodes.count - 1
        return region.nodes.count - 1
    }

    // Inputs first (the printed region reads top-down), then the members in order.
    var body: [Node] = []
    var bodyIDs: [ValueID] = []
    for m in members {
        var n = graph[m]
        n.operands = n.operands.map { memberSet.contains($0) ? -1 - $0 : (n.op.isFusionHead ? input($0) : operand($0)) }
        n.name = nil
        body.append(n)
        bodyIDs.append(m)
    }
    let firstBody = region.nodes.count
    for (k, var n) in body.enumerated() {
        n.operands = n.operands.map { $0 < 0 ? local[-1 - $0]! : $0 }
        region.nodes.append(n)
        local[bodyIDs[k]] = firstBody + k
    }
    region.outputs = [GraphOutput(name: "0", value: local[root]!)]
    return (moveInputsFirst(region), operands)
}

/// Reorders a region so its inputs come first, in key order (the verifier's convention).
private func moveInputsFirst(_ g: Graph) -> Graph {
    let inputs = g.nodes.indices.filter { g[$0].op == .input }.sorted { Int(g[$0].key!)! < Int(g[$1].key!)! }
    let order = inputs + g.nodes.indices.filter { g[$0].op != .input }
    var r = GraphRewriter(from: g)
    for i in order { r.copy(g[i], as: i) }
    return r.finish(outputs: g.outputs)
}

/// A readable kernel label from the region's ops: `matmul_add_gelu`.
func kernelLabel(_ region: Graph) -> String {
    var ops: [String] = []
    for n in region.nodes where !n.op.isSource && n.op != .broadcast && !ops.contains(n.op.rawValue) {
        ops.append(n.op.rawValue)
    }
    if ops.isEmpty { ops = ["copy"] }
    return ops.prefix(4).joined(separator: "_")
}
