// CLIP's byte-level BPE tokenizer (FluxPipeline's `tokenizer/`), as either of transformers' two
// CLIP tokenizers runs it: the slow one (BasicTokenizer clean-up) or the tokenizers-library one.
import Foundation
import IR

/// Which CLIP tokenizer to reproduce; they split about a third of unusual prompts differently
/// (CJK, control and format characters, final sigma, long s). FluxPipeline loads `CLIPTokenizer`,
/// which in transformers 4 is the slow one (run without ftfy) and in transformers 5, which has no
/// slow form, the tokenizers-library pipeline that transformers 4 calls `CLIPTokenizerFast`.
public enum CLIPTokenizerFlavor: String, CaseIterable {
    /// transformers 4's `CLIPTokenizer`: drop NUL, U+FFFD and C* characters, space out CJK
    /// ideographs, NFC, Python's `str.lower` per word, the word pattern with IGNORECASE.
    case slow
    /// tokenizers' pipeline: NFC, each whitespace run → one space, per-character lowercase, the
    /// word pattern (case-sensitive), byte-level; nothing is dropped.
    case fast

    /// The flavor of the transformers that saved `folder`: transformers 5 writes `"backend":
    /// "tokenizers"` into tokenizer_config.json (and can only run the fast pipeline); anything else,
    /// FLUX.1's own folder included, is taken as transformers 4's FluxPipeline would run it.
    public static func saved(in folder: String) -> CLIPTokenizerFlavor {
        let config = (try? JSONFile.load(folder, "tokenizer_config.json", optional: true))?.root as? [String: Any]
        return config?["backend"] as? String == "tokenizers" ? .fast : .slow
    }
}

public struct CLIPTokenizer {
    /// The padded length of `encode` (tokenizer_config.json's `model_max_length`, else 77).
    public let maxLength: Int
    public let bosID: Int, eosID: Int, padID: Int, unkID: Int
    private let vocab: [String: Int]
    /// Merge ranks keyed by "left right" (symbols never contain a space: bytes map to printable chars).
    private let ranks: [String: Int]
    /// Added tokens matched in the raw text, and (fast flavor only) those saved with
    /// `"normalized": true`, which tokenizers matches in the normalized text: "!<|ENDOFTEXT|>"
    /// ends in the end-of-text token there, as CLIP's are. transformers 4's slow tokenizer matches
    /// every added token in the raw text.
    private let rawAdded: AddedTokens, normalizedAdded: AddedTokens
    public let flavor: CLIPTokenizerFlavor

