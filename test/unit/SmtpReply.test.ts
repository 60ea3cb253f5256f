import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as fc from "fast-check"
import { SmtpPermanentError, SmtpProtocolError, SmtpTransientError } from "../../src/SmtpError.js"
import * as SmtpReply from "../../src/SmtpReply.js"
import { bytesWithCuts, splitAt } from "../support/helpers/bytes.js"

const parseOk = (text: string): SmtpReply.SmtpReply => Either.getOrThrow(SmtpReply.parse(text))

const parseError = (text: string): SmtpProtocolError => {
  const result = SmtpReply.parse(text)
  if (Either.isRight(result)) throw new Error(`expected a protocol error, got ${JSON.stringify(result.right)}`)
  return result.left
}

/** Feeds chunks into a fresh parser and collects every reply and the error, if any. */
const feed = (chunks: ReadonlyArray<Uint8Array>, options?: SmtpReply.ParserOptions) => {
  const parser = SmtpReply.makeParser(options)
  const replies: Array<SmtpReply.SmtpReply> = []
  let error: SmtpProtocolError | undefined
  for (const chunk of chunks) {
    const step = parser.push(chunk)
    replies.push(...step.replies)
    if (step.error !== undefined) {
      error = step.error
      break
    }
  }
  return { replies, error, parser }
}

const POSTFIX_EHLO = "250-mail.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n" +
  "250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
const GMAIL_EHLO = "250-smtp.gmail.com at your service, [203.0.113.7]\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n" +
  "250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n250-ENHANCEDSTATUSCODES\r\n" +
  "250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"

