// Tokenizers against Hugging Face ids (fixtures from Tools/fixtures/make_tokenizer_fixtures.py).
import Foundation
import XCTest
import IR
import Tokenizers

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

private func loadJSON(_ name: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name)")))
}

private func temporaryFolder() throws -> String {
    let dir = NSTemporaryDirectory() + "arcflow-tok-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func writeJSON(_ value: Any, _ path: String) throws {
    try JSONSerialization.data(withJSONObject: value).write(to: URL(fileURLWithPath: path))
}

/// Compares every prompt and fails once, with the count and the first mismatch and its prompt.
private func compare(_ name: String, _ cases: [(prompt: String, expected: [Int])], _ encode: (String) throws -> [Int],
                     file: StaticString = #filePath, line: UInt = #line) {
    var bad: [String] = []
    for (p, e) in cases {
        let got: [Int]
        do { got = try encode(p) } catch { bad.append("prompt \(String(reflecting: p)) threw \(error)"); continue }
        if got != e { bad.append("prompt \(String(reflecting: p))\n  expected \(e)\n  got      \(got)") }
    }
    XCTAssert(bad.isEmpty, "\(name): \(bad.count) of \(cases.count) prompts differ; first: \(bad.first ?? "")", file: file, line: line)
    print("\(name): \(cases.count - bad.count)/\(cases.count) prompts identical")
}

final class TokenizersTests: XCTestCase {
    var prompts: [String] = []
    var expected: [String: Any] = [:]

    override func setUpWithError() throws {
        prompts = try loadJSON("prompts.json") as! [String]
        expected = try loadJSON("expected.json") as! [String: Any]
    }

    func testCLIPMatchesSlowCLIPTokenizer() throws {
        let clip = try CLIPTokenizer(folder: "\(fixtures)/tokenizer")
        XCTAssertEqual(clip.maxLength, 77)
        XCTAssertGreaterThanOrEqual(prompts.count, 300)
        compare("CLIP", Array(zip(prompts, expected["clip"] as! [[Int]])), clip.encode)
        let ids = clip.tokenize("a photo")
        XCTAssertEqual(Array(clip.encode("a photo").prefix(ids.count + 2)), [clip.bosID] + ids + [clip.eosID])
    }

    /// The tokenizers-library pipeline (transformers 5's CLIPTokenizer, 4's CLIPTokenizerFast) on
    /// the same prompts: it differs from the slow tokenizer on a third of them, and a folder saved
    /// by transformers 5 ("backend": "tokenizers") gets it by default.
    func testCLIPFastMatchesTokenizersLibrary() throws {
        let fast = try loadJSON("expected_clip_fast.json") as! [String: Any]
        let ids = fast["clip_fast"] as! [[Int]]
        let slowIDs = expected["clip"] as! [[Int]]
        XCTAssertGreaterThan(zip(ids, slowIDs).filter { $0 != $1 }.count, 50, "the fixture should tell the flavors apart")
        let src = "\(fixtures)/tokenizer"
        XCTAssertEqual(try CLIPTokenizer(folder: src).flavor, .slow)
        compare("CLIP fast", Array(zip(prompts, ids)), try CLIPTokenizer(folder: src, flavor: .fast).encode)
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for f in try FileManager.default.contentsOfDirectory(atPath: src) {
            try FileManager.default.copyItem(atPath: "\(src)/\(f)", toPath: "\(dir)/\(f)")
        }
        var config = try loadJSON("tokenizer/tokenizer_config.json") as! [String: Any]
        config["backend"] = "tokenizers"
        try FileManager.default.removeItem(atPath: "\(dir)/tokenizer_config.json")
        try writeJSON(config, "\(dir)/tokenizer_config.json")
        let saved = try CLIPTokenizer(folder: dir)
        XCTAssertEqual(saved.flavor, .fast)
        compare("CLIP fast by default", Array(zip(prompts, ids)), saved.encode)
    }

