// Reading a diffusers FLUX transformer folder and an ArcFlow adapter folder.

import Foundation
import IR
import Runtime

/// The fields of a diffusers `FluxTransformer2DModel` config.json this runtime uses.
public struct FluxConfig: Equatable {
    public var numLayers: Int
    public var numSingleLayers: Int
    public var attentionHeadDim: Int
    public var numAttentionHeads: Int
    public var jointAttentionDim: Int
    public var pooledProjectionDim: Int
    public var guidanceEmbeds: Bool
    public var axesDimsRope: [Int]
    public var inChannels: Int
    /// Ours (`"arcflow_image_positions"`): a fixed table added to the embedded image tokens.
    public var imagePositions: ImagePositions?
    /// Ours (`"arcflow_prediction"`): what proj_out (and a student's means head) predicts.
    public var prediction: Prediction

    /// Image position tables a config may ask for (see `FluxNetwork.sinCosPositions`).
    public enum ImagePositions: String, CaseIterable { case sincos2d }

    /// FLUX predicts the velocity; the embedded default predicts the clean image x0, and the
    /// sampler turns it into a velocity v = (x − x̂0)/σ.
    public enum Prediction: String, CaseIterable { case velocity, x0 }

    static func ourKey<T: RawRepresentable & CaseIterable>(_ json: [String: Any], _ key: String, path: String) throws -> T?
        where T.RawValue == String {
        guard let raw = json[key] else { return nil }
        guard let s = raw as? String, let v = T(rawValue: s) else {
            throw ArcError("\(path): '\(key)' must be one of \(T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \(oneLineJSON(raw))")
        }
        return v
    }

    public var width: Int { attentionHeadDim * numAttentionHeads }
    /// Whether double block `i`'s text output reaches the model's output: the text stream feeds
    /// the next double block or the single blocks, and the last double block of a model without
    /// single blocks writes text rows that nothing reads (its `to_add_out` and `ff_context` have no
    /// gradient: they are neither LoRA targets nor trained).
    public func textOutputIsRead(block i: Int) -> Bool { i < numLayers - 1 || numSingleLayers > 0 }
    /// Latent channels C: in_channels packs C × 2 × 2.
    public var latentChannels: Int { inChannels / 4 }

    public init(numLayers: Int, numSingleLayers: Int, attentionHeadDim: Int, numAttentionHeads: Int, jointAttentionDim: Int,
                pooledProjectionDim: Int, guidanceEmbeds: Bool, axesDimsRope: [Int], inChannels: Int = 64,
                imagePositions: ImagePositions? = nil, prediction: Prediction = .velocity) {
        self.numLayers = numLayers
        self.numSingleLayers = numSingleLayers
        self.attentionHeadDim = attentionHeadDim
        self.numAttentionHeads = numAttentionHeads
        self.jointAttentionDim = jointAttentionDim
        self.pooledProjectionDim = pooledProjectionDim
        self.guidanceEmbeds = guidanceEmbeds
        self.axesDimsRope = axesDimsRope
        self.inChannels = inChannels
        self.imagePositions = imagePositions
        self.prediction = prediction
    }

