// Options shared by commands that run the pass pipeline.

import Foundation
import IR
import Passes

let pipelineOptionSpecs: [OptionSpec] = [
    OptionSpec(names: ["--passes"], value: "LIST", help: "comma-separated passes to run, or 'none' (default: the default pipeline)"),
    OptionSpec(names: ["--pass-pipeline"], value: "NAME", help: "named pass pipeline: 'default' (MLIR's name for it; --pipeline is a diffusers folder)"),
    OptionSpec(names: ["--disable-pass"], value: "PASS", help: "skip PASS (repeatable)", repeatable: true),
    OptionSpec(names: ["--print-after"], value: "PASS", help: "print the IR to stderr after PASS, or 'all' (repeatable)", repeatable: true),
    OptionSpec(names: ["--time-passes"], value: nil, help: "print the time each pass took"),
    OptionSpec(names: ["--dump-ir"], value: "DIR", help: "write the IR before and after every pass: 000_input.ir, 001_<pass>.ir, …"),
    OptionSpec(names: ["--pass-option"], value: "KEY=VALUE", help: "an option of a pass, e.g. autodiff.loss=y (repeatable)", repeatable: true),
]

let passHelp = "passes: " + allPasses.map { p in
    "\n  " + p.name + String(repeating: " ", count: max(1, (allPasses.map(\.name.count).max() ?? 0) + 2 - p.name.count)) + p.summary
}.joined()
    + "\ndefault pipeline: " + defaultPipeline.joined(separator: ",")

func pipelineOptions(_ args: ParsedArguments, _ spec: CommandSpec) throws -> PipelineOptions {
    var options = PipelineOptions()
    if args.value("--passes") != nil && args.value("--pass-pipeline") != nil {
        throw UsageError("give --passes or --pass-pipeline, not both", spec)
    }
    if let list = args.value("--passes") {
        options.passes = list == "none" ? [] : list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    }
    if let p = args.value("--pass-pipeline"), p != "default" {
        throw UsageError("unknown pipeline '\(p)' (known: default)", spec)
    }
    options.disabled = Set(args.all("--disable-pass"))
    for kv in args.all("--pass-option") {
        guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else { throw UsageError("--pass-option expects KEY=VALUE, got '\(kv)'", spec) }
        options.context.options[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
    }
    let printAfter = Set(args.all("--print-after"))
    for name in options.passes + Array(options.disabled) + printAfter.filter({ $0 != "all" }) where pass(named: name) == nil {
        throw UsageError("unknown pass '\(name)' (known: \(allPasses.map(\.name).joined(separator: ", ")))", spec)
    }
    if !printAfter.isEmpty {
        options.afterPass = { index, name, module, changed in
            guard printAfter.contains(name) || printAfter.contains("all") else { return }
            let header = "// -----// IR Dump After \(name)\(changed ? "" : " (no change)") //----- //\n"
            FileHandle.standardError.write((header + Printer.print(module) + "\n").data(using: .utf8)!)
        }
    }
    return options
}

func printPassTimings(_ timings: [PassTiming]) {
    let total = timings.reduce(0) { $0 + $1.seconds }
    var s = "pass timing (total \(formatMS(total))):\n"
    for t in timings {
        s += "  \(formatMS(t.seconds).leftPadded(10))  \(t.name)\(t.changed ? "" : " (no change)")\n"
    }
    FileHandle.standardError.write(s.data(using: .utf8)!)
}

func formatMS(_ seconds: Double) -> String { String(format: "%.3f ms", seconds * 1000) }

func formatBytes(_ n: Int) -> String {
    if n >= 1 << 30 { return String(format: "%.2f GiB", Double(n) / Double(1 << 30)) }
    if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / Double(1 << 20)) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / Double(1 << 10)) }
    return "\(n) B"
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}

/// Progress and per-line failures echo input text (prompts): escaped so each stays one line.
func stderrLine(_ s: String) { FileHandle.standardError.write((oneLine(s) + "\n").data(using: .utf8)!) }

/// Reads and verifies an IR file; errors carry the file name and line:column.
func loadModule(_ path: String) throws -> Module { try Parser.parseFile(path) }
