// Slices and concats that only move whole contiguous byte ranges.

/// A slice that reads one contiguous range of its operand, or a concat whose operands are
/// contiguous ranges of its output, moves bytes without rearranging them. The memory planner
/// places such values inside one another (a view), and codegen then emits no copy for them:
/// the text and image halves of a joint attention's q, k and v are written by their producers
/// straight into the concatenated tensor, and the attention output's halves are read in place.
extension Graph {
    /// Where the slice `id` starts in its operand, in bytes, when it reads one contiguous range
    /// (every axis before the last partial one has extent 1, every axis after it is whole).
    public func contiguousSliceStart(_ id: ValueID) -> Int? {
        let node = self[id]
        guard node.op == .slice, let start = node.ints("start") else { return nil }
        let shape = self[node.operands[0]].type.shape
        let extent = node.type.shape
        // The last axis that is not whole; axes before it must be single indices.
        guard let partial = shape.indices.last(where: { extent[$0] != shape[$0] }) else { return 0 }
        if shape[..<partial].indices.contains(where: { extent[$0] != 1 }) { return nil }
        var stride = 1, offset = 0
        for i in shape.indices.reversed() {
            offset += start[i] * stride
            stride *= shape[i]
        }
        return offset * node.type.dtype.byteSize
    }

    /// Where each operand of the concat `id` starts in its output, in bytes, when every axis
    /// before the concatenated one has size 1 (each operand is then one contiguous range).
    public func contiguousConcatStarts(_ id: ValueID) -> [Int]? {
        let node = self[id]
        guard node.op == .concat, let axis = node.int("axis") else { return nil }
        let out = node.type
        if out.shape[..<axis].contains(where: { $0 != 1 }) { return nil }
        var starts: [Int] = [], at = 0
        for o in node.operands {
            starts.append(at)
            at += self[o].type.byteCount
        }
        return starts
    }
}
