import * as fc from "fast-check"

/** Bytes as a server would see them: `latin1` keeps every octet as one character. */
export const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("latin1")

/** Concatenates byte chunks. */
export const concat = (chunks: ReadonlyArray<Uint8Array>): Uint8Array => Buffer.concat(chunks)

/** Splits bytes at the given cut points (sorted, deduplicated, clamped), keeping empty chunks out. */
export const splitAt = (bytes: Uint8Array, cuts: ReadonlyArray<number>): Array<Uint8Array> => {
  const points = [...new Set(cuts.map((c) => Math.min(bytes.length, Math.max(0, c))))].sort((a, b) => a - b)
  const chunks: Array<Uint8Array> = []
  let start = 0
  for (const point of points) {
    if (point > start) chunks.push(bytes.subarray(start, point))
    start = Math.max(start, point)
  }
  if (start < bytes.length) chunks.push(bytes.subarray(start))
  return chunks
}

/** Bytes rich in what matters to SMTP framing (CR, LF, dot, NUL, 8-bit) mixed with arbitrary octets. */
export const smtpishBytes = (maxLength = 400): fc.Arbitrary<Uint8Array> =>
  fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom(0x0d, 0x0a, 0x2e) },
      { weight: 2, arbitrary: fc.constantFrom(0x41, 0x20, 0x00, 0xc3, 0xbc) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }
    ),
    { maxLength }
  ).map((values) => Uint8Array.from(values))

/** Any bytes together with cut points inside them. */
export const bytesWithCuts = (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<[Uint8Array, Array<number>]> =>
  bytes.chain((b) => fc.tuple(fc.constant(b), fc.array(fc.integer({ min: 0, max: b.length }), { maxLength: 12 })))
