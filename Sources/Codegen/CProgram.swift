// Lowers a planned graph to C: kernels shared by identical shapes, a run function calling
// them in order on one arena, and the small versioned ABI the runtime loads.

import Foundation
import IR

/// Version of the C ABI between generated libraries and the runtime. Bump on any change to
/// the exported functions' signatures or meaning.
public let abiVersion = 3

/// Version of the code generator; part of every cache key.
public let codegenVersion = "arcflow-codegen-12"

/// A tensor crossing the ABI: graph inputs, weights and outputs, in pointer-array order.
public struct Binding: Equatable, Codable {
    public var name: String
    public var dtype: String
    public var shape: [Int]
    /// Set for a weight stored as GEMM panels (`dtype` and `shape` are then the panels').
    public var packing: WeightPacking?

    public init(name: String, type: TensorType, packing: WeightPacking? = nil) {
        self.name = name
        self.dtype = type.dtype.rawValue
        self.shape = type.shape
        self.packing = packing
    }

    public var type: TensorType { TensorType(DType(rawValue: dtype) ?? .f32, shape) }
}

/// One call in the run function, for profiles.
public struct StepInfo: Equatable, Codable {
    public var name: String
    public var kernel: String
    public var flops: Double
    public var isGEMM: Bool
}

/// Generated C for one graph, split into translation units, plus what the runtime needs to call it.
public struct CProgram {
    /// Lays the weights packed in strips out for `strip` columns (the built library's
    /// AF_GEMM_STRIP: generating the C does not know which register tile the compiler's -march picks).
    public mutating func stripPanels(_ strip: Int) {
        for i in weights.indices where weights[i].packing?.stripped == true { weights[i].packing!.strip = strip }
    }

    /// File name → C source. `main.c` holds the ABI functions; `kernels_N.c` the kernels.
    public var sources: [(name: String, text: String)]
    public var inputs: [Binding]
    public var weights: [Binding]
    public var outputs: [Binding]
    public var arenaBytes: Int
    public var steps: [StepInfo]
    /// The prelude object's source: the same for every program. `BuildCache` compiles it once per
    /// compiler, flags and CPU and links it into each library (the sources declare its entry points).
    public var prelude: (name: String, text: String) = ("prelude.c", CCodegen.preludeObjectSource)
    public var flops: Double { steps.reduce(0) { $0 + $1.flops } }
    public var gemmFlops: Double { steps.filter(\.isGEMM).reduce(0) { $0 + $1.flops } }
}

public enum CCodegen {
    /// The C prelude's kernel families in dependency order (each may use those before it):
    /// file name → text. One file per family keeps each small enough to read and lets a kernel
    /// test compile a family on its own.
    public static let preludeFamilies: [(name: String, text: String)] = [
        ("common.h", PackageResources.common_h), ("elementwise.h", PackageResources.elementwise_h),
        ("conversions.h", PackageResources.conversions_h), ("norms.h", PackageResources.norms_h),
        ("gemm.h", PackageResources.gemm_h), ("gemm_int8.h", PackageResources.gemm_int8_h),
        ("attention.h", PackageResources.attention_h),
        ("autodiff.h", PackageResources.autodiff_h),
    ].map { ($0.0, String(decoding: $0.1, as: UTF8.self)) }

    /// Declarations of the heavy families' entry points (`api.h`).
    public static let preludeAPI = String(decoding: PackageResources.api_h, as: UTF8.self)

    /// The families a generated translation unit includes whole: small functions its kernels inline.
    static let inlinedFamilies: Set<String> = ["common.h", "elementwise.h", "conversions.h"]

    /// What every generated translation unit starts with: the inlined families and `api.h`, so each
    /// file still reads and compiles on its own; the library links the rest from the prelude object.
    /// (Each unit used to carry every family: gcc then spent 2 s at -O1 and 8 s at -O3 per unit
    /// instantiating the GEMM and attention micro-kernels, most of a library's build.)
    public static let kernelHeader =
        (["#define AF_PRELUDE_SHARED 1"] + preludeFamilies.filter { inlinedFamilies.contains($0.name) }.map(\.text) + [preludeAPI])
            .joined(separator: "\n")

