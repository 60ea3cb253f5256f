import { describe, expect, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as fc from "fast-check"
import type { SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerSession } from "smtp-server"
import * as SmtpAuth from "../../src/SmtpAuth.js"
import * as SmtpConfig from "../../src/SmtpConfig.js"
import { answerEhlo, greet, scriptedServer, serveTransaction } from "../support/fakes/scriptedServer.js"
import { smtpServer } from "../support/fakes/smtpServer.js"
import { connect, connectLocal } from "../support/helpers/connect.js"
import { selfSigned } from "../support/helpers/tls.js"

const secret = "s3cr3t-p4ss"
const password = Redacted.make(secret)

/** smtp-server that accepts user "alice" with the password above, or the access token "fresh-token". */
const authServer = (extra: Record<string, unknown> = {}) => {
  const attempts: Array<string> = []
  const onAuth = (
    auth: SMTPServerAuthentication,
    _session: SMTPServerSession,
    callback: (error: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void
  ) => {
    attempts.push(auth.method)
    const ok = auth.method === "XOAUTH2"
      ? auth.username === "alice" && auth.accessToken === "fresh-token"
      : auth.username === "alice" &&
        (auth.method === "CRAM-MD5" ? auth.validatePassword(secret) : auth.password === secret)
    if (ok) callback(null, { user: "alice" })
    else callback(Object.assign(new Error("5.7.8 Authentication credentials invalid"), { responseCode: 535 }))
  }
  return Effect.map(
    smtpServer({ authMethods: ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"], onAuth, ...extra }),
    (server) => ({ ...server, attempts })
  )
}

describe("SmtpConnection.authenticate against smtp-server", () => {
  it.scopedLive("refuses to authenticate in cleartext unless allowed, sending nothing", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      const error = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port), (c) => Effect.flip(c.authenticate({ username: "alice", password })))
      )
      expect(error._tag === "SmtpAuthError" && error.failure).toBe("cleartext")
      expect(server.attempts).toEqual([])
    }))

  it.scopedLive("chooses the strongest common mechanism, or the pinned one, and says which signed in", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      const signIn = (mechanism?: string) =>
        Effect.scoped(Effect.gen(function*() {
          const c = yield* connectLocal(server.port)
          const name = yield* c.authenticate({ username: "alice", password, allowCleartext: true, mechanism })
          expect((yield* c.state).authenticated).toBe(name)
          return name
        }))
      expect(yield* signIn()).toBe("CRAM-MD5")
      expect(yield* signIn("PLAIN")).toBe("PLAIN")
      expect(yield* signIn("login")).toBe("LOGIN")
      expect(server.attempts).toEqual(["CRAM-MD5", "PLAIN", "LOGIN"])
    }))

  it.scopedLive("a wrong password is a permanent 535; the password appears nowhere", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      const lines: Array<string> = []
      for (const mechanism of ["PLAIN", "LOGIN", "CRAM-MD5"]) {
        const error = yield* Effect.scoped(Effect.flatMap(
          connectLocal(server.port, { onTranscript: (entry) => Effect.sync(() => lines.push(entry.line)) }),
          (c) =>
            Effect.flip(
              c.authenticate({
                username: "alice",
                password: Redacted.make("wrong-pass"),
                allowCleartext: true,
                mechanism
              })
            )
        ))
        expect(error._tag === "SmtpPermanentError" && [error.code, error.command]).toEqual([535, "AUTH"])
        expect(error.message).not.toContain("wrong-pass")
      }
      const transcript = lines.join("\n")
      expect(transcript).toContain("AUTH PLAIN <redacted>")
      expect(transcript).not.toContain("wrong-pass")
      expect(transcript).not.toContain(Buffer.from("\u0000alice\u0000wrong-pass").toString("base64"))
      expect(transcript).not.toContain(Buffer.from("wrong-pass").toString("base64"))
    }))

  it.scopedLive("XOAUTH2 takes its token from an Effect and retries once with a fresh one", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      let fetches = 0
      const token = Effect.sync(() => Redacted.make(++fetches === 1 ? "expired-token" : "fresh-token"))
      const name = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port),
          (c) => c.authenticate({ username: "alice", token, allowCleartext: true })
        )
      )
      expect(name).toBe("XOAUTH2")
      expect(fetches).toBe(2)
      expect(server.attempts).toEqual(["XOAUTH2", "XOAUTH2"])
    }))

  it.scopedLive("with SmtpAuth in context every connection signs in after STARTTLS, without cleartext", () =>
    Effect.gen(function*() {
      const certificate = selfSigned()
      const server = yield* authServer({ disabledCommands: [], key: certificate.key, cert: certificate.cert })
      const state = yield* Effect.scoped(Effect.flatMap(
        connect({
          host: "localhost",
          port: server.port,
          tls: "starttls",
          tlsOptions: { ca: certificate.cert }
        }),
        (c) => c.state
      )).pipe(
        Effect.provide(SmtpAuth.layer({ username: "alice", password, mechanism: "PLAIN" }))
      )
      expect(state.secure).toBe(true)
      expect(state.authenticated).toBe("PLAIN")
    }))

  it.scopedLive("a server without AUTH, or without a common mechanism, is a clear error", () =>
    Effect.gen(function*() {
      const noAuth = yield* smtpServer({ disabledCommands: ["STARTTLS", "AUTH"] })
      const notOffered = yield* Effect.scoped(Effect.flatMap(connectLocal(noAuth.port), (c) =>
        Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true }))))
      expect(notOffered._tag === "SmtpAuthError" && notOffered.failure).toBe("not-offered")
      const server = yield* authServer()
      const pinned = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port), (c) =>
        Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true, mechanism: "SCRAM-SHA-256" }))))
      expect(pinned._tag === "SmtpAuthError" && pinned.failure).toBe("no-common-mechanism")
      expect(pinned.message).toContain("SCRAM-SHA-256")
    }))
})

