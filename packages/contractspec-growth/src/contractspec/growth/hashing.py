"""GrowthBook-compatible hashing: FNV-1a 32-bit over UTF-16 code units, hash versions 1 and 2.

A subject's *bucket* is a number in `[0, 1)` derived from a seed (usually the experiment key)
and the subject's hash attribute (usually its id). Every GrowthBook SDK computes it the same way,
so a subject keeps its bucket when an app moves between SDKs, or from GrowthBook to ContractSpec:

* version 1: `fnv1a32(value + seed) % 1000 / 1000` (three decimals; GrowthBook's legacy hash,
  still used for namespaces);
* version 2 (the default): `fnv1a32(str(fnv1a32(seed + value))) % 10000 / 10000` (four decimals,
  better spread for similar seeds).

Strings are hashed as **UTF-16 code units**, like the JavaScript reference's `charCodeAt` loop: a
character outside the Basic Multilingual Plane (an emoji) counts as its two surrogate halves.

The scalar functions serve single assignments; `fnv1a32_many` and `bucket_hash_many` hash
millions of ids at once with NumPy (the input is turned into a matrix of code units and the FNV
recurrence runs column by column over cache-sized chunks).

Source: FNV-1a by Fowler, Noll and Vo (http://www.isthe.com/chongo/tech/comp/fnv/);
GrowthBook `packages/sdk-js/src/util.ts` (`hash`, `fnv1a32`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from contractspec.core.errors import SpecValidationError
from contractspec.core.numbers import as_finite_float
from contractspec.growth._lazy import lazy_module

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
else:
    np = lazy_module("numpy", __name__, "np")

__all__ = [
    "FNV_OFFSET_BASIS",
    "FNV_PRIME",
    "HASH_VERSIONS",
    "bucket_hash",
    "bucket_hash_many",
    "bucket_int",
    "fnv1a32",
    "fnv1a32_decimal",
    "fnv1a32_many",
    "hash_key",
]

#: FNV-1a 32-bit offset basis.
FNV_OFFSET_BASIS = 0x811C9DC5
#: FNV-1a 32-bit prime.
FNV_PRIME = 0x01000193
#: Hash versions GrowthBook defines.
HASH_VERSIONS = (1, 2)

_MASK = 0xFFFFFFFF
_CHUNK = 1 << 13  # rows per vectorised chunk: a chunk of code units stays in L2 cache


def fnv1a32(text: str, basis: int = FNV_OFFSET_BASIS) -> int:
    """FNV-1a 32-bit hash of `text` over its UTF-16 code units.

    Args:
        text: Any string; lone surrogates are hashed as the code units they are.
        basis: Start state (the offset basis, or the state after a prefix).

    Returns:
        The hash, an integer in `[0, 2**32)`.
    """
    h = basis
    if text.isascii():
        for byte in text.encode("ascii"):
            h = ((h ^ byte) * 16777619) & 4294967295  # literals: no global lookups in the loop
        return h
    data = text.encode("utf-16-le", "surrogatepass")
    for unit in memoryview(data).cast("H"):
        h = ((h ^ unit) * 16777619) & 4294967295
    return h


def _check_version(version: object) -> int:
    if version not in HASH_VERSIONS or isinstance(version, bool):
        raise SpecValidationError(
            f"hash_version must be 1 or 2 (GrowthBook's hash versions), got {version!r}; "
            "use 2 for new experiments",
            details={"field": "hash_version"},
        )
    return 2 if version == 2 else 1


_DECIMAL_STATES: list[array[int]] = []


def _decimal_states() -> array[int]:
    """`fnv1a32(str(k))` for every `k < 100_000` (built once, vectorised, 400 kB)."""
    if not _DECIMAL_STATES:
        states = _fnv_decimal(np.arange(100_000, dtype=np.uint32))
        _DECIMAL_STATES.append(array("I", states.astype(np.uint32).tobytes()))
    return _DECIMAL_STATES[0]


def fnv1a32_decimal(n: int) -> int:
    """`fnv1a32(str(n))` for `0 <= n < 2**32`, with the first digits looked up in a table.

    The state after the leading digits (`n // 100000`) comes from a table of the first 100,000
    decimal strings, so only the last five digits are hashed one by one.
    """
    table = _DECIMAL_STATES[0] if _DECIMAL_STATES else _decimal_states()
    if n < 100_000:
        return table[n]
    h = table[n // 100_000]
    for digit in b"%05d" % (n % 100_000):
        h = ((h ^ digit) * 16777619) & 4294967295
    return h


def bucket_int(seed_state: int, value: str, version: int, seed: str = "") -> int:
    """The integer bucket `k` (of `k / 10000` for v2, `k / 1000` for v1) of `value`.

    Args:
        seed_state: `fnv1a32(seed)` (version 2 hashes `seed + value`, so the seed's state is
            computed once per experiment).
        value: The hash attribute value.
        version: 1 or 2 (not checked: callers validate it once).
        seed: The seed itself (version 1 hashes `value + seed`).
    """
    if version == 2:
        return fnv1a32_decimal(fnv1a32(value, seed_state)) % 10000
    return fnv1a32(value + seed) % 1000


def bucket_hash(seed: str, value: str, version: int = 2) -> float:
    """The bucket of `value` under `seed`: a number in `[0, 1)` (GrowthBook `hash`).

    Args:
        seed: The experiment's seed (its key unless set otherwise).
        value: The subject's hash attribute as a string (see `hash_key`).
        version: `2` (default, four decimals) or `1` (legacy, three decimals).

    Returns:
        `k / 10000` for version 2, `k / 1000` for version 1.

    Raises:
        SpecValidationError: `version` is not 1 or 2.
    """
    if version == 2:
        return (fnv1a32_decimal(fnv1a32(seed + value)) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    _check_version(version)
    raise AssertionError("unreachable")  # pragma: no cover


def _js_number(value: float) -> str:
    """Format a finite number like JavaScript's `String(number)`."""
    x = float(value)
    if x == 0:
        return "0"
    if x < 0:
        return "-" + _js_number(-x)
    mantissa, _, exp = repr(x).partition("e")
    whole, _, fraction = mantissa.partition(".")
    padded = (whole + fraction).lstrip("0")
    digits = padded.rstrip("0")
    k = len(digits)
    n = int(exp or "0") - len(fraction) + len(padded)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return head + "e" + ("+" if n > 0 else "-") + str(abs(n - 1))


