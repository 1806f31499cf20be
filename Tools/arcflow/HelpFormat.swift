// Help text fitted to the terminal: every `--help`, the command list and the usage block after a
// usage error go through `wrapHelp`, so the option tables read in a 100-column terminal.

import Foundation

/// Columns for help text: $COLUMNS where it is a number from 40 (what argparse and most command
/// lines read; shells export it to child processes only when asked), else 100.
func helpWidth(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Int {
    if let c = environment["COLUMNS"].flatMap({ Int($0) }), c >= 40 { return c }
    return 100
}

/// `text` with every line longer than `width` broken at spaces.  Prose (unindented lines that are
/// not a usage line or a two-column row; a "- " line starts a list item) is laid out again as
/// paragraphs when one of its lines is too long, since it is wrapped by hand near 110 columns.  Any
/// other line breaks by itself, and its continuations hang under its second column, so tables stay
/// tables: after `arcflow COMMAND ` on a usage line, after the first run of two or more spaces on a
/// two-column row (options, passes, the command list), else at the line's own indent (a list item's
/// text); a column past half the width hangs 4 past the indent instead.  Only where lines break
/// changes: the words are the same (tests check it).
func wrapHelp(_ text: String, width: Int) -> String {
    var out: [String] = [], paragraph: [String] = []
    func flush() {
        if paragraph.contains(where: { $0.count > width }) { out.append(wrapLine(Array(paragraph.joined(separator: " ")), width)) }
        else { out += paragraph }
        paragraph = []
    }
    for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
        let prose = !line.isEmpty && !line.hasPrefix(" ") && !line.hasPrefix("usage:") && !line.contains("  ")
        if !prose || line.hasPrefix("- ") { flush() }
        if prose { paragraph.append(line) } else { out.append(wrapLine(Array(line), width)) }
    }
    flush()
    return out.joined(separator: "\n")
}

private func wrapLine(_ line: [Character], _ width: Int) -> String {
    let indent = line.prefix { $0 == " " }.count
    guard line.count > width, indent < line.count - 1 else { return String(line) }
    var hang = indent
    let body = String(line[indent...])
    if let cmd = ["usage: arcflow ", "arcflow "].first(where: body.hasPrefix) {
        // After the command word: `usage: arcflow generate ` and `       arcflow generate ` align.
        let afterCmd = body.dropFirst(cmd.count)
        hang = indent + cmd.count + (afterCmd.firstIndex(of: " ").map { afterCmd.distance(from: afterCmd.startIndex, to: $0) + 1 } ?? 0)
    } else if body.hasPrefix("- ") {
        hang = indent + 2
    } else if let gap = (indent..<line.count - 1).first(where: { line[$0] == " " && line[$0 + 1] == " " && line[$0 - 1] != " " }),
              let col = (gap..<line.count).first(where: { line[$0] != " " }) {
        hang = col
    }
    // The head (up to the column, or the indent where the column is too far right) stays as
    // written; the rest is laid out again word by word, continuations at `hang`.
    var head = hang
    if hang > width / 2 { (head, hang) = (indent, min(indent + 4, width / 2)) }
    var out: [String] = [], current = String(line[..<head]), fresh = true
    for word in line[head...].split(separator: " ") {
        if !fresh && current.count + 1 + word.count > width {
            out.append(current)
            current = String(repeating: " ", count: hang)
            fresh = true
        }
        current += (fresh ? "" : " ") + word
        fresh = false
    }
    out.append(current)
    return out.joined(separator: "\n")
}
