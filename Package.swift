// swift-tools-version:5.9
// ArcFlow graph compiler: tensor IR → passes → C/OpenMP → dlopen runtime.
import PackageDescription

let package = Package(
    name: "arcflow",
    products: [
        .executable(name: "arcflow", targets: ["arcflow"]),
        .library(name: "ArcFlow", targets: ["IR", "Passes", "Codegen", "Runtime", "ArcFlowGraphs", "Imaging", "ShapesWorld",
                                            "Tokenizers", "Generation", "Training", "DefaultModel"]),
    ],
    targets: [
        .target(name: "IR", path: "Sources/IR"),
        .target(name: "Passes", dependencies: ["IR"], path: "Sources/Passes"),
        .target(name: "Codegen", dependencies: ["IR"], path: "Sources/Codegen",
                // The C prelude, one file per kernel family (CCodegen.preludeFamilies sets their order), and
                // api.h, the declarations generated code sees of the families it links (CCodegen.kernelHeader).
                resources: ["common", "elementwise", "conversions", "norms", "gemm", "gemm_int8", "attention", "autodiff", "api"]
                    .map { .embedInCode("Prelude/\($0).h") }),
        .target(name: "Runtime", dependencies: ["IR", "Passes", "Codegen"], path: "Sources/Runtime"),
        // Image files (PNG): not the compiler, so not Runtime; used by generation and training plots.
        .target(name: "Imaging", path: "Sources/Imaging"),
        // The procedural world of the embedded default model: prompts, renderer, judge, tokenizer.
        .target(name: "ShapesWorld", dependencies: ["IR", "Imaging"], path: "Sources/ShapesWorld"),
        // Prompt → ids (CLIP BPE, T5 Unigram), matching Hugging Face; only ArcError from IR.
        .target(name: "Tokenizers", dependencies: ["IR"], path: "Sources/Tokenizers"),
        .target(name: "ArcFlowGraphs", dependencies: ["IR", "Runtime"], path: "Sources/ArcFlowGraphs"),
        // Text-to-image at run time: tokenizers → compiled encoders → sampler → decoder → image.
        .target(name: "Generation", dependencies: ["IR", "Codegen", "Runtime", "Tokenizers", "Imaging", "ArcFlowGraphs", "ShapesWorld"], path: "Sources/Generation"),
        // The training driver (resident state, batches, logs): not the compiler, so its own module.
        .target(name: "Training", dependencies: ["IR", "Passes", "Codegen", "Runtime", "Imaging"], path: "Sources/Training"),
        // The embedded default model: teacher configs, init, loss and CFG sampler graphs, its training run.
        .target(name: "DefaultModel", dependencies: ["IR", "Passes", "Runtime", "ArcFlowGraphs", "Imaging", "ShapesWorld", "Training", "Generation", "Codegen"],
                path: "Sources/DefaultModel"),
        .executableTarget(name: "arcflow", dependencies: ["IR", "Passes", "Codegen", "Runtime", "ArcFlowGraphs", "Imaging", "Generation", "Training",
                                                          "DefaultModel", "ShapesWorld", "Tokenizers"],
                          path: "Tools/arcflow"),
        // Deterministic mutation fuzzing of every reader (Tools/fuzz.sh runs it; FuzzTests in CI).
        .executableTarget(name: "arcflow-fuzz", dependencies: ["IR", "Codegen", "Runtime", "ArcFlowGraphs", "Tokenizers", "Generation"],
                          path: "Tools/fuzz", exclude: ["libfuzzer"]),
        .target(name: "TestSupport", dependencies: ["IR", "Runtime"], path: "Tests/Support"),
        .testTarget(name: "IRTests", dependencies: ["IR"], path: "Tests/IRTests"),
        .testTarget(name: "PassesTests", dependencies: ["IR", "Passes"], path: "Tests/PassesTests",
                    exclude: ["Golden"]),
        // Depends on the arcflow executable so `swift test` builds it: CLITests run it as a process.
        .testTarget(name: "RuntimeTests", dependencies: ["IR", "Passes", "Codegen", "Runtime", "ArcFlowGraphs", "arcflow", "TestSupport"],
                    path: "Tests/RuntimeTests", exclude: ["Fixtures"]),
        .testTarget(name: "ArcFlowGraphsTests", dependencies: ["IR", "Passes", "Runtime", "ArcFlowGraphs", "TestSupport"],
                    path: "Tests/ArcFlowGraphsTests", exclude: ["Fixtures"]),
        // End to end: a diffusers pipeline folder compiled, then generate/tokenize/encode/decode (library and CLI).
        .testTarget(name: "GenerationTests", dependencies: ["Generation", "ArcFlowGraphs", "Runtime", "IR", "Imaging", "TestSupport", "arcflow",
                                                          "DefaultModel", "ShapesWorld"],
                    path: "Tests/GenerationTests"),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "IR"], path: "Tests/TokenizersTests",
                    exclude: ["Fixtures"]),
        .testTarget(name: "TrainingTests", dependencies: ["IR", "Passes", "Runtime", "ArcFlowGraphs", "Training", "arcflow", "TestSupport"],
                    path: "Tests/TrainingTests", exclude: ["Fixtures"]),
        .testTarget(name: "ImagingTests", dependencies: ["Imaging"], path: "Tests/ImagingTests"),
        .testTarget(name: "FuzzTests", dependencies: ["IR", "Runtime", "Tokenizers", "Generation", "ShapesWorld", "arcflow", "arcflow-fuzz", "TestSupport"], path: "Tests/FuzzTests"),
        .testTarget(name: "DefaultModelTests", dependencies: ["DefaultModel", "ShapesWorld", "Training", "ArcFlowGraphs", "Runtime", "IR",
                                                            "Generation", "Imaging", "TestSupport"],
                    path: "Tests/DefaultModelTests"),
        .testTarget(name: "ShapesWorldTests", dependencies: ["ShapesWorld", "IR", "Imaging"], path: "Tests/ShapesWorldTests"),
    ]
)
