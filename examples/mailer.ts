/**
 * The example application's mail service, for `client.ts` and `welcome.test.ts`.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Message from "../src/Message.js"
import * as SmtpClient from "../src/SmtpClient.js"

/** The application's mail service: all the rest of the app knows about mail. */
export class Mailer extends Context.Tag("example/Mailer")<Mailer, {
  readonly welcome: (address: string) => Effect.Effect<string, SmtpClient.SendError | Message.ComposeError>
}>() {
  /** Built on whatever SmtpClient the layer graph provides. */
  static readonly layer = Layer.effect(
    Mailer,
    Effect.map(SmtpClient.SmtpClient, (smtp) => ({
      welcome: (address: string) =>
        smtp.sendMessage({
          from: "Example <hello@example.org>",
          to: address,
          subject: "Welcome!",
          text: "Thanks for signing up."
        }).pipe(Effect.map((result) => result.messageId))
    }))
  )
}
