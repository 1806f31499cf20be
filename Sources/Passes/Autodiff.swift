// autodiff: reverse mode as a graph transformation. The forward graph is copied, then each op on
// a path from a `wrt` key to the loss adds its VJP (Sources/IR/Derivatives.swift) in reverse
// topological order. The result is an ordinary graph: it compiles through the same pipeline.

import IR

/// The output name of the gradient of `key` in a gradient graph.
public func gradientOutputName(_ key: String) -> String { "grad:" + key }

/// Builds a graph computing `loss` = sum of the graph output named `loss` (f32[] scalar) and, for each key in
/// `wrt` (keys of `weight` or `input` nodes), its gradient as an f32 output named `gradientOutputName(key)`,
/// in `wrt` order. Other outputs of the original graph are kept only if `keepOutputs` is true.
///
/// - Cotangents accumulate with `add` where a value has several users; only values on a
///   differentiable path from a `wrt` key to the loss get backward ops.
/// - The backward reads forward values directly: plan-memory keeps each alive until its last
///   (backward) use.
/// - `checkpoint` names forward values (SSA names; nodes tagged with a `checkpoint` attribute,
///   e.g. by `GraphBuilder.withAttributes(["checkpoint": .bool(true)])`, count too) that the
///   backward recomputes instead of reading: each is recomputed from its untagged operands
///   (recursively through tagged ones) just before the first VJP that needs it, tagged
///   `recompute` so that CSE does not merge it back into the forward value.
/// - `fusion` nodes are differentiated through their regions (inlined first); `arc_step`
///   tags are dropped so fold-arc-integral leaves the step as primitive ops the backward reads.
/// - Kept outputs whose names clash with `loss` or a gradient name are dropped.
public func gradientGraph(_ graph: Graph, loss: String, wrt: [String], keepOutputs: Bool = false, checkpoint: Set<String> = []) throws -> Graph {
    let g = inlineFusions(graph)
    guard let lossOutput = g.outputs.first(where: { $0.name == loss }) else {
        throw ArcError("no output named '\(loss)' to use as the loss (outputs: \(g.outputs.map(\.name).joined(separator: ", ")))")
    }
    let names = Printer.valueNames(g)
    func describe(_ id: ValueID) -> String {
        let n = g[id]
        return "\(n.op.rawValue) %\(names[id])" + (n.line.map { " at line \($0)" } ?? "")
    }
    let lossID = lossOutput.value
    if g[lossID].op == .greater || g[lossID].op == .greater_equal {
        throw ArcError("loss '\(loss)' is the output of \(describe(lossID)): integer-valued (0 or 1), not differentiable")
    }

    // The wrt keys and their nodes.
    var wrtIDs: [ValueID] = []
    for key in wrt {
        guard let id = g.nodes.indices.first(where: { (g[$0].op == .weight || g[$0].op == .input) && g[$0].key == key }) else {
            let keys = { (op: OpCode) in g.nodes.filter { $0.op == op }.map { $0.key! }.joined(separator: ", ") }
            throw ArcError("wrt '\(key)' names no weight or input (weights: \(keys(.weight)); inputs: \(keys(.input)))")
        }
        if wrtIDs.contains(id) { throw ArcError("wrt lists '\(key)' twice") }
        wrtIDs.append(id)
    }
    for name in checkpoint where !names.contains(name) {
        throw ArcError("checkpoint '\(name)' names no value of @\(g.name)")
    }

    // Active values: on a differentiable path from a wrt key to the loss.
    let n = g.nodes.count
    func differentiableEdges(_ id: ValueID) -> [(operand: ValueID, differentiable: Bool)] { autodiffEdges(g, id) }
    var fromWrt = [Bool](repeating: false, count: n), reachesAny = [Bool](repeating: false, count: n)
    for id in wrtIDs { fromWrt[id] = true; reachesAny[id] = true }
    for id in 0..<n {
        for (o, ok) in differentiableEdges(id) {
            if fromWrt[o] && ok { fromWrt[id] = true }
            if reachesAny[o] { reachesAny[id] = true }
        }
    }
    let (toLoss, toLossAny) = reachingLoss(g, lossID)
    let active = (0..<n).map { fromWrt[$0] && toLoss[$0] }
    for (key, id) in zip(wrt, wrtIDs) where !active[id] {
        // Name the first op between the key and the loss that stops the gradient.
        var reach = [Bool](repeating: false, count: n)
        reach[id] = true
        var blocker: ValueID?
        for u in (id + 1)..<Swift.max(n, id + 1) {
            for (o, ok) in differentiableEdges(u) where reach[o] {
                reach[u] = true
                if !ok && toLossAny[u] && blocker == nil { blocker = u }
            }
        }
        if let blk = blocker {
            throw ArcError("'\(key)' has no differentiable path to loss '\(loss)': \(describe(blk)) is not differentiable")
        }
        throw ArcError("'\(key)' does not affect loss '\(loss)'")
    }

    // Forward copy (arc_step tags dropped).
    let b = GraphBuilder(name: g.name)
    func copy(_ node: Node, _ operands: [Value], extra: [String: Attribute] = [:]) -> Value {
        var attrs = node.attributes
        attrs["arc_step"] = nil
        attrs.merge(extra) { _, new in new }
        return b.append(node.op, operands, attributes: attrs, type: node.type, key: node.key, constant: node.constant,
                        region: node.region, name: extra.isEmpty ? node.name : node.name.map { $0 + ".recompute" })
    }
    var forward: [Value] = []
    for node in g.nodes { forward.append(copy(node, node.operands.map { forward[$0] })) }

    var lossValue = b.convert(forward[lossID], to: .f32)
    if lossValue.rank > 0 { lossValue = b.reduce(.reduce_sum, lossValue, axes: Array(0..<lossValue.rank)) }
    b.output("loss", lossValue)

    // Checkpointed values are recomputed in the backward on first use.
    let tagged = (0..<n).map { id in
        !g[id].op.isSource && (g[id].attributes["checkpoint"] != nil || checkpoint.contains(names[id]))
    }
    var recomputed: [ValueID: Value] = [:]
    func backwardValue(_ id: ValueID) -> Value {
        guard tagged[id] else { return forward[id] }
        if let r = recomputed[id] { return r }
        let r = copy(g[id], g[id].operands.map(backwardValue), extra: ["recompute": .bool(true)])
        recomputed[id] = r
        return r
    }

    // Reverse sweep.
    var cotangent: [ValueID: Value] = [lossID: b.constant(1, shape: g[lossID].type.shape)]
    for id in stride(from: lossID, through: 0, by: -1) where active[id] && !g[id].op.isSource {
        guard let ct = cotangent[id] else { continue }
        let node = g[id]
        let needed = differentiableEdges(id).map { active[$0.operand] && $0.differentiable }
        if !needed.contains(true) { continue }
        let grads: [Value?]
        do {
            grads = try Derivatives.vjp(VJPArguments(builder: b, node: node, operands: node.operands.map(backwardValue),
                                                     result: backwardValue(id), cotangent: ct, needed: needed))
        } catch let e as ArcError {
            throw ArcError("\(describe(id)): \(e.message)")
        }
        for (k, o) in node.operands.enumerated() where needed[k] {
            guard let d = grads[k] else { continue }
            guard d.shape == g[o].type.shape && d.type.dtype == .f32 else {
                throw ArcError("internal error: VJP of \(describe(id)) gives \(d.type) for operand \(k) of type \(g[o].type)")
            }
            cotangent[o] = cotangent[o].map { b.append(.add, [$0, d]) } ?? d
        }
    }

    for (key, id) in zip(wrt, wrtIDs) { b.output(gradientOutputName(key), cotangent[id]!) }
    if keepOutputs {
        let taken = Set(["loss"] + wrt.map(gradientOutputName))
        for o in g.outputs where !taken.contains(o.name) { b.output(o.name, forward[o.value]) }
    }
    return eliminateDeadCode(try b.finish())
}

