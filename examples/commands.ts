/**
 * One command at a time, as with the classic clients (Poco's SMTPClientSession, Hunny's SmtpClient): every command is
 * an Effect, and a negative reply is a typed failure you can catch by its tag.
 *
 *   npx tsx examples/commands.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Capabilities from "../src/Capabilities.js"
import * as SmtpCommand from "../src/SmtpCommand.js"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { embeddedServer } from "./embeddedServer.js"

const program = Effect.gen(function*() {
  const server = yield* embeddedServer
  const connection = yield* SmtpConnection.make({ host: "127.0.0.1", port: server.port, timeout: "30 seconds" })
  const state = yield* connection.state
  yield* Console.log(`Greeting: ${state.greeting.text}`)
  yield* Console.log(`Extensions: ${state.capabilities.entries.map((e) => e.keyword).join(" ")}`)
  yield* Console.log(`Pipelining: ${Capabilities.pipelining(state.capabilities)}`)

  yield* connection.noop()
  yield* connection.mail("sender@example.org", { body: "8BITMIME" })
  yield* connection.rcpt("first@example.org")
  const reply = yield* connection.data("Subject: step by step\r\n\r\nHello.\r\n")
  yield* Console.log(`DATA: ${reply.code} ${reply.text}`)

  // A raw command returns whatever the server answers, for extensions the library does not know.
  const raw = yield* connection.command(SmtpCommand.raw("XPING"))
  yield* Console.log(`XPING: ${raw.code} ${raw.text}`)

  // A refused address is a typed error: here it is caught and reported.
  yield* connection.rcpt("not an address").pipe(
    Effect.catchTag("InvalidInputError", (error) => Console.log(`Refused before sending: ${error.message}`))
  )
  // Closing the scope sends QUIT and closes the socket.
})

program.pipe(Effect.scoped, Effect.provide(SmtpTransport.layerNode), NodeRuntime.runMain)