    /// Parses and checks a config.json object; `path` names the file in messages.
    public init(json: [String: Any], path: String) throws {
        func int(_ k: String, allowZero: Bool = false) throws -> Int {
            guard let v = jsonInt(json[k]) else { throw ArcError("\(path): '\(k)' must be an integer") }
            guard v > 0 || (allowZero && v == 0) else { throw ArcError("\(path): '\(k)' must be \(allowZero ? "non-negative" : "positive"), got \(v)") }
            guard v <= maxConfigInteger else { throw ArcError("\(path): '\(k)' must be at most \(maxConfigInteger), got \(v)") }
            return v
        }
        // Either block kind may be absent, as diffusers allows (the embedded default has joint
        // blocks only).
        numLayers = try int("num_layers", allowZero: true)
        numSingleLayers = try int("num_single_layers", allowZero: true)
        attentionHeadDim = try int("attention_head_dim")
        numAttentionHeads = try int("num_attention_heads")
        jointAttentionDim = try int("joint_attention_dim")
        pooledProjectionDim = try int("pooled_projection_dim")
        inChannels = try int("in_channels")
        guidanceEmbeds = json["guidance_embeds"] as? Bool ?? false
        guard let list = json["axes_dims_rope"] as? [Any], case let axes = list.compactMap(jsonInt), axes.count == list.count else {
            throw ArcError("\(path): 'axes_dims_rope' must be a list of integers")
        }
        axesDimsRope = axes
        imagePositions = try Self.ourKey(json, "arcflow_image_positions", path: path)
        prediction = try Self.ourKey(json, "arcflow_prediction", path: path) ?? .velocity
        if let p = json["patch_size"] as? Int, p != 1 {
            throw ArcError("\(path): patch_size \(p) is not supported (FLUX packs 2×2 latents outside the transformer; patch_size is 1)")
        }
        if let out = json["out_channels"] as? Int, out != inChannels {
            throw ArcError("\(path): out_channels \(out) differs from in_channels \(inChannels): an image-conditioned "
                           + "variant (FLUX.1 Fill, Depth, Canny, Kontext-style inputs); arcflow runs text-to-image FLUX, where they are equal")
        }
        guard inChannels % 4 == 0 else { throw ArcError("\(path): in_channels \(inChannels) is not 4 × latent channels") }
        // Each size is checked before the sum: [2^62, 2^62] overflowed the sum (found by fuzzing).
        guard axes.allSatisfy({ $0 > 0 && $0 % 2 == 0 && $0 <= attentionHeadDim }), axes.reduce(0, +) == attentionHeadDim else {
            throw ArcError("\(path): axes_dims_rope \(axes) must be even sizes summing to attention_head_dim \(attentionHeadDim)")
        }
    }
}

extension FluxConfig {
    /// The config.json object diffusers writes for this config (plus our keys when set).
    public var json: [String: Any] {
        var j: [String: Any] = [
            "_class_name": "FluxTransformer2DModel", "num_layers": numLayers, "num_single_layers": numSingleLayers,
            "attention_head_dim": attentionHeadDim, "num_attention_heads": numAttentionHeads,
            "joint_attention_dim": jointAttentionDim, "pooled_projection_dim": pooledProjectionDim,
            "guidance_embeds": guidanceEmbeds, "axes_dims_rope": axesDimsRope, "in_channels": inChannels,
            "out_channels": inChannels, "patch_size": 1,
        ]
        if let p = imagePositions { j["arcflow_image_positions"] = p.rawValue }
        if prediction != .velocity { j["arcflow_prediction"] = prediction.rawValue }
        return j
    }
}

/// A JSON value as short text for a message.
func oneLineJSON(_ v: Any) -> String {
    if let s = v as? String { return "\"\(s)\"" }
    if let d = try? JSONSerialization.data(withJSONObject: [v]), let t = String(data: d, encoding: .utf8) { return String(t.dropFirst().dropLast()) }
    return "\(v)"
}

/// Writes a JSON object with sorted keys, atomically.
public func writeJSONObject(_ object: [String: Any], to path: String) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    try writeAtomically(data + Data("\n".utf8), to: path)
}

func readJSONObject(_ path: String) throws -> [String: Any] {
    let data = try readInputFile(path, limit: maxInputTextBytes, what: "JSON file")
    guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw ArcError("\(path) is not a JSON object")
    }
    return obj
}

/// A diffusers transformer folder: config.json plus one safetensors file or index-listed shards.
public struct FluxCheckpoint {
    public var directory: String
    public var config: FluxConfig
    public var store: WeightStore

    public static func load(_ dir: String) throws -> FluxCheckpoint {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw ArcError("\(dir) is not a directory (expected a diffusers transformer folder with config.json)")
        }
        let configPath = "\(dir)/config.json"
        guard fm.fileExists(atPath: configPath) else { throw ArcError("\(dir) has no config.json") }
        let json = try readJSONObject(configPath)
        if let name = json["_class_name"] as? String, name != "FluxTransformer2DModel" {
            throw ArcError("\(configPath): _class_name '\(name)' is not a FLUX transformer (expected FluxTransformer2DModel)")
        }
        let config = try FluxConfig(json: json, path: configPath)
        return FluxCheckpoint(directory: dir, config: config, store: try openWeightFolder(dir, stem: "diffusion_pytorch_model"))
    }
}

