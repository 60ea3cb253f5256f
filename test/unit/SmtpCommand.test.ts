import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as fc from "fast-check"
import * as SmtpCommand from "../../src/SmtpCommand.js"
import { InvalidInputError } from "../../src/SmtpError.js"

const wire = (command: SmtpCommand.SmtpCommand): string =>
  Buffer.from(Either.getOrThrow(SmtpCommand.encode(command))).toString("utf8")

const rejection = (command: SmtpCommand.SmtpCommand): InvalidInputError => {
  const result = SmtpCommand.encode(command)
  if (Either.isRight(result)) throw new Error(`expected a rejection, got ${Buffer.from(result.right).toString()}`)
  return result.left
}

const secret = (text: string) => Redacted.make(new Uint8Array(Buffer.from(text)))

describe("SmtpCommand.encode", () => {
  it("encodes the greetings, converting an IDN host name to A-labels", () => {
    expect(wire(SmtpCommand.ehlo("client.example.org"))).toBe("EHLO client.example.org\r\n")
    expect(wire(SmtpCommand.helo("[192.0.2.1]"))).toBe("HELO [192.0.2.1]\r\n")
    expect(wire(SmtpCommand.lhlo("[IPv6:2001:db8::1]"))).toBe("LHLO [IPv6:2001:db8::1]\r\n")
    expect(wire(SmtpCommand.ehlo("bücher.example"))).toBe("EHLO xn--bcher-kva.example\r\n")
  })

  it("encodes MAIL with every parameter", () => {
    const command = SmtpCommand.mail("sender@example.org", {
      size: 12345,
      body: "8BITMIME",
      smtpUtf8: true,
      ret: "HDRS",
      envelopeId: "QQ314159+x=y",
      requireTls: true,
      auth: "e+e@example.org",
      extensions: { "MT-PRIORITY": "3", HOLDFOR: true }
    })
    expect(wire(command)).toBe(
      "MAIL FROM:<sender@example.org> SIZE=12345 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159+2Bx+3Dy " +
        "REQUIRETLS AUTH=e+2Be@example.org MT-PRIORITY=3 HOLDFOR\r\n"
    )
  })

  it("encodes the null reverse-path and AUTH=<>", () => {
    expect(wire(SmtpCommand.mail(""))).toBe("MAIL FROM:<>\r\n")
    expect(wire(SmtpCommand.mail("<>", { auth: "" }))).toBe("MAIL FROM:<> AUTH=<>\r\n")
  })

  it("encodes RCPT with DSN parameters, ORCPT as xtext or as utf-8-addr-xtext", () => {
    expect(
      wire(SmtpCommand.rcpt("<rcpt@example.org>", { notify: ["FAILURE", "DELAY"], originalRecipient: "a+b@x.org" }))
    )
      .toBe("RCPT TO:<rcpt@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+2Bb@x.org\r\n")
    expect(wire(SmtpCommand.rcpt("x@y.org", { notify: "NEVER" }))).toBe("RCPT TO:<x@y.org> NOTIFY=NEVER\r\n")
    expect(wire(SmtpCommand.rcpt("jörg@y.org", { originalRecipient: "jörg+1@y.org" })))
      .toBe("RCPT TO:<jörg@y.org> ORCPT=utf-8;jörg\\x{2B}1@y.org\r\n")
  })

  it("encodes the commands without arguments and those with optional ones", () => {
    expect([SmtpCommand.data, SmtpCommand.rset, SmtpCommand.quit, SmtpCommand.startTls].map(wire))
      .toEqual(["DATA\r\n", "RSET\r\n", "QUIT\r\n", "STARTTLS\r\n"])
    expect(wire(SmtpCommand.noop())).toBe("NOOP\r\n")
    expect(wire(SmtpCommand.noop("ping"))).toBe("NOOP ping\r\n")
    expect(wire(SmtpCommand.help())).toBe("HELP\r\n")
    expect(wire(SmtpCommand.help("MAIL"))).toBe("HELP MAIL\r\n")
    expect(wire(SmtpCommand.vrfy("postmaster"))).toBe("VRFY postmaster\r\n")
    expect(wire(SmtpCommand.expn("staff"))).toBe("EXPN staff\r\n")
  })

  it("encodes BDAT sizes with and without LAST", () => {
    expect(wire(SmtpCommand.bdat(86, false))).toBe("BDAT 86\r\n")
    expect(wire(SmtpCommand.bdat(0, true))).toBe("BDAT 0 LAST\r\n")
    expect(rejection(SmtpCommand.bdat(-1, true)).field).toBe("BDAT chunk size")
    expect(rejection(SmtpCommand.bdat(1.5, true)).field).toBe("BDAT chunk size")
  })

  it("encodes AUTH payloads as base64, an empty initial response as =, and cancel as *", () => {
    expect(wire(SmtpCommand.auth("plain", secret("\u0000user\u0000pass")))).toBe("AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
    expect(wire(SmtpCommand.auth("EXTERNAL", Redacted.make(new Uint8Array(0))))).toBe("AUTH EXTERNAL =\r\n")
    expect(wire(SmtpCommand.auth("LOGIN"))).toBe("AUTH LOGIN\r\n")
    expect(wire(SmtpCommand.authResponse(secret("pass")))).toBe("cGFzcw==\r\n")
    expect(wire(SmtpCommand.authCancel)).toBe("*\r\n")
    expect(rejection(SmtpCommand.auth("BAD MECH")).field).toBe("AUTH mechanism")
  })

  it("encodes raw extension commands as given", () => {
    expect(wire(SmtpCommand.raw("XCLIENT NAME=spike.porcupine.org ADDR=168.100.189.2")))
      .toBe("XCLIENT NAME=spike.porcupine.org ADDR=168.100.189.2\r\n")
    expect(SmtpCommand.verb(SmtpCommand.raw("xclient NAME=x"))).toBe("XCLIENT")
  })

  it("rejects CR, LF and NUL in every argument, naming the field", () => {
    const injected = "x\r\nRCPT TO:<victim@example.org>"
    expect(rejection(SmtpCommand.ehlo(injected)).field).toBe("EHLO client host name")
    expect(rejection(SmtpCommand.mail(`a@b.org${injected}`)).field).toBe("MAIL FROM address")
    expect(rejection(SmtpCommand.rcpt(`a@b.org\n`)).field).toBe("RCPT TO address")
    expect(rejection(SmtpCommand.mail("a@b.org", { envelopeId: "id\r\n" })).field).toBe("ENVID")
    expect(rejection(SmtpCommand.mail("a@b.org", { extensions: { X: "v\n" } })).field).toBe("MAIL parameter \"X\"")
    expect(rejection(SmtpCommand.mail("a@b.org", { extensions: { "X\r\n": true } })).field)
      .toBe("MAIL parameter \"X\\r\\n\"")
    expect(rejection(SmtpCommand.rcpt("a@b.org", { originalRecipient: "a@b.org\r" })).field).toBe("ORCPT")
    expect(rejection(SmtpCommand.vrfy("user\u0000")).field).toBe("VRFY argument")
    expect(rejection(SmtpCommand.noop("\r")).field).toBe("NOOP argument")
    expect(rejection(SmtpCommand.raw("NOOP\r\nQUIT")).field).toBe("raw command")
    const error = rejection(SmtpCommand.raw("X\n"))
    expect(error).toBeInstanceOf(InvalidInputError)
    expect(error.message).toBe("Invalid raw command: it holds a control character (CR, LF, NUL or another)")
  })

  it("rejects malformed parameters", () => {
    expect(rejection(SmtpCommand.mail("a@b.org", { size: -5 })).field).toBe("SIZE")
    expect(rejection(SmtpCommand.mail("a@b.org", { envelopeId: "x".repeat(101) })).field).toBe("ENVID")
    expect(rejection(SmtpCommand.mail("a@b.org", { extensions: { X: "a b" } })).field).toBe("MAIL parameter \"X\"")
    expect(rejection(SmtpCommand.mail("a@b.org", { extensions: { X: "a=b" } })).field).toBe("MAIL parameter \"X\"")
    expect(rejection(SmtpCommand.rcpt("a@b.org", { notify: [] })).field).toBe("NOTIFY")
    expect(rejection(SmtpCommand.rcpt("")).field).toBe("RCPT TO address")
    expect(rejection(SmtpCommand.vrfy(" ")).field).toBe("VRFY argument")
  })

  it("encodes a pipelined group into one buffer, or nothing if one command is bad", () => {
    const group = [SmtpCommand.mail("a@b.org"), SmtpCommand.rcpt("c@d.org"), SmtpCommand.data]
    expect(Buffer.from(Either.getOrThrow(SmtpCommand.encodeGroup(group))).toString())
      .toBe("MAIL FROM:<a@b.org>\r\nRCPT TO:<c@d.org>\r\nDATA\r\n")
    const bad = SmtpCommand.encodeGroup([SmtpCommand.mail("a@b.org"), SmtpCommand.rcpt("c@d.org\r\n")])
    expect(Either.isLeft(bad)).toBe(true)
  })

  it("property: whatever the arguments, an encoded command has no CR, LF or NUL but its final CRLF", () => {
    const text = fc.oneof(
      fc.string({ unit: "binary", maxLength: 40 }),
      fc.array(fc.constantFrom("a", "@", ".", "\r", "\n", "\u0000", " ", "ü", "=", "+", "<", ">", "\""), {
        maxLength: 20
      }).map((parts) => parts.join(""))
    )
    const bytes = text.map((t) => Redacted.make(new Uint8Array(Buffer.from(t))))
    const command: fc.Arbitrary<SmtpCommand.SmtpCommand> = fc.oneof(
      text.map(SmtpCommand.ehlo),
      text.map(SmtpCommand.helo),
      text.map(SmtpCommand.lhlo),
      fc.tuple(text, text, text, text).map(([from, envelopeId, auth, value]) =>
        SmtpCommand.mail(from, { envelopeId, auth, extensions: { [value]: value } })
      ),
      fc.tuple(text, text, text).map(([to, originalRecipient, value]) =>
        SmtpCommand.rcpt(to, { originalRecipient, extensions: { X: value } })
      ),
      text.map(SmtpCommand.vrfy),
      text.map(SmtpCommand.expn),
      text.map(SmtpCommand.help),
      text.map(SmtpCommand.noop),
      text.map(SmtpCommand.raw),
      fc.tuple(text, bytes).map(([mechanism, response]) => SmtpCommand.auth(mechanism, response)),
      bytes.map(SmtpCommand.authResponse)
    )
    fc.assert(
      fc.property(command, (c) => {
        const result = SmtpCommand.encode(c)
        if (Either.isLeft(result)) {
          expect(result.left).toBeInstanceOf(InvalidInputError)
          return
        }
        const line = Buffer.from(result.right)
        expect(line.subarray(-2).toString("latin1")).toBe("\r\n")
        const body = line.subarray(0, -2)
        expect(body.includes(0x0d) || body.includes(0x0a) || body.includes(0x00)).toBe(false)
      }),
      { numRuns: 5000 }
    )
  })
})

describe("SmtpCommand.toTranscript", () => {
  it("shows commands as sent but never SASL payloads", () => {
    expect(SmtpCommand.toTranscript(SmtpCommand.mail("a@b.org", { size: 10 }))).toBe("MAIL FROM:<a@b.org> SIZE=10")
    expect(SmtpCommand.toTranscript(SmtpCommand.auth("PLAIN", secret("\u0000u\u0000hunter2"))))
      .toBe("AUTH PLAIN <redacted>")
    expect(SmtpCommand.toTranscript(SmtpCommand.authResponse(secret("hunter2")))).toBe("<redacted>")
    expect(SmtpCommand.toTranscript(SmtpCommand.raw("AUTH PLAIN AHUAaHVudGVyMg=="))).toBe("AUTH PLAIN <redacted>")
    expect(SmtpCommand.toTranscript(SmtpCommand.rcpt("bad\n"))).toContain("<not sent: Invalid RCPT TO address")
  })

  it("names the verb, never the arguments", () => {
    expect(SmtpCommand.verb(SmtpCommand.mail("secret@example.org"))).toBe("MAIL")
    expect(SmtpCommand.verb(SmtpCommand.authResponse(secret("x")))).toBe("AUTH")
    expect(SmtpCommand.verb(SmtpCommand.startTls)).toBe("STARTTLS")
    expect(SmtpCommand.verb(SmtpCommand.raw("\u0000weird"))).toBe("RAW")
  })
})

describe("SmtpCommand.xtext", () => {
  it("encodes +, =, spaces, controls and 8-bit octets as +HH", () => {
    expect(SmtpCommand.xtext("a+b=c d\u0001é")).toBe("a+2Bb+3Dc+20d+01+C3+A9")
    expect(SmtpCommand.xtext("plain-text_123")).toBe("plain-text_123")
  })
})
