/**
 * Bulk sending through a pool, with progress: 500 messages over 4 connections, a progress line every 100 messages,
 * and the client's metrics at the end.
 *
 *   npx tsx examples/bulk.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as SmtpClient from "../src/SmtpClient.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { embeddedServer } from "./embeddedServer.js"

const total = 500

const program = Effect.gen(function*() {
  const server = yield* embeddedServer
  const done = yield* Ref.make(0)
  const outcomes = yield* Effect.flatMap(SmtpClient.SmtpClient, (smtp) =>
    Effect.forEach(
      Array.from({ length: total }, (_, i) => i),
      (i) =>
        smtp.send(
          { from: "news@example.org", to: [`reader${i}@example.org`] },
          `Subject: Issue 42\r\n\r\nHello reader ${i}!\r\n`
        ).pipe(
          Effect.either,
          Effect.tap(() =>
            Effect.flatMap(
              Ref.updateAndGet(done, (n) => n + 1),
              (n) => n % 100 === 0 ? Console.log(`${n} of ${total} sent`) : Effect.void
            )
          )
        ),
      { concurrency: 16 }
    )).pipe(
      Effect.provide(
        SmtpClient.layer({
          connection: { host: "127.0.0.1", port: server.port, tls: "none" },
          pool: { maxConnections: 4, maxMessagesPerConnection: 200 }
        }).pipe(Layer.provide(SmtpTransport.layerNode))
      )
    )
  const failed = outcomes.filter(Either.isLeft).length
  const sent = yield* Metric.value(SmtpClient.metrics.messagesSent)
  yield* Console.log(`Done: ${total - failed} accepted, ${failed} failed; the server has ${server.received.length}.`)
  yield* Console.log(`smtp_client_messages_sent is ${sent.count}`)
})

program.pipe(Effect.scoped, NodeRuntime.runMain)