describe("SmtpConnection.authenticate against scripted servers", () => {
  /** Every connection here gives each command 2 s. */
  const quick = { timeout: "2 seconds" } as const

  it.scopedLive("a SCRAM server that cannot prove it knows the password is refused, and the exchange cancelled", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["AUTH SCRAM-SHA-256"])
        const auth = await session.readLine()
        const clientFirst = Buffer.from(auth.split(" ")[2]!, "base64").toString()
        const clientNonce = /r=([^,]+)/.exec(clientFirst)![1]!
        const serverFirst = `r=${clientNonce}server-nonce,s=${Buffer.from("salt").toString("base64")},i=4096`
        await session.reply(`334 ${Buffer.from(serverFirst).toString("base64")}`)
        await session.readLine()
        // The server does not know the password: its signature is made up.
        await session.reply(`334 ${Buffer.from(`v=${Buffer.alloc(32, 7).toString("base64")}`).toString("base64")}`)
        expect(await session.readLine()).toBe("*")
        await session.reply("501 5.7.0 Authentication cancelled")
        await serveTransaction(session)
      })
      const error = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, quick),
          (c) => Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true }))
        )
      )
      expect(error._tag).toBe("SmtpProtocolError")
      expect(error.message).toContain("SCRAM-SHA-256")
      yield* Effect.promise(() => server.allClosed())
    }))

  it.scopedLive("a malformed challenge is a protocol error, answered with *", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["AUTH LOGIN"])
        await session.readLine()
        await session.reply("334 this is not base64!")
        expect(await session.readLine()).toBe("*")
        await session.reply("501 5.7.0 Authentication cancelled")
        await serveTransaction(session)
      })
      const error = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, quick), (c) =>
        Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true }))))
      expect(error._tag === "SmtpProtocolError" && error.reason).toBe("a 334 challenge is not base64")
    }))

  it.scopedLive("a server that offers AUTH only before STARTTLS is not given credentials in the clear", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["PIPELINING", "AUTH PLAIN LOGIN"])
        await serveTransaction(session)
      })
      const error = yield* Effect.scoped(connectLocal(server.port, { ...quick, tls: "opportunistic" })).pipe(
        Effect.provide(SmtpAuth.layer({ username: "alice", password })),
        Effect.flip
      )
      expect(error._tag === "SmtpAuthError" && error.failure).toBe("cleartext")
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).not.toContain("AUTH")
    }))

  it.scopedLive("454 and 534 are a transient and a permanent failure with their enhanced codes", () =>
    Effect.gen(function*() {
      const refuse = (reply: string) =>
        scriptedServer(async (session) => {
          await greet(session)
          await answerEhlo(session, ["AUTH PLAIN"])
          await session.readLine()
          await session.reply(reply)
          await serveTransaction(session)
        })
      const attempt = (port: number) =>
        Effect.scoped(
          Effect.flatMap(connectLocal(port, quick), (c) =>
            Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true })))
        )
      const transient = yield* attempt((yield* refuse("454 4.7.0 Temporary authentication failure")).port)
      expect(transient._tag === "SmtpTransientError" && [transient.code, transient.enhancedCode]).toEqual([
        454,
        "4.7.0"
      ])
      const weak = yield* attempt((yield* refuse("534 5.7.9 Authentication mechanism is too weak")).port)
      expect(weak._tag === "SmtpPermanentError" && [weak.code, weak.enhancedCode]).toEqual([534, "5.7.9"])
    }))

  it.scopedLive("property: no credential byte sequence appears in the transcript or in any error's text", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["AUTH PLAIN LOGIN CRAM-MD5"])
        for (;;) {
          const line = await session.readLine()
          if (line.startsWith("AUTH LOGIN")) {
            await session.reply("334 VXNlcm5hbWU6")
            await session.readLine()
            await session.reply("334 UGFzc3dvcmQ6")
            await session.readLine()
          } else if (line.startsWith("AUTH CRAM-MD5")) {
            await session.reply("334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+")
            await session.readLine()
          } else if (line === "QUIT") {
            await session.reply("221 Bye")
            return session.end()
          }
          await session.reply("535 5.7.8 Authentication credentials invalid")
        }
      })
      const samples = fc.sample(
        fc.tuple(fc.constantFrom("PLAIN", "LOGIN", "CRAM-MD5"), fc.string({ minLength: 6, maxLength: 24 })),
        { numRuns: 60, seed: 4242 }
      )
      for (const [mechanism, secretText] of samples) {
        const lines: Array<string> = []
        const error = yield* Effect.scoped(Effect.flatMap(
          connectLocal(server.port, { ...quick, onTranscript: (entry) => Effect.sync(() => lines.push(entry.line)) }),
          (c) =>
            Effect.flip(c.authenticate({
              username: "alice",
              password: Redacted.make(secretText),
              allowCleartext: true,
              mechanism
            }))
        ))
        const seen = [...lines, error.message, String(error), JSON.stringify(error)].join("\n")
        const forms = [
          secretText,
          Buffer.from(secretText).toString("base64"),
          Buffer.from(`\u0000alice\u0000${secretText}`).toString("base64")
        ]
        for (const form of forms) expect(seen.includes(form), `${mechanism} leaked ${JSON.stringify(form)}`).toBe(false)
      }
    }))
})

describe("SmtpAuth settings", () => {
  it.effect("come from a URL's credentials or from Config, the password redacted", () =>
    Effect.gen(function*() {
      const url = Either.getOrThrow(SmtpConfig.fromUrl("smtps://al%40ice:p%40ss@mx.example.org"))
      const fromUrl = SmtpAuth.fromCredentials(url.credentials!, { mechanism: "PLAIN" })
      expect(fromUrl.username).toBe("al@ice")
      expect("password" in fromUrl && Redacted.value(fromUrl.password)).toBe("p@ss")
      expect(fromUrl.mechanism).toBe("PLAIN")
      const provider = ConfigProvider.fromMap(new Map([["SMTP_USER", "alice"], ["SMTP_PASSWORD", "hunter2"]]))
      const settings = yield* SmtpAuth.SmtpAuth.pipe(
        Effect.provide(SmtpAuth.layerConfig(SmtpAuth.config())),
        Effect.withConfigProvider(provider)
      )
      expect(settings.username).toBe("alice")
      expect(String("password" in settings && settings.password)).not.toContain("hunter2")
      expect("password" in settings && Redacted.value(settings.password)).toBe("hunter2")
    }))
})
