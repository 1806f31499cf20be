// split-concat-matmul: concat(x₁, …, xₙ; last axis)·W  →  x₁·W₁ + … + xₙ·Wₙ, Wᵢ the matching
// K-slices of a weight-only W (lift-weights then cuts and packs them at compile time).

import IR

/// FLUX's single blocks project concat(attention, MLP) [S, 5·width] through `proj_out`: the
/// concat alone copied 5·width floats per token (1.6% of a width-768 evaluation at 256 tokens)
/// only for the GEMM to read them again. Split along K, each part feeds its own GEMM in place
/// and the sum joins the element-wise tail (bias, gate, residual) that fuse-elementwise puts
/// after the last GEMM anyway. The sum is the same dot product in another order (f32 rounding
/// only). Applies when the concat has no other user and W depends on weights and constants
/// only (a run-time W would be sliced at every step).
public let splitConcatMatmul = Pass(name: "split-concat-matmul",
                                    summary: "concat(x1..xn, last axis)·W → x1·W1 + … + xn·Wn over K-slices of a weight") { module, context in
    module.forEachGraph { g in
        let (split, count) = splitConcatMatmuls(g)
        if count > 0 { context.note("split-concat-matmul: split \(count) matmuls in @\(g.name)") }
        g = split
    }
}

func splitConcatMatmuls(_ graph: Graph) -> (Graph, Int) {
    let users = graph.users()
    let outputs = Set(graph.outputs.map(\.value))
    let weightOnly = graph.weightOnlyValues()
    /// The concat's parts when `node` is matmul(concat(parts; last axis), W) as described above.
    func match(_ node: Node) -> [ValueID]? {
        guard node.op == .matmul, !node.flag("transpose_a"), node.operands.count == 2 else { return nil }
        let (x, w) = (node.operands[0], node.operands[1])
        let c = graph[x]
        guard c.op == .concat, c.int("axis") == c.type.rank - 1, c.operands.count > 1,
              users[x].count == 1, !outputs.contains(x), weightOnly[w], graph[w].type.rank == 2 else { return nil }
        return c.operands
    }

    var r = GraphRewriter(from: graph)
    var count = 0
    for (i, node) in graph.nodes.enumerated() {
        guard let parts = match(node) else { r.copy(node, as: i); continue }
        let w = node.operands[1], wType = graph[w].type
        let transposed = node.flag("transpose_b")   // W is [N, K] (a linear's weight), else [K, N]
        let kAxis = transposed ? 1 : 0
        var k0 = 0
        var products: [ValueID] = []
        for part in parts {
            let k = graph[part].type.shape.last!
            var start = [0, 0], end = wType.shape
            start[kAxis] = k0
            end[kAxis] = k0 + k
            k0 += k
            var sliceShape = wType.shape
            sliceShape[kAxis] = k
            let slice = r.append(Node(op: .slice, operands: [r.map[w]], type: wType.with(shape: sliceShape),
                                      attributes: ["start": .ints(start), "end": .ints(end)]))
            products.append(r.append(Node(op: .matmul, operands: [r.map[part], slice], type: node.type, attributes: node.attributes)))
        }
        var sum = products[0]
        for (j, p) in products.enumerated().dropFirst() {
            sum = r.append(Node(op: .add, operands: [sum, p], type: node.type, name: j == products.count - 1 ? node.name : nil))
        }
        r.map[i] = sum
        count += 1
    }
    return (count == 0 ? graph : eliminateDeadCode(r.finish(outputs: graph.outputs)), count)
}
