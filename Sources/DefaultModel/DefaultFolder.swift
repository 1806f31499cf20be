// The shipped layout of the embedded default model (models/shapes/): a diffusers-style
// transformer folder, the text encoder, model.json, and the ArcFlow adapters; its exporter
// and where the CLI finds it.

import ArcFlowGraphs
import Foundation
import IR
import Runtime
import ShapesWorld

/// `model.json` of a default-model folder: what the folder holds and the teacher's sampler.
public struct DefaultModelInfo: Codable, Equatable {
    public var format = "arcflow-default-model"
    public var version = 1
    /// Image side in pixels and patch side (the fixed space-to-depth; see `PixelCodec`).
    public var imageSize: Int
    public var patch: Int
    public var teacher: TeacherSampler
    /// Adapter folder names, by variant ("arcflow": K = 8, "linear": K = 1).
    public var adapters: [String: String]
    /// Teacher optimizer steps the exported EMA had seen ("?" when unknown).
    public var trainedSteps: String

    public struct TeacherSampler: Codable, Equatable {
        public var steps: Int, guidance: Double, shift: Double
        public init(steps: Int, guidance: Double, shift: Double) { self.steps = steps; self.guidance = guidance; self.shift = shift }
    }

    public static let fileName = "model.json"
    public static let defaultAdapters = ["arcflow": "arcflow", "linear": "linear"]

    enum CodingKeys: String, CodingKey {
        case format, version, imageSize = "image_size", patch, teacher, adapters, trainedSteps = "trained_steps"
    }

    public init(imageSize: Int, patch: Int, teacher: TeacherSampler, adapters: [String: String] = defaultAdapters, trainedSteps: String) {
        self.imageSize = imageSize; self.patch = patch; self.teacher = teacher; self.adapters = adapters; self.trainedSteps = trainedSteps
    }
}

/// A loaded default-model folder (everything but the adapters, which are optional).
public struct DefaultModelFolder {
    public var directory: String
    public var info: DefaultModelInfo
    public var transformer: FluxCheckpoint
    public var text: TextEncoderConfig
    /// The text encoder's tensors as f32 (the graph reads f32 weights; the file is f16).
    public var textWeights: TensorStore
    public var codec: PixelCodec

    public var transformerDirectory: String { "\(directory)/transformer" }
    public var textEncoderDirectory: String { "\(directory)/text_encoder" }

    /// The adapter folder of a variant ("arcflow" or "linear"), or nil when it is absent.
    public func adapterDirectory(_ variant: String) -> String? {
        guard let name = info.adapters[variant] else { return nil }
        let dir = "\(directory)/\(name)"
        return FileManager.default.fileExists(atPath: "\(dir)/config.json") ? dir : nil
    }

    public static func load(_ dir: String) throws -> DefaultModelFolder {
        let infoPath = "\(dir)/\(DefaultModelInfo.fileName)"
        let data = try readInputFile(infoPath, limit: maxInputTextBytes, what: "JSON file")
        let info: DefaultModelInfo
        do { info = try JSONDecoder().decode(DefaultModelInfo.self, from: data) } catch {
            throw ArcError("\(infoPath) is not a default-model manifest: \(error.localizedDescription)")
        }
        guard info.format == "arcflow-default-model", info.version == 1 else {
            throw ArcError("\(infoPath): format \(info.format) version \(info.version) is not one this arcflow reads")
        }
        guard info.imageSize == ShapesWorld.side else {
            throw ArcError("\(infoPath): image_size \(info.imageSize) is not the shapes world's \(ShapesWorld.side)")
        }
        let codec = try PixelCodec(side: info.imageSize, patch: info.patch)
        let transformer = try FluxCheckpoint.load("\(dir)/transformer")
        let f = transformer.config
        guard f.inChannels == 3 * info.patch * info.patch else {
            throw ArcError("\(dir)/transformer/config.json: in_channels \(f.inChannels) is not 3·patch² = \(3 * info.patch * info.patch) (model.json patch \(info.patch))")
        }
        let text = try TextEncoderFolder.readConfig("\(dir)/text_encoder/config.json")
        guard text.width == f.jointAttentionDim, text.width == f.pooledProjectionDim else {
            throw ArcError("\(dir): text encoder width \(text.width) differs from the transformer's joint_attention_dim \(f.jointAttentionDim) / pooled_projection_dim \(f.pooledProjectionDim)")
        }
        let file = try SafeTensorsStore(path: "\(dir)/text_encoder/model.safetensors")
        let textWeights = TensorStore(label: file.label)
        try textWeights.addWidened(file)
        return DefaultModelFolder(directory: dir, info: info, transformer: transformer, text: text,
                                  textWeights: textWeights, codec: codec)
    }

