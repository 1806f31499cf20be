// Reading the JSON files of a tokenizer folder, with errors that name the file and the key.
import Foundation
import IR

/// One parsed JSON file; `path` is kept so every error can name the file it came from.
struct JSONFile {
    let path: String
    let root: Any

    /// Reads and parses `folder/name`; `optional` files that are absent give nil instead of an error.
    static func load(_ folder: String, _ name: String, optional: Bool = false) throws -> JSONFile? {
        let path = (folder as NSString).appendingPathComponent(name)
        if optional && !FileManager.default.fileExists(atPath: path) { return nil }
        var data = try readInputFile(path, limit: maxInputTextBytes, what: "JSON file")
        // Foundation's parser drops a raw U+FEFF that opens a string ("\u{FEFF}R" reads "R"), where
        // a vocabulary piece keeps it; escaped, it survives. Outside strings it is not JSON anyway.
        let bom = Data([0xEF, 0xBB, 0xBF])
        if let first = data.range(of: bom, in: 1..<max(1, data.count)) {
            var fixed = Data(data[..<first.lowerBound]), rest = data[first.lowerBound...]
            while let r = rest.range(of: bom) {
                fixed.append(rest[..<r.lowerBound]); fixed.append(contentsOf: Array("\\ufeff".utf8)); rest = rest[r.upperBound...]
            }
            fixed.append(rest)
            data = fixed
        }
        do {
            return JSONFile(path: path, root: try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
        } catch {
            throw ArcError("\(path): malformed JSON")
        }
    }

    /// A file the tokenizer cannot work without.
    static func require(_ folder: String, _ name: String) throws -> JSONFile { try load(folder, name)! }

    func error(_ message: String) -> ArcError { ArcError("\(path): \(message)") }

    /// `object[key]` as `T`, or an error naming the key path (`model.vocab`).
    func get<T>(_ object: Any, _ key: String, at keyPath: String = "", as: T.Type = T.self) throws -> T {
        let name = keyPath.isEmpty ? key : "\(keyPath).\(key)"
        guard let dict = object as? [String: Any], let raw = dict[key], !(raw is NSNull) else {
            throw error("missing key '\(name)'")
        }
        guard let value = raw as? T else { throw error("key '\(name)' has the wrong type") }
        return value
    }
}

/// A special-token entry is either a plain string or an AddedToken object (`{"content": …}`).
func tokenContent(_ raw: Any?) -> String? {
    if let s = raw as? String { return s }
    if let d = raw as? [String: Any] { return d["content"] as? String }
    return nil
}

/// The JSON number as written. Foundation on Linux parses numbers to NSDecimalNumber, whose
/// `doubleValue` can be an ulp off (-9.552238464355469 → …465); Viterbi ties between equal-score
/// segmentations are decided by the last bit of the sums, so scores must be exact.
func exactDouble(_ n: NSNumber) -> Double {
    n is NSDecimalNumber ? Double(n.description) ?? n.doubleValue : n.doubleValue
}
