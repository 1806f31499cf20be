// random-weights, random-inputs, example: what you need to try the compiler without a checkpoint.

import ArcFlowGraphs
import Foundation
import IR
import Runtime

let randomWeightsSpec = CommandSpec(
    name: "random-weights", usage: "random-weights FILE -o W.safetensors [--seed S]",
    summary: "Write seeded random weights for every weight an IR graph names.",
    options: [
        OptionSpec(names: ["-o", "--output"], value: "W.safetensors", help: "file to write"),
        OptionSpec(names: ["--seed"], value: "S", help: "random seed (default 0)"),
    ],
    details: "Matrices get N(0, 1/fan_in) entries; 1-D tensors whose name contains 'norm' get 1 + N(0, 0.1²), other 1-D tensors N(0, 0.02²).")

func randomWeightsCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, randomWeightsSpec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", randomWeightsSpec) }
    let module = try loadModule(file)
    var rng = SeededGenerator(seed: UInt64(try args.int("--seed", randomWeightsSpec, default: 0, min: 0)!))
    var records: [TensorRecord] = []
    var seen = Set<String>()
    let lifted = Set(module.prologue?.outputs.map(\.name) ?? [])
    for g in module.graphs {
        for n in g.nodes where n.op == .weight && !lifted.contains(n.key!) && seen.insert(n.key!).inserted {
            let t = n.type
            var values = rng.normals(t.count)
            if t.rank >= 2 {
                let s = 1 / Float(max(t.shape.last!, 1)).squareRoot()
                values = values.map { $0 * s }
            } else if n.key!.contains("norm") {
                values = values.map { 1 + 0.1 * $0 }
            } else {
                values = values.map { 0.02 * $0 }
            }
            records.append(TensorRecord(name: n.key!, dtype: t.dtype, shape: t.shape, payload: .floats(values)))
        }
    }
    let out = try args.required("--output", randomWeightsSpec)
    try writeSafeTensors(records, to: out)
    print("wrote \(records.count) weights to \(out)")
}

let randomInputsSpec = CommandSpec(
    name: "random-inputs", usage: "random-inputs (FILE | --model DIR) -o IN.safetensors [--seed S]",
    summary: "Write seeded N(0,1) values for every input of an IR graph or a compiled model.",
    options: [
        OptionSpec(names: ["--model"], value: "DIR", help: "take the inputs from a compiled model instead of an IR file"),
        OptionSpec(names: ["-o", "--output"], value: "IN.safetensors", help: "file to write"),
        OptionSpec(names: ["--seed"], value: "S", help: "random seed (default 0)"),
    ])

func randomInputsCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, randomInputsSpec, maxPositional: 1)
    let bindings: [(String, TensorType)]
    if let dir = args.value("--model") {
        bindings = try LoadedModel.load(dir).manifest.inputs.map { ($0.name, $0.type) }
    } else if let file = args.positional.first {
        let main = try loadModule(file).main
        bindings = main.inputs.map { (main[$0].key!, main[$0].type) }
    } else {
        throw UsageError("give an IR FILE or --model DIR", randomInputsSpec)
    }
    var rng = SeededGenerator(seed: UInt64(try args.int("--seed", randomInputsSpec, default: 0, min: 0)!))
    let out = try args.required("--output", randomInputsSpec)
    try writeSafeTensors(bindings.map { TensorRecord(name: $0.0, dtype: $0.1.dtype, shape: $0.1.shape, payload: .floats(rng.normals($0.1.count))) }, to: out)
    print("wrote \(bindings.map(\.0).joined(separator: ", ")) to \(out)")
}

