// Finding and running the system C compiler: always as a process with an argument list.

import Foundation
import IR

/// The C compiler and the flags and libraries every generated library is built with.
public struct Toolchain {
    public var compiler: String
    /// First line of `compiler --version`: part of the cache key.
    public var identity: String
    public var compileFlags: [String]
    public var linkFlags: [String]

    /// Finds a compiler (`$ARCFLOW_CC`, else gcc, cc, clang in PATH) and OpenBLAS.
    /// gcc is preferred: its libgomp is the OpenMP runtime Debian's OpenMP OpenBLAS uses, so
    /// kernels and BLAS share one thread pool (clang uses LLVM's libomp from libomp-dev).
    /// `march` replaces `native` (e.g. x86-64-v3 builds the AVX2 paths on an AVX-512 machine).
    public static func detect(environment: [String: String] = ProcessInfo.processInfo.environment,
                              march: String? = nil) throws -> Toolchain {
        let compiler: String
        if let cc = environment["ARCFLOW_CC"], !cc.isEmpty {
            guard let path = resolveExecutable(cc, environment) else {
                throw ArcError("no C compiler found: ARCFLOW_CC=\(cc) is not an executable")
            }
            compiler = path
        } else {
            guard let path = ["gcc", "cc", "clang"].lazy.compactMap({ resolveExecutable($0, environment) }).first else {
                throw ArcError("no C compiler found (looked for gcc, cc and clang in PATH); install gcc or set ARCFLOW_CC")
            }
            compiler = path
        }
        let version = try runProcess(compiler, ["--version"])
        guard version.status == 0 else {
            throw ArcError("C compiler \(compiler) does not run: `\(compiler) --version` exited with \(version.status)")
        }
        let identity = version.output.split(separator: "\n").first.map(String.init) ?? compiler
        let isClang = identity.lowercased().contains("clang")
        let blas = try openBLAS()
        var compileFlags = ["-std=c11", try optimizationLevel(environment), "-march=\(march ?? "native")", "-fopenmp", "-fno-math-errno", "-fPIC",
                            "-Wno-unused-function", "-I", blas.include] + (try preludeDefines(environment))
        // -z defs: a symbol that no linked library defines fails the link here, with the linker's
        // message, rather than the dlopen after the library is cached (a clang newer than the
        // libomp found emits OpenMP entry points that libomp lacks).
        var linkFlags = ["-shared", "-fopenmp", blas.library, "-Wl,-rpath,\(blas.directory)", "-lm", "-Wl,-z,defs"]
        if isClang, let omp = llvmOpenMP() {
            compileFlags += ["-I", omp.include]
            linkFlags += ["-L", omp.lib, "-Wl,-rpath,\(omp.lib)"]
            if omp.version < 19 { compileFlags.append("-DAF_OMP_DISPATCH_DEINIT_SHIM") } // common.h says why
        }
        return Toolchain(compiler: compiler, identity: identity, compileFlags: compileFlags, linkFlags: linkFlags)
    }

    /// The optimization level: `$ARCFLOW_CC_OPT` (-O0, -O1, -O2, -O3 or -Os), else -O3. It is a
    /// compile flag, so part of the cache key. The test command sets -O1: gcc -O3 on the generated
    /// kernels was most of the suite's time, and the kernel tests set -O3 back for themselves.
    static func optimizationLevel(_ environment: [String: String]) throws -> String {
        guard let level = environment["ARCFLOW_CC_OPT"], !level.isEmpty else { return "-O3" }
        guard ["-O0", "-O1", "-O2", "-O3", "-Os"].contains(level) else {
            throw ArcError("ARCFLOW_CC_OPT must be -O0, -O1, -O2, -O3 or -Os, got '\(level)'")
        }
        return level
    }

