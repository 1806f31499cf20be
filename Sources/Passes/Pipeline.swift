// The pass list and the one pipeline function.

import IR

/// Every pass, by name. `--passes`, `--disable-pass` and `--print-after` take these names.
public let allPasses: [Pass] = [
    foldConstants, fuseLoRA, foldArcIntegral, splitConcatMatmul, commonSubexpressionElimination, liftWeights,
    deadCodeElimination, quantizeWeights, fuseElementwise, planMemory,
    autodiff,   // not in the default pipeline: `arcflow grad` puts it first
]

public func pass(named name: String) -> Pass? { allPasses.first { $0.name == name } }

/// The default pipeline, in order, each step with why it sits where it does.
public let defaultPipeline: [String] = [
    "fold-constants",    // first: makes the graph smaller; LoRA scales and the σ schedule become single constants
    "fuse-lora",         // before lifting: the fused weight W + s·B·A is weight-only math, lifted next
    "fold-arc-integral", // needs Δ as one constant (fold-constants); before fusion claims its element-wise ops
    "split-concat-matmul", // after fuse-lora (which matches the unsplit linear); before lifting, which cuts W's slices
    "cse",               // merge duplicates before lifting so shared weight transforms run once
    "lift-weights",      // weight-only math moves to @prologue (run once at compile time, in f32)
    "dce",               // drop what lifting and folding left unused (and weights nobody reads)
    "quantize-weights",  // only with --weights-dtype int8: @main's weights are final; matmuls not yet fused
    "fuse-elementwise",  // after all rewrites: fusion groups are final, one kernel per group
    "plan-memory",       // last: offsets depend on the final kernel list
]

/// How to run a pipeline and what to show while doing it.
public struct PipelineOptions {
    public var passes: [String] = defaultPipeline
    public var disabled: Set<String> = []
    /// Called after each pass with its index (1-based), name, result and whether it changed anything.
    public var afterPass: ((Int, String, Module, Bool) throws -> Void)?
    /// Verify the module after every pass (cheap; on by default so a broken pass names itself).
    public var verify = true
    public var context = PassContext()

    public init() {}
}

public struct PassTiming {
    public var name: String
    public var seconds: Double
    public var changed: Bool
}

/// Runs the passes in order. Returns the final module and per-pass timings.
public func runPipeline(_ module: Module, _ options: PipelineOptions) throws -> (Module, [PassTiming]) {
    for name in options.passes + Array(options.disabled) where pass(named: name) == nil {
        throw ArcError("unknown pass '\(name)' (known: \(allPasses.map(\.name).joined(separator: ", ")))")
    }
    var m = module
    var timings: [PassTiming] = []
    for (k, name) in options.passes.enumerated() where !options.disabled.contains(name) {
        let p = pass(named: name)!
        let before = m
        let start = monotonicSeconds()
        do {
            try p.run(&m, options.context)
        } catch let e as ArcError {
            throw ArcError("pass \(name): \(e.message)")
        }
        let seconds = monotonicSeconds() - start
        if options.verify {
            do { try Verifier.verify(m) } catch let e as ArcError {
                throw ArcError("internal error: IR is invalid after pass \(name): \(e.message)")
            }
        }
        let changed = m != before
        timings.append(PassTiming(name: name, seconds: seconds, changed: changed))
        try options.afterPass?(k + 1, name, m, changed)
    }
    return (m, timings)
}