    /// Two cases a sweep of 2,495 unusual prompts found (ids from transformers 4.54.1's
    /// CLIPTokenizer and CLIPTokenizerFast on this folder, tokenizers 0.21.4): the slow pattern
    /// under IGNORECASE skips U+0345 and splits words at it; the fast pipeline matches the
    /// `normalized` end-of-text token after lowercasing, so a capitalised spelling after
    /// punctuation is that token, not "!<|" + letters.
    func testCLIPIgnorecaseMarkAndNormalizedAddedTokens() throws {
        let src = "\(fixtures)/tokenizer"
        let slow = try CLIPTokenizer(folder: src, flavor: .slow), fast = try CLIPTokenizer(folder: src, flavor: .fast)
        let cases: [(String, slow: [Int], fast: [Int])] = [
            ("x\u{345}", [343], [343, 137, 483]),
            ("a\u{345}\u{3B9} b", [320, 138, 373, 321], [320, 137, 483, 138, 373, 321]),
            ("!<|ENDOFTEXT|>", [0, 27, 347, 68, 77, 67, 768, 83, 68, 87, 339, 91, 285], [256, 1713]),
            ("a photo<|EndOfText|>of <|startoftext|>x", [320, 1196, 1713, 1049, 1712, 343], [320, 1196, 1713, 1049, 1712, 343]),
        ]
        for (prompt, s, f) in cases {
            XCTAssertEqual(slow.tokenize(prompt), s, "slow \(prompt.debugDescription)")
            XCTAssertEqual(fast.tokenize(prompt), f, "fast \(prompt.debugDescription)")
        }
    }

    /// A folder whose pad token is "!" (as several CLIP tokenizers): padding and "!" in the text.
    /// A folder as transformers 5 saves CLIPTokenizer: tokenizer.json alone (vocabulary and merges
    /// in its BPE model, pairs as arrays or as "left right" strings; the special tokens in
    /// added_tokens) encodes as vocab.json + merges.txt do.
    func testCLIPFromTokenizerJSON() throws {
        let src = "\(fixtures)/tokenizer"
        let vocab = try loadJSON("tokenizer/vocab.json") as! [String: Int]
        let merges = try String(contentsOfFile: "\(src)/merges.txt", encoding: .utf8).split(separator: "\n").dropFirst()
            .map { $0.split(separator: " ").map(String.init) }.filter { $0.count == 2 }
        var config = try loadJSON("tokenizer/tokenizer_config.json") as! [String: Any]
        var added: [[String: Any]] = []
        for (id, entry) in config.removeValue(forKey: "added_tokens_decoder") as? [String: Any] ?? [:] {
            var t = entry as! [String: Any]
            t["id"] = Int(id)!
            added.append(t)
        }
        XCTAssertFalse(added.isEmpty)
        let reference = try CLIPTokenizer(folder: src)
        for pairs in [true, false] {
            let dir = try temporaryFolder()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let model: [String: Any] = ["type": "BPE", "vocab": vocab, "merges": pairs ? merges : merges.map { $0.joined(separator: " ") }]
            try writeJSON(["version": "1.0", "added_tokens": added, "model": model], "\(dir)/tokenizer.json")
            try writeJSON(config, "\(dir)/tokenizer_config.json")
            try FileManager.default.copyItem(atPath: "\(src)/special_tokens_map.json", toPath: "\(dir)/special_tokens_map.json")
            let clip = try CLIPTokenizer(folder: dir)
            compare("CLIP from tokenizer.json (merges as \(pairs ? "pairs" : "strings"))", prompts.map { ($0, reference.encode($0)) }, clip.encode)
        }
    }