    /// Reads `vocab.json` + `merges.txt` (transformers 4's save of the slow tokenizer, FLUX.1's
    /// layout); a folder with neither but a `tokenizer.json` (transformers 5 saves only that) gives
    /// the same vocabulary, merges and added tokens from its BPE model. `flavor` nil: the one of the
    /// transformers that saved the folder (`CLIPTokenizerFlavor.saved(in:)`).
    public init(folder: String, flavor: CLIPTokenizerFlavor? = nil) throws {
        let chosen = flavor ?? CLIPTokenizerFlavor.saved(in: folder)
        self.flavor = chosen
        let fm = FileManager.default
        let vocabSource: String
        var ranks: [String: Int] = [:]
        var vocabulary: [String: Int]
        var fileAdded: [(content: String, id: Int, lstrip: Bool, rstrip: Bool, normalized: Bool)] = []
        // As transformers reads merges.txt: keep at most 49152 - 256 - 2 merges; a repeated pair
        // keeps its last rank.
        let maxMerges = 49152 - 256 - 2
        if !fm.fileExists(atPath: (folder as NSString).appendingPathComponent("vocab.json")),
           let json = try JSONFile.load(folder, "tokenizer.json", optional: true) {
            vocabSource = json.path
            let model: [String: Any] = try json.get(json.root, "model")
            guard model["type"] as? String == "BPE" else {
                throw json.error("model type '\(model["type"] as? String ?? "?")' is not CLIP's byte-level BPE")
            }
            guard let v = model["vocab"] as? [String: Int] else { throw json.error("model.vocab: expected an object of token → id") }
            vocabulary = v
            let merges: [Any] = try json.get(model, "merges", at: "model")
            for (rank, m) in merges.prefix(maxMerges).enumerated() {
                // "left right" (tokenizers < 0.20) or ["left", "right"]
                let pair = (m as? [String]) ?? (m as? String)?.split(separator: " ").map(String.init) ?? []
                guard pair.count == 2 else { throw json.error("model.merges[\(rank)]: expected a pair of symbols") }
                ranks["\(pair[0]) \(pair[1])"] = rank
            }
            for (i, raw) in ((json.root as? [String: Any])?["added_tokens"] as? [Any] ?? []).enumerated() {
                guard let t = raw as? [String: Any], let id = t["id"] as? Int, let content = t["content"] as? String else {
                    throw json.error("malformed entry \(i) in 'added_tokens'")
                }
                fileAdded.append((content, id, t["lstrip"] as? Bool ?? false, t["rstrip"] as? Bool ?? false, t["normalized"] as? Bool ?? false))
            }
        } else {
            let vocabFile = try JSONFile.require(folder, "vocab.json")
            vocabSource = vocabFile.path
            guard let v = vocabFile.root as? [String: Int] else {
                throw vocabFile.error("expected an object of token → id")
            }
            vocabulary = v
            let mergesPath = (folder as NSString).appendingPathComponent("merges.txt")
            let text = try readInputText(mergesPath, what: "text")
            // Strip, split lines, drop line 1 (the "#version" header, dropped even when absent).
            let lines = text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n", omittingEmptySubsequences: false)
            for (rank, line) in lines.dropFirst().prefix(maxMerges).enumerated() {
                let parts = line.split(whereSeparator: { $0.unicodeScalars.allSatisfy(isPythonSpace) })
                if parts.count == 2 { ranks["\(parts[0]) \(parts[1])"] = rank }
            }
        }
        let vocab = vocabulary
        self.vocab = vocab
        self.ranks = ranks

        // Special tokens: CLIP's defaults, then tokenizer_config.json, then special_tokens_map.json.
        var special = ["bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"]
        var raw = AddedTokens(), normalized = AddedTokens()
        let fast = chosen == .fast
        func add(_ content: String, id: Int, lstrip: Bool = false, rstrip: Bool = false, normalizedToken: Bool = false) {
            if fast && normalizedToken {
                normalized.add(fastNormalize(content), id: id, lstrip: lstrip, rstrip: rstrip)
            } else { raw.add(content, id: id, lstrip: lstrip, rstrip: rstrip) }
        }
        var addedIDs: [String: Int] = [:]
        var maxLength = 77
        if let config = try JSONFile.load(folder, "tokenizer_config.json", optional: true),
           let dict = config.root as? [String: Any] {
            for key in special.keys { if let v = tokenContent(dict[key]) { special[key] = v } }
            if let m = dict["model_max_length"] as? Int, m > 0, m <= 1_000_000 { maxLength = m }
            for (key, raw) in dict["added_tokens_decoder"] as? [String: Any] ?? [:] {
                guard let id = Int(key), let t = raw as? [String: Any], let content = t["content"] as? String else {
                    throw config.error("malformed entry '\(key)' in 'added_tokens_decoder'")
                }
                addedIDs[content] = id
                add(content, id: id, lstrip: t["lstrip"] as? Bool ?? false, rstrip: t["rstrip"] as? Bool ?? false,
                    normalizedToken: t["normalized"] as? Bool ?? false)
            }
        }
        for t in fileAdded where addedIDs[t.content] == nil {
            addedIDs[t.content] = t.id
            add(t.content, id: t.id, lstrip: t.lstrip, rstrip: t.rstrip, normalizedToken: t.normalized)
        }
        if let map = try JSONFile.load(folder, "special_tokens_map.json", optional: true),
           let dict = map.root as? [String: Any] {
            for key in special.keys { if let v = tokenContent(dict[key]) { special[key] = v } }
        }
        func id(_ key: String) throws -> Int {
            let token = special[key]!
            guard let id = addedIDs[token] ?? vocab[token] else {
                throw ArcError("\(vocabSource): \(key) '\(token)' is not in the vocabulary")
            }
            return id
        }
        (bosID, eosID, unkID, padID) = (try id("bos_token"), try id("eos_token"), try id("unk_token"), try id("pad_token"))
        // Special tokens are added tokens too, so the text is split on them (a pad of "!" included).
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] where addedIDs[special[key]!] == nil {
            add(special[key]!, id: try id(key))
        }
        (rawAdded, normalizedAdded) = (raw, normalized)
        self.maxLength = maxLength
    }

    /// `<|startoftext|> ids <|endoftext|>` truncated to keep the EOS at `maxLength - 1`, then padded
    /// with the pad id: what `tokenizer(text, padding="max_length", truncation=True)` returns.
    public func encode(_ text: String) -> [Int] {
        let body = tokenize(text).prefix(max(0, maxLength - 2))
        let ids = [bosID] + body + [eosID]
        return ids + Array(repeating: padID, count: max(0, maxLength - ids.count))
    }

    /// Ids without BOS/EOS or padding.
    public func tokenize(_ text: String) -> [Int] {
        rawAdded.split(text).flatMap { piece -> [Int] in
            switch piece {
            case .token(let id): return [id]
            case .text(let t) where flavor == .slow:
                return clipWords(basicTokenize(t), foldCase: true).flatMap { bpe($0).map { vocab[$0] ?? unkID } }
            case .text(let t):
                return normalizedAdded.split(fastNormalize(t)).flatMap { inner -> [Int] in
                    switch inner {
                    case .token(let id): return [id]
                    case .text(let n): return clipWords(n, foldCase: false).flatMap { bpe($0).map { vocab[$0] ?? unkID } }
                    }
                }
            }
        }
    }

    /// BPE of one word (already byte-mapped): `</w>` on its last symbol, then the lowest-ranked
    /// adjacent pair is merged everywhere, left to right, until no pair has a rank.
    private func bpe(_ word: String) -> [String] {
        if word == "<|startoftext|>" || word == "<|endoftext|>" { return [word] }  // transformers' cache seed
        var symbols = word.unicodeScalars.map { String($0) }
        symbols[symbols.count - 1] += "</w>"
        while symbols.count > 1 {
            var best: (rank: Int, pair: String)?
            for i in 0..<(symbols.count - 1) {
                let pair = symbols[i] + " " + symbols[i + 1]
                if let r = ranks[pair], r < (best?.rank ?? .max) { best = (r, pair) }
            }
            guard let (_, pair) = best else { break }
            var merged: [String] = [], i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] + " " + symbols[i + 1] == pair {
                    merged.append(symbols[i] + symbols[i + 1]); i += 2
                } else { merged.append(symbols[i]); i += 1 }
            }
            symbols = merged
        }
        return symbols
    }
}

