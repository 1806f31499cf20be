// Element types and static tensor types: `f32[1,4096,3072]`.

/// Storage element types. Compute is always f32; bf16 and f16 exist for storage
/// (checkpoints, weights) and are converted with an explicit `convert` op.
public enum DType: String, CaseIterable, Hashable, Sendable {
    case f32, f16, bf16
    /// Storage only: int8 weight panels (codes and their f32 scales, see gemm_int8.h), never a
    /// value the graph computes with.
    case i8

    public var byteSize: Int { self == .f32 ? 4 : self == .i8 ? 1 : 2 }
}

/// A static tensor type. Shapes are fully known at compile time; a scalar has shape [].
public struct TensorType: Hashable, CustomStringConvertible, Sendable {
    public var dtype: DType
    public var shape: [Int]

    public init(_ dtype: DType, _ shape: [Int]) {
        self.dtype = dtype
        self.shape = shape
    }

    public static func f32(_ shape: [Int]) -> TensorType { TensorType(.f32, shape) }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * dtype.byteSize }

    public func with(shape: [Int]) -> TensorType { TensorType(dtype, shape) }
    public func with(dtype: DType) -> TensorType { TensorType(dtype, shape) }

    public var description: String { "\(dtype.rawValue)[\(shape.map(String.init).joined(separator: ","))]" }
}

/// Row-major strides of a shape, in elements.
public func rowMajorStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var s = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = s
        s *= shape[i]
    }
    return strides
}