/// An ArcFlow adapter folder (reference §5.2): LoRA pairs, the dense `norm_out` override and
/// the three head layers, optionally prefixed `transformer.`.
public struct ArcFlowAdapter {
    public var directory: String
    public var components: Int
    /// Keys with the `transformer.` prefix removed.
    public var store: WeightStore
    /// Module path → its LoRA tensors, e.g. "single_transformer_blocks.0.proj_mlp".
    public var lora: [String: LoRAPair]
    /// Non-LoRA tensors: they replace the base's (norm_out) or add layers (heads).
    public var dense: Set<String>
    /// Ours (`"arcflow_shift"`): the σ-schedule shift the student was distilled at; the
    /// sampler's default when no --shift is given.
    public var shift: Double?
    /// Ours (`"arcflow_timestep_ratio"`): the reference's timestep_ratio r the student was
    /// distilled with, the last step's share of raw time (`Schedule.arcSigmas`); nil: 1, as
    /// every reference checkpoint. Another r puts the middle knot elsewhere, so a student must
    /// be sampled with the r it learnt its steps at.
    public var timestepRatio: Double?
    /// Ours (`"arcflow_prediction"`): what `proj_out_means` predicts; nil: as the base transformer.
    public var prediction: FluxConfig.Prediction?

    public struct LoRAPair {
        public var a: String, b: String
        public var alpha: String?
    }
    /// LoRA α from a PEFT config when the file has no `.alpha` tensors: `lora_adapter_metadata` in
    /// the safetensors metadata (diffusers' `save_lora_adapter`) or `adapter_config.json` beside it
    /// (PEFT's `save_pretrained`). diffusers' `load_lora_adapter` scales by α/r from them; the
    /// ArcFlow reference loader passes a bare state dict (α = r). `alphaPattern`: per-module α
    /// (PEFT's `alpha_pattern`, a key matching the module name or its last components).
    public var peftAlpha: PEFTAlpha?
    public typealias PEFTAlpha = (alpha: Double, pattern: [String: Double], rsLoRA: Bool, source: String)
    /// What a user should hear about this adapter (read by the CLI), e.g. a file with no LoRA.
    public var notes: [String] = []

