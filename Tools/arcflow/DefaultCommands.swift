// The embedded default model from the command line: `generate` without --model (one image, a
// prompt file, or the demo grid) and `report-default`.

import ArcFlowGraphs
import DefaultModel
import Foundation
import Generation
import Imaging
import IR
import Runtime
import ShapesWorld

/// The default-model folder named by --default-model, $ARCFLOW_DEFAULT_MODEL or the package.
func defaultModelFolder(_ args: ParsedArguments) throws -> DefaultModelFolder {
    let dir = try DefaultModelFolder.locate(explicit: args.value("--default-model"), environment: ProcessInfo.processInfo.environment,
                                            executable: DefaultPipeline.executablePath())
    return try DefaultModelFolder.load(dir)
}

/// A variant compiled (or found in the cache) and loaded, with a line saying so.
func loadDefault(_ folder: DefaultModelFolder, _ variant: DefaultVariant, threads: Int, options: CompileOptions = CompileOptions()) throws -> CompiledPipeline {
    let t0 = monotonicSeconds()
    let p = try DefaultPipeline.pipeline(folder, variant, threads: threads, cacheRoot: options.cacheRoot, options: options) { stderrLine("arcflow: \($0)") }
    stderrLine(String(format: "arcflow: %@ ready in %.2f s (%@)", "\(variant)", monotonicSeconds() - t0, p.folder))
    return p
}

func generateDefault(_ args: ParsedArguments) throws {
    for flag in ["--embeddings", "--noise", "--output-latents"] where args.has(flag) && args.has("--grid") {
        throw UsageError("\(flag) does not go with --grid", generateSpec)
    }
    for flag in ["--embeddings", "--true-cfg-scale"] where args.has(flag) {
        throw UsageError("\(flag) goes with a compiled sampler: give it with --model and --embeddings", generateSpec)
    }
    if args.has("--teacher") && args.has("--baseline") { throw UsageError("give --teacher or --baseline, not both", generateSpec) }
    if args.has("--guidance") && !args.has("--teacher") {
        throw UsageError("--guidance goes with --teacher (the students absorbed the teacher's guidance; they take none)", generateSpec)
    }
    if let b = args.value("--baseline"), b != "linear" { throw UsageError("--baseline must be linear, got '\(b)'", generateSpec) }
    let threads = try threadCount(args, generateSpec)
    if let gridFile = args.value("--grid") {
        for flag in ["--prompt", "--prompts", "--teacher", "--baseline", "--steps", "--guidance", "--shard"] where args.has(flag) {
            throw UsageError("\(flag) does not go with --grid (rows are the file's prompts, columns every variant)", generateSpec)
        }
        return try generateGrid(args, file: gridFile, threads: threads)
    }
    try checkPromptArguments(args)
    // A prompt outside the world's grammar fails before anything is compiled or loaded.
    if let prompt = args.value("--prompt") { _ = try Prompt.parse(prompt) }
    let folder = try defaultModelFolder(args)
    let variant: DefaultVariant
    if args.has("--teacher") {
        let steps = try args.int("--steps", generateSpec, default: folder.info.teacher.steps, min: 1)!
        variant = .teacher(steps: steps, guidance: try args.double("--guidance", generateSpec, default: folder.info.teacher.guidance)!)
    } else {
        let student: DefaultVariant = args.has("--baseline") ? .linear : .arcflow
        variant = student.studentSteps(try args.int("--steps", generateSpec, default: 2, min: 1)!)
    }
    try generateImages(args, try loadDefault(folder, variant, threads: threads))
}

/// Rows = the file's prompts (line i with seed S + i), columns = teacher (model.json's steps and
/// guidance) | ArcFlow 2 | linear 2; a variant whose adapter is absent is left out with a note.
func generateGrid(_ args: ParsedArguments, file: String, threads: Int) throws {
    let output = try args.required("--output", generateSpec)
    guard output.lowercased().hasSuffix(".png") else { throw UsageError("-o must name a .png file, got '\(output)'", generateSpec) }
    try checkWritableParent(output)
    let seed = try args.int("--seed", generateSpec, default: 0, min: 0)!
    var prompts: [String] = []
    for (i, line) in try readPromptLines(file).enumerated() {
        guard let line else { throw ArcError("\(file):\(i + 1): empty line (no prompt)") }
        do { prompts.append(try Prompt.parse(line).description) } catch let e as ArcError { throw ArcError("\(file):\(i + 1): \(e.message)") }
    }
    try checkSeedRoom(seed, lines: prompts.count)
    let folder = try defaultModelFolder(args)
    let t = folder.info.teacher
    var variants: [(String, DefaultVariant)] = []
    for (label, v) in [("teacher \(t.steps)", DefaultVariant.teacher(steps: t.steps, guidance: t.guidance)),
                       ("ArcFlow 2", .arcflow), ("linear 2", .linear)] {
        if let name = v.adapterName, folder.adapterDirectory(name) == nil {
            stderrLine("arcflow: note: \(folder.directory) has no '\(name)' adapter; the grid has no \(label) column")
            continue
        }
        variants.append((label, v))
    }
    var columns: [[Image8]] = []
    for (label, v) in variants {
        let p = try loadDefault(folder, v, threads: threads)
        var images: [Image8] = []
        let t0 = monotonicSeconds()
        for (i, prompt) in prompts.enumerated() {
            images.append(try p.generate(prompt: prompt, noise: p.noise(seed: seed + i)))
            InterruptFlag.check()
        }
        stderrLine(String(format: "arcflow:   %@: %d images, %.3f s per image", label, images.count, (monotonicSeconds() - t0) / Double(max(images.count, 1))))
        columns.append(images)
    }
    let rows = prompts.indices.map { r in columns.map { Optional($0[r]) } }
    let text = "columns: " + variants.map(\.0).joined(separator: " | ") + "\nrows: " + prompts.joined(separator: "; ") + "\nSeed: \(seed) + row, Generator: arcflow"
    let grid = DefaultReport.grid(rows, scale: 2, gap: 4, columnLabels: variants.map(\.0), rowLabels: prompts)
    try writeAtomically(PNG.encode(grid, text: [("parameters", text)]), to: output)
    print("wrote \(output) (\(prompts.count) prompts × \(variants.map(\.0).joined(separator: " | ")))")
}

