// A generated library loaded with dlopen, behind the versioned C ABI of CProgram.swift.

import Codegen
import Foundation
import IR

public final class NativeLibrary {
    typealias RunFunction = @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<UnsafeRawPointer?>?,
                                            UnsafePointer<UnsafeRawPointer?>?, UnsafePointer<UnsafeMutableRawPointer?>?,
                                            UnsafeMutablePointer<Double>?, Int32) -> Int32
    typealias IntFunction = @convention(c) () -> Int32
    typealias SizeFunction = @convention(c) () -> Int
    typealias NameFunction = @convention(c) (Int32) -> UnsafePointer<CChar>?
    typealias ThreadsFunction = @convention(c) (Int32) -> Void
    typealias PeakFunction = @convention(c) () -> Double
    typealias StringFunction = @convention(c) () -> UnsafePointer<CChar>?
    typealias ProgressCallback = @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void
    typealias SetProgressFunction = @convention(c) (ProgressCallback?, UnsafeMutableRawPointer?) -> Void

    public let path: String
    private let handle: UnsafeMutableRawPointer
    private let runFunction: RunFunction
    public let workspaceSize: Int
    public let stepNames: [String]
    private let setThreadsFunction: ThreadsFunction
    private let peakFunction: PeakFunction
    /// Absent from libraries built before it was added (model folders are kept across versions).
    private let bf16PeakFunction: PeakFunction?
    /// Absent from libraries built before it was added.
    private let bf16UnitFunction: IntFunction?
    private let setProgressFunction: SetProgressFunction
    /// The OpenBLAS kernel family in use, e.g. "SkylakeX".
    public let blasCore: String
    /// Columns per strip of the packed weight panels its GEMMs read (gemm.h AF_GEMM_STRIP); a
    /// library built before strips read whole panel rows.
    public let gemmStrip: Int

    /// Loads `path` and checks its ABI version; `dlerror()` is reported verbatim.
    public init(path: String) throws {
        self.path = path
        chooseOpenBLASKernels()
        guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw ArcError("cannot load \(path): \(String(cString: dlerror()))")
        }
        handle = h
        func symbol<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let s = dlsym(h, name) else {
                dlclose(h)
                throw ArcError("\(path) is not an arcflow library: missing symbol \(name)")
            }
            return unsafeBitCast(s, to: type)
        }
        let version = try symbol("arcflow_abi_version", IntFunction.self)()
        guard version == abiVersion else {
            dlclose(h)
            throw ArcError("\(path) has ABI version \(version), this arcflow expects \(abiVersion); recompile the model")
        }
        runFunction = try symbol("arcflow_run", RunFunction.self)
        workspaceSize = try symbol("arcflow_workspace_size", SizeFunction.self)()
        let count = try symbol("arcflow_num_steps", IntFunction.self)()
        let name = try symbol("arcflow_step_name", NameFunction.self)
        stepNames = (0..<count).map { String(cString: name($0)!) }
        setThreadsFunction = try symbol("arcflow_set_threads", ThreadsFunction.self)
        peakFunction = try symbol("arcflow_fma_peak_gflops", PeakFunction.self)
        bf16PeakFunction = dlsym(h, "arcflow_bf16_peak_gflops").map { unsafeBitCast($0, to: PeakFunction.self) }
        bf16UnitFunction = dlsym(h, "arcflow_bf16_compute_unit").map { unsafeBitCast($0, to: IntFunction.self) }
        setProgressFunction = try symbol("arcflow_set_progress", SetProgressFunction.self)
        blasCore = (try symbol("arcflow_blas_core", StringFunction.self)()).map { String(cString: $0) } ?? "unknown"
        gemmStrip = dlsym(h, "arcflow_gemm_strip").map { Int(unsafeBitCast($0, to: IntFunction.self)()) } ?? gemmPanelWidth
    }

    /// Measures the machine's fp32 FMA peak with the current thread count (about 60 ms).
    public func fmaPeakGFLOPS() -> Double { peakFunction() }

    /// Measures the bf16 dot-product (`vdpbf16ps`) peak with the current thread count; nil where
    /// the library was built without AVX-512 BF16 or before the measurement existed.
    public func bf16PeakGFLOPS() -> Double? {
        guard let f = bf16PeakFunction else { return nil }
        let peak = f()
        return peak > 0 ? peak : nil
    }

    /// What runs `--compute bf16` in this process: "amx" (the tile unit, where the CPU has AMX-BF16
    /// and Linux grants the tile state), "vdpbf16ps", or "f32" (a build without AVX-512 BF16
    /// emulates it); nil for a library built before this existed.
    public func bf16ComputeUnit() -> String? {
        guard let f = bf16UnitFunction else { return nil }
        switch f() {
        case 2: return "amx"
        case 1: return "vdpbf16ps"
        default: return "f32"
        }
    }

    /// Where `--compute bf16` will not pay: a warning naming both measured peaks when the bf16
    /// dot products are not at least 1.3× the f32 FMAs (on Zen 4 and 5 they are about 2×; on an
    /// Intel Xeon, session 21 measured vdpbf16ps at 0.50× and the mode at 0.54-0.77× f32; with AMX
    /// the library measures the tile unit instead, 15-17× the FMA peak in session 26).
    public func computeBF16Warning() -> String? {
        guard let bf16 = bf16PeakGFLOPS() else { return nil }
        return NativeLibrary.computeBF16Warning(bf16Peak: bf16, fmaPeak: fmaPeakGFLOPS())
    }

    public static func computeBF16Warning(bf16Peak bf16: Double, fmaPeak f32: Double) -> String? {
        guard bf16 < 1.3 * f32 else { return nil }
        return String(format: "warning: --compute bf16 will likely be slower than --compute f32 on this CPU: its bf16 dot products "
                      + "measured %.0f GFLOP/s against %.0f for f32 FMAs (%.2f×; the mode needs about 2× to pay for rounding "
                      + "activations to bf16)", bf16, f32, bf16 / f32)
    }

    // No dlclose: OpenMP worker threads of the library's libgomp outlive any run, and
    // unmapping the code under them crashes the process at exit. Libraries stay loaded.

    public func setThreads(_ n: Int) { setThreadsFunction(Int32(n)) }

    /// Runs `body` with `progress(step)` called after every step of each run inside it.
    public func withProgress<T>(_ progress: @escaping (Int) -> Void, _ body: () throws -> T) rethrows -> T {
        let box = Unmanaged.passRetained(ProgressBox(progress))
        setProgressFunction({ context, step in
            Unmanaged<ProgressBox>.fromOpaque(context!).takeUnretainedValue().f(Int(step))
        }, box.toOpaque())
        defer {
            setProgressFunction(nil, nil)
            box.release()
        }
        return try body()
    }

    func run(workspace: UnsafeMutableRawPointer?, weights: [UnsafeRawPointer?], inputs: [UnsafeRawPointer?],
             outputs: [UnsafeMutableRawPointer?], times: UnsafeMutablePointer<Double>?, gemmOnly: Bool) {
        let status = weights.withUnsafeBufferPointer { w in
            inputs.withUnsafeBufferPointer { i in
                outputs.withUnsafeBufferPointer { o in
                    runFunction(workspace, w.baseAddress, i.baseAddress, o.baseAddress, times, gemmOnly ? 1 : 0)
                }
            }
        }
        precondition(status == 0, "generated code returned \(status)")
    }
}

/// Carries a Swift closure through the C progress callback's context pointer.
private final class ProgressBox {
    let f: (Int) -> Void
    init(_ f: @escaping (Int) -> Void) { self.f = f }
}

/// OpenBLAS 0.3.21 does not know AMD's Zen 5 and falls back to its AVX2 ("Haswell") kernels,
/// half the speed of its AVX-512 ones on these cores (sgemm 250 vs 430-480 GFLOP/s on 2 cores,
/// measured). Where the CPU has the AVX-512 subsets those kernels use, ask for them, unless the
/// user chose a core type. OpenBLAS reads this once, when the first library loads it.
func chooseOpenBLASKernels() {
    guard getenv("OPENBLAS_CORETYPE") == nil else { return }
    if cpuFlags().isSuperset(of: ["avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512cd"]) {
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 0)
    }
}

/// This CPU's feature flags, from the first `flags` line of /proc/cpuinfo (empty where it cannot
/// be read).
func cpuFlags() -> Set<String> {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
    return Set(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init))
}
