// A small command-line option parser: declared options, `--help` from the declarations,
// one-line errors for anything unknown or missing.

import IR

struct OptionSpec {
    var names: [String]          // e.g. ["-o", "--output"]
    var value: String?           // placeholder for options taking a value; nil for flags
    var help: String
    var repeatable = false
}

struct CommandSpec {
    var name: String
    var usage: String
    var summary: String
    var options: [OptionSpec]
    var positional: [String] = []     // names of positional arguments, for help
    var details: String = ""

    var helpText: String {
        var s = "usage: arcflow \(usage)\n\n\(summary)\n"
        if !options.isEmpty {
            s += "\noptions:\n"
            let rows = options.map { o in (o.names.joined(separator: ", ") + (o.value.map { " \($0)" } ?? ""), o.help) }
            let width = min(34, (rows.map { $0.0.count }.max() ?? 0) + 2)
            for (l, r) in rows + [("-h, --help", "show this help")] {
                s += "  " + l.padding(toLength: max(width, l.count + 2), withPad: " ", startingAt: 0) + r + "\n"
            }
        }
        if !details.isEmpty { s += "\n" + details + "\n" }
        return wrapHelp(s, width: helpWidth())
    }
}

/// Parsed arguments of one command.
struct ParsedArguments {
    var values: [String: [String]] = [:]   // canonical (last) option name → values
    var flags: Set<String> = []
    var positional: [String] = []

    func value(_ name: String) -> String? { values[name]?.last }
    func all(_ name: String) -> [String] { values[name] ?? [] }
    func has(_ name: String) -> Bool { flags.contains(name) || values[name] != nil }

    func required(_ name: String, _ spec: CommandSpec) throws -> String {
        guard let v = value(name) else { throw UsageError("missing required option \(name)", spec) }
        return v
    }

    func int(_ name: String, _ spec: CommandSpec, default d: Int? = nil, min lo: Int = Int.min) throws -> Int? {
        guard let s = value(name) else { return d }
        // With a lower bound, name the upper one too: a number past Int.max reads as "not an integer".
        guard let v = Int(s), v >= lo else { throw UsageError("\(name) expects an integer\(lo > Int.min ? " from \(lo) to \(Int.max)" : ""), got '\(s)'", spec) }
        return v
    }

    func double(_ name: String, _ spec: CommandSpec, default d: Double? = nil) throws -> Double? {
        guard let s = value(name) else { return d }
        guard let v = Double(s), v.isFinite else { throw UsageError("\(name) expects a number, got '\(s)'", spec) }
        return v
    }
}

/// A usage mistake: reported with the command's usage line, exit status 2.
struct UsageError: Error {
    var message: String
    var usage: String
    init(_ message: String, _ spec: CommandSpec) {
        self.message = message
        self.usage = wrapHelp("usage: arcflow \(spec.usage)\n(see arcflow \(spec.name) --help)", width: helpWidth())
    }
}

/// Thrown for `--help`: print and exit 0.
struct HelpRequested: Error { var text: String }

func parseArguments(_ args: [String], _ spec: CommandSpec, maxPositional: Int) throws -> ParsedArguments {
    var parsed = ParsedArguments()
    var i = 0
    func canonical(_ o: OptionSpec) -> String { o.names.last! }
    while i < args.count {
        var a = args[i]
        i += 1
        if a == "-h" || a == "--help" { throw HelpRequested(text: spec.helpText) }
        if a.hasPrefix("-") && a != "-" {
            var inline: String?
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                inline = String(a[a.index(after: eq)...])
                a = String(a[..<eq])
            }
            guard let o = spec.options.first(where: { $0.names.contains(a) }) else {
                throw UsageError("unknown option \(a)", spec)
            }
            if o.value != nil {
                let v: String
                if let inline { v = inline } else {
                    guard i < args.count else { throw UsageError("option \(a) needs a value \(o.value!)", spec) }
                    v = args[i]
                    i += 1
                }
                if !o.repeatable && parsed.values[canonical(o)] != nil { throw UsageError("option \(a) given twice", spec) }
                parsed.values[canonical(o), default: []].append(v)
            } else {
                if inline != nil { throw UsageError("option \(a) takes no value", spec) }
                parsed.flags.insert(canonical(o))
            }
        } else {
            parsed.positional.append(a)
        }
    }
    if parsed.positional.count > maxPositional {
        throw UsageError("unexpected argument '\(parsed.positional[maxPositional])'", spec)
    }
    return parsed
}

/// Line i of a prompt file renders with seed S + i: S must leave room for every line (an error
/// about the file's length as much as about the seed: one line, before anything is loaded).
func checkSeedRoom(_ seed: Int, lines: Int) throws {
    if lines > 1 && seed > Int.max - (lines - 1) {
        throw ArcError("--seed \(seed) leaves no room for \(lines) prompts (line i uses seed S + i, at most \(Int.max))")
    }
}