let reportDefaultSpec = CommandSpec(
    name: "report-default",
    usage: "report-default -o DIR [--prompts N] [--seed S] [--default-model DIR] [--student-steps N] [--threads N]",
    summary: "Measure the default model: judge accuracy, paired error to the teacher, time per image → DIR/report.md.",
    options: [
        OptionSpec(names: ["-o", "--output"], value: "DIR", help: "folder for report.md and the contact sheets"),
        OptionSpec(names: ["--prompts"], value: "N", help: "prompts per category: one object, two objects, held-out pairs (default 192)"),
        OptionSpec(names: ["--seed"], value: "S", help: "prompt i uses seed S + i, the same noise for every model (default 0)"),
        OptionSpec(names: ["--default-model"], value: "DIR", help: "the default model's folder (default $ARCFLOW_DEFAULT_MODEL, else models/shapes)"),
        OptionSpec(names: ["--student-steps"], value: "N", help: "the students' NFE (default 2, what they were distilled for; more measures what the step count costs)"),
        threadsOption,
    ],
    details: """
    Renders the fixed prompt set with the teacher (model.json's steps and guidance), the ArcFlow student and the
    linear student (those present), judges every image, and writes DIR/report.md (markdown tables: accuracy
    per category, paired error, time per image; what fails, by the judge's first failed check), DIR/verdicts.csv
    (each prompt's verdict per model and the students' paired error), DIR/<model>.png contact sheets and
    DIR/grid.png (rows = prompts, columns = models, both labelled).
    Tools/report-default.sh splices the table into the README.
    """)

func reportDefaultCommand(_ argv: [String]) throws {
    let spec = reportDefaultSpec
    let args = try parseArguments(argv, spec, maxPositional: 0)
    let out = try args.required("--output", spec)
    // 192 per category: one standard error of an accuracy near 0.8 is then ±0.03 (±0.05 at 64,
    // where one-object accuracies of the same teacher read 0.77 to 0.84 across guidance scales).
    let n = try args.int("--prompts", spec, default: 192, min: 1)!
    let seed = try args.int("--seed", spec, default: 0, min: 0)!
    let threads = try threadCount(args, spec)
    let studentSteps = try args.int("--student-steps", spec, default: 2, min: 1)!
    let folder = try defaultModelFolder(args)
    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    let t = folder.info.teacher
    var pipelines: [(name: String, nfe: String, pipeline: CompiledPipeline)] = [
        ("teacher (Euler, CFG \(t.guidance))", "\(t.steps) × 2 (CFG batch)", try loadDefault(folder, .teacher(steps: t.steps, guidance: t.guidance), threads: threads))]
    // The grid's column labels: what each model is, and its steps.
    var labels = ["teacher \(t.steps) (CFG \(t.guidance))"]
    for (name, short, v) in [("ArcFlow student", "ArcFlow \(studentSteps)", DefaultVariant.arcflow), ("linear student", "linear \(studentSteps)", .linear)] {
        guard let dir = folder.adapterDirectory(v.adapterName!) else {
            stderrLine("arcflow: note: no '\(v.adapterName!)' adapter in \(folder.directory); the report leaves the \(name) out")
            continue
        }
        let k = try ArcFlowAdapter.load(dir).components
        pipelines.append(("\(name) (K = \(k))", "\(studentSteps)", try loadDefault(folder, v.studentSteps(studentSteps), threads: threads)))
        labels.append("\(short) (K = \(k))")
    }
    let prompts = DefaultReport.prompts(perCategory: n)
    stderrLine("arcflow: \(prompts.count) prompts × \(pipelines.count) models")
    let columns = try DefaultReport.run(pipelines, prompts: prompts, seed: seed) { stderrLine("arcflow: \($0)") }
    for (c, (name, _, _)) in zip(columns, pipelines) {
        let file = name.split(separator: " ").first!.lowercased() + ".png"
        try writeAtomically(PNG.encode(ShapesWorld.contactSheet(c.images)), to: "\(out)/\(file)")
    }
    // Every prompt next to every model's image, labelled, for reading the table's failures.
    let rows = prompts.indices.map { r in columns.map { Optional($0.images[r]) } }
    let grid = DefaultReport.grid(rows, scale: 2, gap: 4, columnLabels: labels,
                                  rowLabels: prompts.map { "\($0.category): \($0.prompt)" })
    try writeAtomically(PNG.encode(grid, text: [("parameters", "columns: " + labels.joined(separator: " | ") + "\nSeed: \(seed) + row, Generator: arcflow")]),
                        to: "\(out)/grid.png")
    try writeAtomically(DefaultReport.verdictsCSV(columns, prompts: prompts, seed: seed), to: "\(out)/verdicts.csv")
    let table = DefaultReport.markdown(columns, prompts: prompts, seed: seed, threads: threads)
    try writeAtomically(table, to: "\(out)/report.md")
    print(table, terminator: "")
    print("wrote \(out)/report.md")
}