    /// The LoRA scale of `module` (rank r): α/r (α/√r with rsLoRA), α from its `.alpha` tensor,
    /// else the PEFT config, else α = r (scale 1).
    public func loraScale(_ module: String, rank r: Int) throws -> Float {
        if let key = lora[module]?.alpha {
            let alpha = try store.tensor(key)
            guard alpha.type.count == 1 else { throw ArcError("\(store.label): '\(key)' must be a scalar") }
            return alpha.data[0] / Float(r)
        }
        guard let p = peftAlpha else { return 1 }
        let alpha = p.pattern.first { module == $0.key || module.hasSuffix("." + $0.key) }?.value ?? p.alpha
        return Float(p.rsLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r))
    }

    public static let className = "ArcFluxTransformer2DModel"
    public static let denseKeys: Set<String> = [
        "norm_out.linear.weight", "norm_out.linear.bias",
        "proj_out_means.weight", "proj_out_means.bias",
        "proj_out_logweights.weight", "proj_out_logweights.bias",
        "proj_out_loggamma.weight", "proj_out_loggamma.bias",
    ]

    /// `expected`: the adapter class of the base family (FLUX's by default; Qwen-Image passes
    /// `QwenImageCheckpoint.adapterClassName`); the file layout is the same for both.
    public static func load(_ dir: String, expecting expected: String = className) throws -> ArcFlowAdapter {
        let configPath = "\(dir)/config.json"
        guard FileManager.default.fileExists(atPath: configPath) else {
            // diffusers' save_lora_weights writes this file alone: a plain LoRA, with no head to apply.
            let plain = FileManager.default.fileExists(atPath: "\(dir)/pytorch_lora_weights.safetensors")
                ? "; its pytorch_lora_weights.safetensors is a plain diffusers LoRA (save_lora_weights), which has no ArcFlow head" : ""
            throw ArcError("\(dir) has no config.json (expected an ArcFlow adapter folder: config.json and diffusion_pytorch_model.safetensors\(plain))")
        }
        let json = try readJSONObject(configPath)
        let name = json["_class_name"] as? String ?? "(none)"
        guard name == expected else {
            throw ArcError("\(configPath): unknown _class_name '\(name)' (expected \(expected))")
        }
        guard let k = json["num_gaussians"] as? Int, k >= 1 else { throw ArcError("\(configPath): 'num_gaussians' must be a positive integer") }
        func positive(_ key: String) throws -> Double? {
            guard let raw = json[key] else { return nil }
            guard let v = (raw as? NSNumber).map(\.doubleValue), v.isFinite, v > 0 else {
                throw ArcError("\(configPath): '\(key)' must be a positive number, got \(oneLineJSON(raw))")
            }
            return v
        }
        let shift = try positive("arcflow_shift"), timestepRatio = try positive("arcflow_timestep_ratio")
        let prediction: FluxConfig.Prediction? = try FluxConfig.ourKey(json, "arcflow_prediction", path: configPath)
        if let lw = json["logweights_channels"] as? Int, lw != 4 {
            throw ArcError("\(configPath): logweights_channels \(lw) is not supported (one logit per 2×2 sub-position: 4)")
        }
        let path = "\(dir)/diffusion_pytorch_model.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw ArcError("\(dir) has no diffusion_pytorch_model.safetensors") }
        let file = try SafeTensorsStore(path: path)
        // A tensor of a dtype the reader skips (F64, integers) would otherwise vanish from the
        // adapter: a LoRA in F64 silently not applied, an integer alpha silently 1.
        if let (name, tag) = file.files[0].unsupportedTensors.sorted(by: { $0.key < $1.key }).first {
            let n = file.files[0].unsupportedTensors.count
            throw ArcError("\(path): tensor '\(name)' has dtype \(tag)\(n > 1 ? " (and \(n - 1) more)" : ""), which an adapter cannot hold "
                           + "(F32, F16 or BF16; cast it, e.g. state_dict = {k: v.float() for k, v in state_dict.items()})")
        }
        let store = PrefixedKeyStore(file, stripping: "transformer.")
        var lora: [String: LoRAPair] = [:]
        var dense = Set<String>()
        var unmatched: [String] = []
        for key in store.names {
            if let m = key.strippingSuffix(".lora_A.weight") { lora[m, default: LoRAPair(a: "", b: "")].a = key }
            else if let m = key.strippingSuffix(".lora_B.weight") { lora[m, default: LoRAPair(a: "", b: "")].b = key }
            else if let m = key.strippingSuffix(".alpha") { lora[m, default: LoRAPair(a: "", b: "")].alpha = key }
            else if denseKeys.contains(key) { dense.insert(key) }
            else { unmatched.append(key) }
        }
        if !unmatched.isEmpty {
            // PEFT's own spellings: adapter-named keys (…lora_A.default.weight) and kohya's lora_down/up.
            let hint = unmatched.contains { $0.contains(".lora_A.") || $0.contains(".lora_B.") }
                ? " (PEFT adapter-named keys: …lora_A.<adapter>.weight is …lora_A.weight in an exported adapter)"
                : unmatched.contains { $0.contains("lora_down") || $0.contains("lora_up") } ? " (kohya-style names: convert to diffusers' …lora_A/B.weight)" : ""
            throw ArcError("\(path): \(unmatched.count) tensor(s) match nothing an ArcFlow adapter holds: \(unmatched.prefix(5).joined(separator: ", "))\(unmatched.count > 5 ? ", …" : "")\(hint)")
        }
        for (m, p) in lora.sorted(by: { $0.key < $1.key }) where p.a.isEmpty || p.b.isEmpty {
            throw ArcError("\(path): LoRA for '\(m)' needs both \(m).lora_A.weight and \(m).lora_B.weight")
        }
        /// K = 1 (the linear baseline: one constant-velocity component) has no rate layer: the
        /// reference's `proj_out_loggamma` would have (K − 1)·4 = 0 rows, so its keys are optional.
        let required = k == 1 ? denseKeys.filter { !$0.hasPrefix("proj_out_loggamma.") } : denseKeys
        let missing = required.subtracting(dense).sorted()
        if !missing.isEmpty { throw ArcError("\(path): missing \(missing.joined(separator: ", "))") }
        var adapter = ArcFlowAdapter(directory: dir, components: k, store: store, lora: lora, dense: dense, shift: shift,
                                      timestepRatio: timestepRatio, prediction: prediction)
        adapter.peftAlpha = try peftConfig(dir: dir, metadata: file.files[0].metadata, path: path)
        if let p = adapter.peftAlpha, !lora.values.contains(where: { $0.alpha != nil }) {
            adapter.notes.append("LoRA α = \(p.alpha)\(p.pattern.isEmpty ? "" : " (\(p.pattern.count) per-module α)")\(p.rsLoRA ? ", rsLoRA" : "") from \(p.source): "
                                 + "scale α/\(p.rsLoRA ? "√r" : "r") per module, as diffusers and PEFT read it (the ArcFlow reference loader passes no config: scale 1)")
        }
        if lora.isEmpty {
            adapter.notes.append("\(path) has no LoRA tensors: only norm_out and the head are applied "
                                 + "(the ArcFlow reference loader loads nothing from such a file, with a warning)")
        }
        return adapter
    }

    /// The PEFT LoRA config of an adapter, if it carries one (see `peftAlpha`). DoRA and LoRA
    /// biases change the math beyond a scale: refused.
    static func peftConfig(dir: String, metadata: [String: String], path: String) throws -> PEFTAlpha? {
        var config: [String: Any]?, source = ""
        if let text = metadata["lora_adapter_metadata"] {
            guard let c = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else {
                throw ArcError("\(path): metadata 'lora_adapter_metadata' is not a JSON object")
            }
            (config, source) = (c, "\(path)'s lora_adapter_metadata")
        } else if FileManager.default.fileExists(atPath: "\(dir)/adapter_config.json") {
            (config, source) = (try readJSONObject("\(dir)/adapter_config.json"), "\(dir)/adapter_config.json")
        }
        guard let c = config, let alpha = (c["lora_alpha"] as? NSNumber)?.doubleValue else { return nil }
        if c["use_dora"] as? Bool == true { throw ArcError("\(source): use_dora true (DoRA) is not supported; arcflow fuses plain LoRA") }
        if let bias = c["lora_bias"] as? Bool, bias { throw ArcError("\(source): lora_bias true is not supported (LoRA B without a bias)") }
        var pattern: [String: Double] = [:]
        for (k, v) in c["alpha_pattern"] as? [String: Any] ?? [:] {
            guard let a = (v as? NSNumber)?.doubleValue else { throw ArcError("\(source): alpha_pattern['\(k)'] must be a number") }
            pattern[k.hasPrefix("transformer.") ? String(k.dropFirst("transformer.".count)) : k] = a
        }
        return (alpha, pattern, c["use_rslora"] as? Bool ?? false, source)
    }
}

