import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as fc from "fast-check"
import * as Mailbox from "../../src/Mailbox.js"

const valid = (address: string) => Either.getOrThrow(Mailbox.parse(address))
const reason = (address: string) =>
  Either.match(Mailbox.parse(address, "recipient"), {
    onLeft: (error) => {
      expect(error.field).toBe("recipient")
      return error.reason
    },
    onRight: (mailbox) => {
      throw new Error(`expected ${JSON.stringify(address)} to be rejected, got ${mailbox}`)
    }
  })

describe("Mailbox.parse", () => {
  it("accepts dot-string local parts with every atext character", () => {
    expect(valid("john.doe@example.org")).toEqual(new Mailbox.Mailbox({ localPart: "john.doe", domain: "example.org" }))
    expect(valid("!#$%&'*+-/=?^_`{|}~@example.org").localPart).toBe("!#$%&'*+-/=?^_`{|}~")
    expect(valid("<user@localhost>").domain).toBe("localhost")
  })

  it("accepts quoted local parts, with quoted pairs and an @ inside", () => {
    expect(valid("\"john doe\"@example.org").localPart).toBe("\"john doe\"")
    expect(valid("\"a\\\"b@c\"@example.org").localPart).toBe("\"a\\\"b@c\"")
  })

  it("accepts IPv4, IPv6 and general address literals", () => {
    expect(valid("postmaster@[192.0.2.1]").domain).toBe("[192.0.2.1]")
    expect(valid("postmaster@[IPv6:2001:db8::1]").domain).toBe("[IPv6:2001:db8::1]")
    expect(valid("postmaster@[IPv6:::ffff:192.0.2.1]").domain).toBe("[IPv6:::ffff:192.0.2.1]")
    expect(valid("postmaster@[x-tag:some-content]").domain).toBe("[x-tag:some-content]")
  })

  it("accepts internationalized local parts and domains", () => {
    expect(valid("用户@例子.广告").toString()).toBe("用户@例子.广告")
    expect(valid("jörg@bücher.example").domain).toBe("bücher.example")
  })

  it("rejects what SMTP cannot carry, saying why", () => {
    expect(reason("")).toContain("empty")
    expect(reason("no-at-sign")).toContain("local-part@domain")
    expect(reason("@example.org")).toContain("source routes")
    expect(reason("@relay.example:user@example.org")).toContain("source routes")
    expect(reason("two..dots@example.org")).toContain("local part")
    expect(reason(".lead@example.org")).toContain("local part")
    expect(reason("trail.@example.org")).toContain("local part")
    expect(reason("sp ace@example.org")).toContain("local part")
    expect(reason("\"unterminated@example.org")).toContain("local part")
    expect(reason("user@")).toContain("empty")
    expect(reason("user@-bad.example")).toContain("labels")
    expect(reason("user@bad-.example")).toContain("labels")
    expect(reason("user@exa_mple.org")).toContain("labels")
    expect(reason("user@example..org")).toContain("labels")
    expect(reason(`user@${"a".repeat(64)}.org`)).toContain("labels")
    expect(reason("user@[256.0.0.1]")).toContain("over 255")
    expect(reason("user@[IPv6:zz::1]")).toContain("IPv6")
    expect(reason("user@[192.0.2.1")).toContain("']'")
    expect(reason(`${"a".repeat(250)}@example.org`)).toContain("254 octets")
  })

  it("rejects CR, LF, NUL and other controls anywhere, even inside quotes", () => {
    for (const address of ["a\r\n@example.org", "a@example.org\r\n", "\"a\u0000b\"@example.org", "a\t@example.org"]) {
      expect(reason(address)).toContain("control character")
    }
  })
})

describe("Mailbox SMTPUTF8 and IDN", () => {
  it("needs SMTPUTF8 only for a non-ASCII local part", () => {
    expect(Mailbox.requiresSmtpUtf8(valid("jörg@example.org"))).toBe(true)
    expect(Mailbox.requiresSmtpUtf8(valid("joerg@bücher.example"))).toBe(false)
    expect(Mailbox.requiresSmtpUtf8(valid("joerg@example.org"))).toBe(false)
  })

  it("turns U-labels into A-labels when the local part is ASCII", () => {
    expect(Either.getOrThrow(Mailbox.toAscii(valid("info@bücher.example"))).toString())
      .toBe("info@xn--bcher-kva.example")
    // The A-labels as Python's independent IDNA codec gives them: "例子.广告".encode("idna").
    expect(Either.getOrThrow(Mailbox.toAscii(valid("info@例子.广告"))).domain).toBe("xn--fsqu00a.xn--4rr70v")
    const ascii = valid("a@example.org")
    expect(Either.getOrThrow(Mailbox.toAscii(ascii))).toBe(ascii)
  })

  it("cannot make a non-ASCII local part ASCII", () => {
    const result = Mailbox.toAscii(valid("jörg@example.org"))
    expect(Either.isLeft(result) && result.left.reason).toContain("SMTPUTF8")
  })

  it("converts a domain alone to A-labels, leaving ASCII domains and literals as they are", () => {
    expect(Mailbox.domainToAscii("bücher.example")).toEqual(Either.right("xn--bcher-kva.example"))
    expect(Mailbox.domainToAscii("Mail.Example.org")).toEqual(Either.right("Mail.Example.org"))
    expect(Mailbox.domainToAscii("[IPv6:::1]")).toEqual(Either.right("[IPv6:::1]"))
    const bad = Mailbox.domainToAscii("bad domain", "EHLO client host name")
    expect(Either.isLeft(bad) && bad.left.field).toBe("EHLO client host name")
  })

  it("validates domains for EHLO", () => {
    expect(Mailbox.isDomain("mail.example.org")).toBe(true)
    expect(Mailbox.isDomain("[127.0.0.1]")).toBe(true)
    expect(Mailbox.isDomain("bücher.example")).toBe(true)
    expect(Mailbox.isDomain("bad domain")).toBe(false)
    expect(Mailbox.isDomain("")).toBe(false)
  })

  it("property: whatever parses formats back to itself and holds no control character", () => {
    const piece = fc.constantFrom(
      "a",
      "Z",
      "0",
      ".",
      "-",
      "\"",
      "\\",
      " ",
      "@",
      "ü",
      "\r",
      "\n",
      "\u0000",
      "[",
      "]",
      ":"
    )
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 24 }).map((p) => p.join("")), (input) => {
        const result = Mailbox.parse(input)
        if (Either.isRight(result)) {
          const formatted = Mailbox.format(result.right)
          expect(formatted).toBe(input.startsWith("<") ? input.slice(1, -1) : input)
          expect(/[\x00-\x1F\x7F]/.test(formatted)).toBe(false)
          expect(Either.getOrThrow(Mailbox.parse(formatted))).toEqual(result.right)
        }
      }),
      { numRuns: 5000 }
    )
  })
})
