// run and bench: execute a compiled model folder.

import Codegen
import Foundation
import IR
import Runtime

let threadsOption = OptionSpec(names: ["--threads"], value: "N",
                               help: "threads for kernels and BLAS (default: $OMP_NUM_THREADS, else the physical cores, fewer when other processes keep CPUs busy or a cgroup CPU quota allows fewer)")

/// `--threads N`, else `OMP_NUM_THREADS` (its first number, as OpenMP reads it), else the
/// physical cores, fewer when other processes hold CPUs (`ThreadChoice` says why), which it then
/// says on stderr.
func threadCount(_ args: ParsedArguments, _ spec: CommandSpec) throws -> Int {
    if let n = try args.int("--threads", spec, min: 1) { return n }
    if let v = ProcessInfo.processInfo.environment["OMP_NUM_THREADS"],
       let n = v.split(separator: ",").first.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }), n >= 1 {
        return n
    }
    let c = ThreadChoice.measure()
    if let reason = c.reason {
        stderrLine("arcflow: \(reason): running \(c.threads) thread\(c.threads == 1 ? "" : "s") instead of \(c.cores) (--threads N to choose)")
    }
    return c.threads
}

let runSpec = CommandSpec(
    name: "run", usage: "run --model DIR --inputs IN.safetensors -o OUT.safetensors [--threads N] [--profile]",
    summary: "Run a compiled model on inputs from a safetensors file; write its outputs to another.",
    options: [
        OptionSpec(names: ["--model"], value: "DIR", help: "compiled model folder (from `arcflow compile`)"),
        OptionSpec(names: ["--inputs"], value: "IN.safetensors", help: "one tensor per graph input, by name"),
        OptionSpec(names: ["-o", "--output"], value: "OUT.safetensors", help: "where to write the outputs"),
        threadsOption,
        OptionSpec(names: ["--profile"], value: nil, help: "print time per kernel (to stderr)"),
    ])

/// The compiled model of `--model`, set to run with `threadCount`'s threads (also returned).
func loadModel(_ args: ParsedArguments, _ spec: CommandSpec) throws -> (LoadedModel, threads: Int) {
    let model = try LoadedModel.load(try args.required("--model", spec))
    let threads = try threadCount(args, spec)
    model.executable.setThreads(threads)
    return (model, threads)
}

func runCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, runSpec, maxPositional: 0)
    let (model, _) = try loadModel(args, runSpec)
    let inputsPath = try args.required("--inputs", runSpec)
    let outPath = try args.required("--output", runSpec)
    let file = try SafeTensorsStore(path: inputsPath)
    var inputs: [String: Tensor] = [:]
    for b in model.executable.inputs {
        guard let t = file.type(of: b.name) else {
            throw ArcError("\(inputsPath) has no tensor '\(b.name)' (expected \(b.type)); it has: \(file.names.joined(separator: ", "))")
        }
        guard t == b.type else { throw ArcError("input '\(b.name)' in \(inputsPath) is \(t), expected \(b.type)") }
        inputs[b.name] = try file.tensor(b.name)
    }
    let steps = model.manifest.steps
    var times = [Double](repeating: 0, count: steps.count)
    let start = monotonicSeconds()
    var outputs: [String: Tensor] = [:]
    if args.has("--profile") {
        outputs = try runProfiled(model.executable, inputs, &times)
    } else {
        outputs = try model.executable.run(inputs)
    }
    let elapsed = monotonicSeconds() - start
    try writeSafeTensors(model.executable.outputs.map { b in
        TensorRecord(name: b.name, dtype: b.type.dtype, shape: b.shape, payload: .floats(outputs[b.name]!.data))
    }, to: outPath)
    print("ran @\(model.manifest.graph) in \(formatMS(elapsed)); wrote \(model.executable.outputs.map(\.name).joined(separator: ", ")) to \(outPath)")
    if args.has("--profile") { printProfile(steps, times, runs: 1) }
}