    /// Where the CLI looks: `--default-model DIR`, else `$ARCFLOW_DEFAULT_MODEL`, else
    /// `models/shapes` of the package the executable was built in (its nearest ancestor folder
    /// holding Package.swift). Missing: one line saying how to produce it.
    public static func locate(explicit: String?, environment: [String: String], executable: String) throws -> String {
        let how = "produce it with `bash Tools/train-default.sh` (or `arcflow train-default -o RUN --export-teacher DIR`), "
            + "or point --default-model / ARCFLOW_DEFAULT_MODEL at one"
        if let dir = explicit ?? environment["ARCFLOW_DEFAULT_MODEL"] {
            guard FileManager.default.fileExists(atPath: "\(dir)/\(DefaultModelInfo.fileName)") else {
                throw ArcError("no embedded default model at \(dir) (no \(DefaultModelInfo.fileName)); \(how)")
            }
            return dir
        }
        var url = URL(fileURLWithPath: executable).resolvingSymlinksInPath().deletingLastPathComponent()
        while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
            url.deleteLastPathComponent()
        }
        let dir = url.path == "/" ? "models/shapes" : url.appendingPathComponent("models/shapes").path
        guard FileManager.default.fileExists(atPath: "\(dir)/\(DefaultModelInfo.fileName)") else {
            throw ArcError("no embedded default model at \(dir) (no \(DefaultModelInfo.fileName)); \(how)")
        }
        return dir
    }
}

/// The text encoder folder: config.json in transformers' CLIPTextConfig names (plus our pooling
/// and the word list, which must match `WorldVocabulary`) and model.safetensors.
public enum TextEncoderFolder {
    public static func configJSON(_ c: TextEncoderConfig) -> [String: Any] {
        ["architectures": ["ArcflowWorldTextEncoder"], "vocab_size": c.vocabSize, "hidden_size": c.width,
         "num_hidden_layers": c.layers, "num_attention_heads": c.heads, "intermediate_size": c.intermediate,
         "max_position_embeddings": c.tokens, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-5,
         "causal": true, "pooling": "eos", "bos_token_id": WorldVocabulary.bos, "eos_token_id": WorldVocabulary.eos,
         "pad_token_id": WorldVocabulary.pad, "vocabulary": Array(WorldVocabulary.words.prefix(c.vocabSize))]
    }

    public static func readConfig(_ path: String) throws -> TextEncoderConfig {
        let data = try readInputFile(path, limit: maxInputTextBytes, what: "JSON file")
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw ArcError("\(path) is not a JSON object") }
        func int(_ k: String) throws -> Int {
            guard let v = jsonInt(j[k]), v > 0, v <= 1 << 20 else { throw ArcError("\(path): '\(k)' must be a positive integer") }
            return v
        }
        let c = TextEncoderConfig(vocabSize: try int("vocab_size"), width: try int("hidden_size"), layers: try int("num_hidden_layers"),
                                  heads: try int("num_attention_heads"), intermediate: try int("intermediate_size"),
                                  tokens: try int("max_position_embeddings"))
        guard c.width % c.heads == 0 else { throw ArcError("\(path): hidden_size \(c.width) is not a multiple of num_attention_heads \(c.heads)") }
        guard c.tokens == WorldVocabulary.length else {
            throw ArcError("\(path): max_position_embeddings \(c.tokens) is not the world's prompt length \(WorldVocabulary.length)")
        }
        if let words = j["vocabulary"] as? [String], words != Array(WorldVocabulary.words.prefix(words.count)) || words.count != c.vocabSize {
            throw ArcError("\(path): 'vocabulary' is not this arcflow's world vocabulary (ids would mean other words)")
        }
        for (k, want) in [("hidden_act", "gelu_pytorch_tanh"), ("pooling", "eos")] where (j[k] as? String).map({ $0 != want }) ?? false {
            throw ArcError("\(path): '\(k)' must be \"\(want)\"")
        }
        return c
    }
}

