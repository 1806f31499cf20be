// The Unigram model of HF tokenizers: Viterbi over a byte trie of the vocabulary.
import IR

/// Segments text into the pieces of highest total log-probability, exactly as tokenizers'
/// `Unigram::encode_optimized`: every vocabulary entry (special tokens included) is a candidate;
/// a character that no single piece covers gets the unknown id with score `min score - 10`, and
/// runs of unknowns are fused into one token. Ties keep the first candidate found (earlier start,
/// then shorter piece), as the strict `>` there does.
struct Unigram {
    let pieces: [String]
    let scores: [Double]
    let unkID: Int?
    let byteFallback: Bool
    /// Keyed by UTF-8 bytes: Swift's String equality is canonical equivalence, under which
    /// "é" and "e\u{301}" (two pieces with two ids) would be one key.
    private let ids: [[UInt8]: Int]
    private let minScore: Double
    /// Trie over UTF-8 bytes: per node its children and the id of the piece ending there.
    private var children: [[UInt8: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]

    init(pieces: [String], scores: [Double], unkID: Int?, byteFallback: Bool) {
        (self.pieces, self.scores, self.unkID, self.byteFallback) = (pieces, scores, unkID, byteFallback)
        var ids: [[UInt8]: Int] = [:]
        for (id, p) in pieces.enumerated() { ids[Array(p.utf8)] = id }  // a repeated piece keeps its last id
        self.ids = ids
        minScore = scores.min() ?? 0
        for (id, p) in pieces.enumerated() {
            var node = 0
            for b in p.utf8 {
                if let next = children[node][b] { node = Int(next); continue }
                children.append([:]); terminal.append(-1)
                children[node][b] = Int32(children.count - 1)
                node = children.count - 1
            }
            terminal[node] = Int32(id)
        }
    }

    func id(of piece: String) -> Int? { ids[Array(piece.utf8)] }

    /// Ids of one pre-tokenized word. Pieces not in the vocabulary (fused unknowns) become
    /// `<0xXX>` byte pieces when `byte_fallback` is set and all exist, else the unknown id; with
    /// no unknown id that is an error, as in tokenizers (the text is never dropped silently).
    func encode(_ text: String) throws -> [Int] {
        let bytes = Array(text.utf8)
        let n = bytes.count
        if n == 0 { return [] }
        var best = [Double](repeating: 0, count: n + 1)
        var from = [Int](repeating: -1, count: n + 1)
        var node = [Int](repeating: 0, count: n + 1)
        let unkScore = minScore - 10
        var start = 0
        while start < n {
            let here = best[start]
            let lead = bytes[start]
            let charLen = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
            var single = false
            var t = 0, end = start
            while end < n, let next = children[t][bytes[end]] {
                t = Int(next); end += 1
                let id = Int(terminal[t])
                guard id >= 0 else { continue }
                let score = here + scores[id]
                if from[end] < 0 || score > best[end] { (best[end], from[end], node[end]) = (score, start, id) }
                if end - start == charLen { single = true }
            }
            if !single, let unk = unkID {
                let end = min(n, start + charLen), score = here + unkScore
                if from[end] < 0 || score > best[end] { (best[end], from[end], node[end]) = (score, start, unk) }
            }
            start += charLen
        }
        var words: [[UInt8]] = [], unkRun: [[UInt8]] = []
        var end = n
        while end > 0 {
            let s = from[end]
            if s < 0 { throw missingUnknown(text) }
            if let unk = unkID, node[end] == unk { unkRun.append(Array(bytes[s..<end])) } else {
                if !unkRun.isEmpty { words.append(unkRun.reversed().flatMap { $0 }); unkRun = [] }
                words.append(Array(bytes[s..<end]))
            }
            end = s
        }
        if !unkRun.isEmpty { words.append(unkRun.reversed().flatMap { $0 }) }
        return try words.reversed().flatMap { word -> [Int] in
            if let id = ids[word] { return [id] }
            if byteFallback {
                let byteIDs = word.compactMap { id(of: "<0x" + String($0, radix: 16, uppercase: true).leftPadded(2) + ">") }
                if byteIDs.count == word.count { return byteIDs }
            }
            guard let unk = unkID else { throw missingUnknown(text) }
            return [unk]
        }
    }

    private func missingUnknown(_ text: String) -> ArcError {
        ArcError("tokenizer: no piece covers part of \(text.debugDescription) and the Unigram model has no unk_id "
                 + "(tokenizers: \"Encountered an unknown token but `unk_id` is missing\")")
    }
}

private extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
