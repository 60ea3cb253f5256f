import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as fc from "fast-check"
import * as DataEncoder from "../../src/DataEncoder.js"
import { InvalidInputError } from "../../src/SmtpError.js"
import { bytesWithCuts, concat, latin1, smtpishBytes, splitAt } from "../support/helpers/bytes.js"

/** Encodes the chunks one by one, as a stream would, and returns everything written, or the error. */
const encodeChunks = (
  chunks: ReadonlyArray<Uint8Array>,
  options?: DataEncoder.Options
): Either.Either<Uint8Array, InvalidInputError> => {
  const encoder = DataEncoder.make(options)
  const out: Array<Uint8Array> = []
  for (const chunk of chunks) {
    const step = encoder.push(chunk)
    if (Either.isLeft(step)) return Either.left(step.left)
    out.push(step.right)
  }
  return Either.map(encoder.end(), (tail) => concat([...out, tail]))
}

const encodeText = (text: string, options?: DataEncoder.Options): string =>
  latin1(Either.getOrThrow(encodeChunks([Buffer.from(text, "latin1")], options)))

/**
 * What an RFC 5321 server does with the DATA stream: the message ends at the first CRLF "." CRLF (the stream starts
 * at a line start, right after the 354), and a leading dot is removed from every line.
 */
const serverReceive = (wire: string): { readonly message: string; readonly afterEnd: string } | undefined => {
  const stream = `\r\n${wire}`
  const end = stream.indexOf("\r\n.\r\n")
  if (end === -1) return undefined
  const body = stream.slice(2, end + 2)
  const message = body.split("\r\n").map((line) => line.startsWith(".") ? line.slice(1) : line).join("\r\n")
  return { message, afterEnd: stream.slice(end + 5) }
}

/** The input with every CRLF, bare CR and bare LF made CRLF, and a final CRLF when it did not end with a line end. */
const canonical = (input: string): string => {
  const lines = input.replace(/\r\n|\r|\n/g, "\n")
  return lines === "" || lines.endsWith("\n") ? lines.replace(/\n/g, "\r\n") : `${lines}\n`.replace(/\n/g, "\r\n")
}

describe("DataEncoder", () => {
  it("dot-stuffs every line start, the first included", () => {
    expect(encodeText(".hidden\r\nplain\r\n..two\r\n")).toBe("..hidden\r\nplain\r\n...two\r\n.\r\n")
  })

  it("turns bare LF and bare CR into CRLF", () => {
    expect(encodeText("a\nb\rc\r\nd")).toBe("a\r\nb\r\nc\r\nd\r\n.\r\n")
  })

  it("ends an empty message with the terminator alone", () => {
    expect(encodeText("")).toBe(".\r\n")
  })

  it("closes a last line that had no line end before the terminator", () => {
    expect(encodeText("no newline")).toBe("no newline\r\n.\r\n")
  })

  it("a bare CR before a dot cannot end the message", () => {
    const wire = encodeText("one\r.\rtwo\r\n")
    expect(wire).toBe("one\r\n..\r\ntwo\r\n.\r\n")
    expect(serverReceive(wire)?.message).toBe("one\r\n.\r\ntwo\r\n")
  })

  it("the SMTP smuggling sequences arrive inside one intact message", () => {
    const smuggled = "Subject: a\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n.\r\rRCPT TO:<y@z>\r\n.\nDATA\r\nend\r\n"
    const received = serverReceive(encodeText(smuggled))
    expect(received?.message).toBe(canonical(smuggled))
    expect(received?.afterEnd).toBe("")
  })

  it("a CR at the end of one chunk and an LF at the start of the next make one line end", () => {
    const wire = Either.getOrThrow(encodeChunks([Buffer.from("a\r"), Buffer.from("\nb\r"), Buffer.from(".c")]))
    expect(latin1(wire)).toBe("a\r\nb\r\n..c\r\n.\r\n")
  })

  it("passes a chunk that needs no change through without copying it", () => {
    const chunk = Buffer.from("already\r\ncanonical\r\n")
    const encoder = DataEncoder.make()
    expect(Either.getOrThrow(encoder.push(chunk))).toBe(chunk)
  })

  it("fails a line over 998 octets before the terminator, naming the line", () => {
    const encoder = DataEncoder.make()
    expect(Either.isRight(encoder.push(Buffer.from(`ok\r\n${"x".repeat(998)}\r\n`)))).toBe(true)
    const step = encoder.push(Buffer.from(`${"y".repeat(999)}\r\n`))
    expect(Either.isLeft(step)).toBe(true)
    const error = Either.getLeft(step).pipe((o) => o._tag === "Some" ? o.value : undefined)
    expect(error).toBeInstanceOf(InvalidInputError)
    expect(error?.message).toContain("line 3 is longer than 998 octets")
    // A stopped encoder stays stopped: the end of data cannot be produced after the error.
    expect(Either.isLeft(encoder.end())).toBe(true)
  })

  it("counts a long line across chunks", () => {
    const chunks = Array.from({ length: 10 }, () => Buffer.from("z".repeat(100)))
    expect(Either.isLeft(encodeChunks(chunks))).toBe(true)
    expect(Either.isRight(encodeChunks(chunks.slice(0, 9)))).toBe(true)
  })

  it("lets long lines through when the user allows them", () => {
    const long = "x".repeat(5000)
    expect(encodeText(long, { allowLongLines: true })).toBe(`${long}\r\n.\r\n`)
  })

  it("property: for any bytes and any chunking, the server receives exactly the canonical input", () => {
    fc.assert(
      fc.property(bytesWithCuts(smtpishBytes()), ([bytes, cuts]) => {
        const wire = latin1(Either.getOrThrow(encodeChunks(splitAt(bytes, cuts), { allowLongLines: true })))
        const received = serverReceive(wire)
        expect(received?.message).toBe(canonical(latin1(bytes)))
        expect(received?.afterEnd).toBe("")
        // No bare CR or LF at all, so even a lenient server that ends lines at LF sees the same lines.
        expect(/\r(?!\n)|(?<!\r)\n/.test(wire)).toBe(false)
      }),
      { numRuns: 3000 }
    )
  })

  it("property: the output does not depend on how the input was chunked", () => {
    fc.assert(
      fc.property(bytesWithCuts(smtpishBytes()), ([bytes, cuts]) => {
        const whole = encodeChunks([bytes], { allowLongLines: true })
        const split = encodeChunks(splitAt(bytes, cuts), { allowLongLines: true })
        expect(latin1(Either.getOrThrow(split))).toBe(latin1(Either.getOrThrow(whole)))
      }),
      { numRuns: 2000 }
    )
  })

  it("property: a message fails exactly when one of its lines is over 998 octets", () => {
    const lineLengths = fc.array(fc.integer({ min: 0, max: 1100 }), { minLength: 1, maxLength: 6 })
    const ends = fc.array(fc.constantFrom("\r\n", "\n", "\r"), { minLength: 6, maxLength: 6 })
    fc.assert(
      fc.property(lineLengths, ends, fc.array(fc.nat(), { maxLength: 8 }), (lengths, lineEnds, cuts) => {
        const text = lengths.map((length, i) => "a".repeat(length) + lineEnds[i]).join("")
        const bytes = Buffer.from(text, "latin1")
        const result = encodeChunks(splitAt(bytes, cuts.map((c) => c % (bytes.length + 1))))
        expect(Either.isLeft(result)).toBe(lengths.some((length) => length > 998))
      }),
      { numRuns: 500 }
    )
  })
})
