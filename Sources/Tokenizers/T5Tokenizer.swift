// T5's tokenizer from a tokenizers `tokenizer.json` (FluxPipeline's `tokenizer_2/`, T5TokenizerFast):
// added tokens, normalizers, pre-tokenizers, the Unigram model and the `$A </s>` template.
import Foundation
import IR

public struct T5Tokenizer {
    public let padID: Int
    private let model: Unigram
    private let normalizer: Normalizer?
    private let preTokenizer: PreTokenizer?
    /// Added tokens matched in the raw text (`normalized: false`) and after normalization.
    private let rawAdded: AddedTokens, normalizedAdded: AddedTokens
    /// The post-processor's single-sequence template: nil marks where the sequence goes.
    private let template: [[Int]?]

    public init(folder: String) throws {
        let file = try JSONFile.require(folder, "tokenizer.json")
        let root = file.root
        let m: [String: Any] = try file.get(root, "model")
        let type = m["type"] as? String ?? "?"
        guard type == "Unigram" else {
            throw file.error("model type '\(type)' is not supported here (expected Unigram, the T5 tokenizer)")
        }
        let vocab: [Any] = try file.get(m, "vocab", at: "model")
        var pieces: [String] = [], scores: [Double] = []
        for (i, entry) in vocab.enumerated() {
            guard let pair = entry as? [Any], pair.count == 2, let p = pair[0] as? String, let s = pair[1] as? NSNumber else {
                throw file.error("model.vocab[\(i)] is not a [piece, score] pair")
            }
            pieces.append(p); scores.append(exactDouble(s))
        }
        let unk = m["unk_id"] as? Int
        if let unk, !(0..<pieces.count).contains(unk) { throw file.error("model.unk_id \(unk) is outside the vocabulary") }
        model = Unigram(pieces: pieces, scores: scores, unkID: unk, byteFallback: m["byte_fallback"] as? Bool ?? false)

        let dict = root as? [String: Any] ?? [:]
        normalizer = try (dict["normalizer"]).flatMap { $0 is NSNull ? nil : try Normalizer(json: $0, file: file, key: "normalizer") }
        preTokenizer = try (dict["pre_tokenizer"]).flatMap { $0 is NSNull ? nil : try PreTokenizer(json: $0, file: file, key: "pre_tokenizer") }

        var raw = AddedTokens(), normalized = AddedTokens()
        for (i, entry) in (dict["added_tokens"] as? [Any] ?? []).enumerated() {
            guard let t = entry as? [String: Any], let content = t["content"] as? String, let id = t["id"] as? Int else {
                throw file.error("added_tokens[\(i)] needs 'id' and 'content'")
            }
            let (l, r, w) = (t["lstrip"] as? Bool ?? false, t["rstrip"] as? Bool ?? false, t["single_word"] as? Bool ?? false)
            if t["normalized"] as? Bool ?? false {
                normalized.add(normalizer?.apply(content) ?? content, id: id, lstrip: l, rstrip: r, singleWord: w)
            } else { raw.add(content, id: id, lstrip: l, rstrip: r, singleWord: w) }
        }
        (rawAdded, normalizedAdded) = (raw, normalized)

        var template: [[Int]?] = [nil]
        if let post = dict["post_processor"] as? [String: Any] {
            guard post["type"] as? String == "TemplateProcessing" else {
                throw file.error("post_processor type '\(post["type"] as? String ?? "?")' is not supported (expected TemplateProcessing)")
            }
            let single: [Any] = try file.get(post, "single", at: "post_processor")
            let specials = post["special_tokens"] as? [String: Any] ?? [:]
            template = try single.map { item -> [Int]? in
                let d = item as? [String: Any] ?? [:]
                if d["Sequence"] != nil { return nil }
                guard let name = (d["SpecialToken"] as? [String: Any])?["id"] as? String,
                      let ids = (specials[name] as? [String: Any])?["ids"] as? [Int] else {
                    throw file.error("post_processor.single has an entry without a known special token")
                }
                return ids
            }
        }
        self.template = template

        var padToken = "<pad>"
        if let config = try JSONFile.load(folder, "tokenizer_config.json", optional: true),
           let pad = tokenContent((config.root as? [String: Any])?["pad_token"]) { padToken = pad }
        let addedIDs = Dictionary((dict["added_tokens"] as? [[String: Any]] ?? []).compactMap { t in
            (t["content"] as? String).flatMap { c in (t["id"] as? Int).map { (c, $0) } } }, uniquingKeysWith: { $1 })
        guard let pad = addedIDs[padToken] ?? model.id(of: padToken) else {
            throw file.error("pad token '\(padToken)' is not in the vocabulary")
        }
        padID = pad
    }

