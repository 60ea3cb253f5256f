import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Root from "../../src/index.js"
import * as SmtpError from "../../src/SmtpError.js"

const reply = { command: "RCPT", code: 450, enhancedCode: "4.2.0", lines: ["Mailbox busy"] }

describe("SmtpError", () => {
  it("exports the four named error classes and the two extras from the package root", () => {
    expect(Root.NetworkError).toBe(SmtpError.NetworkError)
    expect(Root.TimeoutError).toBe(SmtpError.TimeoutError)
    expect(Root.SmtpTransientError).toBe(SmtpError.SmtpTransientError)
    expect(Root.SmtpPermanentError).toBe(SmtpError.SmtpPermanentError)
    expect(Root.SmtpProtocolError).toBe(SmtpError.SmtpProtocolError)
    expect(Root.InvalidInputError).toBe(SmtpError.InvalidInputError)
    expect(Root.TlsError).toBe(SmtpError.TlsError)
    expect(Root.SmtpAuthError).toBe(SmtpError.SmtpAuthError)
  })

  it("retries network failures, timeouts and 4xx replies, and nothing else", () => {
    const retryable = [
      new SmtpError.NetworkError({ operation: "connect", code: "ECONNREFUSED" }),
      new SmtpError.TimeoutError({ phase: "greeting", timeoutMillis: 300_000, mayHaveBeenDelivered: false }),
      new SmtpError.SmtpTransientError(reply)
    ]
    const final = [
      new SmtpError.SmtpPermanentError({ ...reply, code: 550, enhancedCode: "5.1.1" }),
      new SmtpError.SmtpProtocolError({ reason: "garbage" }),
      new SmtpError.InvalidInputError({ field: "RCPT TO address", reason: "it is empty" }),
      new SmtpError.TlsError({ failure: "wrong-host-name", host: "mx.example.org" }),
      new SmtpError.SmtpAuthError({ failure: "no-common-mechanism", detail: "offered: GSSAPI" }),
      new Error("not ours"),
      "a string"
    ]
    expect(retryable.map(SmtpError.isRetryable)).toEqual([true, true, true])
    expect(final.map(SmtpError.isRetryable)).toEqual([false, false, false, false, false, false, false])
    expect([...retryable, ...final].map(SmtpError.isSmtpError)).toEqual([...Array(8).fill(true), false, false])
    expect(SmtpError.isReplyError(retryable[2])).toBe(true)
    expect(SmtpError.isReplyError(retryable[0])).toBe(false)
  })

  it("gives messages a person can act on", () => {
    expect(
      new SmtpError.NetworkError({ operation: "connect", code: "ECONNREFUSED", cause: new Error("refused") }).message
    )
      .toBe("Network failure during connect (ECONNREFUSED): refused")
    expect(
      new SmtpError.TimeoutError({ phase: "end of data", timeoutMillis: 600_000, mayHaveBeenDelivered: true }).message
    )
      .toBe("Timed out after 600000 ms waiting for end of data; the message may have been delivered")
    expect(new SmtpError.SmtpTransientError(reply).message).toBe("Transient failure to RCPT: 450 4.2.0 Mailbox busy")
    expect(new SmtpError.SmtpProtocolError({ reason: "bad", command: "EHLO" }).message)
      .toBe("SMTP protocol violation in reply to EHLO: bad")
    expect(new SmtpError.SmtpAuthError({ failure: "cleartext", detail: "" }).message)
      .toBe("Authentication: the connection is not encrypted, and authenticating in cleartext was not allowed")
  })

  it.effect("are yieldable failures with their tag", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(new SmtpError.SmtpTransientError(reply))
      expect(error._tag).toBe("SmtpTransientError")
      const caught = yield* new SmtpError.SmtpPermanentError({ ...reply, code: 550 }).pipe(
        Effect.catchTag("SmtpPermanentError", (e) => Effect.succeed(e.code))
      )
      expect(caught).toBe(550)
    }))
})
