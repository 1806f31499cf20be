// compile --transformer and generate --embeddings for Qwen-Image: the family is picked from the
// folder's config.json, the sampler-only run takes prompt (and negative prompt) embeddings.

import ArcFlowGraphs
import Generation
import Foundation
import IR
import Codegen
import Runtime

/// The module for `compile --transformer DIR`, FLUX or Qwen-Image by `_class_name`.
func transformerProgram(_ args: ParsedArguments, transformer: String) throws -> TransformerProgram {
    switch try TransformerFamily.of(transformer) {
    case .flux:
        return try fluxProgram(args, transformer: transformer)
    case .qwenImage:
        return try qwenImageProgram(args, transformer: transformer)
    }
}

func qwenImageProgram(_ args: ParsedArguments, transformer: String) throws -> TransformerProgram {
    let spec = compileSpec
    if args.has("--guidance") {
        throw UsageError("--guidance is FLUX's embedded guidance; Qwen-Image has none (its teacher takes --sampler euler --true-cfg-scale S)", spec)
    }
    let checkpoint = try QwenImageCheckpoint.load(transformer)
    // QwenImagePipeline encodes each prompt at its own length (no padding to a fixed 512 as FLUX's
    // T5 does), so a default would only invite padded embeddings: the length is asked for.
    guard args.has("--text-tokens") else {
        throw UsageError("Qwen-Image needs --text-tokens T: the prompt's token count (prompt_embeds.shape[1] as "
                         + "QwenImagePipeline.encode_prompt returns it; each prompt has its own length)", spec)
    }
    let adapter = try args.value("--adapter").map { try QwenImageCheckpoint.adapter($0) }
    let (height, width) = try imageSize(args)
    var o = QwenImageOptions(height: height, width: width)
    (o.sampler, o.shift, o.steps, o.textTokens) = try transformerSamplerFlags(args, hasAdapter: adapter != nil)
    o.trueCFGScale = try args.double("--true-cfg-scale", spec)
    o.trueCFGScaleInput = true   // `generate --true-cfg-scale S` without a new compile
    o.negativeTextTokens = try args.int("--negative-text-tokens", spec, min: 1)
    let program = try QwenImageModel.sampler(checkpoint, adapter: adapter, options: o)
    // Said once the model is built, so that an error stays the only line.
    for note in adapter?.notes ?? [] { stderrLine("arcflow: note: \(note)") }
    return program
}

/// A compiled model with true CFG reads this input; only such a model takes --negative-embeddings.
let negativeEmbeddingsInput = "negative_prompt_embeds"

/// --negative-embeddings and the compiled model must agree: a model compiled with true CFG needs
/// the negative prompt, and one compiled without it would silently ignore one.
func checkNegativeEmbeddings(_ args: ParsedArguments, _ model: LoadedModel) throws {
    let wants = model.executable.inputs.contains { $0.name == negativeEmbeddingsInput }
    let path = try args.required("--model", generateSpec)
    if args.has("--negative-embeddings") && !wants {
        throw ArcError("--negative-embeddings: \(path) was compiled without true CFG, so it has no negative prompt to read "
                       + "(compile the teacher with --sampler euler --true-cfg-scale S)")
    }
    // FLUX's true-CFG sampler may read its negative_* tensors from the --embeddings file instead.
    if wants && !args.has("--negative-embeddings") && isQwenImageSampler(model) {
        throw ArcError("\(path) was compiled with true CFG (scale \(model.manifest.model["true_cfg_scale"] ?? "?")) and needs "
                       + "--negative-embeddings NE.safetensors (negative_prompt_embeds or prompt_embeds of the negative prompt)")
    }
}

