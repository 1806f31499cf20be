// lift-weights: moves weight-only computation into @prologue, run once at compile time.

import IR

/// TVM's LiftTransformParams: anything computed from weights and constants alone (LoRA fusion,
/// casts from bf16, transposes) is moved to a `@prologue` graph. The compiler runs the prologue
/// once on the stored weights, in f32, and `@main` reads its outputs as ordinary weights.
/// A broadcast is never a lifted output: it would materialise a large tensor that a fused kernel
/// reads for free. Like a reshape it is copied instead: into the prologue when lifted math reads
/// it (a bias added to a weight-only product), and kept in `@main` over a lifted operand. So a
/// sampler whose timesteps are constants computes every timestep-only value once, at compile
/// time: Qwen-Image's timestep MLP and each block's modulation GEMMs (M = 1, bound by streaming
/// their weights) leave the NFE, and their weights the compiled folder.
public let liftWeights = Pass(name: "lift-weights",
                              summary: "move weight-only subgraphs to @prologue (evaluated at compile time)") { module, _ in
    var main = module.main
    var prologue = module.prologue ?? Graph(name: Module.prologueName)
    if liftWeightComputation(&main, into: &prologue) {
        module.main = main
        module.prologue = prologue
    }
}

/// Returns whether anything moved.
func liftWeightComputation(_ main: inout Graph, into prologue: inout Graph) -> Bool {
    // A value is weight-only if it is a weight, or computed from weight-only values and constants,
    // with at least one weight among its transitive sources.
    var weightOnly = [Bool](repeating: false, count: main.nodes.count)
    var hasWeight = [Bool](repeating: false, count: main.nodes.count)
    for (i, n) in main.nodes.enumerated() {
        switch n.op {
        case .weight: weightOnly[i] = true; hasWeight[i] = true
        case .constant: weightOnly[i] = true
        case .input, .fusion: break
        default:
            weightOnly[i] = n.operands.allSatisfy { weightOnly[$0] }
            hasWeight[i] = n.operands.contains { hasWeight[$0] }
        }
    }
    let liftable = main.nodes.indices.map { weightOnly[$0] && hasWeight[$0] && !main[$0].op.isSource
        && main[$0].op != .reshape && main[$0].op != .broadcast }
    // Boundary: liftable values used by something that stays, or by an output.
    let users = main.users()
    let outputs = Set(main.outputs.map(\.value))
    let boundary = Set(main.nodes.indices.filter { i in
        liftable[i] && (outputs.contains(i) || users[i].contains { !liftable[$0] })
    })
    if boundary.isEmpty { return false }

    // Copy the needed weight-only cone into the prologue.
    var needed = [Bool](repeating: false, count: main.nodes.count)
    var stack = Array(boundary)
    while let i = stack.popLast() {
        if needed[i] { continue }
        needed[i] = true
        stack.append(contentsOf: main[i].operands)
    }
    var pmap = [ValueID: ValueID]()
    var existingWeights: [String: ValueID] = [:]
    for (id, n) in prologue.nodes.enumerated() where n.op == .weight { existingWeights[n.key!] = id }
    var usedOutputNames = Set(prologue.outputs.map(\.name))
    for i in main.nodes.indices where needed[i] {
        var n = main[i]
        if n.op == .weight, let existing = existingWeights[n.key!] { pmap[i] = existing; continue }
        n.operands = n.operands.map { pmap[$0]! }
        prologue.nodes.append(n)
        pmap[i] = prologue.nodes.count - 1
    }

    // In main, each boundary value becomes a weight named after the prologue output.
    var r = GraphRewriter(from: main)
    for (i, node) in main.nodes.enumerated() {
        if boundary.contains(i) {
            let root = firstWeightKey(main, i) ?? "lifted"
            var name = "\(root)#\(node.op.rawValue)"
            var k = 1
            while usedOutputNames.contains(name) { k += 1; name = "\(root)#\(node.op.rawValue)\(k)" }
            usedOutputNames.insert(name)
            prologue.outputs.append(GraphOutput(name: name, value: pmap[i]!))
            r.map[i] = r.append(Node(op: .weight, type: node.type, key: name, name: node.name))
        } else if !liftable[i] {
            r.copy(node, as: i)
        }
    }
    main = eliminateDeadCode(r.finish(outputs: main.outputs))
    prologue = eliminateDeadCode(prologue)
    return true
}

/// The key of the first weight feeding `id`, to name lifted values after what they transform.
private func firstWeightKey(_ g: Graph, _ id: ValueID) -> String? {
    var stack = [id]
    var seen = Set<ValueID>()
    while let i = stack.popLast() {
        if !seen.insert(i).inserted { continue }
        if g[i].op == .weight { return g[i].key }
        stack.append(contentsOf: g[i].operands.reversed())
    }
    return nil
}
