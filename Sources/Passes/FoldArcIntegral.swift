// fold-arc-integral: each closed-form ArcFlow step, written by the sampler in primitive ops,
// becomes one `arc_step` op: one fused kernel that reads the head outputs and x and writes the
// next x, with Δ = σ_i − σ_{i+1} folded in as a constant.

import IR

/// The sampler tags every op of step i with `arc_step = i` and `arc_delta = Δ`. The step computes
///   x − Δ·reshape(reduce_sum(softmax(ℓ)·concat(1, φ(γ·Δ))·μ, K))
/// from four values: x [1, T, F] (the root's first operand), means [1, T, K·F], log-weights
/// [1, T, K·P] and rates [1, T, (K−1)·P]. The pass reads K and P from the softmax and Δ from the
/// tag (not from the graph: fold-constants drops a ×1, and Δ = 1 in a one-step sampler), checks
/// that the tagged ops read nothing else, and replaces them.
public let foldArcIntegral = Pass(name: "fold-arc-integral",
                                  summary: "replace each tagged closed-form arc step by one fused arc_step kernel") { module, _ in
    try module.forEachGraph { g in g = try foldArcSteps(g) }
}

func foldArcSteps(_ graph: Graph) throws -> Graph {
    var steps: [Int: [ValueID]] = [:]
    for (i, n) in graph.nodes.enumerated() {
        if let s = n.int("arc_step") { steps[s, default: []].append(i) }
    }
    if steps.isEmpty { return graph }
    let users = graph.users()
    var replacement: [ValueID: Node] = [:]     // root → arc_step node (operands in OLD ids)
    for (step, ids) in steps.sorted(by: { $0.key < $1.key }) {
        let members = Set(ids)
        func fail(_ why: String) -> ArcError { ArcError("arc step \(step): \(why)") }
        let roots = ids.filter { id in users[id].allSatisfy { !members.contains($0) } }
        guard roots.count == 1, let root = roots.first, graph[root].op == .sub else { throw fail("expected one root x − Δ·v") }
        guard let softmax = ids.first(where: { graph[$0].op == .softmax }) else { throw fail("no softmax over the components") }
        let lwShape = graph[softmax].type.shape
        guard lwShape.count == 5 else { throw fail("softmax operand must be [1, T, K, 1, P]") }
        let (k, p) = (lwShape[2], lwShape[4])
        guard let delta = graph[root].float("arc_delta") else { throw fail("the root has no arc_delta (Δ) tag") }
        // The step's inputs: every non-constant operand from outside the tagged ops.
        let x = graph[root].operands[0]
        let f = graph[x].type.shape.last!
        var external = Set<ValueID>()
        for id in ids { for o in graph[id].operands where !members.contains(o) && graph[o].op != .constant { external.insert(o) } }
        external.remove(x)
        func role(_ last: Int) -> ValueID? { external.first { graph[$0].type.shape.last == last } }
        guard external.count == 3, let means = role(k * f), let logw = role(k * p), let rates = role((k - 1) * p) else {
            throw fail("expected inputs x, means [.., \(k * f)], log-weights [.., \(k * p)], rates [.., \((k - 1) * p)]")
        }
        replacement[root] = Node(op: .arc_step, operands: [x, means, logw, rates], type: graph[root].type,
                                 attributes: ["delta": .float(delta), "components": .int(k), "positions": .int(p)],
                                 name: graph[root].name)
    }
    var r = GraphRewriter(from: graph)
    for (i, node) in graph.nodes.enumerated() {
        r.copy(replacement[i] ?? node, as: i)
    }
    return eliminateDeadCode(r.finish(outputs: graph.outputs))
}