describe("SmtpReply.parse", () => {
  it("reads a Postfix multi-line EHLO reply line by line", () => {
    const reply = parseOk(POSTFIX_EHLO)
    expect(reply.code).toBe(250)
    expect(reply.enhancedCode).toBeUndefined()
    expect(reply.lines).toEqual([
      "mail.example.org",
      "PIPELINING",
      "SIZE 10240000",
      "VRFY",
      "ETRN",
      "STARTTLS",
      "ENHANCEDSTATUSCODES",
      "8BITMIME",
      "DSN",
      "SMTPUTF8",
      "CHUNKING"
    ])
  })

  it("reads a Gmail-style EHLO reply", () => {
    const reply = parseOk(GMAIL_EHLO)
    expect(reply.lines[0]).toBe("smtp.gmail.com at your service, [203.0.113.7]")
    expect(reply.lines).toHaveLength(8)
  })

  it("reads Exim's greeting and an Exchange-style reply with enhanced codes on every line", () => {
    expect(parseOk("220 mx.example.net ESMTP Exim 4.96 Mon, 23 Nov 2026 10:00:00 +0000\r\n").text)
      .toBe("mx.example.net ESMTP Exim 4.96 Mon, 23 Nov 2026 10:00:00 +0000")
    const exchange = parseOk(
      "550-5.7.1 Unable to relay for bob@example.com\r\n550 5.7.1 Contact your administrator\r\n"
    )
    expect(exchange.enhancedCode).toBe("5.7.1")
    expect(exchange.lines).toEqual(["Unable to relay for bob@example.com", "Contact your administrator"])
  })

  it("takes the enhanced status code of a Postfix rejection", () => {
    const reply = parseOk("550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown\r\n")
    expect(reply.enhancedCode).toBe("5.1.1")
    expect(reply.text).toBe("<nobody@example.org>: Recipient address rejected: User unknown")
  })

  it("ignores a dotted number whose class does not match the reply code", () => {
    const reply = parseOk("250 4.2.0 is not an enhanced code for a 250\r\n")
    expect(reply.enhancedCode).toBeUndefined()
    expect(reply.text).toBe("4.2.0 is not an enhanced code for a 250")
  })

  it("reads an enhanced status code only in its exact form", () => {
    expect(parseOk("250 2.1.0").enhancedCode).toBe("2.1.0")
    expect(parseOk("250 2.1.0").lines).toEqual([""])
    expect(parseOk("550 5.123.456 Odd but valid").enhancedCode).toBe("5.123.456")
    for (
      const text of ["550 5.1.1234 x", "550 5.1 x", "550 5..1 x", "550 5.1.1x", "354 3.0.0 Go ahead", "550 .1.1 x"]
    ) {
      expect(parseOk(text).enhancedCode).toBeUndefined()
      expect(parseOk(text).text).toBe(text.slice(4))
    }
  })

  it("property: the enhanced status code is what the RFC 3463 grammar matches", () => {
    const grammar = /^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)/
    const piece = fc.constantFrom("2", "4", "5", "3", ".", "1", "12", "1234", " ", "x", "")
    fc.assert(
      fc.property(fc.constantFrom(250, 354, 451, 550), fc.array(piece, { maxLength: 8 }), (code, pieces) => {
        const text = pieces.join("")
        const match = grammar.exec(text)
        const expected = match !== null && match[1] === String(code)[0] ? match[0].trimEnd() : undefined
        expect(parseOk(`${code} ${text}`).enhancedCode).toBe(expected)
      }),
      { numRuns: 3000 }
    )
  })

  it("accepts a code alone, and a hyphen line with no text", () => {
    expect(parseOk("250\r\n").lines).toEqual([""])
    expect(parseOk("250-\r\n250 done\r\n").lines).toEqual(["", "done"])
  })

  it("tolerates bare LF line ends", () => {
    expect(parseOk("250-first\n250 second\n").lines).toEqual(["first", "second"])
  })

  it("decodes UTF-8 text", () => {
    expect(parseOk("250 2.1.5 Empfänger ok\r\n").text).toBe("Empfänger ok")
  })

  it("fails on a code that changes between lines", () => {
    expect(parseError("250-one\r\n251 two\r\n").reason).toContain("changed from 250 to 251")
  })

  it("fails on a non-numeric code, a code outside 200–599 and a bad separator", () => {
    expect(parseError("2x0 hello\r\n").reason).toContain("three-digit code")
    expect(parseError("HTTP/1.1 400 Bad Request\r\n").reason).toContain("three-digit code")
    expect(parseError("199 too low\r\n").reason).toContain("outside 200–599")
    expect(parseError("600 too high\r\n").reason).toContain("outside 200–599")
    expect(parseError("250:colon\r\n").reason).toContain("space or a hyphen")
  })

  it("fails on an incomplete reply and on two replies", () => {
    expect(parseError("250-more to come\r\n").reason).toContain("incomplete")
    expect(parseError("250 one\r\n250 two\r\n").reason).toContain("exactly one reply")
  })

  it("classifies replies with Poco's four predicates", () => {
    const classes = (code: number) => {
      const reply = parseOk(`${code} x`)
      return [
        SmtpReply.isPositiveCompletion(reply),
        SmtpReply.isPositiveIntermediate(reply),
        SmtpReply.isTransientNegative(reply),
        SmtpReply.isPermanentNegative(reply)
      ]
    }
    expect(classes(250)).toEqual([true, false, false, false])
    expect(classes(354)).toEqual([false, true, false, false])
    expect(classes(451)).toEqual([false, false, true, false])
    expect(classes(554)).toEqual([false, false, false, true])
    expect([221, 334, 421, 535].map((code) => SmtpReply.isTransientNegative(code))).toEqual([false, false, true, false])
    expect(SmtpReply.isPositiveCompletion(199)).toBe(false)
  })

  it("turns negative replies into the matching error, with the verb and no arguments", () => {
    const transient = SmtpReply.toError(parseOk("452 4.5.3 Too many recipients"), "RCPT")
    expect(transient).toBeInstanceOf(SmtpTransientError)
    expect(transient).toMatchObject({
      command: "RCPT",
      code: 452,
      enhancedCode: "4.5.3",
      lines: ["Too many recipients"]
    })
    const permanent = SmtpReply.toError(parseOk("554 5.7.1 Rejected"), "DATA")
    expect(permanent).toBeInstanceOf(SmtpPermanentError)
    expect(permanent.message).toBe("Permanent failure to DATA: 554 5.7.1 Rejected")
  })

  it("writes a reply back in wire form that parses to the same reply", () => {
    for (const text of [POSTFIX_EHLO, GMAIL_EHLO, "550-5.7.1 a\r\n550 5.7.1 b\r\n", "250\r\n"]) {
      const reply = parseOk(text)
      expect(parseOk(SmtpReply.format(reply))).toEqual(reply)
    }
  })
})

