// Word tokenizer of the shapes world for the tiny text encoder of the embedded default model.

/// Every word of the grammar with a fixed id, plus padding, begin and end markers. Prompts are
/// encoded from their canonical text (so "an" and "a", or "RED" and "red", give the same ids),
/// as `<bos> words… <eos>` padded with 0 to `length`, the longest prompt plus the two markers.
public enum WorldVocabulary {
    public static let pad = 0, bos = 1, eos = 2

    /// Id = index. The order is part of a trained model's weights: append, never reorder.
    public static let words: [String] = {
        var w = ["<pad>", "<bos>", "<eos>", "a"]
        w += Prompt.Size.allCases.map(\.rawValue)
        w += Prompt.Colour.allCases.map(\.rawValue)
        w += Prompt.Shape.allCases.map(\.rawValue)
        for phrase in Prompt.Position.allCases.map(\.phrase) + Prompt.Relation.allCases.map(\.phrase) {
            for word in phrase.split(separator: " ").map(String.init) where !w.contains(word) { w.append(word) }
        }
        return w
    }()

    private static let ids: [String: Int] = Dictionary(uniqueKeysWithValues: words.enumerated().map { ($1, $0) })

    public static var count: Int { words.count }

    /// Tokens per prompt: the longest prompt ("a green circle to the left of a white square",
    /// 10 words) plus `<bos>` and `<eos>`.
    public static let length: Int = {
        let object = 3   // "a colour shape"
        let relation = Prompt.Relation.allCases.map { $0.phrase.split(separator: " ").count }.max()!
        let position = Prompt.Position.allCases.map { $0.phrase.split(separator: " ").count }.max()!
        return max(2 * object + relation, object + 1 + position) + 2
    }()

    public static func id(_ word: String) -> Int? { ids[word] }

    /// The ids of the empty caption, `<bos> <eos>` then padding: caption dropout trains on it and
    /// classifier-free guidance's unconditional branch uses it.
    public static var emptyCaption: [Int] { [bos, eos] + [Int](repeating: pad, count: length - 2) }

    public static func encode(_ prompt: Prompt) -> [Int] {
        var out = [bos] + prompt.description.split(separator: " ").map { ids[String($0)]! } + [eos]
        out += [Int](repeating: pad, count: length - out.count)
        return out
    }

    /// Parses, then encodes: the same errors as `Prompt.parse`.
    public static func encode(_ text: String) throws -> [Int] { encode(try Prompt.parse(text)) }

    /// The words of the ids, markers and padding left out.
    public static func decode(_ tokens: [Int]) -> String {
        tokens.filter { $0 > eos && $0 < words.count }.map { words[$0] }.joined(separator: " ")
    }
}
