/**
 * The reliability suite: 20,000 messages through a pool to a server that misbehaves at random (drops at every phase,
 * stalls, 421/451/452, a liar about PIPELINING). Every message must be accounted for exactly once, and nothing may be
 * left open afterwards.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as SmtpClient from "../../src/SmtpClient.js"
import { isSmtpError } from "../../src/SmtpError.js"
import * as SmtpRetry from "../../src/SmtpRetry.js"
import * as SmtpTransport from "../../src/SmtpTransport.js"
import { startFaultyServer } from "../support/fakes/faultyServer.js"

/** Sockets and timers this process holds, by kind. */
const handles = () => {
  const counts = new Map<string, number>()
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1)
  return { sockets: counts.get("TCPSocketWrap") ?? 0, timers: counts.get("Timeout") ?? 0 }
}

const settle = Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200)))

describe("SmtpClient under faults", () => {
  it.live(
    "20,000 messages through a pool: each accounted for exactly once, nothing left open",
    () =>
      Effect.gen(function*() {
        const count = 20_000
        yield* settle
        const before = handles()
        const server = yield* Effect.promise(() => startFaultyServer({ seed: 20261201 }))
        const client = SmtpClient.layer({
          connection: {
            host: "127.0.0.1",
            port: server.port,
            tls: "none",
            clientName: "soak.example",
            timeout: "300 millis"
          },
          pool: { maxConnections: 8, maxMessagesPerConnection: 50 },
          retry: SmtpRetry.policy({ base: "2 millis", cap: "20 millis", retries: 12 })
        }).pipe(Layer.provide(SmtpTransport.layerNode))
        const outcomes = yield* Effect.flatMap(SmtpClient.SmtpClient, (smtp) =>
          Effect.forEach(
            Array.from({ length: count }, (_, i) => i),
            (i) =>
              Effect.either(smtp.send(
                { from: "soak@example.org", to: [`r${i}@example.org`] },
                `Message-ID: <soak-${i}@example.org>\r\nSubject: soak ${i}\r\n\r\nbody ${i}\r\n`
              )),
            { concurrency: 64 }
          )).pipe(Effect.provide(client))

        let sent = 0
        let possiblyDelivered = 0
        const problems: Array<string> = []
        for (const [i, outcome] of outcomes.entries()) {
          const times = server.stored.get(`soak-${i}@example.org`) ?? 0
          if (Either.isRight(outcome)) {
            sent++
            if (times !== 1) problems.push(`message ${i}: reported sent, stored ${times} times`)
            continue
          }
          const error = outcome.left
          if (!isSmtpError(error)) problems.push(`message ${i}: not a typed error: ${String(error)}`)
          const flagged = "mayHaveBeenDelivered" in error && error.mayHaveBeenDelivered === true
          if (flagged) possiblyDelivered++
          if (times > (flagged ? 1 : 0)) problems.push(`message ${i}: ${error._tag}, stored ${times} times`)
        }
        expect(problems).toEqual([])
        expect(outcomes).toHaveLength(count)
        // Stored only what was sent: nothing without a Message-ID we sent, nothing twice.
        expect([...server.stored.keys()].every((id) => /^soak-\d+@example\.org$/.test(id))).toBe(true)
        expect([...server.stored.values()].every((times) => times === 1)).toBe(true)
        // The faults did strike, and the retries got almost everything through.
        expect(server.faults.size).toBeGreaterThanOrEqual(10)
        expect(sent).toBeGreaterThan(count * 0.97)
        expect(count - sent).toBeGreaterThanOrEqual(possiblyDelivered)

        // The layer is closed: every connection was QUIT or closed, and no socket or timer of ours is left.
        yield* Effect.promise(() => server.close())
        yield* settle
        expect(server.openConnections()).toBe(0)
        const after = handles()
        expect(after.sockets).toBeLessThanOrEqual(before.sockets)
        expect(after.timers).toBeLessThanOrEqual(before.timers)
      }),
    240_000
  )
})