describe("SmtpReply.makeParser", () => {
  it("returns replies as they complete, across chunks", () => {
    const parser = SmtpReply.makeParser()
    expect(parser.push(Buffer.from("220 mx ready\r\n250-mx\r\n250-PIPE")).replies.map((r) => r.code)).toEqual([220])
    expect(parser.bufferedLength).toBeGreaterThan(0)
    const step = parser.push(Buffer.from("LINING\r\n250 SIZE 100\r\n"))
    expect(step.replies.map((r) => r.lines)).toEqual([["mx", "PIPELINING", "SIZE 100"]])
    expect(parser.bufferedLength).toBe(0)
  })

  it("keeps the replies before a violation and stays failed afterwards", () => {
    const parser = SmtpReply.makeParser()
    const step = parser.push(Buffer.from("250 ok\r\nnot smtp\r\n"))
    expect(step.replies).toHaveLength(1)
    expect(step.error).toBeInstanceOf(SmtpProtocolError)
    expect(parser.push(Buffer.from("250 ok\r\n"))).toEqual({ replies: [], error: step.error })
  })

  it("fails a line over 8 KiB even before its end arrives", () => {
    const parser = SmtpReply.makeParser()
    expect(parser.push(Buffer.from(`250 ${"a".repeat(8000)}`)).error).toBeUndefined()
    expect(parser.push(Buffer.from("a".repeat(500))).error?.reason).toContain("longer than 8192 octets")
    expect(parser.bufferedLength).toBe(0)
  })

  it("fails an unending multi-line reply at 1,000 lines", () => {
    const { replies, error } = feed([Buffer.from("250-x\r\n".repeat(1001))])
    expect(replies).toHaveLength(0)
    expect(error?.reason).toContain("more than 1000 lines")
    expect(feed([Buffer.from(`${"250-x\r\n".repeat(999)}250 x\r\n`)]).replies[0]?.lines).toHaveLength(1000)
  })

  it("fails a reply over 64 KiB", () => {
    const line = `250-${"b".repeat(996)}\r\n`
    expect(feed([Buffer.from(line.repeat(70))]).error?.reason).toContain("longer than 65536 octets")
  })

  it("property: the replies do not depend on how the bytes were chunked", () => {
    const replyText = fc.tuple(
      fc.integer({ min: 200, max: 599 }),
      fc.array(fc.string({ unit: "grapheme-ascii", maxLength: 30 }).map((s) => s.replace(/[\r\n]/g, "")), {
        minLength: 1,
        maxLength: 5
      }),
      fc.constantFrom("\r\n", "\n")
    ).map(([code, lines, end]) =>
      lines.map((l, i) => `${code}${i === lines.length - 1 ? " " : "-"}${l}${end}`).join("")
    )
    fc.assert(
      fc.property(
        fc.array(replyText, { maxLength: 6 }).map((replies) => Buffer.from(replies.join(""))).chain((bytes) =>
          bytesWithCuts(fc.constant(bytes))
        ),
        ([bytes, cuts]) => {
          const whole = feed([bytes])
          const split = feed(splitAt(bytes, cuts))
          expect(whole.error).toBeUndefined()
          expect(split.replies).toEqual(whole.replies)
          expect(split.parser.bufferedLength).toBe(0)
        }
      ),
      { numRuns: 1000 }
    )
  })

  it("property: arbitrary bytes never make it throw, and it never holds more than its limits", () => {
    const options = { maxLineLength: 64, maxLines: 8, maxReplyLength: 256 }
    const noise = fc.oneof(
      fc.uint8Array({ maxLength: 600 }),
      fc.array(fc.constantFrom("250-", "250 ", "354 ", "\r\n", "\n", "x".repeat(40), "5", "\r"), { maxLength: 60 })
        .map((parts) => Buffer.from(parts.join("")))
    )
    fc.assert(
      fc.property(bytesWithCuts(noise), ([bytes, cuts]) => {
        const parser = SmtpReply.makeParser(options)
        for (const chunk of splitAt(bytes, cuts)) {
          const step = parser.push(chunk)
          for (const reply of step.replies) {
            expect(reply.code).toBeGreaterThanOrEqual(200)
            expect(reply.code).toBeLessThanOrEqual(599)
            expect(reply.lines.length).toBeLessThanOrEqual(options.maxLines)
          }
          // The bound: one reply's worth plus one line (and its line end) being read.
          expect(parser.bufferedLength).toBeLessThanOrEqual(options.maxReplyLength + options.maxLineLength + 2)
          if (step.error !== undefined) break
        }
      }),
      { numRuns: 3000 }
    )
  })
})