/// Replaces every `fusion` by its region's nodes, so autodiff sees primitive ops only.
func inlineFusions(_ graph: Graph) -> Graph {
    guard graph.nodes.contains(where: { $0.op == .fusion }) else { return graph }
    var r = GraphRewriter(from: graph)
    for (id, node) in graph.nodes.enumerated() {
        guard node.op == .fusion, let region = node.region else { r.copy(node, as: id); continue }
        var local = [ValueID](repeating: -1, count: region.nodes.count)
        for (rid, rn) in region.nodes.enumerated() {
            if rn.op == .input { local[rid] = r.map[node.operands[Int(rn.key!)!]]; continue }
            var copy = rn
            copy.operands = rn.operands.map { local[$0] }
            copy.name = nil
            local[rid] = r.append(copy)
        }
        r.map[id] = local[region.outputs[0].value]
    }
    return r.finish(outputs: graph.outputs)
}

/// The operands of node `id` with whether the gradient flows back through each.
private func autodiffEdges(_ g: Graph, _ id: ValueID) -> [(operand: ValueID, differentiable: Bool)] {
    let blocked = Derivatives.nonDifferentiableOperands(g[id])
    let hasVJP = Derivatives.hasVJP(g[id].op)
    return g[id].operands.enumerated().map { ($1, hasVJP && !blocked.contains($0)) }
}