    /// The prelude object: every family, its entry points external (hidden in the library), then
    /// `api.h`, so that the compiler checks each declaration against its definition.
    public static let preludeObjectSource =
        (["#define AF_PRELUDE_SHARED 1", "#define AF_PRELUDE_OBJECT 1"] + preludeFamilies.map(\.text) + [preludeAPI]).joined(separator: "\n")

    /// Generates C for `graph`, which must carry `offset` attributes (plan-memory).
    /// `translationUnits` caps how many kernel files are written (compiled in parallel).
    /// `weightStorage` names the storage type of a weight that may be packed into GEMM panels
    /// (`packedWeights` decides which can), nil to keep it as the graph has it; the caller packs
    /// them (the bindings say how). `compute` is `--compute` for the GEMMs over bf16 panels.
    public static func generate(_ graph: Graph, translationUnits: Int = 2,
                                weightStorage: (String) -> DType? = { _ in nil }, compute: GEMMCompute = .f32) throws -> CProgram {
        guard let arena = graph.attributes["arena_bytes"]?.intValue else {
            throw ArcError("codegen: graph @\(graph.name) has no memory plan (run plan-memory)")
        }
        let names = Printer.valueNames(graph)
        var inputIndex: [ValueID: Int] = [:], weightIndex: [ValueID: Int] = [:]
        var inputs: [Binding] = [], weights: [Binding] = []
        let packed = packedWeights(graph, storage: weightStorage, pairs: compute == .bf16)
        for (i, n) in graph.nodes.enumerated() {
            if n.op == .input { inputIndex[i] = inputs.count; inputs.append(Binding(name: n.key!, type: n.type)) }
            if n.op == .weight {
                weightIndex[i] = weights.count
                weights.append(packed[i].map { Binding(name: n.key!, type: $0.packing.physicalType($0.dtype), packing: $0.packing) }
                               ?? Binding(name: n.key!, type: n.type))
            }
        }
        func root(_ id: ValueID) -> ValueID { graph[id].op == .reshape ? root(graph[id].operands[0]) : id }
        /// Where a kernel argument lives, as a row of the step table's argument array: an arena
        /// offset, or an index into the weight or input pointer arrays.
        func location(_ id: ValueID) -> String {
            let r = root(id)
            if let k = inputIndex[r] { return "{AF_INPUT, \(k)}" }
            if let k = weightIndex[r] { return "{AF_WEIGHT, \(k)}" }
            guard let off = graph[r].int("offset") else { fatalError("value %\(names[r]) has no arena offset") }
            return "{AF_ARENA, \(off)}"
        }

        var kernelNames: [String: String] = [:]     // kernel text → function name
        var kernelOrder: [(name: String, text: String, params: [String])] = []
        var stepRows: [String] = []   // {trampoline, is_gemm, first argument row, argument count}
        var argumentRows: [String] = []
        var steps: [StepInfo] = []
        for (i, node) in graph.nodes.enumerated() {
            if node.op == .input || node.op == .weight || node.op == .reshape { continue }
            // A packed weight is passed as its panels (their C type); the GEMM is told how.
            let operandTypes = node.operands.map { o in packed[o].map { $0.packing.physicalType($0.dtype) } ?? graph[o].type }
            var packings: [Int: WeightPacking] = [:]
            for (k, o) in node.operands.enumerated() { if let p = packed[o] { packings[k] = p.packing } }
            let outOffset = graph[root(i)].int("offset")
            let inPlace = node.operands.firstIndex { o in
                inputIndex[root(o)] == nil && weightIndex[root(o)] == nil && graph[root(o)].int("offset") == outOffset
            }
            // Views (plan-memory): a slice that already lies at its place in its operand, and concat
            // operands their producers already wrote into their slot, need no copy.
            func arenaOffset(_ id: ValueID) -> Int? {
                inputIndex[root(id)] == nil && weightIndex[root(id)] == nil ? graph[root(id)].int("offset") : nil
            }
            if let start = graph.contiguousSliceStart(i), let from = arenaOffset(node.operands[0]), from + start == outOffset { continue }
            var written = Set<Int>()
            if let starts = graph.contiguousConcatStarts(i), let out = outOffset {
                written = Set(node.operands.indices.filter { arenaOffset(node.operands[$0]) == out + starts[$0] })
                if written.count == node.operands.count { continue }
            }
            let kernels = try KernelEmitter.kernels(for: node, operandTypes: operandTypes, inPlace: inPlace, packed: packings,
                                                    compute: compute, written: written)
            for k in kernels {
                let name: String
                if let existing = kernelNames[k.text] {
                    name = existing
                } else {
                    name = "k\(kernelOrder.count)_\(k.label)"
                    kernelNames[k.text] = name
                    kernelOrder.append((name, k.text.replacingOccurrences(of: "KERNEL_NAME", with: name), k.parameters))
                }
                stepRows.append("{t_\(name), \(k.isGEMM ? 1 : 0), \(argumentRows.count), \(node.operands.count + 1)}")
                argumentRows += (node.operands + [i]).map(location)
                steps.append(StepInfo(name: "%\(names[i])", kernel: name, flops: k.flops, isGEMM: k.isGEMM))
            }
        }

        var outputs: [Binding] = []
        var copies: [String] = []
        for (k, o) in graph.outputs.enumerated() {
            let t = graph[o.value].type
            outputs.append(Binding(name: o.name, type: t))
            copies.append("    { static const af_arg at = \(location(o.value)); memcpy(outputs[\(k)], af_pointer(at, A, weights, inputs), \(t.byteCount)); }")
        }

        // Kernels go to translation units balanced by size, compiled in parallel.
        let units = max(1, min(translationUnits, kernelOrder.count))
        var unitTexts = [String](repeating: "", count: units)
        var unitSizes = [Int](repeating: 0, count: units)
        let header = "// Generated by \(codegenVersion) from graph @\(graph.name). Do not edit.\n" + kernelHeader + "\n"
        for k in kernelOrder.sorted(by: { $0.text.count > $1.text.count }) {
            let u = unitSizes.indices.min { unitSizes[$0] < unitSizes[$1] }!
            unitTexts[u] += "\n__attribute__((visibility(\"hidden\")))\n" + k.text
            unitSizes[u] += k.text.count
        }
        // Each kernel gets a trampoline of one shape, so that the run function is a loop over a
        // table of steps rather than one call statement per step: a 28-step sampler has thousands
        // of steps, and gcc took minutes over their unrolled calls (4 min for a 6,561-call teacher)
        // where a table is data it reads in a blink.
        let declarations = kernelOrder.map { k in
            let args = k.params.indices.map { "p[\($0)]" }.joined(separator: ", ")
            return "__attribute__((visibility(\"hidden\"))) void \(k.name)(\(k.params.joined(separator: ", ")));\n"
                + "static void t_\(k.name)(void *const *p) { \(k.name)(\(args)); }"
        }.joined(separator: "\n")
        let stepNames = steps.map { quoteC("\($0.name) \($0.kernel)") }.joined(separator: ",\n    ")
        let maxArguments = kernelOrder.map(\.params.count).max() ?? 0

        let main = header + """
        \(declarations)

        int arcflow_abi_version(void) { return \(abiVersion); }
        size_t arcflow_workspace_size(void) { return \(arena)UL; }
        int arcflow_num_steps(void) { return \(steps.count); }

        const char *arcflow_step_name(int i) {
            static const char *const names[] = {
            \(stepNames.isEmpty ? "\"\"" : stepNames)
            };
            return i >= 0 && i < \(steps.count) ? names[i] : "";
        }

        /// One thread count for both OpenMP kernels and OpenBLAS: they share libgomp's pool.
        void arcflow_set_threads(int n) {
            if (n > 0) { omp_set_num_threads(n); openblas_set_num_threads(n); }
        }

        /// The fp32 FMA peak of this machine (GFLOP/s, all threads), measured, for benchmarks.
        double arcflow_fma_peak_gflops(void) { return af_fma_peak_gflops(); }

        /// The bf16 dot-product peak (GFLOP/s, all threads; 0 without AVX-512 BF16), measured.
        double arcflow_bf16_peak_gflops(void) { return af_bf16_peak_gflops(); }

        /// Which unit runs `--compute bf16` here: 2 AMX tiles, 1 vdpbf16ps, 0 f32 FMAs (emulated).
        int arcflow_bf16_compute_unit(void) { return af_bf16_compute_unit(); }

        /// Columns per strip of the packed weight panels these kernels read (gemm.h, AF_GEMM_STRIP).
        int arcflow_gemm_strip(void) { return af_gemm_strip(); }

        /// Which OpenBLAS kernels run (e.g. "Haswell", "SkylakeX"), for benchmark reports.
        const char *arcflow_blas_core(void) { return openblas_get_corename(); }

        /// Progress: called after every step with its index, on the calling thread (a long
        /// run such as a 28-step sampler can report live; NULL turns it off).
        static void (*af_progress)(void *, int) = 0;
        static void *af_progress_context = 0;
        void arcflow_set_progress(void (*callback)(void *, int), void *context) {
            af_progress = callback;
            af_progress_context = context;
        }

        enum { AF_ARENA, AF_WEIGHT, AF_INPUT };
        typedef struct { int kind; long long at; } af_arg;
        typedef struct { void (*call)(void *const *); int is_gemm; int first_arg; int nargs; } af_step;

        static const af_arg af_args[] = {
            \(argumentRows.isEmpty ? "{AF_ARENA, 0}" : argumentRows.joined(separator: ",\n    "))
        };
        static const af_step af_steps[] = {
            \(stepRows.isEmpty ? "{0, 0, 0, 0}" : stepRows.joined(separator: ",\n    "))
        };

        static void *af_pointer(af_arg a, char *A, const void *const *weights, const void *const *inputs) {
            return a.kind == AF_ARENA ? (void *)(A + a.at) : a.kind == AF_WEIGHT ? (void *)weights[a.at] : (void *)inputs[a.at];
        }

        /// Runs the graph. `times` (nullable) accumulates seconds per step; with `gemm_only` set
        /// only the GEMMs run, on the same operands: the baseline of `arcflow bench`.
        int arcflow_run(void *workspace, const void *const *weights, const void *const *inputs,
                        void *const *outputs, double *times, int gemm_only) {
            char *A = (char *)workspace;
            void *p[\(max(maxArguments, 1))];
            (void)A; (void)weights; (void)inputs; (void)times; (void)gemm_only; (void)p;
            for (int i = 0; i < \(steps.count); i++) {
                const af_step *s = &af_steps[i];
                if (!gemm_only || s->is_gemm) {
                    const af_arg *a = &af_args[s->first_arg];
                    for (int k = 0; k < s->nargs; k++) p[k] = af_pointer(a[k], A, weights, inputs);
                    double t0 = times ? omp_get_wtime() : 0;
                    s->call(p);
                    if (times) times[i] += omp_get_wtime() - t0;
                }
                if (af_progress) af_progress(af_progress_context, i);
            }
        \(copies.joined(separator: "\n"))
            return 0;
        }

        """
        var sources = [(name: "main.c", text: main)]
        for (u, text) in unitTexts.enumerated() where !text.isEmpty {
            sources.append((name: "kernels_\(u).c", text: header + text))
        }
        return CProgram(sources: sources, inputs: inputs, weights: weights, outputs: outputs,
                        arenaBytes: arena, steps: steps)
    }

    static func quoteC(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}
