import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as SmtpConfig from "../../src/SmtpConfig.js"

const ok = (url: string) => Either.getOrThrow(SmtpConfig.fromUrl(url))
const reason = (url: string) =>
  Either.match(SmtpConfig.fromUrl(url), {
    onLeft: (error) => error.reason,
    onRight: () => {
      throw new Error(`expected ${url} to be refused`)
    }
  })

describe("SmtpConfig.fromUrl", () => {
  it("knows Qore's schemes, their ports and TLS modes", () => {
    const table = Object.keys(SmtpConfig.schemes).map((scheme) => {
      const settings = ok(`${scheme}://mail.example.org`)
      return [scheme, settings.port, settings.tls]
    })
    expect(table).toEqual([
      ["smtp", 25, "opportunistic"],
      ["smtps", 465, "implicit"],
      ["smtptls", 25, "starttls"],
      ["esmtp", 587, "opportunistic"],
      ["esmtps", 465, "implicit"],
      ["esmtptls", 587, "starttls"]
    ])
  })

  it("reads a port, an IPv6 literal and percent-encoded credentials", () => {
    const settings = ok("SMTPTLS://us%40er:p%3Ass%2Fw@[2001:db8::1]:2525/")
    expect(settings.host).toBe("2001:db8::1")
    expect(settings.port).toBe(2525)
    const credentials = settings.credentials
    expect(credentials?.username).toBe("us@er")
    const password = credentials !== undefined && "password" in credentials ? credentials.password : undefined
    expect(password && Redacted.value(password)).toBe("p:ss/w")
    expect(String(password)).not.toContain("p:ss/w")
  })

  it("refuses what it cannot use, saying why and never showing the password", () => {
    expect(reason("http://mail.example.org")).toContain("unknown scheme \"http\"")
    expect(reason("mail.example.org")).toContain("scheme")
    expect(reason("smtp://user@mail.example.org")).toContain("no password")
    expect(reason("smtp://:secret@mail.example.org")).toContain("no user")
    expect(reason("smtp://mail.example.org/path")).toContain("path")
    expect(reason("smtp://mail.example.org\r\n")).toContain("control character")
    const error = SmtpConfig.fromUrl("ftp://user:hunter2@mail.example.org")
    expect(Either.isLeft(error) && error.left.message).not.toContain("hunter2")
  })

  it.effect("reads SMTP_URL from Effect Config", () =>
    Effect.gen(function*() {
      const settings = yield* SmtpConfig.url().pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["SMTP_URL", "esmtps://a:b@mx.example.org"]])))
      )
      expect(settings).toMatchObject({ host: "mx.example.org", port: 465, tls: "implicit" })
      const failure = yield* Effect.flip(
        SmtpConfig.url().pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["SMTP_URL", "gopher://mx.example.org"]])))
        )
      )
      expect(String(failure)).toContain("unknown scheme")
    }))
})