/// Runs once with per-step timing into `times`.
func runProfiled(_ exe: Executable, _ inputs: [String: Tensor], _ times: inout [Double]) throws -> [String: Tensor] {
    let ins = try exe.encodeInputs(inputs), outs = exe.allocateOutputs()
    defer { (ins + outs).forEach { $0.deallocate() } }
    try times.withUnsafeMutableBufferPointer { t in
        try exe.runRaw(inputs: ins.map { UnsafeRawPointer($0) }, outputs: outs, times: t.baseAddress)
    }
    return exe.decodeOutputs(outs)
}

/// Per-kernel table: time, share and GFLOP/s, heaviest first, identical kernels summed.
func printProfile(_ steps: [StepInfo], _ times: [Double], runs: Int) {
    var byKernel: [String: (seconds: Double, flops: Double, calls: Int)] = [:]
    for (i, s) in steps.enumerated() {
        var e = byKernel[s.kernel] ?? (0, 0, 0)
        e.seconds += times[i] / Double(runs); e.flops += s.flops; e.calls += 1
        byKernel[s.kernel] = e
    }
    let total = max(times.reduce(0, +) / Double(runs), 1e-12)
    var out = String(format: "profile (%.3f ms in kernels):\n", total * 1000)
    out += "        ms      %   GFLOP/s  calls  kernel\n"
    for (k, e) in byKernel.sorted(by: { $0.value.seconds > $1.value.seconds }) {
        let gflops = e.flops > 0 && e.seconds > 0 ? String(format: "%9.1f", e.flops / e.seconds / 1e9) : "        -"
        out += String(format: "%10.3f %6.1f %@ %6d  %@\n", e.seconds * 1000, 100 * e.seconds / total, gflops, e.calls, k)
    }
    FileHandle.standardError.write(out.data(using: .utf8)!)
}

let benchSpec = CommandSpec(
    name: "bench", usage: "bench --model DIR [--runs N] [--warmup N] [--threads N] [--json] [--profile] [--no-baseline]",
    summary: "Time one run of a compiled graph on random inputs; compare with its GEMMs alone through OpenBLAS, in the same run.",
    options: [
        OptionSpec(names: ["--model"], value: "DIR", help: "compiled model folder"),
        OptionSpec(names: ["--runs"], value: "N", help: "timed runs (default 10)"),
        OptionSpec(names: ["--warmup"], value: "N", help: "untimed runs first (default 2)"),
        threadsOption,
        OptionSpec(names: ["--seed"], value: "S", help: "seed of the random inputs (default 0)"),
        OptionSpec(names: ["--json"], value: nil, help: "print one JSON object instead of text"),
        OptionSpec(names: ["--profile"], value: nil, help: "also print time per kernel (to stderr)"),
        OptionSpec(names: ["--no-baseline"], value: nil, help: "skip the GEMM-only runs (halves the time of long graphs timed against another framework)"),
    ],
    details: """
    The baseline runs only the graph's GEMMs (the same cblas calls on the same operands, skipping every
    other kernel), interleaved with the full runs so both see the same machine state. GFLOP/s counts
    GEMM and attention FLOPs.
    """)

