// Double-precision libm entry points for the interpreter, named so they never clash with ops.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inlinable func Foundation_exp(_ x: Double) -> Double { exp(x) }
@inlinable func Foundation_expm1(_ x: Double) -> Double { expm1(x) }
@inlinable func Foundation_log(_ x: Double) -> Double { log(x) }
@inlinable func Foundation_tanh(_ x: Double) -> Double { tanh(x) }
@inlinable func Foundation_erf(_ x: Double) -> Double { erf(x) }
@inlinable func Foundation_sin(_ x: Double) -> Double { sin(x) }
@inlinable func Foundation_cos(_ x: Double) -> Double { cos(x) }
@inlinable func Foundation_pow(_ x: Double, _ y: Double) -> Double { pow(x, y) }