// MARK: - The slow tokenizer's text clean-up and word split

/// GPT-2's byte → printable-character table, so BPE never sees spaces or control bytes.
let byteToUnicode: [Character] = {
    var bs = Array(33...126) + Array(161...172) + Array(174...255)
    var cs = bs, n = 0
    for b in 0..<256 where !bs.contains(b) { bs.append(b); cs.append(256 + n); n += 1 }
    var table = [Character](repeating: " ", count: 256)
    for (b, c) in zip(bs, cs) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
    return table
}()

/// Python's `str.isspace` (Zs, or bidi class WS/B/S): what `str.split()` splits on.
func isPythonSpace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
    default: return false
    }
}

/// The CJK ideograph blocks BERT's BasicTokenizer puts spaces around (not kana, not Hangul).
private func isCJK(_ v: UInt32) -> Bool {
    (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v)
        || (0x2A700...0x2B73F).contains(v) || (0x2B740...0x2B81F).contains(v) || (0x2B820...0x2CEAF).contains(v)
        || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
}

private func isOtherCategory(_ s: Unicode.Scalar) -> Bool {
    switch s.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned: return true
    default: return false
    }
}

/// `BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize`, joined by spaces:
/// drop NUL, U+FFFD and every C* character except \t\n\r (so ZWJ and soft hyphens vanish), turn
/// whitespace into spaces, space out CJK ideographs, NFC, split on whitespace and lower-case each
/// word with Python's `str.lower` (full mappings, final sigma). No accent stripping, no punctuation split.
func basicTokenize(_ text: String) -> String {
    var cleaned = String.UnicodeScalarView()
    for s in text.unicodeScalars {
        let v = s.value
        if v == 0 || v == 0xFFFD || (v != 0x09 && v != 0x0A && v != 0x0D && isOtherCategory(s)) { continue }
        if v == 0x20 || v == 0x09 || v == 0x0A || v == 0x0D || s.properties.generalCategory == .spaceSeparator {
            cleaned.append(" ")
        } else if isCJK(v) {
            cleaned.append(" "); cleaned.append(s); cleaned.append(" ")
        } else { cleaned.append(s) }
    }
    let nfc = String(cleaned).precomposedStringWithCanonicalMapping
    return nfc.unicodeScalars.split(whereSeparator: isPythonSpace)
        .map { pythonLower(Array($0)) }.joined(separator: " ")
}