/// Which values reach `lossID`: along differentiable edges only, and along any edge (to name
/// the op that blocks a gradient).
private func reachingLoss(_ g: Graph, _ lossID: ValueID) -> (differentiable: [Bool], any: [Bool]) {
    var toLoss = [Bool](repeating: false, count: g.nodes.count), toLossAny = toLoss
    toLoss[lossID] = true; toLossAny[lossID] = true
    for id in (0..<g.nodes.count).reversed() {
        for (o, ok) in autodiffEdges(g, id) {
            if toLoss[id] && ok { toLoss[o] = true }
            if toLossAny[id] { toLossAny[o] = true }
        }
    }
    return (toLoss, toLossAny)
}

/// The keys of the weights with a differentiable path to the output `loss`: the default `wrt`.
/// The others would have no gradient (PyTorch leaves theirs None); naming one explicitly in
/// `wrt` is an error that says what blocks it.
public func weightsAffecting(_ graph: Graph, loss: String) -> [String] {
    let g = inlineFusions(graph)
    guard let lossID = g.outputs.first(where: { $0.name == loss })?.value else { return [] }
    let toLoss = reachingLoss(g, lossID).differentiable
    return g.nodes.indices.filter { g[$0].op == .weight && toLoss[$0] }.map { g[$0].key! }
}

/// `--passes autodiff`: replaces @main by its gradient graph. Options: `autodiff.loss` (the
/// output to differentiate), `autodiff.wrt` (comma-separated keys; default every weight that affects it),
/// `autodiff.keep-outputs` (true/false), `autodiff.checkpoint` (comma-separated value names).
public let autodiff = Pass(name: "autodiff", summary: "replace @main by its gradient graph (options autodiff.loss, autodiff.wrt)") { module, context in
    guard let loss = context.options["autodiff.loss"] else { throw ArcError("needs the option autodiff.loss (the output to differentiate)") }
    if module.prologue != nil { throw ArcError("run autodiff before lift-weights (the module already has a @prologue)") }
    func list(_ key: String) -> [String]? {
        context.options[key].map { $0.split(separator: ",").map { String($0.filter { $0 != " " }) }.filter { !$0.isEmpty } }
    }
    let main = module.main
    let wrt = list("autodiff.wrt") ?? weightsAffecting(main, loss: loss)
    module.main = try gradientGraph(main, loss: loss, wrt: wrt, keepOutputs: context.options["autodiff.keep-outputs"] == "true",
                                    checkpoint: Set(list("autodiff.checkpoint") ?? []))
}