let exampleSpec = CommandSpec(
    name: "example", usage: "example (mlp | mlp-regression | transformer-block) [--tokens N] [--width D] [--heads H] [--batch B] [--loss] [--data D.safetensors --rows N --seed S]",
    summary: "Print an example graph as IR text (examples/*.ir are made with this).",
    options: [
        OptionSpec(names: ["--tokens"], value: "N", help: "sequence length of the transformer block (default 1024)"),
        OptionSpec(names: ["--width"], value: "D", help: "model width (default 768)"),
        OptionSpec(names: ["--heads"], value: "H", help: "attention heads (default 12)"),
        OptionSpec(names: ["--loss"], value: nil, help: "transformer-block: add input 'target' and output 'loss' (MSE), for training"),
        OptionSpec(names: ["--batch"], value: "B", help: "mlp-regression: rows per step (default 32)"),
        OptionSpec(names: ["--data"], value: "D.safetensors", help: "mlp-regression: also write a data file (x, target = sin(x·W)) for `arcflow train`"),
        OptionSpec(names: ["--rows"], value: "N", help: "rows in the data file (default 4096)"),
        OptionSpec(names: ["--seed"], value: "S", help: "seed of the data (default 0)"),
    ],
    details: "mlp-regression is an MLP whose output 'loss' is the mean squared error against 'target': train it with `arcflow train`.")

func exampleCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, exampleSpec, maxPositional: 1)
    let graph: Graph
    switch args.positional.first {
    case "mlp": graph = try ExampleGraphs.mlp()
    case "mlp-regression":
        graph = try ExampleGraphs.mlpRegression(batch: try args.int("--batch", exampleSpec, default: 32, min: 1)!)
        if let path = args.value("--data") {
            let data = ExampleGraphs.mlpRegressionData(rows: try args.int("--rows", exampleSpec, default: 4096, min: 1)!,
                                                       seed: UInt64(try args.int("--seed", exampleSpec, default: 0, min: 0)!))
            try writeSafeTensors(data.sorted { $0.key < $1.key }.map { TensorRecord(name: $0.key, dtype: .f32, shape: $0.value.shape, payload: .floats($0.value.data)) },
                                 to: path)
        }
    case "transformer-block":
        graph = try ExampleGraphs.transformerBlock(tokens: try args.int("--tokens", exampleSpec, default: 1024, min: 1)!,
                                                   width: try args.int("--width", exampleSpec, default: 768, min: 1)!,
                                                   heads: try args.int("--heads", exampleSpec, default: 12, min: 1)!,
                                                   loss: args.has("--loss"))
    case let other?: throw UsageError("unknown example '\(other)' (known: mlp, mlp-regression, transformer-block)", exampleSpec)
    case nil: throw UsageError("name an example: mlp, mlp-regression or transformer-block", exampleSpec)
    }
    print(Printer.print(graph), terminator: "")
}

let averageAdaptersSpec = CommandSpec(
    name: "average-adapters", usage: "average-adapters -o OUTDIR ADAPTERDIR ADAPTERDIR...",
    summary: "Write the uniform average of ArcFlow adapters of one config (a model soup of fine-tunes from one start).",
    options: [
        OptionSpec(names: ["-o", "--output"], value: "OUTDIR", help: "adapter folder to write (config.json from the first input, f16 tensors)"),
    ],
    positional: ["ADAPTERDIR"],
    details: """
    The head and norm_out tensors are averaged. Each LoRA update is averaged exactly: the pairs are concatenated
    along the rank (B scaled by its LoRA scale over the count), so the output's rank is the inputs' summed rank.
    """)

func averageAdaptersCommand(_ argv: [String]) throws {
    let spec = averageAdaptersSpec
    let args = try parseArguments(argv, spec, maxPositional: Int.max)
    let out = try args.required("--output", spec)
    guard args.positional.count >= 2 else { throw UsageError("give at least two adapter folders to average", spec) }
    let records = try ArcFlowAdapter.writeAverage(of: args.positional, to: out)
    let rank = records.first { $0.name.hasSuffix(".lora_A.weight") }?.shape.first ?? 0
    print("wrote the average of \(args.positional.count) adapters to \(out) (\(records.count) tensors, LoRA rank \(rank), f16)")
}