public enum DefaultModelExport {
    /// Writes `dir` in the shipped layout from a teacher's tensors (FLUX keys and `text_model.*`):
    /// transformer/{config.json, diffusion_pytorch_model.safetensors} (f16; the FLUX config of
    /// `c` with our x0 and position keys), text_encoder/{config.json, model.safetensors} (f16)
    /// and model.json, each file atomically, model.json last. Adapter folders are left alone.
    public static func write(_ tensors: [String: Tensor], config c: TeacherConfig, trainedSteps: String,
                             teacher: DefaultModelInfo.TeacherSampler = .init(steps: 28, guidance: 5, shift: 1), to dir: String) throws {
        let expected = Set(TeacherWeights.layout(c).map(\.name))
        let missing = expected.subtracting(tensors.keys).sorted(), extra = Set(tensors.keys).subtracting(expected).sorted()
        guard missing.isEmpty, extra.isEmpty else {
            throw ArcError("teacher weights do not match the config: missing \(missing.prefix(3)), unexpected \(extra.prefix(3))")
        }
        let fm = FileManager.default
        for sub in ["transformer", "text_encoder"] { try fm.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true) }
        let meta = ["format": "pt", "model": "shapes-teacher", "trained_steps": trainedSteps]
        let text = tensors.filter { $0.key.hasPrefix("text_model.") }, flux = tensors.filter { !$0.key.hasPrefix("text_model.") }
        try TeacherWeights.write(flux, dtype: .f16, metadata: meta, to: "\(dir)/transformer/diffusion_pytorch_model.safetensors")
        var fluxConfig = c.flux
        fluxConfig.prediction = .x0
        fluxConfig.imagePositions = .sincos2d
        try writeJSONObject(fluxConfig.json, to: "\(dir)/transformer/config.json")
        try TeacherWeights.write(text, dtype: .f16, metadata: meta, to: "\(dir)/text_encoder/model.safetensors")
        try writeJSONObject(TextEncoderFolder.configJSON(c.text), to: "\(dir)/text_encoder/config.json")
        let info = DefaultModelInfo(imageSize: TeacherConfig.side, patch: c.patch, teacher: teacher, trainedSteps: trainedSteps)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(info) + Data("\n".utf8), to: "\(dir)/\(DefaultModelInfo.fileName)")
    }
}

extension DefaultModelExport {
    /// An untrained student adapter in the ArcFlow format: LoRA A small random, B zero (the
    /// adapted layers start as the teacher's), `norm_out.linear` copied, every component's
    /// `proj_out_means` the teacher's `proj_out` (each mean starts at the teacher's x̂0), log-weights
    /// and rates zero (equal weights, γ = 0; K = 1 has no rate layer). Distillation starts here;
    /// undistilled, it samples like the unguided teacher with the students' 2 steps. f16, atomic.
    public static func writeInitialStudent(teacher: DefaultModelFolder, components k: Int, rank r: Int = 8, seed: UInt64 = 0,
                                           to dir: String) throws {
        let c = teacher.transformer.config, store = teacher.transformer.store
        let (d, f) = (c.width, c.inChannels)
        var rng = SeededGenerator(seed: seed)
        var records: [TensorRecord] = []
        func add(_ name: String, _ shape: [Int], _ values: [Float]) {
            records.append(TensorRecord(name: name, dtype: .f16, shape: shape, payload: .floats(values)))
        }
        // The distillation's targets (`Student.loraTargets`): one definition of what a student adapts.
        for (m, out, inputs) in Student.loraTargets(c) {
            let bound = Float(1 / Double(inputs).squareRoot())
            add("\(m).lora_A.weight", [r, inputs], (0..<(r * inputs)).map { _ in (2 * rng.uniform() - 1) * bound })
            add("\(m).lora_B.weight", [out, r], [Float](repeating: 0, count: out * r))
        }
        for key in ["norm_out.linear.weight", "norm_out.linear.bias"] {
            let t = try store.tensor(key)
            add(key, t.shape, t.data)
        }
        let w = try store.tensor("proj_out.weight").data, bias = try store.tensor("proj_out.bias").data
        add("proj_out_means.weight", [k * f, d], (0..<k).flatMap { _ in w })
        add("proj_out_means.bias", [k * f], (0..<k).flatMap { _ in bias })
        add("proj_out_logweights.weight", [k * 4, d], [Float](repeating: 0, count: k * 4 * d))
        add("proj_out_logweights.bias", [k * 4], [Float](repeating: 0, count: k * 4))
        if k > 1 {
            add("proj_out_loggamma.weight", [(k - 1) * 4, d], [Float](repeating: 0, count: (k - 1) * 4 * d))
            add("proj_out_loggamma.bias", [(k - 1) * 4], [Float](repeating: 0, count: (k - 1) * 4))
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try writeSafeTensors(records, metadata: ["format": "pt", "arcflow_untrained": "true"], to: "\(dir)/diffusion_pytorch_model.safetensors")
        try writeJSONObject(["_class_name": ArcFlowAdapter.className, "num_gaussians": k, "logweights_channels": 4,
                             "arcflow_shift": teacher.info.teacher.shift, "arcflow_prediction": "x0", "arcflow_untrained": true],
                            to: "\(dir)/config.json")
    }
}
