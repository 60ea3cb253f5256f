import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as fc from "fast-check"
import * as BdatEncoder from "../../src/BdatEncoder.js"
import * as DataEncoder from "../../src/DataEncoder.js"
import * as SmtpCommand from "../../src/SmtpCommand.js"
import { bytesWithCuts, concat, latin1, smtpishBytes, splitAt } from "../support/helpers/bytes.js"

/** Frames the chunks and returns every BDAT chunk, or throws on an error. */
const frame = (chunks: ReadonlyArray<Uint8Array>, options?: BdatEncoder.Options) => {
  const encoder = BdatEncoder.make(options)
  const out: Array<BdatEncoder.Chunk> = []
  for (const chunk of chunks) out.push(...Either.getOrThrow(encoder.push(chunk)))
  out.push(Either.getOrThrow(encoder.end()))
  return out
}

const lineOf = (chunk: BdatEncoder.Chunk) => Either.getOrThrow(SmtpCommand.toLine(chunk.command))

/** What a server reassembles from BDAT chunks: the data of each, concatenated, checked against its announced size. */
const reassemble = (chunks: ReadonlyArray<BdatEncoder.Chunk>): string =>
  chunks.map((chunk) => {
    const data = concat(chunk.data)
    expect(lineOf(chunk)).toMatch(new RegExp(`^BDAT ${data.length}( LAST)?$`))
    return latin1(data)
  }).join("")

describe("BdatEncoder", () => {
  it("frames a small message as one chunk marked LAST, without dot-stuffing", () => {
    const chunks = frame([Buffer.from(".leading dot\nbare LF")])
    expect(chunks.map(lineOf)).toEqual(["BDAT 23 LAST"])
    expect(reassemble(chunks)).toBe(".leading dot\r\nbare LF\r\n")
  })

  it("cuts chunks once the least chunk size is gathered, and ends with LAST", () => {
    const chunks = frame(
      [Buffer.from("a".repeat(60) + "\r\n"), Buffer.from("b".repeat(60) + "\r\n"), Buffer.from("c")],
      {
        chunkSize: 100
      }
    )
    expect(chunks.map(lineOf)).toEqual(["BDAT 124", "BDAT 3 LAST"])
  })

  it("ends with BDAT 0 LAST when the last chunk was already cut", () => {
    const chunks = frame([Buffer.from("abc\r\n")], { chunkSize: 5 })
    expect(chunks.map(lineOf)).toEqual(["BDAT 5", "BDAT 0 LAST"])
  })

  it("passes a binary body through untouched", () => {
    const binary = Uint8Array.from([0x00, 0x0d, 0x2e, 0x0a, 0xff, 0x0d])
    const chunks = frame([binary], { binary: true })
    expect(chunks.map(lineOf)).toEqual(["BDAT 6 LAST"])
    expect(concat(chunks[0]!.data)).toEqual(Buffer.from(binary))
  })

  it("applies the 998-octet line rule to text bodies", () => {
    const encoder = BdatEncoder.make()
    expect(Either.isLeft(encoder.push(Buffer.from("x".repeat(999))))).toBe(true)
    expect(Either.isRight(BdatEncoder.make({ allowLongLines: true }).push(Buffer.from("x".repeat(999))))).toBe(true)
  })

  it("property: a message arrives the same over BDAT as over DATA, whatever the chunking", () => {
    fc.assert(
      fc.property(bytesWithCuts(smtpishBytes()), fc.integer({ min: 1, max: 64 }), ([bytes, cuts], chunkSize) => {
        const overBdat = reassemble(frame(splitAt(bytes, cuts), { chunkSize, allowLongLines: true }))
        const overData = latin1(Either.getOrThrow(DataEncoder.encode(bytes, { allowLongLines: true })))
        const unstuffed = `\r\n${overData}`.slice(2, -3).split("\r\n").map((l) => l.startsWith(".") ? l.slice(1) : l)
        expect(overBdat).toBe(unstuffed.join("\r\n"))
      }),
      { numRuns: 2000 }
    )
  })
})
