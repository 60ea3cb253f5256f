import { describe, expect, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as fc from "fast-check"
import * as Sasl from "../../src/internal/sasl.js"
import { md4 } from "../../src/internal/sasl/md4.js"
import * as Ntlm from "../../src/internal/sasl/ntlm.js"
import { saslprep } from "../../src/internal/sasl/saslprep.js"

// Every expected value below is copied from the document named next to it, not computed by this code.

const password = (username: string, secret: string, options: Sasl.StartOptions = {}): Sasl.StartInput => ({
  username,
  password: Redacted.make(secret),
  ...options
})

const token = (username: string, secret: string, options: Sasl.StartOptions = {}): Sasl.StartInput => ({
  username,
  token: Redacted.make(secret),
  ...options
})

const start = (mechanism: Sasl.Mechanism, input: Sasl.StartInput): Sasl.Exchange =>
  Either.getOrThrowWith(mechanism.start(input), (reason) => new Error(reason))

const bytesOf = (step: Sasl.Step): Buffer => {
  if (step._tag === "Fail") throw new Error(`expected a response, got Fail: ${step.reason}`)
  return Buffer.from(Redacted.value(step.response))
}

const textOf = (step: Sasl.Step): string => bytesOf(step).toString("utf8")

const initial = (exchange: Sasl.Exchange): Buffer => {
  if (exchange.initialResponse === undefined) throw new Error("expected an initial response")
  return Buffer.from(Redacted.value(exchange.initialResponse))
}

const reasonOf = (step: Sasl.Step): string => {
  if (step._tag === "Respond") throw new Error(`expected Fail, got a response: ${bytesOf(step).toString("latin1")}`)
  return step.reason
}

const challenge = (text: string): Uint8Array => Buffer.from(text, "utf8")

/** A hex dump as the specifications print it: offsets and spaces are ignored. */
const hex = (dump: string): Buffer =>
  Buffer.from(dump.replace(/^\s*[0-9A-Fa-f]{7}:/gm, "").replace(/[^0-9A-Fa-f]/g, ""), "hex")

describe("PLAIN", () => {
  it("sends RFC 4616 §4's examples as its initial response", () => {
    expect(initial(start(Sasl.plain, password("tim", "tanstaaftanstaaf")))).toEqual(
      Buffer.from("\0tim\0tanstaaftanstaaf")
    )
    expect(initial(start(Sasl.plain, password("Kurt", "xipj3plmq", { authorizationId: "Ursel" })))).toEqual(
      Buffer.from("Ursel\0Kurt\0xipj3plmq")
    )
  })

  it("answers the empty challenge of a server that did not get the initial response, then no other", () => {
    const exchange = start(Sasl.plain, password("tim", "tanstaaftanstaaf"))
    expect(textOf(exchange.step(new Uint8Array(0)))).toBe("\0tim\0tanstaaftanstaaf")
    expect(exchange.finish()).toBeUndefined()
    expect(reasonOf(exchange.step(new Uint8Array(0)))).toMatch(/another challenge/)
  })

  it("cannot start with a NUL in a field, a lone surrogate, or an OAuth token", () => {
    expect(Sasl.plain.start(password("tim", "tans\0taaf"))).toEqual(Either.left(expect.stringMatching(/NUL/)))
    expect(Sasl.plain.start(password("tim\uD800", "x"))).toEqual(Either.left(expect.stringMatching(/surrogate/)))
    expect(Sasl.plain.start(token("tim", "t"))).toEqual(Either.left(expect.stringMatching(/password/)))
  })

  it("is marked as exposing the password on a connection without TLS", () => {
    expect(Sasl.plain.exposesCredentialsInClear).toBe(true)
    expect(Sasl.login.exposesCredentialsInClear).toBe(true)
    expect(Sasl.cramMd5.exposesCredentialsInClear).toBe(false)
    expect(Sasl.scramSha256.exposesCredentialsInClear).toBe(false)
  })
})

describe("LOGIN", () => {
  it("answers the user name then the password, whatever the challenges say (draft-murchison-sasl-login §3)", () => {
    const exchange = start(Sasl.login, password("tim", "tanstaaftanstaaf"))
    expect(exchange.initialResponse).toBeUndefined()
    // The draft's example: "VXNlciBOYW1lAA==" (User Name NUL), answer "dGlt"; "UGFzc3dvcmQA", "dGFuc3RhYWZ0YW5zdGFhZg==".
    expect(bytesOf(exchange.step(Buffer.from("VXNlciBOYW1lAA==", "base64"))).toString("base64")).toBe("dGlt")
    expect(bytesOf(exchange.step(Buffer.from("UGFzc3dvcmQA", "base64"))).toString("base64")).toBe(
      "dGFuc3RhYWZ0YW5zdGFhZg=="
    )
    expect(reasonOf(exchange.step(challenge("Password:")))).toMatch(/third challenge/)
  })

  it("goes by order with the usual SMTP prompts too", () => {
    const exchange = start(Sasl.login, password("user@example.org", "sécret"))
    expect(textOf(exchange.step(challenge("Username:")))).toBe("user@example.org")
    expect(textOf(exchange.step(challenge("Password:")))).toBe("sécret")
  })
})

describe("CRAM", () => {
  it("CRAM-MD5 answers RFC 2195 §2's example", () => {
    const exchange = start(Sasl.cramMd5, password("tim", "tanstaaftanstaaf"))
    expect(exchange.initialResponse).toBeUndefined()
    const answer = exchange.step(challenge("<1896.697170952@postoffice.reston.mci.net>"))
    expect(textOf(answer)).toBe("tim b913a602c7eda7a495b4e6e7334d3890")
    expect(bytesOf(answer).toString("base64")).toBe("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    expect(reasonOf(exchange.step(challenge("<again@example>")))).toMatch(/second challenge/)
  })

  it("CRAM-SHA1 and CRAM-SHA256 use HMAC-SHA-1 and HMAC-SHA-256 (RFC 2202 and RFC 4231 test case 2)", () => {
    const question = challenge("what do ya want for nothing?")
    expect(textOf(start(Sasl.cramSha1, password("u", "Jefe")).step(question))).toBe(
      "u effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
    )
    expect(textOf(start(Sasl.cramSha256, password("u", "Jefe")).step(question))).toBe(
      "u 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    expect([Sasl.cramSha1.name, Sasl.cramSha256.name, Sasl.cram("md5", 1).name]).toEqual([
      "CRAM-SHA1",
      "CRAM-SHA256",
      "CRAM-MD5"
    ])
  })

  it("fails on an empty challenge, and a digest Node.js lacks cannot start", () => {
    expect(reasonOf(start(Sasl.cramMd5, password("tim", "x")).step(new Uint8Array(0)))).toMatch(/empty/)
    expect(Sasl.cram("NOPE", 1).start(password("tim", "x"))).toEqual(Either.left(expect.stringMatching(/NOPE/)))
  })
})

describe("XOAUTH2", () => {
  // Google's XOAUTH2 protocol page, "Initial client response".
  const google = token("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")

  it("sends Google's documented initial response", () => {
    expect(initial(start(Sasl.xoauth2, google)).toString("base64")).toBe(
      "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )
  })

  it("answers the JSON error challenge with an empty response, so the server sends its failure reply", () => {
    const exchange = start(Sasl.xoauth2, google)
    const error = challenge("{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"https://mail.google.com/\"}")
    expect(bytesOf(exchange.step(error))).toEqual(Buffer.alloc(0))
    expect(exchange.step(error)._tag).toBe("Fail")
  })

  it("sends the token on an empty challenge when the initial response was held back", () => {
    const exchange = start(Sasl.xoauth2, google)
    expect(textOf(exchange.step(new Uint8Array(0)))).toBe(
      "user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
  })

  it("needs a token, without ^A", () => {
    expect(Sasl.xoauth2.start(password("a@b.c", "pw"))).toEqual(Either.left(expect.stringMatching(/access token/)))
    expect(Sasl.xoauth2.start(token("a@b.c", "t\x01k"))).toEqual(Either.left(expect.stringMatching(/\^A/)))
  })
})

describe("OAUTHBEARER", () => {
  it("sends RFC 7628 §4.1's initial response", () => {
    const exchange = start(
      Sasl.oauthBearer,
      token("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", { host: "server.example.com", port: 143 })
    )
    expect(initial(exchange).toString("base64")).toBe(
      "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
    )
  })

  it("answers RFC 7628 §4.3's error challenge with a single ^A (\"AQ==\")", () => {
    const exchange = start(Sasl.oauthBearer, token("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="))
    const error = Buffer.from(
      "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0=",
      "base64"
    )
    expect(bytesOf(exchange.step(error)).toString("base64")).toBe("AQ==")
  })

  it("leaves out host and port when not given, and escapes \",\" and \"=\" in the name (RFC 5801 saslname)", () => {
    expect(initial(start(Sasl.oauthBearer, token("user@example.com", "t"))).toString()).toBe(
      "n,a=user@example.com,\x01auth=Bearer t\x01\x01"
    )
    expect(initial(start(Sasl.oauthBearer, token("a,b=c", "t"))).toString()).toMatch(/^n,a=a=2Cb=3Dc,\x01/)
  })
})

describe("SCRAM", () => {
  // RFC 5802 §5.
  const rfc5802 = {
    clientFirst: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    serverFirst: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    clientFinal: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    serverFinal: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
  }
  // RFC 7677 §3.
  const rfc7677 = {
    clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    serverFirst: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    clientFinal:
      "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
  }
  const sha1 = (secret = "pencil") =>
    start(Sasl.scramSha1, password("user", secret, { nonce: "fyko+d2lbbFgONRv9qkxdawL" }))
  const sha256 = () => start(Sasl.scramSha256, password("user", "pencil", { nonce: "rOprNGfwEbeRWgbNEkqO" }))

  it("SCRAM-SHA-1 reproduces RFC 5802 §5's exchange and accepts the server's proof", () => {
    const exchange = sha1()
    expect(initial(exchange).toString()).toBe(rfc5802.clientFirst)
    expect(textOf(exchange.step(challenge(rfc5802.serverFirst)))).toBe(rfc5802.clientFinal)
    expect(bytesOf(exchange.step(challenge(rfc5802.serverFinal)))).toEqual(Buffer.alloc(0))
    expect(exchange.finish()).toBeUndefined()
  })

  it("SCRAM-SHA-256 reproduces RFC 7677 §3's exchange and accepts the server's proof", () => {
    const exchange = sha256()
    expect(initial(exchange).toString()).toBe(rfc7677.clientFirst)
    expect(textOf(exchange.step(challenge(rfc7677.serverFirst)))).toBe(rfc7677.clientFinal)
    expect(bytesOf(exchange.step(challenge(rfc7677.serverFinal)))).toEqual(Buffer.alloc(0))
    expect(exchange.finish()).toBeUndefined()
  })

  it("prepares the password with SASLprep: a soft hyphen is mapped to nothing (RFC 4013 §3 example 1)", () => {
    const exchange = sha1("pen\u00ADcil")
    expect(textOf(exchange.step(challenge(rfc5802.serverFirst)))).toBe(rfc5802.clientFinal)
  })

  it("fails when the server's signature is wrong, and the failure is final", () => {
    const exchange = sha256()
    exchange.step(challenge(rfc7677.serverFirst))
    const lie = exchange.step(challenge("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
    expect(reasonOf(lie)).toMatch(/signature is wrong/)
    expect(exchange.step(challenge(rfc7677.serverFinal))).toEqual(lie)
    expect(exchange.finish()).toBe(reasonOf(lie))
  })

  it("fails when the server-final-message has no signature, or an error", () => {
    const missing = sha256()
    missing.step(challenge(rfc7677.serverFirst))
    expect(reasonOf(missing.step(challenge("x=1")))).toMatch(/no signature/)
    const error = sha256()
    error.step(challenge(rfc7677.serverFirst))
    expect(reasonOf(error.step(challenge("e=invalid-proof")))).toMatch(/invalid-proof/)
  })

  it("finish refuses a 235 that came without the server's proof, and checks one sent as additional data", () => {
    const silent = sha256()
    silent.step(challenge(rfc7677.serverFirst))
    expect(silent.finish()).toMatch(/without proving/)
    const early = sha256()
    expect(early.finish()).toMatch(/before the exchange was complete/)
    const additional = sha256()
    additional.step(challenge(rfc7677.serverFirst))
    expect(additional.finish(challenge(rfc7677.serverFinal))).toBeUndefined()
    const lying = sha256()
    lying.step(challenge(rfc7677.serverFirst))
    expect(lying.finish(challenge(rfc5802.serverFinal))).toMatch(/signature is wrong/)
  })

  it("fails on a malformed server-first-message", () => {
    const nonce = "fyko+d2lbbFgONRv9qkxdawL"
    const cases: ReadonlyArray<readonly [string, RegExp]> = [
      ["r=someoneElsesNonce3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096", /nonce does not extend/],
      [`r=${nonce}x,s=QSXCR+Q6sek8bf92,i=0`, /iteration count/],
      [`r=${nonce}x,s=QSXCR+Q6sek8bf92,i=-1`, /iteration count/],
      [`r=${nonce}x,s=QSXCR+Q6sek8bf92,i=4096.5`, /iteration count/],
      [`r=${nonce}x,s=QSXCR+Q6sek8bf92,i=`, /iteration count/],
      [`r=${nonce}x,s=QSXCR+Q6sek8bf92,i=99999999`, /limit/],
      [`r=${nonce}x,s=not base64!,i=4096`, /salt/],
      [`r=${nonce}x,s=,i=4096`, /salt/],
      [`r=${nonce}x,i=4096,s=QSXCR+Q6sek8bf92`, /not r=…,s=…,i=…/],
      [`m=ext,r=${nonce}x,s=QSXCR+Q6sek8bf92,i=4096`, /extension/],
      ["e=unknown-user", /unknown-user/]
    ]
    for (const [message, reason] of cases) expect(reasonOf(sha1().step(challenge(message)))).toMatch(reason)
    expect(reasonOf(sha1().step(Uint8Array.of(0xff, 0xfe)))).toMatch(/not UTF-8/)
  })

  it("sends the client-first-message on an empty first challenge", () => {
    const exchange = sha1()
    expect(textOf(exchange.step(new Uint8Array(0)))).toBe(rfc5802.clientFirst)
    expect(textOf(exchange.step(challenge(rfc5802.serverFirst)))).toBe(rfc5802.clientFinal)
  })

  it("escapes \"=\" and \",\" in the user name, and sends the authorization identity in the GS2 header", () => {
    const exchange = start(Sasl.scramSha256, password("a=b,c", "p", { nonce: "abc", authorizationId: "boss" }))
    expect(initial(exchange).toString()).toBe("n,a=boss,n=a=3Db=2Cc,r=abc")
    const final = textOf(exchange.step(challenge("r=abcdef,s=QSXCR+Q6sek8bf92,i=1")))
    expect(final.startsWith(`c=${Buffer.from("n,a=boss,").toString("base64")},r=abcdef,p=`)).toBe(true)
  })

  it("cannot start with a password SASLprep prohibits, or a nonce with a comma", () => {
    expect(Sasl.scramSha256.start(password("user", "bell\u0007"))).toEqual(
      Either.left(expect.stringMatching(/password.*U\+0007/))
    )
    expect(Sasl.scramSha256.start(password("user", "p", { nonce: "a,b" }))).toEqual(
      Either.left(expect.stringMatching(/nonce/))
    )
  })
})

describe("SASLprep", () => {
  it("prepares RFC 4013 §3's examples", () => {
    expect(saslprep("I\u00ADX")).toEqual(Either.right("IX"))
    expect(saslprep("user")).toEqual(Either.right("user"))
    expect(saslprep("USER")).toEqual(Either.right("USER"))
    expect(saslprep("\u00AA")).toEqual(Either.right("a"))
    expect(saslprep("\u2168")).toEqual(Either.right("IX"))
    expect(Either.isLeft(saslprep("\u0007"))).toBe(true)
    expect(Either.isLeft(saslprep("\u0627\u0031"))).toBe(true)
  })

  it("maps non-ASCII spaces to SPACE, and refuses right-to-left text mixed with left-to-right letters", () => {
    expect(saslprep("a\u00A0b\u3000c")).toEqual(Either.right("a b c"))
    expect(saslprep("\u05D0\u05D1")).toEqual(Either.right("\u05D0\u05D1"))
    expect(Either.isLeft(saslprep("\u05D0a\u05D1"))).toBe(true)
    expect(Either.isLeft(saslprep("\uE000"))).toBe(true)
    expect(Either.isLeft(saslprep("\uD800"))).toBe(true)
  })
})

describe("NTLM", () => {
  // [MS-NLMP] §4.2.4.3, the CHALLENGE_MESSAGE and AUTHENTICATE_MESSAGE of the NTLMv2 example.
  const publishedChallenge = hex(`
    0000000: 4e 54 4c 4d 53 53 50 00 02 00 00 00 0c 00 0c 00
    0000010: 38 00 00 00 33 82 8a e2 01 23 45 67 89 ab cd ef
    0000020: 00 00 00 00 00 00 00 00 24 00 24 00 44 00 00 00
    0000030: 06 00 70 17 00 00 00 0f 53 00 65 00 72 00 76 00
    0000040: 65 00 72 00 02 00 0c 00 44 00 6f 00 6d 00 61 00
    0000050: 69 00 6e 00 01 00 0c 00 53 00 65 00 72 00 76 00
    0000060: 65 00 72 00 00 00 00 00
  `)
  const publishedAuthenticate = hex(`
    0000000: 4e 54 4c 4d 53 53 50 00 03 00 00 00 18 00 18 00
    0000010: 6c 00 00 00 54 00 54 00 84 00 00 00 0c 00 0c 00
    0000020: 48 00 00 00 08 00 08 00 54 00 00 00 10 00 10 00
    0000030: 5c 00 00 00 10 00 10 00 d8 00 00 00 35 82 88 e2
    0000040: 05 01 28 0a 00 00 00 0f 44 00 6f 00 6d 00 61 00
    0000050: 69 00 6e 00 55 00 73 00 65 00 72 00 43 00 4f 00
    0000060: 4d 00 50 00 55 00 54 00 45 00 52 00 86 c3 50 97
    0000070: ac 9c ec 10 25 54 76 4a 57 cc cc 19 aa aa aa aa
    0000080: aa aa aa aa 68 cd 0a b8 51 e5 1c 96 aa bc 92 7b
    0000090: eb ef 6a 1c 01 01 00 00 00 00 00 00 00 00 00 00
    00000A0: 00 00 00 00 aa aa aa aa aa aa aa aa 00 00 00 00
    00000B0: 02 00 0c 00 44 00 6f 00 6d 00 61 00 69 00 6e 00
    00000C0: 01 00 0c 00 53 00 65 00 72 00 76 00 65 00 72 00
    00000D0: 00 00 00 00 00 00 00 00 c5 da d2 54 4f c9 79 90
    00000E0: 94 ce 1c e9 0b c9 d0 3e
  `)
  const serverChallenge = hex("01 23 45 67 89 ab cd ef")
  const clientChallenge = hex("aa aa aa aa aa aa aa aa")
  const targetInfo = publishedChallenge.subarray(0x44, 0x44 + 0x24)

  /** The bytes an AUTHENTICATE_MESSAGE's field (length at `at`, offset at `at + 4`) points to. */
  const field = (message: Buffer, at: number): Buffer =>
    message.subarray(message.readUInt32LE(at + 4), message.readUInt32LE(at + 4) + message.readUInt16LE(at))

  const exchange = () =>
    start(
      Sasl.ntlm,
      password("Domain\\User", "Password", { workstation: "COMPUTER", random: () => clientChallenge, timestamp: 0n })
    )

  it("MD4 gives RFC 1320 A.5's digests", () => {
    const vectors: ReadonlyArray<readonly [string, string]> = [
      ["", "31d6cfe0d16ae931b73c59d7e0c089c0"],
      ["a", "bde52cb31de33e46245e05fbdbd6fb24"],
      ["abc", "a448017aaf21d8525fc10ae87aa6729d"],
      ["message digest", "d9130a8164549fe818874806e1c7014b"],
      ["abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"],
      ["ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4"],
      [
        "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
        "e33b4ddc9c38f2199c3e7b164fcc0536"
      ]
    ]
    for (const [input, digest] of vectors) expect(Buffer.from(md4(Buffer.from(input))).toString("hex")).toBe(digest)
    // [MS-NLMP] §4.2.2.1.2 NTOWFv1("Password"), which is MD4 of the password in UTF-16LE.
    expect(Buffer.from(md4(Buffer.from("Password", "utf16le")))).toEqual(
      hex("a4 f4 9c 40 65 10 bd ca b6 82 4e e7 c3 0f d8 52")
    )
  })

  it("computes [MS-NLMP] §4.2.4's NTOWFv2, LMv2 response and NTProofStr", () => {
    const responseKey = Ntlm.ntowfv2("Password", "User", "Domain")
    expect(Buffer.from(responseKey)).toEqual(hex("0c 86 8a 40 3b fd 7a 93 a3 00 1e f2 2e f0 2e 3f"))
    expect(Buffer.from(Ntlm.lmv2Response(responseKey, serverChallenge, clientChallenge))).toEqual(
      hex("86 c3 50 97 ac 9c ec 10 25 54 76 4a 57 cc cc 19 aa aa aa aa aa aa aa aa")
    )
    const { ntProofStr } = Ntlm.ntlmv2Response({ responseKey, serverChallenge, clientChallenge, time: 0n, targetInfo })
    expect(Buffer.from(ntProofStr)).toEqual(hex("68 cd 0a b8 51 e5 1c 96 aa bc 92 7b eb ef 6a 1c"))
  })

  it("answers §4.2.4.3's CHALLENGE_MESSAGE with the responses and names of its AUTHENTICATE_MESSAGE", () => {
    const ntlm = exchange()
    const negotiate = initial(ntlm)
    expect(negotiate.subarray(0, 12)).toEqual(Buffer.from("NTLMSSP\0\x01\0\0\0", "latin1"))
    const authenticate = bytesOf(ntlm.step(publishedChallenge))
    expect(authenticate.subarray(0, 12)).toEqual(Buffer.from("NTLMSSP\0\x03\0\0\0", "latin1"))
    for (const at of [12, 20, 28, 36, 44]) { // LM and NT responses, domain, user, workstation
      expect(field(authenticate, at)).toEqual(field(publishedAuthenticate, at))
    }
    expect(ntlm.finish()).toBeUndefined()
    expect(reasonOf(ntlm.step(publishedChallenge))).toMatch(/after the AUTHENTICATE/)
  })

  it("sends NEGOTIATE again when the server asks with an empty challenge, then expects a CHALLENGE_MESSAGE", () => {
    const ntlm = exchange()
    expect(bytesOf(ntlm.step(new Uint8Array(0)))).toEqual(initial(ntlm))
    expect(reasonOf(ntlm.step(challenge("NTLM supported")))).toMatch(/not a CHALLENGE_MESSAGE/)
  })

  it("uses the server's timestamp and sends a zero LM response when the server sends MsvAvTimestamp", () => {
    const avPairs = Buffer.concat([hex("07 00 08 00 01 02 03 04 05 06 07 08"), hex("00 00 00 00")])
    const withTimestamp = Buffer.concat([publishedChallenge.subarray(0, 0x38), avPairs])
    withTimestamp.writeUInt16LE(avPairs.length, 40)
    withTimestamp.writeUInt16LE(avPairs.length, 42)
    withTimestamp.writeUInt32LE(0x38, 44)
    const ntlm = start(Sasl.ntlm, password("User", "Password", { random: () => clientChallenge }))
    const authenticate = bytesOf(ntlm.step(withTimestamp))
    expect(field(authenticate, 12)).toEqual(Buffer.alloc(24))
    expect(field(authenticate, 20).subarray(16 + 8, 16 + 16)).toEqual(hex("01 02 03 04 05 06 07 08"))
  })

  it("fails on a CHALLENGE_MESSAGE whose fields lie outside it", () => {
    const outside = Buffer.from(publishedChallenge)
    outside.writeUInt32LE(0x1000, 44)
    expect(reasonOf(exchange().step(outside))).toMatch(/outside the message/)
    const runaway = Buffer.from(publishedChallenge)
    runaway.writeUInt16LE(0x7f00, 0x44 + 2)
    expect(reasonOf(exchange().step(runaway))).toMatch(/AV pair/)
    expect(reasonOf(exchange().step(publishedChallenge.subarray(0, 20)))).toMatch(/truncated/)
  })
})

describe("choose", () => {
  it("takes the strongest mechanism both sides support", () => {
    const offered = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"]
    expect(Either.map(Sasl.choose(offered), (m) => m.name)).toEqual(Either.right("SCRAM-SHA-256"))
    expect(Either.map(Sasl.choose(["login", "plain"]), (m) => m.name)).toEqual(Either.right("PLAIN"))
    expect(Sasl.all.map((m) => m.strength)).toEqual([...Sasl.all.map((m) => m.strength)].sort((a, b) => b - a))
  })

  it("follows the client's preference, and a pinned mechanism or none", () => {
    const offered = ["PLAIN", "CRAM-MD5", "SCRAM-SHA-256"]
    expect(Either.map(Sasl.choose(offered, { preference: ["plain", "scram-sha-256"] }), (m) => m.name)).toEqual(
      Either.right("PLAIN")
    )
    expect(Either.map(Sasl.choose(offered, { pinned: "cram-md5" }), (m) => m.name)).toEqual(Either.right("CRAM-MD5"))
    expect(Sasl.choose(offered, { pinned: "LOGIN" })).toEqual(
      Either.left("the server does not offer AUTH LOGIN; it offers PLAIN CRAM-MD5 SCRAM-SHA-256")
    )
    expect(Sasl.choose(offered, { pinned: "GSSAPI" })).toEqual(Either.left(expect.stringMatching(/not a mechanism/)))
    expect(Sasl.choose(offered, { preference: ["LOGIN"] })).toEqual(Either.left(expect.stringMatching(/in common/)))
  })

  it("chooses among the OAuth mechanisms for a token, and only them", () => {
    const offered = ["PLAIN", "XOAUTH2", "OAUTHBEARER"]
    expect(Either.map(Sasl.choose(offered, { credential: "token" }), (m) => m.name)).toEqual(
      Either.right("OAUTHBEARER")
    )
    expect(Either.map(Sasl.choose(["PLAIN", "XOAUTH2"], { credential: "token" }), (m) => m.name)).toEqual(
      Either.right("XOAUTH2")
    )
    expect(Either.map(Sasl.choose(["XOAUTH2"]), (m) => m.name)).toEqual(Either.left(expect.stringMatching(/common/)))
    expect(Sasl.choose(offered, { pinned: "XOAUTH2" })).toEqual(Either.left(expect.stringMatching(/access token/)))
  })

  it("leaves out mechanisms that expose credentials on a connection without TLS, and says so", () => {
    expect(Either.map(Sasl.choose(["PLAIN", "CRAM-MD5"], { cleartext: true }), (m) => m.name)).toEqual(
      Either.right("CRAM-MD5")
    )
    expect(Sasl.choose(["PLAIN", "LOGIN"], { cleartext: true })).toEqual(
      Either.left(expect.stringMatching(/only PLAIN LOGIN .* in the clear/))
    )
    expect(Sasl.choose(["PLAIN"], { cleartext: true, pinned: "PLAIN" })).toEqual(
      Either.left(expect.stringMatching(/in the clear/))
    )
    expect(Sasl.choose([], { cleartext: true })).toEqual(Either.left(expect.stringMatching(/STARTTLS/)))
  })

  it("chooses custom mechanisms given with the built-in ones", () => {
    const external = Sasl.custom("external", 1000, () =>
      Either.right({
        initialResponse: Redacted.make(new Uint8Array(0)),
        step: () => ({ _tag: "Fail", reason: "no challenge expected" }),
        finish: () => undefined
      }), { exposesCredentialsInClear: false })
    const chosen = Sasl.choose(["EXTERNAL", "PLAIN"], { mechanisms: [...Sasl.all, external] })
    expect(Either.map(chosen, (m) => m.name)).toEqual(Either.right("EXTERNAL"))
  })
})

describe("custom", () => {
  it("turns an exception into a final Fail", () => {
    let calls = 0
    const throwing = Sasl.custom("X-THROW", 1, () =>
      Either.right({
        initialResponse: undefined,
        step: () => {
          calls++
          throw new Error("boom")
        },
        finish: () => undefined
      }))
    const exchange = start(throwing, password("u", "p"))
    expect(reasonOf(exchange.step(new Uint8Array(0)))).toMatch(/X-THROW.*boom/)
    expect(reasonOf(exchange.step(new Uint8Array(0)))).toMatch(/boom/)
    expect(calls).toBe(1)
    expect(exchange.finish()).toMatch(/boom/)
  })
})

describe("every mechanism", () => {
  const text = fc.oneof(
    fc.string({ unit: "binary", maxLength: 24 }),
    fc.array(fc.constantFrom("a", "=", ",", "\0", "\x01", "\\", " ", "é", "\u00AD", "\u05D0", "\uD800", "😀"), {
      maxLength: 12
    }).map((parts) => parts.join(""))
  )
  const nonce = "n0nce"
  /** A CHALLENGE_MESSAGE with random flags, server challenge and AV pairs, terminated or not. */
  const ntlmChallenge = fc.tuple(
    fc.integer({ min: 0, max: 0xffffffff }),
    fc.uint8Array({ minLength: 8, maxLength: 8 }),
    fc.array(fc.tuple(fc.integer({ min: 1, max: 10 }), fc.uint8Array({ maxLength: 12 })), { maxLength: 4 }),
    fc.boolean()
  ).map(([flags, serverChallenge, pairs, terminated]) => {
    const avPairs = Buffer.concat([
      ...pairs.map(([id, value]) => {
        const pair = Buffer.alloc(4 + value.length)
        pair.writeUInt16LE(id, 0)
        pair.writeUInt16LE(value.length, 2)
        pair.set(value, 4)
        return pair
      }),
      terminated ? Buffer.alloc(4) : Buffer.alloc(0)
    ])
    const header = Buffer.alloc(48)
    header.write("NTLMSSP\0\x02", "latin1")
    header.writeUInt32LE(flags, 20)
    header.set(serverChallenge, 24)
    header.writeUInt16LE(avPairs.length, 40)
    header.writeUInt16LE(avPairs.length, 42)
    header.writeUInt32LE(48, 44)
    return Buffer.concat([header, avPairs])
  })
  const challenges = fc.array(
    fc.oneof(
      fc.uint8Array({ maxLength: 80 }),
      ntlmChallenge,
      fc.uint8Array({ maxLength: 80 }).map((rest) =>
        Buffer.concat([Buffer.from("NTLMSSP\0\x02\0\0\0", "latin1"), rest])
      ),
      fc.tuple(fc.string({ maxLength: 8 }), fc.base64String({ maxLength: 12 }), fc.integer({ min: -1, max: 3 })).map((
        [suffix, salt, iterations]
      ) => challenge(`r=${nonce}${suffix},s=${salt},i=${iterations}`)),
      fc.base64String({ maxLength: 44 }).map((signature) => challenge(`v=${signature}`))
    ),
    { maxLength: 5 }
  )

  const caught = /could not (start|answer|check)/

  it("property: no start, step or finish throws, and PLAIN sends back exactly the strings it was given", () => {
    fc.assert(
      fc.property(text, text, fc.option(text, { nil: undefined }), challenges, (username, secret, authzid, sent) => {
        for (const mechanism of Sasl.all) {
          const options = { authorizationId: authzid, nonce, random: (n: number) => new Uint8Array(n), timestamp: 1n }
          const input = mechanism.credential === "token"
            ? token(username, secret, options)
            : password(username, secret, options)
          // The guard would turn an exception into a reason saying "could not …": none may come from the built-ins.
          const started = mechanism.start(input)
          if (Either.isLeft(started)) {
            expect(started.left).not.toMatch(caught)
            continue
          }
          for (const bytes of sent) {
            const step = started.right.step(bytes)
            if (step._tag === "Fail") expect(step.reason).not.toMatch(caught)
            else expect(Redacted.value(step.response)).toBeInstanceOf(Uint8Array)
          }
          expect(started.right.finish() ?? "").not.toMatch(caught)
        }

        const plain = Sasl.plain.start(password(username, secret, { authorizationId: authzid }))
        const fields = [authzid ?? "", username, secret]
        if (fields.some((field) => field.includes("\0") || /\p{Cs}/u.test(field))) {
          expect(Either.isLeft(plain)).toBe(true)
        } else {
          const sentText = initial(Either.getOrThrow(plain)).toString("utf8")
          expect(sentText.split("\0")).toEqual(fields)
        }
      }),
      { numRuns: 300 }
    )
  })
})
