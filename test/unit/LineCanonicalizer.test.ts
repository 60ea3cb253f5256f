/**
 * The canonicalizer's two outputs agree: `pushInto` (into a buffer the caller owns and reuses, what the submission
 * engine streams through) writes exactly what `push` returns, within the room `maxOutput` promises.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import { LineCanonicalizer, maxOutput } from "../../src/internal/lineCanonicalizer.js"
import { InvalidInputError } from "../../src/SmtpError.js"
import { bytesWithCuts, latin1, smtpishBytes, splitAt } from "../support/helpers/bytes.js"

type Outcome = { readonly text: string } | { readonly failedAt: number }

/** Every chunk through `push`, then `end`. */
const viaPush = (chunks: ReadonlyArray<Uint8Array>, dotStuff: boolean, allowLongLines: boolean): Outcome => {
  const lines = new LineCanonicalizer({ dotStuff, allowLongLines })
  let text = ""
  for (const [i, chunk] of chunks.entries()) {
    const out = lines.push(chunk)
    if (out instanceof InvalidInputError) return { failedAt: i }
    text += latin1(out)
  }
  const close = lines.end()
  return close instanceof InvalidInputError ? { failedAt: chunks.length } : { text: text + latin1(close) }
}

/**
 * Every chunk through `pushInto`, into one target reused from `offset` each time: a target of exactly
 * `offset + maxOutput(n)` octets, so that an output longer than promised would be cut short and differ.
 */
const viaPushInto = (
  chunks: ReadonlyArray<Uint8Array>,
  dotStuff: boolean,
  allowLongLines: boolean,
  offset: number
): Outcome => {
  const lines = new LineCanonicalizer({ dotStuff, allowLongLines })
  let text = ""
  for (const [i, chunk] of chunks.entries()) {
    const target = Buffer.alloc(offset + maxOutput(chunk.length), 0xff)
    const end = lines.pushInto(chunk, target, offset)
    if (end instanceof InvalidInputError) return { failedAt: i }
    expect(target.subarray(0, offset).every((octet) => octet === 0xff)).toBe(true)
    text += latin1(target.subarray(offset, end))
  }
  const close = lines.end()
  return close instanceof InvalidInputError ? { failedAt: chunks.length } : { text: text + latin1(close) }
}

describe("LineCanonicalizer", () => {
  it("property: pushInto writes exactly what push returns, for any bytes, chunking and offset", () => {
    fc.assert(
      fc.property(
        bytesWithCuts(smtpishBytes()),
        fc.boolean(),
        fc.boolean(),
        fc.nat({ max: 64 }),
        ([bytes, cuts], dotStuff, allowLongLines, offset) => {
          const chunks = splitAt(bytes, cuts)
          expect(viaPushInto(chunks, dotStuff, allowLongLines, offset)).toEqual(
            viaPush(chunks, dotStuff, allowLongLines)
          )
        }
      ),
      { numRuns: 3000 }
    )
  })

  it("the worst case fills maxOutput exactly: the LF owed to a CR, then every octet doubled", () => {
    const lines = new LineCanonicalizer({ dotStuff: true, allowLongLines: false })
    expect(lines.push(Buffer.from("\r", "latin1"))).toBeInstanceOf(Uint8Array)
    // Each "." starts a line and is doubled, each bare LF becomes CRLF.
    const input = Buffer.from(".\n".repeat(25), "latin1")
    const target = Buffer.alloc(maxOutput(input.length))
    expect(lines.pushInto(input, target, 0)).toBe(maxOutput(input.length))
    expect(latin1(target)).toBe("\n" + "..\r\n".repeat(25))
  })

  it("pushInto fails on a line over 998 octets, and so does every later push", () => {
    const lines = new LineCanonicalizer({ dotStuff: true, allowLongLines: false })
    const target = Buffer.alloc(maxOutput(2000))
    expect(lines.pushInto(Buffer.alloc(998, 0x61), target, 0)).toBe(998)
    expect(lines.pushInto(Buffer.alloc(1, 0x61), target, 0)).toBeInstanceOf(InvalidInputError)
    expect(lines.pushInto(Buffer.from("\r\n"), target, 0)).toBeInstanceOf(InvalidInputError)
  })
})
