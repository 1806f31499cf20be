// The readers under test: one target per kind of file arcflow reads from other people.

import ArcFlowGraphs
import Codegen
import Foundation
import Generation
import IR
import Runtime
import Tokenizers

/// A reader and the folder it reads. A case replaces one member file of `base` (a copy of
/// `Tests/Fuzz/corpus/<name>/` plus what `prepare` makes at run time) and calls `run`; a thrown
/// `ArcError` is a rejected input, anything else that goes wrong is a finding.
struct FuzzTarget {
    let name: String
    let summary: String
    /// Builds what cannot be committed (a compiled model, a cache entry, a 300 KB charsmap).
    var prepare: (_ base: String, _ root: String) throws -> Void = { _, _ in }
    /// Which files of `base` are mutated (default: all).
    var isMember: (String) -> Bool = { _ in true }
    /// Loaded once per process: what the reader needs besides the case (good tokenizers, a toolchain).
    var load: (_ base: String) throws -> Void = { _ in }
    let run: (_ base: String, _ member: String) throws -> Void
}

/// A reader accepted an input it must not accept (e.g. a cache entry whose library does not
/// match its hash): reported like a crash.
struct InvariantViolation: Error { let message: String }

nonisolated(unsafe) private var goodCLIP: CLIPTokenizer?
nonisolated(unsafe) private var goodT5: T5Tokenizer?
nonisolated(unsafe) private var toolchain: Toolchain?

/// Prompts that exercise the tokenizers' clean-up paths (CJK, controls, accents, contractions).
private let probePrompts = ["a red fox in the snow", "Ünïcödé ſtraße 東京 'S it's", "\u{200D}x\u{00AD}y\t\u{3000}z", ""]

private func randomWeights(_ graph: Graph) -> TensorStore {
    var rng = SeededGenerator(seed: 1)
    return TensorStore(Dictionary(uniqueKeysWithValues: graph.nodes.filter { $0.op == .weight }.map {
        ($0.key!, Tensor($0.type, rng.normals($0.type.count)))
    }))
}