    /// `-D` flags from `$ARCFLOW_CC_DEFINES`: space-separated `AF_NAME` or `AF_NAME=VALUE` (a prelude
    /// tunable such as `AF_GEMM_TPT=4L`), so that a blocking constant can be measured on a whole
    /// compiled model (Tools/bench/alternate.py) without editing the prelude. Only the prelude's
    /// `AF_` macros, with plain values, are accepted: not a way to pass arbitrary compiler flags
    /// (`-ffast-math` would change every result). Compile flags, so part of the cache key.
    static func preludeDefines(_ environment: [String: String]) throws -> [String] {
        let words = (environment["ARCFLOW_CC_DEFINES"] ?? "").split(separator: " ").map(String.init)
        return try words.map { w in
            let parts = w.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let nameOK = parts[0].hasPrefix("AF_") && parts[0].count > 3
                && parts[0].allSatisfy { $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == "_") }
            let valueOK = parts.count == 1 || (!parts[1].isEmpty && parts[1].allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) })
            guard nameOK && valueOK else {
                throw ArcError("ARCFLOW_CC_DEFINES takes space-separated AF_NAME or AF_NAME=VALUE (letters, digits, '+', '-', '.'), got '\(w)'")
            }
            return "-D\(w)"
        }
    }

    /// The OpenMP or serial OpenBLAS, by explicit path: the default pthread build oversubscribes
    /// the cores next to OpenMP (a 64×256×256 GEMM inside a parallel region fell from 165 to 3.9 GFLOP/s).
    static func openBLAS() throws -> (library: String, directory: String, include: String) {
        let fm = FileManager.default
        let libDirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        var found: (String, String)?
        outer: for variant in ["openblas-openmp", "openblas-serial"] {
            for base in libDirs {
                let dir = "\(base)/\(variant)"
                if fm.fileExists(atPath: "\(dir)/libopenblas.so.0") { found = ("\(dir)/libopenblas.so.0", dir); break outer }
            }
        }
        guard let (library, directory) = found else {
            throw ArcError("OpenBLAS (OpenMP or serial build) not found; install libopenblas0-openmp and libopenblas-dev")
        }
        let includes = ["/usr/include/x86_64-linux-gnu/openblas-pthread", "/usr/include/aarch64-linux-gnu/openblas-pthread",
                        "/usr/include/x86_64-linux-gnu", "/usr/include/openblas", "/usr/include"]
        guard let include = includes.first(where: { fm.fileExists(atPath: "\($0)/cblas.h") }) else {
            throw ArcError("cblas.h not found; install libopenblas-dev")
        }
        return (library, directory, include)
    }

    /// LLVM's omp.h and libomp (libomp-dev), for clang, which ships neither; the newest found.
    static func llvmOpenMP() -> (include: String, lib: String, version: Int)? {
        let fm = FileManager.default
        for v in (14...21).reversed() {
            let lib = "/usr/lib/llvm-\(v)/lib"
            guard fm.fileExists(atPath: "\(lib)/libomp.so"),
                  let clangDirs = try? fm.contentsOfDirectory(atPath: "\(lib)/clang") else { continue }
            for d in clangDirs where fm.fileExists(atPath: "\(lib)/clang/\(d)/include/omp.h") {
                return ("\(lib)/clang/\(d)/include", lib, v)
            }
        }
        return nil
    }

    /// The command for one translation unit (for messages and the manifest).
    public func compileCommand(source: String, object: String) -> [String] {
        [compiler] + compileFlags + ["-c", source, "-o", object]
    }

    public func linkCommand(objects: [String], output: String) -> [String] {
        [compiler] + objects + ["-o", output] + linkFlags
    }
}

/// Result of a finished process.
public struct ProcessResult {
    public var status: Int32
    public var output: String
    public var error: String
}

/// Runs `executable` with `arguments` (no shell), capturing stdout and stderr.
public func runProcess(_ executable: String, _ arguments: [String], directory: String? = nil) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let d = directory { p.currentDirectoryURL = URL(fileURLWithPath: d) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    do { try p.run() } catch {
        throw ArcError("cannot run \(executable): \(error.localizedDescription)")
    }
    // Drain stdout on another thread while reading stderr here, so a chatty compiler never
    // blocks on a full pipe.
    final class Box: @unchecked Sendable { var data = Data() }
    let outBox = Box()
    let group = DispatchGroup()
    let reader = out.fileHandleForReading
    DispatchQueue.global().async(group: group) { outBox.data = reader.readDataToEndOfFile() }
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    let outData = outBox.data
    p.waitUntilExit()
    return ProcessResult(status: p.terminationStatus, output: String(decoding: outData, as: UTF8.self),
                         error: String(decoding: errData, as: UTF8.self))
}

func resolveExecutable(_ name: String, _ environment: [String: String]) -> String? {
    let fm = FileManager.default
    if name.contains("/") { return fm.isExecutableFile(atPath: name) ? name : nil }
    for dir in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if fm.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// Hash of the CPU's feature flags: `-march=native` code is only valid on the same features.
public func cpuFeatureHash() -> String {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown-cpu" }
    let lines = info.split(separator: "\n").filter { $0.hasPrefix("flags") || $0.hasPrefix("model name") }
    return SHA256.hash(Set(lines.map(String.init)).sorted().joined(separator: "\n"))
}