    /// Ids as `T5TokenizerFast(text, padding="max_length", max_length=length, truncation=True)`:
    /// the model's ids cut so the template's special tokens (`</s>`) still fit, then padded.
    public func encode(_ text: String, length: Int) throws -> [Int] {
        let special = template.reduce(0) { $0 + ($1?.count ?? 0) }
        let body = try tokenize(text).prefix(max(0, length - special))
        let ids = template.flatMap { $0 ?? Array(body) }
        return Array(ids.prefix(length)) + Array(repeating: padID, count: max(0, length - ids.count))
    }

    /// Model ids without the template or padding.
    public func tokenize(_ text: String) throws -> [Int] {
        var ids: [Int] = []
        for (index, piece) in rawAdded.split(text).enumerated() {
            guard case .text(let raw) = piece else { if case .token(let id) = piece { ids.append(id) }; continue }
            for p in normalizedAdded.split(normalizer?.apply(raw) ?? raw) {
                switch p {
                case .token(let id): ids.append(id)
                case .text(let t):
                    // `first` prepends only to the split that starts the input (tokenizers checks offset 0).
                    let words = preTokenizer?.apply([(t, index == 0)]).map { $0.text } ?? [t]
                    for w in words { ids += try model.encode(w) }
                }
            }
        }
        return ids
    }
}

// MARK: - Normalizers and pre-tokenizers (the tokenizer.json types T5-style models use)

indirect enum Normalizer {
    case sequence([Normalizer]), precompiled(Precompiled?), replace(String, NSRegularExpression?, String)
    case strip(left: Bool, right: Bool), lowercase, prepend(String), nfc, nfd, nfkc, nfkd

    init(json: Any, file: JSONFile, key: String) throws {
        let type: String = try file.get(json, "type", at: key)
        switch type {
        case "Sequence":
            let list: [Any] = try file.get(json, "normalizers", at: key)
            self = .sequence(try list.enumerated().map { try Normalizer(json: $1, file: file, key: "\(key).normalizers[\($0)]") })
        case "Precompiled":
            let blob = (json as? [String: Any])?["precompiled_charsmap"] as? String ?? ""
            if blob.isEmpty { self = .precompiled(nil); return }
            guard let p = Precompiled(base64: blob) else { throw file.error("\(key).precompiled_charsmap cannot be decoded") }
            self = .precompiled(p)
        case "Replace":
            let pattern: [String: Any] = try file.get(json, "pattern", at: key)
            let content: String = try file.get(json, "content", at: key)
            if let s = pattern["String"] as? String { self = .replace(s, nil, content) }
            else if let r = pattern["Regex"] as? String {
                guard let re = try? NSRegularExpression(pattern: r) else { throw file.error("\(key).pattern.Regex '\(r)' is not a valid regex") }
                self = .replace(r, re, content)
            } else { throw file.error("\(key).pattern needs 'String' or 'Regex'") }
        case "Strip":
            let d = json as? [String: Any] ?? [:]
            self = .strip(left: d["strip_left"] as? Bool ?? false, right: d["strip_right"] as? Bool ?? false)
        case "Lowercase": self = .lowercase
        case "Prepend": self = .prepend(try file.get(json, "prepend", at: key))
        case "NFC": self = .nfc
        case "NFD": self = .nfd
        case "NFKC": self = .nfkc
        case "NFKD": self = .nfkd
        default: throw file.error("\(key) type '\(type)' is not supported")
        }
    }

    func apply(_ s: String) -> String {
        switch self {
        case .sequence(let list): return list.reduce(s) { $1.apply($0) }
        case .precompiled(let p): return p?.normalize(s) ?? s
        case .replace(let pattern, let re, let content):
            guard let re else { return s.replacingOccurrences(of: pattern, with: content, options: .literal) }
            return re.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s),
                                               withTemplate: NSRegularExpression.escapedTemplate(for: content))
        case .strip(let left, let right):
            var u = Substring.UnicodeScalarView(s.unicodeScalars)
            if left { while let f = u.first, f.properties.isWhitespace { u.removeFirst() } }
            if right { while let l = u.last, l.properties.isWhitespace { u.removeLast() } }
            return String(u)
        case .lowercase:  // per character, no final-sigma context, as Rust's `char::to_lowercase`
            return String(String.UnicodeScalarView(s.unicodeScalars.flatMap { $0.properties.lowercaseMapping.unicodeScalars }))
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .nfc: return s.precomposedStringWithCanonicalMapping
        case .nfd: return s.decomposedStringWithCanonicalMapping
        // NFKC by its definition, compatibility decomposition then canonical composition: Foundation's
        // own NFKC leaves half-width kana with their voiced marks apart ("ｶﾞ" → U+30AB U+3099, not ガ).
        case .nfkc: return s.decomposedStringWithCompatibilityMapping.precomposedStringWithCanonicalMapping
        case .nfkd: return s.decomposedStringWithCompatibilityMapping
        }
    }
}