/// tokenizers' CLIP normalizer: NFC, each run of White_Space characters → one space, then every
/// character's full lowercase mapping (no final-sigma context: Σ → σ anywhere).
func fastNormalize(_ text: String) -> String {
    var out = String.UnicodeScalarView(), inSpace = false
    for c in text.precomposedStringWithCanonicalMapping.unicodeScalars {
        if c.properties.isWhitespace {
            if !inSpace { out.append(" ") }
            inSpace = true
        } else {
            out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            inSpace = false
        }
    }
    return String(out)
}

/// Python's `str.lower`: each scalar's full lowercase mapping, and capital sigma becomes final
/// sigma (ς) after a cased letter when no cased letter follows (case-ignorables skipped both ways).
func pythonLower(_ s: [Unicode.Scalar]) -> String {
    var out = String.UnicodeScalarView()
    for (i, c) in s.enumerated() {
        guard c.value == 0x3A3 else { out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars); continue }
        let before = s[..<i].last { !$0.properties.isCaseIgnorable }
        let after = s[(i + 1)...].first { !$0.properties.isCaseIgnorable }
        let final = (before?.properties.isCased ?? false) && !(after?.properties.isCased ?? false)
        out.append(Unicode.Scalar(final ? 0x3C2 : 0x3C3)!)
    }
    return String(out)
}

private func isLetter(_ s: Unicode.Scalar) -> Bool {
    switch s.properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
    default: return false
    }
}
private func isNumber(_ s: Unicode.Scalar) -> Bool {
    switch s.properties.generalCategory {
    case .decimalNumber, .letterNumber, .otherNumber: return true
    default: return false
    }
}

/// CLIP's word pattern over the normalized text, each word byte-mapped:
/// `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`,
/// alternatives tried in order at each position. The slow tokenizer runs it with IGNORECASE, which
/// only matters through simple case folding (`foldCase`): long s (ſ) matches `s`, so "it'ſ" keeps
/// "'ſ" together as the regex module does. Under IGNORECASE U+0345 (combining ypogegrammeni, a
/// mark) also counts as ι, a letter, so it is in neither class: no alternative matches it, and it
/// is skipped as findall skips it, ending the word on either side (the only such code point,
/// checked against the regex module over all of Unicode). tokenizers' Split runs the pattern
/// case-sensitively. (Its
/// ByteLevel step then applies GPT-2's pattern to each word, which leaves every word of this
/// pattern whole.)
func clipWords(_ text: String, foldCase: Bool) -> [String] {
    let s = Array(text.unicodeScalars), ypogegrammeni: Unicode.Scalar = "\u{345}"
    func folded(_ c: Unicode.Scalar) -> Unicode.Scalar { !foldCase ? c : c.value == 0x17F ? "s" : c.value == 0x212A ? "k" : c }
    func matches(_ literal: String, at i: Int) -> Bool {
        let l = Array(literal.unicodeScalars)
        return i + l.count <= s.count && zip(s[i...], l).allSatisfy { folded($0) == $1 }
    }
    let literals = ["<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
    var words: [String] = [], i = 0
    while i < s.count {
        var end = i
        if let lit = literals.first(where: { matches($0, at: i) }) {
            end = i + lit.unicodeScalars.count
        } else if isLetter(s[i]) {
            while end < s.count && isLetter(s[end]) { end += 1 }
        } else if isNumber(s[i]) {
            end = i + 1
        } else if !s[i].properties.isWhitespace && !(foldCase && s[i] == ypogegrammeni) {
            while end < s.count && !isLetter(s[end]) && !isNumber(s[end]) && !s[end].properties.isWhitespace
                && !(foldCase && s[end] == ypogegrammeni) { end += 1 }
        } else { i += 1; continue }
        let word = String(String.UnicodeScalarView(s[i..<end]))
        words.append(String(word.utf8.map { byteToUnicode[Int($0)] }))
        i = end
    }
    return words
}