    func testCLIPPadTokenFromSpecialTokensMap() throws {
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: "\(fixtures)/tokenizer/\(f)", toPath: "\(dir)/\(f)")
        }
        var map = try loadJSON("tokenizer/special_tokens_map.json") as! [String: Any]
        map["pad_token"] = "!"
        try writeJSON(map, "\(dir)/special_tokens_map.json")
        let clip = try CLIPTokenizer(folder: dir)
        let cases = (expected["clip_pad_bang"] as! [[Any]]).map { (prompts[$0[0] as! Int], $0[1] as! [Int]) }
        compare("CLIP pad '!'", cases, clip.encode)
    }

    func testT5MatchesT5TokenizerFast() throws {
        let t5 = try T5Tokenizer(folder: "\(fixtures)/tokenizer_2")
        compare("T5 512", Array(zip(prompts, expected["t5_512"] as! [[Int]]))) { try t5.encode($0, length: 512) }
        compare("T5 16", Array(zip(prompts, expected["t5_16"] as! [[Int]]))) { try t5.encode($0, length: 16) }
    }

    /// Other tokenizer.json layouts (FLUX.1's older WhitespaceSplit + Metaspace, prepend "first",
    /// NFKC/Lowercase/Strip/Replace), ids from tokenizers with the same rewrite.
    func testT5TokenizerJSONVariants() throws {
        var base = try loadJSON("tokenizer_2/tokenizer.json") as! [String: Any]
        let charsmap = ((base["normalizer"] as! [String: Any])["normalizers"] as! [[String: Any]])[0]["precompiled_charsmap"]!
        let baseNormalizer = base["normalizer"]!
        for variant in expected["t5_variants"] as! [[String: Any]] {
            let dir = try temporaryFolder()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var norm = variant["normalizer"] ?? NSNull()
            if norm is NSNull { norm = baseNormalizer }
            if var seq = norm as? [String: Any], var list = seq["normalizers"] as? [[String: Any]] {
                for i in list.indices where list[i]["type"] as? String == "Precompiled" { list[i]["precompiled_charsmap"] = charsmap }
                seq["normalizers"] = list
                norm = seq
            }
            base["normalizer"] = norm
            base["pre_tokenizer"] = variant["pre_tokenizer"]!
            try writeJSON(base, "\(dir)/tokenizer.json")
            let t5 = try T5Tokenizer(folder: dir)
            let cases = (variant["ids"] as! [[Any]]).map { (prompts[$0[0] as! Int], $0[1] as! [Int]) }
            compare("T5 variant \(variant["name"]!)", cases) { try t5.encode($0, length: 64) }
        }
    }

    /// Pieces are bytes: "é" and "e\u{301}" (one key under Swift's String equality, canonical
    /// equivalence) keep their own ids, and a piece opening with U+FEFF keeps it (Foundation's
    /// JSON parser drops a raw one at the start of a string).
    func testUnigramPiecesAreBytes() throws {
        var base = try loadJSON("tokenizer_2/tokenizer.json") as! [String: Any]
        var model = base["model"] as! [String: Any]
        var vocab = model["vocab"] as! [[Any]]
        let added = ["\u{E9}", "e\u{301}", "\u{FEFF}R", "\u{30AC}"], first = vocab.count
        for p in added { vocab.append([p, 0.0]) }
        model["vocab"] = vocab
        base["model"] = model
        for normalizer in [NSNull(), ["type": "NFKC"]] as [Any] {
            base["normalizer"] = normalizer
            let dir = try temporaryFolder()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try writeJSON(base, "\(dir)/tokenizer.json")
            let t5 = try T5Tokenizer(folder: dir)
            // NFKC: "e\u{301}" composes to "é"; half-width "ｶﾞ" to "ガ" (U+30AC), as Rust's NFKC does.
            let cases: [(String, Int)] = normalizer is NSNull ? added.enumerated().map { ($1, first + $0) }
                : [("\u{E9}", first), ("e\u{301}", first), ("\u{FF76}\u{FF9E}", first + 3)]
            for (text, id) in cases {
                let ids = try t5.encode(text, length: 8)
                XCTAssertTrue(ids.contains(id), "\(normalizer): \(text.unicodeScalars.map { String($0.value, radix: 16) }) → \(ids), want id \(id)")
            }
        }
    }

    /// A Unigram model without `unk_id` cannot encode a character no piece covers: tokenizers
    /// raises an error there, and so do we (the text is never dropped). Covered text still works.
    func testUnigramWithoutUnknownIDRefusesUncoveredText() throws {
        var base = try loadJSON("tokenizer_2/tokenizer.json") as! [String: Any]
        var model = base["model"] as! [String: Any]
        model["unk_id"] = NSNull()
        model["byte_fallback"] = false
        base["model"] = model
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeJSON(base, "\(dir)/tokenizer.json")
        let t5 = try T5Tokenizer(folder: dir)
        XCTAssertFalse(try t5.tokenize("a red circle").isEmpty)
        XCTAssertThrowsError(try t5.tokenize("a red \u{2603} circle")) {
            XCTAssertTrue("\($0)".contains("unk_id"), "\($0)")
        }
    }

    /// `single_word` added tokens match only between non-word characters (the regex class \w);
    /// expected ids from tokenizers 0.23.3 on this file.
    func testSingleWordAddedTokens() throws {
        var base = try loadJSON("tokenizer_2/tokenizer.json") as! [String: Any]
        var added = base["added_tokens"] as! [[String: Any]]
        let n = added.map { $0["id"] as! Int }.max()! + 1
        for (i, content) in ["cat", "d\u{E9}", "<x>"].enumerated() {
            added.append(["id": n + i, "content": content, "single_word": true, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": false])
        }
        base["added_tokens"] = added
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeJSON(base, "\(dir)/tokenizer.json")
        let t5 = try T5Tokenizer(folder: dir)
        let cases: [(String, [Int])] = [
            ("cat", [n]), ("a cat", [n]), ("cats", []), ("bobcat", []), ("cat_x", []), ("cat1", []), ("cat.", [n]),
            ("(cat)", [n]), ("\u{E9}cat", []), ("catcat", []), ("cat-cat", [n, n]), ("cat\u{301}", []), ("d\u{E9}", [n + 1]),
            ("ad\u{E9}", []), ("a<x>b", []), ("a <x> b", [n + 2]), ("a<x>", []), ("\u{2460}cat", [n]), ("cat\u{B2}", [n]),
            ("\u{200D}cat", []), ("cat\u{203F}", []), ("\u{663}cat", []), ("cat\u{2160}", []),
        ]
        for (text, want) in cases {
            XCTAssertEqual(try t5.tokenize(text).filter { $0 >= n }, want, text.unicodeScalars.map { String($0.value, radix: 16) }.joined(separator: " "))
        }
    }

    func testErrorsNameFileAndKey() throws {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "no error" } catch let e as ArcError { return e.message } catch { return "\(error)" }
        }
        let dir = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let clipDir = "\(dir)/tokenizer", t5Dir = "\(dir)/tokenizer_2"
        try FileManager.default.createDirectory(atPath: clipDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: t5Dir, withIntermediateDirectories: true)

        XCTAssertEqual(message { _ = try CLIPTokenizer(folder: clipDir) }, "cannot read \(clipDir)/vocab.json: no such file")
        try FileManager.default.copyItem(atPath: "\(fixtures)/tokenizer/vocab.json", toPath: "\(clipDir)/vocab.json")
        XCTAssertEqual(message { _ = try CLIPTokenizer(folder: clipDir) }, "cannot read \(clipDir)/merges.txt: no such file")
        try "{\"a\": 1,".write(toFile: "\(clipDir)/vocab.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(message { _ = try CLIPTokenizer(folder: clipDir) }, "\(clipDir)/vocab.json: malformed JSON")

        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) }, "cannot read \(t5Dir)/tokenizer.json: no such file")
        let bpe: [String: Any] = ["model": ["type": "BPE", "vocab": ["a": 0], "merges": []]]
        try writeJSON(bpe, "\(t5Dir)/tokenizer.json")
        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) },
                       "\(t5Dir)/tokenizer.json: model type 'BPE' is not supported here (expected Unigram, the T5 tokenizer)")
        XCTAssertTrue(message { _ = try T5Tokenizer(folder: t5Dir) }.hasSuffix(
            "tokenizer_2/tokenizer.json: model type 'BPE' is not supported here (expected Unigram, the T5 tokenizer)"))
        try writeJSON(["model": ["type": "Unigram", "unk_id": 0]], "\(t5Dir)/tokenizer.json")
        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) }, "\(t5Dir)/tokenizer.json: missing key 'model.vocab'")
        try writeJSON(["normalizer": NSNull()], "\(t5Dir)/tokenizer.json")
        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) }, "\(t5Dir)/tokenizer.json: missing key 'model'")
        try "{\"model\": [".write(toFile: "\(t5Dir)/tokenizer.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) }, "\(t5Dir)/tokenizer.json: malformed JSON")
        try writeJSON(["model": ["type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]],
                       "pre_tokenizer": ["type": "ByteLevel"]], "\(t5Dir)/tokenizer.json")
        XCTAssertEqual(message { _ = try T5Tokenizer(folder: t5Dir) },
                       "\(t5Dir)/tokenizer.json: pre_tokenizer type 'ByteLevel' is not supported")
    }

    /// Pieces sentencepiece's charsmap is known for: NFKC-like folds and whitespace mapping.
    func testPrecompiledCharsmapDecodes() throws {
        let json = try loadJSON("tokenizer_2/tokenizer.json") as! [String: Any]
        let list = (json["normalizer"] as! [String: Any])["normalizers"] as! [[String: Any]]
        let p = try XCTUnwrap(Precompiled(base64: list[0]["precompiled_charsmap"] as! String))
        XCTAssertEqual(p.normalize("ﬁ ＡＢＣ１２３ x² abc"), "fi ABC123 x2 abc")
        XCTAssertEqual(p.normalize("a\u{3000}b"), "a b")
    }
}