func benchCommand(_ argv: [String]) throws {
    let args = try parseArguments(argv, benchSpec, maxPositional: 0)
    let (model, threads) = try loadModel(args, benchSpec)
    let runs = try args.int("--runs", benchSpec, default: 10, min: 1)!
    let warmup = try args.int("--warmup", benchSpec, default: 2, min: 0)!
    let seed = try args.int("--seed", benchSpec, default: 0, min: 0)!
    let exe = model.executable
    var rng = SeededGenerator(seed: UInt64(seed))
    var random: [String: Tensor] = [:]
    for b in exe.inputs { random[b.name] = Tensor(b.type, rng.normals(b.type.count).map { roundToStorage($0, b.type.dtype) }) }
    let ins = try exe.encodeInputs(random), outs = exe.allocateOutputs()
    defer { (ins + outs).forEach { $0.deallocate() } }
    let inPtrs = ins.map { UnsafeRawPointer($0) }
    func timed(gemmOnly: Bool, times: UnsafeMutablePointer<Double>? = nil) throws -> Double {
        let t0 = monotonicSeconds()
        try exe.runRaw(inputs: inPtrs, outputs: outs, times: times, gemmOnly: gemmOnly)
        return monotonicSeconds() - t0
    }
    let baseline = !args.has("--no-baseline")
    for _ in 0..<warmup { _ = try timed(gemmOnly: false); if baseline { _ = try timed(gemmOnly: true) } }
    var full: [Double] = [], gemm: [Double] = []
    for _ in 0..<runs {
        full.append(try timed(gemmOnly: false))
        gemm.append(baseline ? try timed(gemmOnly: true) : .nan)
    }
    let m = model.manifest
    let med = median(full), gmed = median(gemm)
    let gflops = m.flops / med / 1e9, gemmGflops = m.gemmFlops / gmed / 1e9
    let nfe = Double(m.model["nfe"] ?? "") ?? 0
    let peak = exe.library.fmaPeakGFLOPS()
    let bf16Peak = exe.library.bf16PeakGFLOPS()
    let core = exe.library.blasCore
    if args.has("--json") {
        var obj: [String: Any] = [
            "graph": m.graph, "runs": runs, "threads": threads,
            "ms_median": med * 1000, "ms_min": full.min()! * 1000, "ms_max": full.max()! * 1000,
            "ms_runs": full.map { $0 * 1000 },
            "gflop_per_run": m.flops / 1e9, "gflop_per_s": gflops, "fma_peak_gflop_per_s": peak, "openblas_core": core,
        ]
        if let b = bf16Peak { obj["bf16_peak_gflop_per_s"] = b }
        if let u = exe.library.bf16ComputeUnit() { obj["bf16_compute_unit"] = u }
        if baseline {
            obj["gemm_ms_median"] = gmed * 1000
            obj["gemm_gflop_per_run"] = m.gemmFlops / 1e9
            obj["gemm_gflop_per_s"] = gemmGflops
            obj["throughput_vs_gemm"] = gemmGflops > 0 ? gflops / gemmGflops : 0
        }
        if nfe > 0 {
            // A sampler runs its transformer nfe times per run; one evaluation is a run / nfe.
            obj["nfe"] = Int(nfe)
            obj["nfe_ms_median"] = med * 1000 / nfe
            obj["nfe_ms_min"] = full.min()! * 1000 / nfe
            obj["nfe_ms_max"] = full.max()! * 1000 / nfe
            obj["gflop_per_nfe"] = m.flops / 1e9 / nfe
        }
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    } else {
        print("@\(m.graph): \(runs) runs, \(threads) threads, OpenBLAS \(core) kernels, measured FMA peak "
              + String(format: "%.0f GFLOP/s", peak)
              + (bf16Peak.map { String(format: " (bf16 %@ %.0f)", exe.library.bf16ComputeUnit() == "amx" ? "on AMX tiles" : "dot products", $0) } ?? ""))
        print(String(format: "  full graph : median %8.3f ms  (min %.3f, max %.3f)  %7.1f GFLOP/s  (%.3f GFLOP)",
                     med * 1000, full.min()! * 1000, full.max()! * 1000, gflops, m.flops / 1e9))
        if nfe > 0 {
            print(String(format: "  per NFE    : median %8.3f ms  (min %.3f, max %.3f)  (%.3f GFLOP per NFE, %d NFE per run)",
                         med * 1000 / nfe, full.min()! * 1000 / nfe, full.max()! * 1000 / nfe, m.flops / 1e9 / nfe, Int(nfe)))
        }
        if baseline {
            print(String(format: "  GEMMs alone: median %8.3f ms  (min %.3f, max %.3f)  %7.1f GFLOP/s  (%.3f GFLOP, OpenBLAS)",
                         gmed * 1000, gemm.min()! * 1000, gemm.max()! * 1000, gemmGflops, m.gemmFlops / 1e9))
            print(String(format: "  throughput vs GEMMs alone: %.1f%%; everything else adds %.1f%% to the GEMM time; %.0f%% of FMA peak",
                         100 * gflops / max(gemmGflops, 1e-12), 100 * (med - gmed) / gmed, 100 * gflops / peak))
        }
    }
    if args.has("--profile") {
        var times = [Double](repeating: 0, count: m.steps.count)
        try times.withUnsafeMutableBufferPointer { t in
            for _ in 0..<runs { _ = try timed(gemmOnly: false, times: t.baseAddress) }
        }
        printProfile(m.steps, times, runs: runs)
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
