// bf16 and f16 bit conversions, shared by the interpreter, the weight loader and writers.

/// Converts f32 to bf16 bits with round-to-nearest-even (NaN stays NaN), the rounding
/// PyTorch uses, so that weights cast here match weights cast there bit for bit.
@inlinable public func bf16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
    let rounding: UInt32 = 0x7FFF + ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
}

@inlinable public func floatFromBF16(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

/// Converts f32 to IEEE binary16 bits, round-to-nearest-even, with subnormals and overflow to inf.
@inlinable public func f16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    let sign = UInt16((bits >> 16) & 0x8000)
    let exp = Int((bits >> 23) & 0xFF)
    var mant = bits & 0x7F_FFFF
    if exp == 0xFF { return sign | 0x7C00 | (mant != 0 ? 0x200 : 0) }
    var e = exp - 127 + 15
    if e >= 0x1F { return sign | 0x7C00 }
    if e <= 0 {
        if e < -10 { return sign }
        mant |= 0x80_0000
        let shift = UInt32(14 - e)
        let half = UInt32(1) << (shift - 1)
        var r = mant >> shift
        let rem = mant & ((UInt32(1) << shift) - 1)
        if rem > half || (rem == half && (r & 1) == 1) { r += 1 }
        return sign | UInt16(r)
    }
    var r = mant >> 13
    let rem = mant & 0x1FFF
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1
        if r == 0x400 { r = 0; e += 1; if e >= 0x1F { return sign | 0x7C00 } }
    }
    return sign | UInt16(e << 10) | UInt16(r)
}

@inlinable public func floatFromF16(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int((h >> 10) & 0x1F)
    let mant = UInt32(h & 0x3FF)
    if exp == 0 {
        if mant == 0 { return Float(bitPattern: sign) }
        let v = Float(mant) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -v : v
    }
    if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
}

/// Rounds an f32 value to the nearest value representable in `dtype` (identity for f32).
@inlinable public func roundToStorage(_ x: Float, _ dtype: DType) -> Float {
    switch dtype {
    case .f32: return x
    case .bf16: return floatFromBF16(bf16Bits(x))
    case .f16: return floatFromF16(f16Bits(x))
    case .i8: return max(-128, min(127, x.rounded()))
    }
}
