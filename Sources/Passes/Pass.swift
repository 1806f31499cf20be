// What a pass is: a stable kebab-case name and a function from module to module.

import IR

/// A pass is a value (Swift SIL optimizer style): a name users type on the command line, a
/// one-line summary for `--help`, and the transformation. Mutation goes through the module.
public struct Pass: Sendable {
    public let name: String
    public let summary: String
    public let run: @Sendable (inout Module, PassContext) throws -> Void

    public init(name: String, summary: String, run: @escaping @Sendable (inout Module, PassContext) throws -> Void) {
        self.name = name
        self.summary = summary
        self.run = run
    }
}

/// Options and facts shared by the passes of one pipeline run.
public final class PassContext: @unchecked Sendable {
    /// Options of passes that take them (e.g. `fuse-lora`'s scale source); strings as typed.
    public var options: [String: String]
    /// Notes for the user (e.g. what a pass found), printed by the CLI in verbose mode.
    public private(set) var notes: [String] = []

    public init(options: [String: String] = [:]) { self.options = options }

    public func note(_ message: String) { notes.append(message) }
}

extension Module {
    /// Applies `transform` to every graph (main and prologue).
    public mutating func forEachGraph(_ transform: (inout Graph) throws -> Void) rethrows {
        for i in graphs.indices { try transform(&graphs[i]) }
    }
}

extension Graph {
    /// Per value: computed from weights and constants alone (so a pass may rewrite it into more
    /// weight math, which lift-weights then runs once at compile time).
    func weightOnlyValues() -> [Bool] {
        var weightOnly = [Bool](repeating: false, count: nodes.count)
        for (i, n) in nodes.enumerated() {
            weightOnly[i] = n.op == .weight || n.op == .constant || (!n.op.isSource && n.operands.allSatisfy { weightOnly[$0] })
        }
        return weightOnly
    }
}

/// Rebuilds a graph node by node: passes copy what they keep, replace what they rewrite,
/// and get operand ids remapped for free.
public struct GraphRewriter {
    public private(set) var graph: Graph
    /// Old value id → new value id.
    public var map: [ValueID]

    public init(from old: Graph) {
        graph = Graph(name: old.name, attributes: old.attributes)
        map = [ValueID](repeating: -1, count: old.nodes.count)
    }

    /// Appends `node` (operands given in OLD ids) and records it as the image of `old`.
    @discardableResult
    public mutating func copy(_ node: Node, as old: ValueID) -> ValueID {
        var n = node
        n.operands = node.operands.map { map[$0] }
        graph.nodes.append(n)
        map[old] = graph.nodes.count - 1
        return map[old]
    }

    /// Appends a node whose operands are already NEW ids.
    @discardableResult
    public mutating func append(_ node: Node) -> ValueID {
        graph.nodes.append(node)
        return graph.nodes.count - 1
    }

    public mutating func finish(outputs: [GraphOutput]) -> Graph {
        graph.outputs = outputs.map { GraphOutput(name: $0.name, value: map[$0.value]) }
        return graph
    }
}