indirect enum PreTokenizer {
    enum Prepend: String { case always, first, never }
    case sequence([PreTokenizer]), whitespaceSplit, metaspace(Unicode.Scalar, Prepend, split: Bool)

    init(json: Any, file: JSONFile, key: String) throws {
        let type: String = try file.get(json, "type", at: key)
        let d = json as? [String: Any] ?? [:]
        switch type {
        case "Sequence":
            let list: [Any] = try file.get(json, "pretokenizers", at: key)
            self = .sequence(try list.enumerated().map { try PreTokenizer(json: $1, file: file, key: "\(key).pretokenizers[\($0)]") })
        case "WhitespaceSplit": self = .whitespaceSplit
        case "Metaspace":
            let r: String = try file.get(json, "replacement", at: key)
            guard r.unicodeScalars.count == 1 else { throw file.error("\(key).replacement must be one character") }
            // Older files say `add_prefix_space` instead of `prepend_scheme`.
            let legacy: Prepend = (d["add_prefix_space"] as? Bool ?? true) ? .always : .never
            guard let scheme = (d["prepend_scheme"] as? String).map({ Prepend(rawValue: $0) }) ?? legacy else {
                throw file.error("\(key).prepend_scheme '\(d["prepend_scheme"]!)' is not always, first or never")
            }
            self = .metaspace(r.unicodeScalars.first!, scheme, split: d["split"] as? Bool ?? true)
        default: throw file.error("\(key) type '\(type)' is not supported")
        }
    }

    /// Splits (with "starts the input" flags) into smaller splits; empty ones are dropped.
    func apply(_ splits: [(text: String, first: Bool)]) -> [(text: String, first: Bool)] {
        switch self {
        case .sequence(let list): return list.reduce(splits) { $1.apply($0) }
        case .whitespaceSplit:
            return splits.flatMap { s in
                s.text.unicodeScalars.split(whereSeparator: { $0.properties.isWhitespace }).enumerated()
                    .map { (String($1), s.first && $0 == 0 && !(s.text.unicodeScalars.first?.properties.isWhitespace ?? true)) }
            }
        case .metaspace(let rep, let scheme, let split):
            return splits.flatMap { s -> [(text: String, first: Bool)] in
                var u = String.UnicodeScalarView(s.text.unicodeScalars.map { $0 == " " ? rep : $0 })
                if !u.isEmpty && u.first != rep && (scheme == .always || (scheme == .first && s.first)) { u.insert(rep, at: u.startIndex) }
                guard split else { return u.isEmpty ? [] : [(String(u), s.first)] }
                var out: [(text: String, first: Bool)] = [], cur = String.UnicodeScalarView()
                for c in u {  // MergedWithNext: each replacement starts a new split
                    if c == rep && !cur.isEmpty { out.append((String(cur), s.first && out.isEmpty)); cur = .init() }
                    cur.append(c)
                }
                if !cur.isEmpty { out.append((String(cur), s.first && out.isEmpty)) }
                return out
            }
        }
    }
}
