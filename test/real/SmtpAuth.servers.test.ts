import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as SmtpAuth from "../../src/SmtpAuth.js"
import type * as SmtpConnection from "../../src/SmtpConnection.js"
import { aiosmtpdBinaries, aiosmtpdInstall, startAiosmtpd } from "../support/daemons/aiosmtpd.js"
import {
  dovecotBinaries,
  dovecotInstall,
  postfixBinaries,
  postfixInstall,
  startPostfix
} from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"
import { connect } from "../support/helpers/connect.js"

const user = "alice@example.org"
const password = "correct horse battery staple"

const withAiosmtpd = requireServer("aiosmtpd", aiosmtpdBinaries, aiosmtpdInstall)
const withDovecot = requireServer("Postfix", postfixBinaries, postfixInstall) &&
  requireServer("Dovecot", dovecotBinaries, dovecotInstall)

const signIn = (
  options: SmtpConnection.Options,
  mechanism: string | undefined,
  secret: string,
  extra: Partial<SmtpAuth.Settings> = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    const connection = yield* connect(options)
    const name = yield* connection.authenticate({
      username: user,
      password: Redacted.make(secret),
      mechanism,
      allowCleartext: true,
      ...extra
    })
    const state = yield* connection.state
    expect(state.authenticated).toBe(name)
    // Signed in, the session goes on.
    expect((yield* connection.noop()).code).toBe(250)
    return name
  }))

describe.skipIf(!withAiosmtpd)("every mechanism against aiosmtpd (Debian)", () => {
  it.scopedLive("PLAIN, LOGIN and CRAM-MD5 sign in; a wrong password is a 535", () =>
    Effect.gen(function*() {
      const server = yield* startAiosmtpd({ user, password })
      const options = { host: server.host, port: server.port, tls: "none" as const }
      for (const mechanism of ["PLAIN", "LOGIN", "CRAM-MD5"]) {
        expect(yield* signIn(options, mechanism, password)).toBe(mechanism)
        const refused = yield* Effect.flip(signIn(options, mechanism, "wrong password"))
        expect(refused._tag === "SmtpPermanentError" && refused.code, mechanism).toBe(535)
      }
      expect(yield* signIn(options, undefined, password)).toBe("CRAM-MD5")
    }))
})

describe.skipIf(!withDovecot)("every mechanism against Postfix with Dovecot SASL (Debian)", () => {
  it.scopedLive("PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1 and SCRAM-SHA-256 sign in; a wrong password is a 535", () =>
    Effect.gen(function*() {
      const server = yield* startPostfix({ sasl: { users: [{ user, password }] } })
      const options = { host: server.host, port: server.ports.plain, tls: "none" as const }
      for (const mechanism of ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]) {
        expect(yield* signIn(options, mechanism, password)).toBe(mechanism)
        const refused = yield* Effect.flip(signIn(options, mechanism, "wrong password"))
        expect(refused._tag === "SmtpPermanentError" && refused.code, mechanism).toBe(535)
      }
      // Unpinned: the strongest both sides support, with the server's signature verified.
      expect(yield* signIn(options, undefined, password)).toBe("SCRAM-SHA-256")
    }))

  it.scopedLive("on the STARTTLS port, SmtpAuth signs in only after STARTTLS, and sends mail as the user", () =>
    Effect.gen(function*() {
      const server = yield* startPostfix({ sasl: { users: [{ user, password }] } })
      const before = (yield* server.messages()).length
      const state = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* connect({
          host: server.servername,
          port: server.ports.starttls,
          tls: "starttls",
          tlsOptions: { ca: server.certificatePem }
        })
        yield* connection.send({ from: user, to: ["rcpt@example.org"] }, "Subject: signed in\r\n\r\nhello\r\n")
        return yield* connection.state
      })).pipe(
        Effect.provide(SmtpAuth.layer({ username: user, password: Redacted.make(password) }))
      )
      expect(state.secure).toBe(true)
      expect(state.authenticated).toBe("SCRAM-SHA-256")
      const delivered = yield* server.waitForMessages(before + 1)
      expect(delivered.at(-1)!.raw).toContain("Subject: signed in")
    }))
})
