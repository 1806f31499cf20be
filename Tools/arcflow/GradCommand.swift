// grad: the gradient of a graph's output with respect to its weights (or inputs), compiled.

import Foundation
import IR
import Passes
import Runtime

let gradSpec = CommandSpec(
    name: "grad",
    usage: "grad FILE --weights W.safetensors --inputs I.safetensors --loss NAME -o G.safetensors [--wrt NAME,…] [--interpret] [--dump-ir DIR] [--threads N]",
    summary: "Differentiate the sum of an output of an IR graph; compile the gradient graph and run it once.",
    options: [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "the weights FILE names"),
        OptionSpec(names: ["--inputs"], value: "I.safetensors", help: "one tensor per graph input, by name"),
        OptionSpec(names: ["--loss"], value: "NAME", help: "the output whose sum is the loss"),
        OptionSpec(names: ["-o", "--output"], value: "G.safetensors", help: "where to write `loss` and one gradient per --wrt name"),
        OptionSpec(names: ["--wrt"], value: "NAME,…", help: "weights or inputs to differentiate with respect to (default: every weight on a differentiable path to the loss; the others are named on stderr)"),
        OptionSpec(names: ["--checkpoint"], value: "NAME,…", help: "forward values to recompute in the backward instead of keeping"),
        OptionSpec(names: ["--interpret"], value: nil, help: "evaluate the gradient graph with the reference interpreter (the oracle) instead"),
        OptionSpec(names: ["--dump-ir"], value: "DIR", help: "write the IR before and after every pass (001_autodiff.ir is the gradient graph)"),
        OptionSpec(names: ["--cache-dir"], value: "DIR", help: "library cache (default $ARCFLOW_CACHE_DIR or ~/.cache/arcflow)"),
        threadsOption,
        OptionSpec(names: ["-v", "--verbose"], value: nil, help: "say what happens (cache hits, timings)"),
    ],
    details: """
    The autodiff pass turns the graph into one computing `loss` (the sum of output NAME, f32) and each
    gradient; the normal pipeline and C backend compile it. The output file holds `loss` (f32 scalar)
    and, per --wrt name, an f32 tensor of that name and shape.
    """)

func gradCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, gradSpec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", gradSpec) }
    let loss = try args.required("--loss", gradSpec)
    let outPath = try args.required("--output", gradSpec)
    let module = try loadModule(file)
    if module.prologue != nil { throw ArcError("\(file) already has a @prologue; give the graph before lift-weights") }
    let main = module.main
    func list(_ s: String) -> [String] { s.split(separator: ",").map { String($0.filter { $0 != " " }) }.filter { !$0.isEmpty } }
    let allWeights = main.nodes.filter { $0.op == .weight }.map { $0.key! }
    if args.value("--wrt") == nil && allWeights.isEmpty {
        throw UsageError("\(file) has no weights; name inputs to differentiate with --wrt", gradSpec)
    }
    let wrt = args.value("--wrt").map(list) ?? weightsAffecting(main, loss: loss)
    if args.value("--wrt") == nil, main.outputs.contains(where: { $0.name == loss }) {
        let skipped = allWeights.filter { !wrt.contains($0) }
        if wrt.isEmpty {
            throw ArcError("no weight of \(file) affects loss '\(loss)' (weights: \(allWeights.joined(separator: ", ")))")
        }
        if !skipped.isEmpty { stderrLine("arcflow: note: no gradient for \(skipped.joined(separator: ", ")): not on a differentiable path to '\(loss)'") }
    }

    let store: WeightStore = main.weights.isEmpty && args.value("--weights") == nil
        ? TensorStore() : try SafeTensorsStore(path: try args.required("--weights", gradSpec))
    let inputsPath = try args.required("--inputs", gradSpec)
    let file2 = try SafeTensorsStore(path: inputsPath)
    var inputs: [String: Tensor] = [:]
    for id in main.inputs {
        let (key, type) = (main[id].key!, main[id].type)
        guard let t = file2.type(of: key) else {
            throw ArcError("\(inputsPath) has no tensor '\(key)' (expected \(type)); it has: \(file2.names.joined(separator: ", "))")
        }
        guard t == type else { throw ArcError("input '\(key)' in \(inputsPath) is \(t), expected \(type)") }
        inputs[key] = try file2.tensor(key)
    }

    let context = ["autodiff.loss": loss, "autodiff.wrt": wrt.joined(separator: ","),
                   "autodiff.checkpoint": args.value("--checkpoint") ?? ""]
    let start = monotonicSeconds()
    let outputs: [String: Tensor]
    if args.has("--interpret") {
        let g = try gradientGraph(main, loss: loss, wrt: wrt, checkpoint: Set(list(args.value("--checkpoint") ?? "")))
        if let dir = args.value("--dump-ir") {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try writeAtomically(Printer.print(module), to: "\(dir)/000_input.ir")
            try writeAtomically(Printer.print(Module(g)), to: "\(dir)/001_autodiff.ir")
        }
        for id in g.weights { try store.validate(g[id].key!, g[id].type) }
        outputs = try Interpreter.run(g, inputs: inputs) { key, _ in try store.tensor(key) }
    } else {
        var options = try compileOptions(args, gradSpec, output: "")
        options.dumpC = nil
        options.pipeline.passes = ["autodiff"] + defaultPipeline
        options.pipeline.context.options = context
        let compiled = try ModelCompiler.build(module, weights: store, options: options)
        let exe = try compiled.load()
        exe.setThreads(try threadCount(args, gradSpec))
        outputs = try exe.run(inputs)
    }
    let records = [TensorRecord(name: "loss", dtype: .f32, shape: [], payload: .floats(outputs["loss"]!.data))]
        + wrt.map { key in
            let t = outputs[gradientOutputName(key)]!
            return TensorRecord(name: key, dtype: .f32, shape: t.shape, payload: .floats(t.data))
        }
    try writeSafeTensors(records, metadata: ["format": "arcflow-gradients", "loss": loss], to: outPath)
    print("loss \(outputs["loss"]!.data[0]); wrote loss and \(wrt.count) gradient\(wrt.count == 1 ? "" : "s") to \(outPath) "
          + "(\(args.has("--interpret") ? "interpreter" : "compiled"), \(formatMS(monotonicSeconds() - start)))")
}