let fuzzTargets: [FuzzTarget] = [
    FuzzTarget(name: "ir", summary: "IR text: Parser.parseFile (read, UTF-8, parse, verify) and the printer", run: { base, member in
        let m = try Parser.parseFile("\(base)/\(member)")
        _ = Printer.print(m)
    }),
    FuzzTarget(name: "safetensors", summary: "safetensors files (checkpoints, adapters, inputs): header validation and every tensor's data",
               run: { base, member in
        let store = try SafeTensorsStore(path: "\(base)/\(member)")
        for name in store.names { _ = try store.tensor(name) }
        for f in store.files { for (name, _) in f.unsupportedTensors { _ = try? f.info(name) } }
    }),
    FuzzTarget(name: "shards", summary: "a sharded T5 folder: index.json, its shards, config.json, every tensor checked against the config",
               isMember: { !$0.hasSuffix("README.md") }, run: { base, _ in
        let t5 = try T5Encoder.load("\(base)/text_encoder_2")
        _ = try T5EncoderGraph.build(config: t5.config, weights: t5.store, tokens: 4)
        for name in t5.store.names { _ = try t5.store.tensor(name) }
    }),
    FuzzTarget(name: "config", summary: "config.json readers: FluxPipeline folder (model_index, scheduler, CLIP, T5, transformer, VAE), the ArcFlow adapter and a Qwen-Image transformer",
               prepare: { base, root in
        // Only the JSON files are seeds; the weights they describe come from the fixtures.
        let fm = FileManager.default, fixture = "\(root)/Tests/ArcFlowGraphsTests/Fixtures"
        for f in files(under: "\(fixture)/pipeline") where !fm.fileExists(atPath: "\(base)/pipeline/\(f)") && !["reference.safetensors", "case.json", "README.md"].contains(f) {
            try? fm.createDirectory(atPath: ("\(base)/pipeline/\(f)" as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try fm.copyItem(atPath: "\(fixture)/pipeline/\(f)", toPath: "\(base)/pipeline/\(f)")
        }
        try fm.copyItem(atPath: "\(fixture)/cfg-a/adapter-k4/diffusion_pytorch_model.safetensors", toPath: "\(base)/adapter/diffusion_pytorch_model.safetensors")
        try fm.copyItem(atPath: "\(fixture)/qwen-a/transformer/diffusion_pytorch_model.safetensors",
                        toPath: "\(base)/qwen/transformer/diffusion_pytorch_model.safetensors")
    }, isMember: { $0.hasSuffix(".json") && !$0.hasPrefix("pipeline/tokenizer") }, run: { base, member in
        if member.hasPrefix("qwen/") {
            // Qwen-Image: the family switch, the config, and every weight checked against it by building one evaluation.
            _ = try TransformerFamily.of("\(base)/qwen/transformer")
            let q = try QwenImageCheckpoint.load("\(base)/qwen/transformer")
            var o = QwenImageOptions(height: 48, width: 80)
            o.textTokens = 7
            _ = try QwenImageModel.evaluation(q, adapter: nil, sigma: 1, options: o)
        } else if member.hasPrefix("adapter/") {
            let a = try ArcFlowAdapter.load("\(base)/adapter")
            _ = a.lora.count
        } else {
            let p = try FluxPipelineFolder.load("\(base)/pipeline")
            _ = p
        }
    }),
    FuzzTarget(name: "tokenizer", summary: "tokenizer files: CLIP vocab/merges/configs, T5 tokenizer.json, the Precompiled charsmap; then encoding",
               prepare: { base, root in
        // The charsmap is 240 KB inside the fixture's tokenizer.json: extracted, not committed twice.
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath:
            "\(root)/Tests/ArcFlowGraphsTests/Fixtures/pipeline/tokenizer_2/tokenizer.json"))) as! [String: Any]
        let normalizers = (json["normalizer"] as! [String: Any])["normalizers"] as! [[String: Any]]
        let b64 = normalizers.first { $0["type"] as? String == "Precompiled" }!["precompiled_charsmap"] as! String
        try FileManager.default.createDirectory(atPath: "\(base)/charsmap", withIntermediateDirectories: true)
        try Data(base64Encoded: b64)!.write(to: URL(fileURLWithPath: "\(base)/charsmap/charsmap.bin"))
    }, run: { base, member in
        if member.hasPrefix("clip/") {
            let t = try CLIPTokenizer(folder: "\(base)/clip")
            for p in probePrompts { _ = t.encode(p) }
        } else if member.hasPrefix("t5/") {
            let t = try T5Tokenizer(folder: "\(base)/t5")
            for p in probePrompts { _ = try t.encode(p, length: 32) }
        } else {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: "\(base)/\(member)"))
            guard let pc = Precompiled(base64: bytes.base64EncodedString()) else { throw ArcError("charsmap rejected") }
            for p in probePrompts { _ = pc.normalize(p) }
        }
    }),
    FuzzTarget(name: "prompt", summary: "prompt files (--prompts): readPromptLines, then both tokenizers on every line",
               prepare: { base, root in
        let fm = FileManager.default
        try fm.createDirectory(atPath: "\(base)/tokenizers", withIntermediateDirectories: true)
        for t in ["tokenizer", "tokenizer_2"] {
            try fm.copyItem(atPath: "\(root)/Tests/ArcFlowGraphsTests/Fixtures/pipeline/\(t)", toPath: "\(base)/tokenizers/\(t)")
        }
    }, isMember: { !$0.hasPrefix("tokenizers/") }, load: { base in
        goodCLIP = try CLIPTokenizer(folder: "\(base)/tokenizers/tokenizer")
        goodT5 = try T5Tokenizer(folder: "\(base)/tokenizers/tokenizer_2")
    }, run: { base, member in
        for line in try readPromptLines("\(base)/\(member)").prefix(64) {
            guard let line else { continue }
            _ = goodCLIP!.encode(line)
            _ = try goodT5!.encode(line, length: 64)
        }
    }),
    FuzzTarget(name: "model", summary: "compiled model folders: manifest.json, weights.safetensors, the library's hash (LoadedModel.load)",
               prepare: { base, _ in
        let graph = try ExampleGraphs.mlp(batch: 2, inputs: 8, hidden: 16, classes: 4)
        var options = CompileOptions()
        options.cacheRoot = "\(base)/.cache"
        let compiled = try ModelCompiler.build(Module(graph), weights: randomWeights(graph), options: options)
        try ModelCompiler.write(compiled, to: "\(base)/model")
        try? FileManager.default.removeItem(atPath: "\(base)/.cache")
    }, isMember: { $0.hasPrefix("model/") && !$0.hasSuffix(".ir") }, run: { base, _ in
        let m = try LoadedModel.load("\(base)/model")
        _ = m.manifest
    }),
    FuzzTarget(name: "cache", summary: "library cache entries: lib.so, lib.so.sha256, commands.txt (BuildCache.cachedEntry)",
               prepare: { base, _ in
        let graph = try ExampleGraphs.mlp(batch: 1, inputs: 4, hidden: 4, classes: 2)
        var options = CompileOptions()
        options.cacheRoot = "\(base)/cache"
        _ = try ModelCompiler.build(Module(graph), weights: randomWeights(graph), options: options)
    }, load: { _ in toolchain = try Toolchain.detect()     }, run: { base, member in
        let key = String(member.split(separator: "/")[1])
        let cache = BuildCache(root: "\(base)/cache", toolchain: toolchain!)
        // A corrupted entry is deleted and rebuilt (never an error for the user): counted as rejected.
        guard let entry = cache.cachedEntry(key: key) else { throw ArcError("cache entry \(key.prefix(16)) is corrupted; rebuilding") }
        let expected = try String(contentsOfFile: entry.path + ".sha256", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard try sha256(ofFile: entry.path) == expected else { throw InvariantViolation(message: "a corrupted cache entry was returned") }
    }),
]
