/**
 * `npm start`: sends a real message through effect-smtp to an SMTP server embedded in this process (on a free
 * loopback port), then prints the session's transcript and what the server received. No configuration needed.
 */
import { NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { embeddedServer } from "./embeddedServer.js"

const message = [
  "From: Effect SMTP <demo@example.org>",
  "To: Receiver <receiver@example.org>",
  "Subject: Hello from effect-smtp",
  "",
  "This message went through effect-smtp's SmtpConnection.",
  ".A line starting with a dot is dot-stuffed on the wire and arrives intact.",
  "A bare LF\nand a bare CR\rboth became CRLF.",
  ""
].join("\r\n")

const program = Effect.gen(function*() {
  const server = yield* embeddedServer
  const transcript: Array<string> = []
  const result = yield* Effect.scoped(
    Effect.gen(function*() {
      const connection = yield* SmtpConnection.make({
        host: "127.0.0.1",
        port: server.port,
        clientName: "client.example.org",
        onTranscript: (entry) =>
          Effect.sync(() => transcript.push(`${entry.direction === "client" ? "C" : "S"}: ${entry.line}`))
      })
      return yield* connection.send({ from: "demo@example.org", to: ["receiver@example.org"] }, message)
    })
  )
  yield* Console.log(
    `Sent one message to the embedded SMTP server on 127.0.0.1:${server.port}: ${result.response.text}\n`
  )
  yield* Console.log("Transcript:")
  for (const line of transcript) yield* Console.log(`  ${line}`)
  yield* Console.log("\nWhat the server received:")
  for (const mail of server.received) {
    yield* Console.log(`  MAIL FROM: ${mail.from}\n  RCPT TO:   ${mail.to.join(", ")}`)
    for (const line of mail.body.split("\r\n")) yield* Console.log(`  | ${line}`)
  }
})

program.pipe(Effect.scoped, Effect.provide(SmtpTransport.layerNode), NodeRuntime.runMain)