def hash_key(value: Any) -> str | None:
    """The string GrowthBook hashes for an attribute value, or `None` if it cannot identify anyone.

    Non-empty strings hash as themselves; finite non-zero numbers as JavaScript prints them
    (`123`, `1.5`, `1e+21`). Empty strings, zero, booleans, `None`, NaN and other types cannot
    identify a subject (GrowthBook's `isHashable`).
    """
    if isinstance(value, str):
        return value or None
    number = as_finite_float(value)  # None for bools, other types, NaN, inf, huge ints
    if number is None or number == 0:
        return None
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    return _js_number(value)


# -- vectorised ---------------------------------------------------------------------------------


def _as_unicode_array(
    values: Sequence[str] | npt.NDArray[Any],
) -> tuple[npt.NDArray[Any], list[str] | None]:
    """`values` as a NumPy `<U` array, plus the original strings when some need the slow path."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "U":
            return values.reshape(-1), None
        if values.dtype.kind in "iu":
            return values.reshape(-1).astype(np.str_), None
        values = values.reshape(-1).tolist()
    items = values if isinstance(values, list) else list(values)
    try:
        joined = "".join(items)  # also checks that every item is a string, in C
    except TypeError:
        bad = next(i for i, item in enumerate(items) if not isinstance(item, str))
        raise SpecValidationError(
            f"values[{bad}] is {type(items[bad]).__name__}; hash strings (convert ids with "
            "hash_key(), or pass an integer NumPy array)",
            details={"field": f"values[{bad}]"},
        ) from None
    # NumPy drops trailing NULs; only then are the original strings needed to find those rows
    return np.asarray(items, dtype=np.str_), (items if "\x00" in joined else None)


def _units(arr: npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
    width = arr.dtype.itemsize // 4
    if width == 0 or arr.size == 0:
        return np.zeros((arr.size, 0), dtype=np.uint32)
    return np.ascontiguousarray(arr).view(np.uint32).reshape(arr.size, width)


def _fnv_rows(
    units: npt.NDArray[np.uint32],
    lengths: npt.NDArray[np.int64],
    start: np.uint32,
    suffix: Sequence[int] = (),
) -> npt.NDArray[np.uint32]:
    """FNV-1a over each row's first `lengths[i]` code units (then `suffix`), from state `start`."""
    prime = np.uint32(FNV_PRIME)
    n = units.shape[0]
    h = np.full(n, start, dtype=np.uint32)
    if n == 0:
        return h
    min_len = int(lengths.min())
    max_len = int(lengths.max())
    cols = np.ascontiguousarray(units[:, :max_len].T)  # one pass; then every column is contiguous
    for j in range(min_len):
        np.bitwise_xor(h, cols[j], out=h)
        np.multiply(h, prime, out=h)
    if max_len > min_len:
        tmp = np.empty_like(h)
        active = np.empty(n, dtype=bool)
        for j in range(min_len, max_len):
            np.greater(lengths, j, out=active)
            np.bitwise_xor(h, cols[j], out=tmp)
            np.multiply(tmp, prime, out=tmp)
            np.copyto(h, tmp, where=active)
    for unit in suffix:
        np.bitwise_xor(h, np.uint32(unit), out=h)
        np.multiply(h, prime, out=h)
    return h