/// `generate --embeddings` for a compiled Qwen-Image sampler: `prompt_embeds` [1, T, D] (no pooled
/// embedding), the negative prompt's with true CFG, noise or a seed → latents [1, C, H/8, W/8].
func generateQwenImageLatents(_ args: ParsedArguments, _ model: LoadedModel, embeddings: String, output: String, scales: [String: Tensor]) throws {
    let m = model.manifest
    guard let nfe = Int(m.model["nfe"] ?? "") else { throw ArcError("\(try args.required("--model", generateSpec)): manifest has no 'nfe'") }
    func binding(_ name: String) -> Binding { model.executable.inputs.first { $0.name == name }! }
    let hint = "the model was compiled for \(m.model["width"] ?? "?")×\(m.model["height"] ?? "?") pixels (width × height) and \(m.model["text_tokens"] ?? "?") text tokens"
    var notes: [String] = []
    var inputs = ["prompt_embeds": try readQwenEmbeddings(embeddings, "prompt_embeds", want: binding("prompt_embeds").type, hint: hint, notes: &notes)]
    if let ne = args.value("--negative-embeddings") {
        // diffusers names it negative_prompt_embeds; a file made for --embeddings holds prompt_embeds.
        let names = try SafeTensorsStore(path: ne).names
        let name = names.contains(negativeEmbeddingsInput) ? negativeEmbeddingsInput : "prompt_embeds"
        let want = binding(negativeEmbeddingsInput).type
        guard names.contains(name) else {
            throw ArcError("\(ne) has no tensor '\(negativeEmbeddingsInput)' or 'prompt_embeds' (expected f32\(want.shape)); it has: \(names.joined(separator: ", "))")
        }
        let negativeTokens = m.model["negative_text_tokens"] ?? m.model["text_tokens"] ?? "?"
        inputs[negativeEmbeddingsInput] = try readQwenEmbeddings(ne, name, want: want, hint: "the model was compiled for a negative prompt of "
                                                         + "\(negativeTokens) text tokens; compile --negative-text-tokens T2 for another length", notes: &notes)
    }
    if let noisePath = args.value("--noise") {
        inputs["noise"] = try readTensor(noisePath, "noise", want: binding("noise").type, hint: hint)
    } else {
        inputs["noise"] = seededNoise(binding("noise").type, seed: try args.int("--seed", generateSpec, min: 0)!)
    }
    inputs.merge(scales) { $1 }
    for note in notes { stderrLine("arcflow: \(note)") }  // once every input has been read
    let cfg = scales[trueCFGScaleInput].map { String($0.data[0]) }.map {
        ", true CFG \($0) (" + (m.model["negative_text_tokens"] != nil ? "a negative prompt of its own length: two evaluations per step" : "prompt and negative prompt batched") + ")"
    } ?? ""
    // A negative of its own length is a second evaluation per step (the manifest's nfe counts steps).
    let evaluations = m.model["negative_text_tokens"] != nil ? 2 * nfe : nfe
    try runSampler(model, inputs, nfe: evaluations, label: "Qwen-Image ", note: cfg, metadata: ["family": m.model["family"] ?? ""], to: output)
}

/// A Qwen-Image prompt embedding [1, T, D], without the padding its mask marks. diffusers ≥ 0.36
/// passes `prompt_embeds_mask` (`negative_prompt_embeds_mask`) to attention, where a masked key gets
/// no weight, and QwenImagePipeline pads only at the end (a batch of prompts of different lengths),
/// so the unpadded rows alone give the same numbers (measured against diffusers 0.42.1: 1.4e-7
/// relative L2): they are what a model compiled for T text tokens takes. Without a mask every row
/// is the prompt (0.42.1 drops an all-ones mask itself).
func readQwenEmbeddings(_ path: String, _ name: String, want: TensorType, hint: String, notes: inout [String]) throws -> Tensor {
    let file = try SafeTensorsFile(path: path)
    let maskName = "\(name)_mask"
    guard file.tensors[maskName] != nil || file.unsupportedTensors[maskName] != nil else {
        return try readTensor(path, name, want: want, hint: hint)
    }
    guard let t = file.tensors[name] else {
        throw ArcError("\(path) has no tensor '\(name)' (expected f32\(want.shape)); it has: \(file.names.joined(separator: ", "))")
    }
    let (maskShape, mask) = try file.nonzero(maskName)
    guard t.shape.count == 3, maskShape == Array(t.shape.prefix(2)) else {
        throw ArcError("\(path): '\(maskName)' has shape \(maskShape), expected \(Array(t.shape.prefix(2))) (one flag per row of '\(name)' \(t.shape))")
    }
    let kept = mask.prefix { $0 }.count
    guard !mask[kept...].contains(true), t.shape[0] == 1 else {
        throw ArcError("\(path): '\(maskName)' marks padding before the end of the prompt"
                       + (t.shape[0] == 1 ? "" : " or holds a batch of \(t.shape[0])")
                       + "; arcflow takes one prompt padded at the end only (as QwenImagePipeline pads)")
    }
    let shape = [1, kept, t.shape[2]]
    guard shape == want.shape else {
        throw ArcError("\(path): '\(name)' has \(kept) prompt rows (of \(t.shape[1]); '\(maskName)' marks the rest as padding), "
                       + "expected \(want.shape) (\(hint); compile --text-tokens \(kept))")
    }
    if kept < t.shape[1] {
        notes.append("\(name): \(t.shape[1] - kept) padding rows dropped ('\(maskName)'; diffusers' attention masks them)")
    }
    return try finiteTensor(path, name, want, Array(try file.floats(name).prefix(kept * t.shape[2])))
}

func isQwenImageSampler(_ model: LoadedModel) -> Bool { model.manifest.model["family"] == TransformerFamily.qwenImage.rawValue }
