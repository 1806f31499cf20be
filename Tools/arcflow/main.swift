// arcflow: compile diffusion-transformer graphs to native code and run them.

import Foundation
import IR

let commands: [(spec: CommandSpec, run: ([String]) throws -> Void)] = [
    (dumpIRSpec, dumpIRCommand),
    (compileSpec, compileCommand),
    (generateSpec, generateCommand),
    (tokenizeSpec, tokenizeCommand),
    (encodeSpec, encodeCommand),
    (decodeSpec, decodeCommand),
    (runSpec, runCommand),
    (gradSpec, gradCommand),
    (benchSpec, benchCommand),
    (trainSpec, trainCommand),
    (trainBenchSpec, trainBenchCommand),
    (trainDefaultSpec, trainDefaultCommand),
    (reportDefaultSpec, reportDefaultCommand),
    (distillDefaultSpec, distillDefaultCommand),
    (averageAdaptersSpec, averageAdaptersCommand),
    (randomWeightsSpec, randomWeightsCommand),
    (randomInputsSpec, randomInputsCommand),
    (exampleSpec, exampleCommand),
]

/// One row per command: the name, then its summary as one paragraph (wrapHelp hangs it under the
/// summaries' column).
let nameColumn = (commands.map(\.spec.name.count).max() ?? 0) + 2
let topHelp = wrapHelp("""
usage: arcflow <command> [options]

Compiles a tensor-IR graph (and its weights) to a native library with C/OpenMP kernels, and runs it.

commands:
\(commands.map { "  " + $0.spec.name.padding(toLength: nameColumn, withPad: " ", startingAt: 0) + $0.spec.summary.replacingOccurrences(of: "\n", with: " ") }.joined(separator: "\n"))

Run `arcflow <command> --help` for a command's options.
""", width: helpWidth())

setvbuf(stdout, nil, _IOLBF, 0)
let argv = Array(CommandLine.arguments.dropFirst())
guard let first = argv.first, first != "-h", first != "--help", first != "help" else {
    print(topHelp)
    exit(argv.isEmpty ? 2 : 0)
}
guard let command = commands.first(where: { $0.spec.name == first }) else {
    FileHandle.standardError.write("arcflow: error: unknown command '\(oneLine(first))'\n\(topHelp)\n".data(using: .utf8)!)
    exit(2)
}
do {
    try command.run(Array(argv.dropFirst()))
    exit(0)
} catch let h as HelpRequested {
    print(h.text, terminator: "")
    exit(0)
} catch let u as UsageError {
    // The error is one line (escaped: options echo what the user typed); the usage block follows it.
    FileHandle.standardError.write("arcflow \(oneLine(first)): error: \(oneLine(u.message))\n\(u.usage)\n".data(using: .utf8)!)
    exit(2)
} catch let e as ArcError {
    FileHandle.standardError.write("arcflow \(first): error: \(oneLine(e.message))\n".data(using: .utf8)!)
    exit(1)
} catch {
    // Foundation's errors (a full disk while writing, say) are escaped too: every error is one line.
    FileHandle.standardError.write("arcflow \(first): error: \(oneLine(error.localizedDescription))\n".data(using: .utf8)!)
    exit(1)
}