def _fnv_decimal(
    h1: npt.NDArray[np.uint32], start: npt.NDArray[np.uint32] | None = None
) -> npt.NDArray[np.uint32]:
    """FNV-1a of each number's decimal string (`fnv1a32(str(n))`), without making strings.

    `start` continues given states instead of starting from the offset basis.
    """
    prime = np.uint32(FNV_PRIME)
    if start is None:
        h = np.full(h1.shape, np.uint32(FNV_OFFSET_BASIS), dtype=np.uint32)
    else:
        h = start.copy()
    if h1.size == 0:
        return h
    smallest = int(h1.min())
    quotient = np.empty_like(h1)
    digit = np.empty_like(h1)
    active = np.empty(h1.shape, dtype=bool)
    previous: npt.NDArray[np.uint32] | None = None  # h1 // 10**(k+1)
    for k in range(9, -1, -1):
        p = np.uint32(10**k)
        np.floor_divide(h1, p, out=quotient)
        if previous is None:
            np.copyto(digit, quotient)
            previous = np.empty_like(h1)
        else:
            np.multiply(previous, np.uint32(10), out=digit)
            np.subtract(quotient, digit, out=digit)
        previous, quotient = quotient, previous
        digit += np.uint32(48)
        np.bitwise_xor(digit, h, out=digit)
        np.multiply(digit, prime, out=digit)
        if k == 0 or smallest >= int(p):
            h, digit = digit, h
        else:
            np.greater_equal(h1, p, out=active)
            np.copyto(h, digit, where=active)
    return h


