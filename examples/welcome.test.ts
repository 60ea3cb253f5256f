/**
 * Testing an application's mail without a server: `SmtpClient.layerTest` records what would be sent and can be told
 * to refuse recipients or fail. Run with the other tests (`npm test`), or alone: `npx vitest run examples`.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SmtpClient from "../src/SmtpClient.js"
import { SmtpPermanentError } from "../src/SmtpError.js"
import { Mailer } from "./mailer.js"

const TestMailer = Mailer.layer.pipe(Layer.provideMerge(SmtpClient.layerTest))

describe("Mailer.welcome", () => {
  it.effect("sends one message to the new user", () =>
    Effect.gen(function*() {
      const mailer = yield* Mailer
      const test = yield* SmtpClient.TestClient
      yield* mailer.welcome("someone@example.org")
      const [sent] = yield* test.sent
      expect(sent?.accepted).toEqual(["someone@example.org"])
      expect(Buffer.from(sent!.body).toString()).toContain("Subject: Welcome!")
    }).pipe(Effect.provide(TestMailer)))

  it.effect("reports a refused address as a permanent error", () =>
    Effect.gen(function*() {
      const mailer = yield* Mailer
      const test = yield* SmtpClient.TestClient
      yield* test.refuseRecipients(() =>
        new SmtpPermanentError({ command: "RCPT", code: 550, enhancedCode: "5.1.1", lines: ["No such user"] })
      )
      const error = yield* Effect.flip(mailer.welcome("nobody@example.org"))
      expect(error._tag).toBe("SmtpPermanentError")
      expect(yield* test.sent).toEqual([])
    }).pipe(Effect.provide(TestMailer)))
})
