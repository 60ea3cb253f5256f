import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import { pipe } from "effect/Function"
import * as Option from "effect/Option"
import * as Capabilities from "../../src/Capabilities.js"
import * as SmtpReply from "../../src/SmtpReply.js"

const fromText = (text: string) => Capabilities.fromReply(Either.getOrThrow(SmtpReply.parse(text)))

const postfix = fromText(
  "250-mail.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n" +
    "250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n" +
    "250-SMTPUTF8\r\n250-REQUIRETLS\r\n250-BINARYMIME\r\n250 CHUNKING\r\n"
)

describe("Capabilities", () => {
  it("keeps the greeting line and every keyword in server order", () => {
    expect(postfix.greeting).toBe("mail.example.org")
    expect(postfix.entries.map((e) => e.keyword)).toEqual([
      "PIPELINING",
      "SIZE",
      "VRFY",
      "ETRN",
      "STARTTLS",
      "AUTH",
      "AUTH",
      "ENHANCEDSTATUSCODES",
      "8BITMIME",
      "DSN",
      "SMTPUTF8",
      "REQUIRETLS",
      "BINARYMIME",
      "CHUNKING"
    ])
    expect(postfix.entries[1]).toEqual({ keyword: "SIZE", parameters: ["10240000"] })
  })

  it("matches keywords without regard to case", () => {
    const caps = fromText("250-mx\r\n250-pipelining\r\n250 Size 100\r\n")
    expect(Capabilities.has(caps, "PIPELINING")).toBe(true)
    expect(Capabilities.has(caps, "Pipelining")).toBe(true)
    expect(pipe(caps, Capabilities.has("size"))).toBe(true)
    expect(Capabilities.has(caps, "CHUNKING")).toBe(false)
  })

  it("answers the typed accessors", () => {
    expect(Capabilities.sizeLimit(postfix)).toEqual(Option.some(10240000))
    expect(Capabilities.pipelining(postfix)).toBe(true)
    expect(Capabilities.chunking(postfix)).toBe(true)
    expect(Capabilities.binaryMime(postfix)).toBe(true)
    expect(Capabilities.eightBitMime(postfix)).toBe(true)
    expect(Capabilities.smtpUtf8(postfix)).toBe(true)
    expect(Capabilities.dsn(postfix)).toBe(true)
    expect(Capabilities.enhancedStatusCodes(postfix)).toBe(true)
    expect(Capabilities.requireTls(postfix)).toBe(true)
    expect(Capabilities.startTls(postfix)).toBe(true)
    const bare = fromText("250 mx only\r\n")
    expect(
      [Capabilities.pipelining, Capabilities.chunking, Capabilities.startTls, Capabilities.dsn].map((f) => f(bare))
    ).toEqual([false, false, false, false])
    expect(Capabilities.authMechanisms(bare)).toEqual([])
  })

  it("merges the AUTH and legacy AUTH= lines into one mechanism list", () => {
    expect(Capabilities.authMechanisms(postfix)).toEqual(["PLAIN", "LOGIN"])
    const legacyOnly = fromText("250-mx\r\n250-AUTH=LOGIN\r\n250 AUTH login CRAM-MD5\r\n")
    expect(Capabilities.authMechanisms(legacyOnly)).toEqual(["LOGIN", "CRAM-MD5"])
  })

  it("reads SIZE without a value or with 0 as no fixed limit", () => {
    expect(Capabilities.sizeLimit(fromText("250-mx\r\n250 SIZE\r\n"))).toEqual(Option.none())
    expect(Capabilities.sizeLimit(fromText("250-mx\r\n250 SIZE 0\r\n"))).toEqual(Option.none())
    expect(Capabilities.sizeLimit(fromText("250-mx\r\n250 SIZE lots\r\n"))).toEqual(Option.none())
    expect(Capabilities.has(fromText("250-mx\r\n250 SIZE\r\n"), "SIZE")).toBe(true)
  })

  it("returns parameters for a keyword, or None", () => {
    const caps = fromText("250-mx\r\n250-XCLIENT NAME ADDR\r\n250 X-EXPS GSSAPI NTLM\r\n")
    expect(Capabilities.parameters(caps, "xclient")).toEqual(Option.some(["NAME", "ADDR"]))
    expect(Capabilities.parameters(caps, "X-EXPS")).toEqual(Option.some(["GSSAPI", "NTLM"]))
    expect(Capabilities.parameters(caps, "ETRN")).toEqual(Option.none())
  })

  it("skips lines that are not keywords instead of failing the session", () => {
    const caps = fromText("250-mx\r\n250-!!weird line\r\n250-\r\n250 8BITMIME\r\n")
    expect(caps.entries).toEqual([{ keyword: "8BITMIME", parameters: [] }])
  })

  it("has no capabilities for a HELO-only server", () => {
    expect(Capabilities.empty.entries).toEqual([])
    expect(Capabilities.has(Capabilities.empty, "PIPELINING")).toBe(false)
  })
})
