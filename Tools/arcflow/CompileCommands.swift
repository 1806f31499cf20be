// dump-ir and compile: the pass pipeline and the code generator from the command line.

import Codegen
import Foundation
import IR
import Passes
import Runtime

let dumpIRSpec = CommandSpec(
    name: "dump-ir", usage: "dump-ir FILE [--passes LIST|--pipeline default] [--dump-ir DIR] [--print-after PASS] [--weights W.safetensors] [--no-weights]",
    summary: "Print the graph after the passes (--passes none: the parsed graph unchanged).",
    options: pipelineOptionSpecs + [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "check weights against the graph and annotate each with its hash"),
        OptionSpec(names: ["--no-weights"], value: nil, help: "do not read or annotate weights (the default without --weights)"),
    ],
    details: passHelp)

func dumpIRCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, dumpIRSpec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", dumpIRSpec) }
    let module = try loadModule(file)
    var options = try pipelineOptions(args, dumpIRSpec)
    if let dir = args.value("--dump-ir") { try installIRDump(&options, directory: dir, input: module) }
    let (result, timings) = try runPipeline(module, options)
    var text = Printer.print(result)
    if let w = args.value("--weights"), !args.has("--no-weights") {
        text = try annotateWeights(text, result, store: try SafeTensorsStore(path: w))
    }
    print(text, terminator: "")
    if args.has("--time-passes") { printPassTimings(timings) }
}

/// Appends `// sha256:… ` to weight lines (comments: the text still parses to the same graph).
func annotateWeights(_ text: String, _ module: Module, store: WeightStore) throws -> String {
    var hashes: [String: String] = [:]
    for g in module.graphs {
        for n in g.nodes where n.op == .weight && hashes[n.key!] == nil {
            if let p = module.prologue, g.name != p.name, p.outputs.contains(where: { $0.name == n.key! }) { continue }
            try store.validate(n.key!, n.type)
            hashes[n.key!] = SHA256.hash(UnsafeRawBufferPointer(start: try store.raw(n.key!), count: n.type.byteCount))
        }
    }
    return text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
        guard line.contains(" = weight \""), let q1 = line.range(of: "weight \"") else { return String(line) }
        let rest = line[q1.upperBound...]
        guard let end = rest.firstIndex(of: "\""), let h = hashes[String(rest[..<end])] else { return String(line) }
        return "\(line)  // sha256:\(h.prefix(16))"
    }.joined(separator: "\n")
}

let compileSpec = CommandSpec(
    name: "compile", usage: "compile FILE --weights W.safetensors -o DIR [--dump-ir DIR] [--dump-c] [--passes LIST] [--verbose]",
    summary: "Compile an IR graph and its weights into a model folder (model.so, weights.safetensors, manifest.json).",
    options: [
        OptionSpec(names: ["--weights"], value: "W.safetensors", help: "the weights the graph names"),
        OptionSpec(names: ["-o", "--output"], value: "DIR", help: "model folder to write"),
        OptionSpec(names: ["--dump-c"], value: nil, help: "also write the generated C to DIR/c/"),
        OptionSpec(names: ["--cache-dir"], value: "DIR", help: "library cache (default $ARCFLOW_CACHE_DIR or ~/.cache/arcflow)"),
        OptionSpec(names: ["-v", "--verbose"], value: nil, help: "say what happens (cache hits, prologue, timings)"),
    ] + pipelineOptionSpecs,
    details: passHelp)

func compileCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, compileSpec, maxPositional: 1)
    guard let file = args.positional.first else { throw UsageError("missing the IR FILE", compileSpec) }
    let out = try args.required("--output", compileSpec)
    let weightsPath = try args.required("--weights", compileSpec)
    let start = monotonicSeconds()
    let module = try loadModule(file)
    let store = try SafeTensorsStore(path: weightsPath)
    let options = try compileOptions(args, compileSpec, output: out)
    let compiled = try ModelCompiler.build(module, weights: store, options: options)
    let loadStart = monotonicSeconds()
    _ = try compiled.load()
    let loaded = monotonicSeconds()
    try ModelCompiler.write(compiled, to: out)
    if args.has("--time-passes") { printPassTimings(compiled.passTimings) }
    let p = compiled.program
    let kernels = Set(p.steps.map(\.kernel)).count
    print("compiled @\(compiled.module.main.name): \(p.steps.count) steps, \(kernels) kernels, arena \(formatBytes(p.arenaBytes)), "
          + String(format: "%.2f GFLOP per run", p.flops / 1e9) + " → \(out)")
    print("library \(compiled.library.cacheHit ? "cache hit" : "built") \(compiled.library.key.prefix(16)); "
          + "compiled and loaded in \(formatMS(loaded - start)) (load \(formatMS(loaded - loadStart)))")
}

func compileOptions(_ args: ParsedArguments, _ spec: CommandSpec, output: String) throws -> CompileOptions {
    var options = CompileOptions()
    options.pipeline = try pipelineOptions(args, spec)
    if args.has("--dump-c") { options.dumpC = output + "/c" }
    options.dumpIR = args.value("--dump-ir")
    if let c = args.value("--cache-dir") { options.cacheRoot = c }
    let verbose = args.has("--verbose")
    options.log = { message in if verbose { stderrLine("arcflow: \(message)") } }
    return options
}