def _fnv_of_decimal(h1: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """`fnv1a32(str(n))` for every `n`, the leading digits looked up in the 100,000-entry table.

    `n // 100000` indexes the table (the state after those digits); the last five digits,
    zero-padded, are hashed column by column. Numbers below 100,000 are looked up whole.
    """
    prime = np.uint32(FNV_PRIME)
    if h1.size == 0:
        return h1.copy()
    table: npt.NDArray[np.uint32] = np.frombuffer(_decimal_states(), dtype=np.uint32)
    high = h1 // np.uint32(100_000)
    low = h1 - high * np.uint32(100_000)
    h: npt.NDArray[np.uint32] = table[high]
    quotient = np.empty_like(h1)
    previous = np.empty_like(h1)
    digit = np.empty_like(h1)
    for k in range(4, -1, -1):
        np.floor_divide(low, np.uint32(10**k), out=quotient)
        if k == 4:
            np.copyto(digit, quotient)
        else:
            np.multiply(previous, np.uint32(10), out=digit)
            np.subtract(quotient, digit, out=digit)
        previous, quotient = quotient, previous
        digit += np.uint32(48)
        np.bitwise_xor(h, digit, out=h)
        np.multiply(h, prime, out=h)
    small = h1 < np.uint32(100_000)
    if small.any():
        h[small] = table[h1[small]]
    return h


def _surrogate_rows(units: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:
    if units.size == 0 or units.max() <= 0xFFFF:  # one contiguous pass for the common case
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(units.max(axis=1) > 0xFFFF)


def _prepare(
    values: Sequence[str] | npt.NDArray[Any],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], list[str], npt.NDArray[np.intp]]:
    """Code units, lengths, and the rows (with their text) that need the scalar path."""
    arr, items = _as_unicode_array(values)
    units = _units(arr)
    lengths = np.char.str_len(arr).astype(np.int64) if arr.size else np.zeros(0, np.int64)
    odd = _surrogate_rows(units)  # non-BMP characters: two UTF-16 code units each
    if items is not None:
        true_lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        odd = np.union1d(odd, np.flatnonzero(true_lengths != lengths))
        texts = [items[i] for i in odd.tolist()]
    else:
        texts = [str(s) for s in arr[odd]]
    return units, lengths, texts, odd


def fnv1a32_many(values: Sequence[str] | npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
    """`fnv1a32` of every string at once.

    Args:
        values: A sequence of strings, a NumPy `<U` array, or an integer array (hashed as
            decimal strings).

    Returns:
        A `uint32` array, one hash per value.

    Raises:
        SpecValidationError: A value is not a string.
    """
    units, lengths, texts, odd = _prepare(values)
    out = np.empty(units.shape[0], dtype=np.uint32)
    for lo in range(0, units.shape[0], _CHUNK):
        hi = lo + _CHUNK
        out[lo:hi] = _fnv_rows(units[lo:hi], lengths[lo:hi], np.uint32(FNV_OFFSET_BASIS))
    for i, text in zip(odd.tolist(), texts, strict=True):
        out[i] = fnv1a32(text)
    return out


def _buckets(
    seed: str, version: int, values: Sequence[str] | npt.NDArray[Any]
) -> npt.NDArray[np.int64]:
    """Integer buckets (`k` of `k / 10000` or `k / 1000`) of every value."""
    version = _check_version(version)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return _int_buckets(seed, version, values.reshape(-1))
    units, lengths, texts, odd = _prepare(values)
    n = units.shape[0]
    out = np.empty(n, dtype=np.int64)
    if version == 2:
        start = np.uint32(fnv1a32(seed))  # the state after the seed prefix is the same for all
        for lo in range(0, n, _CHUNK):
            hi = lo + _CHUNK
            h1 = _fnv_rows(units[lo:hi], lengths[lo:hi], start)
            out[lo:hi] = _fnv_of_decimal(h1) % np.uint32(10000)
        for i, text in zip(odd.tolist(), texts, strict=True):
            out[i] = fnv1a32(str(fnv1a32(seed + text))) % 10000
    else:
        suffix = list(memoryview(seed.encode("utf-16-le", "surrogatepass")).cast("H"))
        for lo in range(0, n, _CHUNK):
            hi = lo + _CHUNK
            h = _fnv_rows(units[lo:hi], lengths[lo:hi], np.uint32(FNV_OFFSET_BASIS), suffix)
            out[lo:hi] = h % np.uint32(1000)
        for i, text in zip(odd.tolist(), texts, strict=True):
            out[i] = fnv1a32(text + seed) % 1000
    return out


def _fnv_digits(h: npt.NDArray[np.uint32], magnitude: npt.NDArray[np.uint64]) -> None:
    """Continue FNV-1a states `h` (in place) over the decimal digits of `magnitude`."""
    prime = np.uint32(FNV_PRIME)
    if magnitude.size == 0:
        return
    smallest, largest = int(magnitude.min()), int(magnitude.max())
    digit64 = np.empty_like(magnitude)
    digit = np.empty(magnitude.shape, dtype=np.uint32)
    tmp = np.empty_like(h)
    active = np.empty(magnitude.shape, dtype=bool)
    for k in range(19, -1, -1):
        p = np.uint64(10**k)
        if k and largest < int(p):
            continue  # no value has this many digits
        np.floor_divide(magnitude, p, out=digit64)
        np.remainder(digit64, np.uint64(10), out=digit64)
        np.copyto(digit, digit64, casting="unsafe")
        digit += np.uint32(48)
        np.bitwise_xor(digit, h, out=tmp)
        np.multiply(tmp, prime, out=tmp)
        if k == 0 or smallest >= int(p):
            np.copyto(h, tmp)
        else:
            np.greater_equal(magnitude, p, out=active)
            np.copyto(h, tmp, where=active)


def _int_buckets(seed: str, version: int, values: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Buckets of integer ids, hashed as their decimal strings without making strings."""
    prime = np.uint32(FNV_PRIME)
    n = values.shape[0]
    out = np.empty(n, dtype=np.int64)
    suffix = list(memoryview(seed.encode("utf-16-le", "surrogatepass")).cast("H"))
    for lo in range(0, n, _CHUNK):
        chunk = values[lo : lo + _CHUNK]
        if chunk.dtype.kind == "i":
            negative = chunk < 0
            # |v| as uint64, exact for the most negative int64 too
            magnitude = np.where(negative, -(chunk + 1), chunk).astype(np.uint64)
            magnitude[negative] += np.uint64(1)
        else:
            negative = np.zeros(chunk.shape, dtype=bool)
            magnitude = chunk.astype(np.uint64)
        start = fnv1a32(seed) if version == 2 else FNV_OFFSET_BASIS
        h = np.full(chunk.shape, np.uint32(start), dtype=np.uint32)
        if negative.any():
            signed = (h ^ np.uint32(ord("-"))) * prime
            np.copyto(h, signed, where=negative)
        if magnitude.size and int(magnitude.max()) < 2**32:
            h = _fnv_decimal(magnitude.astype(np.uint32), h)  # 32-bit division is faster
        else:
            _fnv_digits(h, magnitude)
        if version == 2:
            out[lo : lo + _CHUNK] = _fnv_of_decimal(h) % np.uint32(10000)
        else:
            for unit in suffix:
                np.bitwise_xor(h, np.uint32(unit), out=h)
                np.multiply(h, prime, out=h)
            out[lo : lo + _CHUNK] = h % np.uint32(1000)
    # JavaScript (and every GrowthBook SDK) prints integers beyond 2**53 as the nearest double
    huge = np.flatnonzero((values >= 2**53) | (values <= -(2**53)))
    for i in huge.tolist():
        text = hash_key(int(values[i])) or ""
        if version == 2:
            out[i] = fnv1a32_decimal(fnv1a32(seed + text)) % 10000
        else:
            out[i] = fnv1a32(text + seed) % 1000
    return out


def bucket_hash_many(
    seed: str, values: Sequence[str] | npt.NDArray[Any], version: int = 2
) -> npt.NDArray[np.float64]:
    """`bucket_hash(seed, v, version)` for every value at once, identical to the scalar form.

    Args:
        seed: The experiment's seed.
        values: Strings (a sequence or a NumPy `<U` array) or an integer array.
        version: Hash version, 1 or 2.

    Returns:
        A `float64` array of buckets in `[0, 1)`.

    Raises:
        SpecValidationError: `version` is not 1 or 2, or a value is not a string.
    """
    scale = 10000.0 if _check_version(version) == 2 else 1000.0
    return _buckets(seed, version, values) / scale
