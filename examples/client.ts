/**
 * SmtpClient in an Effect application: the app's own `Mailer` service depends on `SmtpClient`, and the layer graph
 * decides how mail goes out (here a pool to the embedded server, with a retry policy of our own; in tests,
 * `SmtpClient.layerTest`, see `welcome.test.ts`). `Mailer` is in `mailer.ts`.
 *
 *   npx tsx examples/client.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SmtpClient from "../src/SmtpClient.js"
import * as SmtpRetry from "../src/SmtpRetry.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { embeddedServer } from "./embeddedServer.js"
import { Mailer } from "./mailer.js"

/** A retry policy of our own: quicker and shorter than the default, for an interactive sign-up. */
const signUpRetries = SmtpRetry.policy({ base: "200 millis", cap: "2 seconds", retries: 3 })

const program = Effect.gen(function*() {
  const server = yield* embeddedServer
  const smtp = SmtpClient.layer({
    connection: { host: "127.0.0.1", port: server.port, tls: "none" },
    pool: { maxConnections: 2 },
    retry: signUpRetries
  }).pipe(Layer.provide(SmtpTransport.layerNode))
  const messageId = yield* Effect.flatMap(Mailer, (mailer) => mailer.welcome("new.user@example.org")).pipe(
    Effect.provide(Mailer.layer.pipe(Layer.provide(smtp)))
  )
  yield* Console.log(`Sent the welcome message ${messageId}`)
  yield* Console.log(`The server received it for ${server.received[0]?.to.join(", ")}`)
})

program.pipe(Effect.scoped, NodeRuntime.runMain)
