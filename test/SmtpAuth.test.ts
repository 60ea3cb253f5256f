import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type { SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerSession } from "smtp-server"
import * as SmtpAuth from "../src/SmtpAuth.js"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { smtpServer } from "./support/smtpServer.js"
import { selfSigned } from "./support/tls.js"

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

const open = (port: number, options: Partial<SmtpConnection.Options> = {}) =>
  SmtpConnection.make({ host: "127.0.0.1", port, tls: "none", ...options }).pipe(
    Effect.provide(SmtpTransport.layerNode)
  )

describe("SmtpConnection.authenticate against smtp-server", () => {
  it.scopedLive("refuses to authenticate in cleartext unless allowed, sending nothing", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      const error = yield* Effect.scoped(
        Effect.flatMap(open(server.port), (c) => Effect.flip(c.authenticate({ username: "alice", password })))
      )
      expect(error._tag === "SmtpAuthError" && error.failure).toBe("cleartext")
      expect(server.attempts).toEqual([])
    }))

  it.scopedLive("chooses the strongest common mechanism, or the pinned one, and says which signed in", () =>
    Effect.gen(function*() {
      const server = yield* authServer()
      const signIn = (mechanism?: string) =>
        Effect.scoped(Effect.gen(function*() {
          const c = yield* open(server.port)
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
          open(server.port, { onTranscript: (entry) => Effect.sync(() => lines.push(entry.line)) }),
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
        Effect.flatMap(open(server.port), (c) => c.authenticate({ username: "alice", token, allowCleartext: true }))
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
        SmtpConnection.make({
          host: "localhost",
          port: server.port,
          tls: "starttls",
          tlsOptions: { ca: certificate.cert }
        }),
        (c) => c.state
      )).pipe(
        Effect.provide(SmtpTransport.layerNode),
        Effect.provide(SmtpAuth.layer({ username: "alice", password, mechanism: "PLAIN" }))
      )
      expect(state.secure).toBe(true)
      expect(state.authenticated).toBe("PLAIN")
    }))

  it.scopedLive("a server without AUTH, or without a common mechanism, is a clear error", () =>
    Effect.gen(function*() {
      const noAuth = yield* smtpServer({ disabledCommands: ["STARTTLS", "AUTH"] })
      const notOffered = yield* Effect.scoped(Effect.flatMap(open(noAuth.port), (c) =>
        Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true }))))
      expect(notOffered._tag === "SmtpAuthError" && notOffered.failure).toBe("not-offered")
      const server = yield* authServer()
      const pinned = yield* Effect.scoped(Effect.flatMap(open(server.port), (c) =>
        Effect.flip(c.authenticate({ username: "alice", password, allowCleartext: true, mechanism: "SCRAM-SHA-256" }))))
      expect(pinned._tag === "SmtpAuthError" && pinned.failure).toBe("no-common-mechanism")
      expect(pinned.message).toContain("SCRAM-SHA-256")
    }))
})
