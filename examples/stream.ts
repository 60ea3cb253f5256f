/**
 * Sends a body from an Effect Stream: here generated on the fly, but a file or an HTTP response streams the same way,
 * in constant memory and with backpressure.
 *
 *   npx tsx examples/stream.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { embeddedServer } from "./embeddedServer.js"

const lines = 10_000
const body = Stream.concat(
  Stream.make(new TextEncoder().encode("Subject: a long report\r\n\r\n")),
  Stream.range(1, lines).pipe(Stream.map((n) => new TextEncoder().encode(`line ${n} of the report\n`)))
)

const program = Effect.gen(function*() {
  const server = yield* embeddedServer
  const result = yield* Effect.scoped(
    Effect.flatMap(
      SmtpConnection.make({ host: "127.0.0.1", port: server.port }),
      (connection) => connection.send({ from: "reports@example.org", to: ["boss@example.org"] }, body)
    )
  )
  yield* Console.log(`${result.response.code} ${result.response.text}`)
  yield* Console.log(`The server received ${server.received[0]?.body.split("\r\n").length ?? 0} lines.`)
})

program.pipe(Effect.scoped, Effect.provide(SmtpTransport.layerNode), NodeRuntime.runMain)
