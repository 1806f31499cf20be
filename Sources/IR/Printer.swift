// The textual form of the IR. Parser.swift reads exactly what this writes.
//
//   graph @main {
//     %x = input "x" : f32[8,64]
//     %fc1.weight = weight "fc1.weight" : f32[256,64]
//     %0 = matmul %x, %fc1.weight {transpose_b} : f32[8,256]
//     output "y" %0
//   }

public enum Printer {
    /// The printed SSA name of every value of `graph`: its own name, else a running number.
    public static func valueNames(_ graph: Graph) -> [String] {
        var next = 0
        return graph.nodes.map { node in
            if let n = node.name { return n }
            defer { next += 1 }
            return String(next)
        }
    }

    public static func print(_ module: Module) -> String {
        module.graphs.map { print($0) }.joined(separator: "\n")
    }

    public static func print(_ graph: Graph) -> String {
        var out = "graph @\(graph.name)"
        if !graph.attributes.isEmpty { out += " attributes " + attributeList(graph.attributes) }
        out += " {\n"
        body(graph, indent: "  ", into: &out)
        out += "}\n"
        return out
    }

    /// One node as a line (without region), e.g. for error messages.
    public static func line(_ graph: Graph, _ id: ValueID) -> String {
        let names = valueNames(graph)
        return nodeHeader(graph[id], names[id], names)
    }

    private static func body(_ graph: Graph, indent: String, into out: inout String) {
        let names = valueNames(graph)
        for (i, node) in graph.nodes.enumerated() {
            out += indent + nodeHeader(node, names[i], names)
            if let region = node.region {
                out += " {\n"
                body(region, indent: indent + "  ", into: &out)
                out += indent + "}"
            }
            out += "\n"
        }
        for o in graph.outputs {
            out += "\(indent)output \(quoteString(o.name)) %\(names[o.value])\n"
        }
    }

    private static func nodeHeader(_ node: Node, _ name: String, _ names: [String]) -> String {
        var s = "%\(name) = \(node.op.rawValue)"
        if let key = node.key { s += " " + quoteString(key) }
        switch node.constant {
        case .splat(let v)?: s += " " + formatFloat32(v)
        case .dense(let d)?: s += " [" + d.map(formatFloat32).joined(separator: ", ") + "]"
        case nil: break
        }
        if !node.operands.isEmpty { s += " " + node.operands.map { "%" + names[$0] }.joined(separator: ", ") }
        if !node.attributes.isEmpty { s += " " + attributeList(node.attributes) }
        s += " : \(node.type)"
        return s
    }

    /// `{a = 1, eps = 1e-06, transpose_b}`: sorted keys; a true flag prints as its bare key.
    static func attributeList(_ attrs: [String: Attribute]) -> String {
        "{" + attrs.keys.sorted().map { k in
            if case .bool(true) = attrs[k]! { return k }
            return "\(k) = \(attrs[k]!)"
        }.joined(separator: ", ") + "}"
    }
}