/// A view of a store under other keys: a prefix removed where present (adapters exported with
/// `transformer.` keys load like those without), or added to every key (a CLIPTextModel that
/// transformers 5 saved without `text_model.`).
final class PrefixedKeyStore: WeightStore {
    let base: WeightStore
    let map: [String: String]
    init(_ base: WeightStore, stripping prefix: String) {
        self.base = base
        var m: [String: String] = [:]
        for k in base.names { m[k.hasPrefix(prefix) ? String(k.dropFirst(prefix.count)) : k] = k }
        map = m
    }
    init(_ base: WeightStore, adding prefix: String) {
        self.base = base
        map = Dictionary(uniqueKeysWithValues: base.names.map { (prefix + $0, $0) })
    }
    var label: String { base.label }
    var names: [String] { map.keys.sorted() }
    func type(of name: String) -> TensorType? { map[name].flatMap { base.type(of: $0) } }
    func raw(_ name: String) throws -> UnsafeRawPointer {
        guard let k = map[name] else { throw ArcError("\(label): no tensor named '\(name)'") }
        return try base.raw(k)
    }
    func evict(_ name: String) { map[name].map(base.evict) }
}

extension String {
    func strippingSuffix(_ suffix: String) -> String? { hasSuffix(suffix) ? String(dropLast(suffix.count)) : nil }
}
