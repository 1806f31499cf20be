// Placeholder for the autodiff branch's API until it is merged (the merge replaces this file).

import IR

public func gradientOutputName(_ key: String) -> String { "grad:" + key }

public func gradientGraph(_ graph: Graph, loss: String, wrt: [String], keepOutputs: Bool = false, checkpoint: Set<String> = []) throws -> Graph {
    throw ArcError("autodiff is not available in this build")
}
