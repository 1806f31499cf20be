// plan-memory: one arena for all intermediate values, offsets decided at compile time.

import IR

/// Byte alignment of every arena offset: a cache line, and enough for any vector load.
public let arenaAlignment = 64

public let planMemory = Pass(name: "plan-memory",
                             summary: "assign arena offsets by liveness; reuse dead buffers, element-wise kernels in place") { module, _ in
    module.forEachGraph { g in g = planArena(g, reuse: true) }
}

/// Gives every value that needs storage an `offset` attribute and the graph an `arena_bytes`
/// attribute. Inputs and weights live outside the arena; a reshape shares its operand's bytes.
/// With `reuse`, values also live inside others (views, `Graph.contiguousSliceStart`/
/// `contiguousConcatStarts`): a contiguous slice at its offset in the operand, and the operands of a
/// contiguous concat at their offsets in it, so neither is copied (codegen sees the offsets agree).
/// With `reuse` off every value gets its own bytes (the fallback when the pass is disabled).
public func planArena(_ graph: Graph, reuse: Bool) -> Graph {
    let n = graph.nodes.count
    // Buffer of each value: itself, or the one it lives in at byte `within` of it (a reshape or a
    // slice of its operand, an operand of the concat it is written into, an element-wise fusion
    // overwriting its donor). Chains end at a root, which the arena places.
    var parent = Array(0..<n), within = [Int](repeating: 0, count: n)
    func find(_ i: Int) -> (root: Int, at: Int) {
        var i = i, at = 0
        while parent[i] != i { at += within[i]; i = parent[i] }
        return (i, at)
    }
    let external: (Int) -> Bool = { graph[find($0).root].op == .input || graph[find($0).root].op == .weight }
    var lastUse = Array(0..<n)
    for (i, node) in graph.nodes.enumerated() { for o in node.operands { lastUse[o] = max(lastUse[o], i) } }
    for o in graph.outputs { lastUse[o.value] = n }

    var first = Array(0..<n), last = lastUse
    var extent = graph.nodes.map(\.type.byteCount)   // bytes of a root's buffer, its members included
    func place(_ i: Int, in j: Int, at delta: Int) {
        let (root, at) = find(j)
        parent[i] = root
        within[i] = at + delta
    }
    for (i, node) in graph.nodes.enumerated() {
        if node.op == .reshape {
            place(i, in: node.operands[0], at: 0)
        } else if reuse, let start = graph.contiguousSliceStart(i), start % arenaAlignment == 0, !external(node.operands[0]) {
            place(i, in: node.operands[0], at: start)
        } else if reuse, let donor = inPlaceDonor(graph, i, lastUse: lastUse, groupLast: { last[find($0).root] }), !external(donor) {
            place(i, in: donor, at: 0)
        } else if reuse, let starts = graph.contiguousConcatStarts(i) {
            // An operand moves into the concat when its whole buffer is exactly that operand
            // (not a view of something larger) and no other operand shares it.
            var moved = Set<Int>()
            for (o, start) in zip(node.operands, starts) {
                let (root, at) = find(o)
                guard !external(o), at == 0, extent[root] == graph[o].type.byteCount, start % arenaAlignment == 0,
                      !moved.contains(root), root != i else { continue }
                moved.insert(root)
                parent[root] = i
                within[root] = start
                first[i] = min(first[i], first[root])
                last[i] = max(last[i], last[root])
            }
        }
        let (root, at) = find(i)
        first[root] = min(first[root], first[i])
        last[root] = max(last[root], lastUse[i])
        extent[root] = max(extent[root], at + node.type.byteCount)
    }

    // Greedy by size (largest first), lowest offset that overlaps no live-at-the-same-time buffer.
    let inArena: (Int) -> Bool = { graph[$0].op != .input && graph[$0].op != .weight && !external($0) }
    let roots = (0..<n).filter { find($0).root == $0 && inArena($0) }
    let size = extent
    var placed: [(offset: Int, end: Int, first: Int, last: Int)] = []
    var offset = [Int](repeating: -1, count: n)
    var arena = 0
    var nextFresh = 0
    for r in roots.sorted(by: { size[$0] != size[$1] ? size[$0] > size[$1] : $0 < $1 }) {
        let bytes = (size[r] + arenaAlignment - 1) / arenaAlignment * arenaAlignment
        var at = 0
        if reuse {
            let conflicts = placed.filter { $0.first <= last[r] && first[r] <= $0.last }.sorted { $0.offset < $1.offset }
            for c in conflicts where at + bytes > c.offset {
                at = max(at, c.end)
            }
        } else {
            at = nextFresh
            nextFresh += bytes
        }
        offset[r] = at
        placed.append((at, at + bytes, first[r], last[r]))
        arena = max(arena, at + bytes)
    }

    var g = graph
    for i in 0..<n where inArena(i) {
        let (root, at) = find(i)
        g.nodes[i].attributes["offset"] = .int(offset[root] + at)
    }
    g.attributes["arena_bytes"] = .int(arena)
    return g
}

/// An operand whose buffer a pure element-wise fusion may overwrite: read with the output's own
/// indexing (same shape and dtype), dead after this node, not a graph output.
private func inPlaceDonor(_ graph: Graph, _ i: Int, lastUse: [Int], groupLast: (Int) -> Int) -> Int? {
    let node = graph[i]
    guard node.op == .fusion, let region = node.region, !region.nodes.contains(where: { $0.op.isFusionHead }) else { return nil }
    for (k, o) in node.operands.enumerated() where graph[o].type == node.type && lastUse[o] == i {
        // The region must read this input only element-wise (not through a broadcast).
        let inputID = region.inputs[k]
        let readOnlyElementwise = region.nodes.allSatisfy { !$0.operands.contains(inputID) || $0.op.isElementwise }
        // Every alias of the donor's buffer (reshapes, earlier in-place users) must be dead too.
        if readOnlyElementwise && groupLast(o) <= i && graph[o].op != .constant { return o }
    }
    return nil
}
