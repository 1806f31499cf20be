// fuse-lora: x·Wᵀ + s·(x·Aᵀ)·Bᵀ  →  x·(W + s·B·A)ᵀ, with the new weight computed from the
// untouched base weight in f32 (lift-weights then moves that math to compile time).

import IR

/// Matches the unfused LoRA form the model builders emit (PEFT's forward):
///   add(matmul(x, W){transpose_b}, [mul(] matmul(matmul(x, A){transpose_b}, B){transpose_b} [, s)])
/// where W, A, B (and s) depend on weights and constants only, and the two LoRA matmuls have no
/// other users. The rewrite leaves one GEMM at run time; the adapter costs nothing per step.
public let fuseLoRA = Pass(name: "fuse-lora",
                           summary: "fold LoRA adapters into their base weights: W' = W + (α/r)·B·A, in f32") { module, context in
    module.forEachGraph { g in
        let (fused, count) = fuseLoRAAdapters(g)
        if count > 0 { context.note("fuse-lora: fused \(count) adapters in @\(g.name)") }
        g = fused
    }
}

func fuseLoRAAdapters(_ graph: Graph) -> (Graph, Int) {
    let users = graph.users()
    let outputs = Set(graph.outputs.map(\.value))
    let weightOnly = graph.weightOnlyValues()
    func isMatmulTB(_ id: ValueID) -> Bool { graph[id].op == .matmul && graph[id].flag("transpose_b") && !graph[id].flag("transpose_a") }
    func singleUse(_ id: ValueID) -> Bool { users[id].count == 1 && !outputs.contains(id) }

    /// For `add(a, b)`: (x, W, A, B, scale) when it is a LoRA-adapted linear.
    func match(_ add: Node) -> (x: ValueID, w: ValueID, a: ValueID, b: ValueID, scale: ValueID?)? {
        guard add.op == .add else { return nil }
        for (baseID, loraID) in [(add.operands[0], add.operands[1]), (add.operands[1], add.operands[0])] {
            guard isMatmulTB(baseID) else { continue }
            var up = loraID
            var scale: ValueID?
            if graph[loraID].op == .mul, singleUse(loraID) {
                let (p, q) = (graph[loraID].operands[0], graph[loraID].operands[1])
                if isMatmulTB(p) && weightOnly[q] { up = p; scale = q } else if isMatmulTB(q) && weightOnly[p] { up = q; scale = p }
            }
            guard isMatmulTB(up), singleUse(up) else { continue }
            let down = graph[up].operands[0]
            guard isMatmulTB(down), singleUse(down) else { continue }
            let x = graph[baseID].operands[0], w = graph[baseID].operands[1]
            let a = graph[down].operands[1], b = graph[up].operands[1]
            guard graph[down].operands[0] == x, weightOnly[w], weightOnly[a], weightOnly[b] else { continue }
            guard graph[a].type.rank == 2, graph[b].type.rank == 2, graph[w].type.rank == 2 else { continue }
            // A scale of the activation's shape can move onto W only if it is one value.
            if let s = scale, graph[s].type.shape != graph[w].type.shape {
                guard case .splat? = graph[s].constant else { continue }
            }
            return (x, w, a, b, scale)
        }
        return nil
    }

    var r = GraphRewriter(from: graph)
    var count = 0
    for (i, node) in graph.nodes.enumerated() {
        guard let m = match(node) else { r.copy(node, as: i); continue }
        let wType = graph[m.w].type
        // ΔW = B·A: [out, r]·[r, in] = [out, in], in f32 like every compute op.
        var delta = r.append(Node(op: .matmul, operands: [r.map[m.b], r.map[m.a]], type: wType))
        if let s = m.scale {
            var scale = r.map[s]
            if graph[s].type.shape != wType.shape {
                // A splat of the activation's shape (checked by `match`): the same value at W's shape.
                scale = r.append(Node(op: .constant, type: wType, constant: graph[s].constant))
            }
            delta = r.append(Node(op: .mul, operands: [delta, scale], type: wType))
        }
        let fusedW = r.append(Node(op: .add, operands: [r.map[m.w], delta], type: wType))
        r.map[i] = r.append(Node(op: .matmul, operands: [r.map[m.x], fusedW], type: node.type,
                                 attributes: ["transpose_b": .bool(true)], name: node.name))
        count += 1
    }
    return (count == 0 ? graph : eliminateDeadCode(r.finish(outputs: graph.outputs)), count)
}
