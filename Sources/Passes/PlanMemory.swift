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
/// With `reuse` off every value gets its own bytes (the fallback when the pass is disabled).
public func planArena(_ graph: Graph, reuse: Bool) -> Graph {
    let n = graph.nodes.count
    // Buffer of each value: itself, or the buffer it aliases (reshape) or overwrites (in place).
    var buffer = Array(0..<n)
    func find(_ i: Int) -> Int {
        var i = i
        while buffer[i] != i { i = buffer[i] }
        return i
    }
    let external: (Int) -> Bool = { graph[find($0)].op == .input || graph[find($0)].op == .weight }
    var lastUse = Array(0..<n)
    for (i, node) in graph.nodes.enumerated() { for o in node.operands { lastUse[o] = max(lastUse[o], i) } }
    for o in graph.outputs { lastUse[o.value] = n }

    var first = Array(0..<n), last = lastUse
    for (i, node) in graph.nodes.enumerated() {
        if node.op == .reshape {
            buffer[i] = find(node.operands[0])
        } else if reuse, let donor = inPlaceDonor(graph, i, lastUse: lastUse, groupLast: { last[find($0)] }), !external(donor) {
            buffer[i] = find(donor)
        }
        let root = find(i)
        first[root] = min(first[root], first[i])
        last[root] = max(last[root], lastUse[i])
    }

    // Greedy by size (largest first), lowest offset that overlaps no live-at-the-same-time buffer.
    let inArena: (Int) -> Bool = { graph[$0].op != .input && graph[$0].op != .weight && !external($0) }
    let roots = (0..<n).filter { find($0) == $0 && inArena($0) }
    var size = [Int](repeating: 0, count: n)
    for i in 0..<n where inArena(i) {
        size[find(i)] = max(size[find(i)], graph[i].type.byteCount)
    }
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
        g.nodes[i].attributes["offset"] = .int(offset[find(i)])
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
