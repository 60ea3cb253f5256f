/**
 * The instruction-count case's client, run under `valgrind --tool=callgrind` by instructions.ts: one connection sends
 * `count` messages of 5,000 octets to smtp-server, ours with `sendAll`, Nodemailer with every `sendMail` at once, as
 * the CPU case of the submission group does. It checks every result and exits; callgrind counts what it executed.
 *
 * `node instructionClient.js <port> <count> ours|nodemailer`
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { messages, nodemailerTarget } from "./messages.js"

const ours = async (port: number, count: number): Promise<number> => {
  const submissions = messages(count).map((m) => ({ envelope: { from: m.from, to: [m.to] }, body: m.body }))
  const results = await Effect.runPromise(
    Effect.gen(function*() {
      const connection = yield* SmtpConnection.make({
        host: "127.0.0.1",
        port,
        tls: "none",
        clientName: "bench.example"
      })
      return yield* Stream.runCollect(connection.sendAll(submissions))
    }).pipe(Effect.scoped, Effect.provide(SmtpTransport.layerNode))
  )
  let sent = 0
  for (const result of results) if (Either.isRight(result) && result.right.response.code === 250) sent++
  return sent
}

const viaNodemailer = async (port: number, count: number): Promise<number> => {
  const { default: nodemailer } = await import("nodemailer")
  // As in the CPU case: one pooled connection that is never retired.
  const transport = nodemailer.createTransport({
    ...nodemailerTarget(port),
    pool: true,
    maxConnections: 1,
    maxMessages: Infinity
  })
  try {
    const infos = await Promise.all(
      messages(count).map((m) => transport.sendMail({ envelope: { from: m.from, to: [m.to] }, raw: m.body }))
    )
    return infos.filter((info) => info.response.startsWith("250")).length
  } finally {
    transport.close()
  }
}

const main = async (): Promise<void> => {
  const port = Number(process.argv[2])
  const count = Number(process.argv[3])
  const sent = await (process.argv[4] === "nodemailer" ? viaNodemailer : ours)(port, count)
  if (sent !== count) throw new Error(`${process.argv[4]}: ${sent} of ${count} messages sent`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
