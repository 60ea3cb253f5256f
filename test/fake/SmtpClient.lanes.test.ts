/**
 * SmtpClient's connections as lanes: sends from many fibers join one connection's pipeline, each with its own outcome
 * and its own retries, and a connection that breaks hands the sends it never began to write to a new one.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import * as SmtpClient from "../../src/SmtpClient.js"
import * as SmtpRetry from "../../src/SmtpRetry.js"
import * as SmtpTransport from "../../src/SmtpTransport.js"
import type { ScriptedSession } from "../support/fakes/scriptedServer.js"
import {
  answerEhlo,
  ClientClosedError,
  greet,
  scriptedServer,
  serveTransaction,
  verbOf
} from "../support/fakes/scriptedServer.js"
import { recordingTracer } from "../support/helpers/spans.js"

const fast = SmtpRetry.policy({ base: "5 millis", cap: "20 millis", jitter: false })

const withClient = <A, E>(
  port: number,
  options: Partial<SmtpClient.Options>,
  use: (client: SmtpClient.Service) => Effect.Effect<A, E>
) =>
  Effect.provide(
    Effect.flatMap(SmtpClient.SmtpClient, use),
    SmtpClient.layer({
      connection: { host: "127.0.0.1", port, tls: "none", clientName: "client.example", timeout: "5 seconds" },
      retry: fast,
      ...options
    }).pipe(Layer.provide(SmtpTransport.layerNode))
  )

/** A delivery the server took: the message (by its Message-ID) and the recipients of that transaction. */
interface Delivery {
  readonly id: string
  readonly rcpts: ReadonlyArray<string>
  readonly connection: number
}

const address = (line: string) => /<([^>]*)>/.exec(line)?.[1] ?? ""

/**
 * A server with rules by address and header, that answers every command as it reads it (so a pipelining client gets
 * its replies in order): MAIL from `refuse-mail…` gets 550; RCPT to `perm…` 550, to `temp…` 451 the first time and
 * 250 after; a body with `X-Refuse: yes` gets 554 at its end, one with `X-Defer: yes` 451 the first time. `dropAfter`:
 * the first connection is dropped, unanswered, once the end of data of that Message-ID is read.
 */
const rulesServer = (capabilities: ReadonlyArray<string>, options: { readonly dropAfter?: string } = {}) => {
  const deliveries: Array<Delivery> = []
  const seen = new Set<string>()
  const serve = async (session: ScriptedSession) => {
    await greet(session)
    await answerEhlo(session, capabilities)
    let mail = false
    let rcpts: Array<string> = []
    let chunks = ""
    /** The end of a message's data: stored, refused or deferred by its header. */
    const end = async (content: string) => {
      const id = /Message-ID: <([^>]+)>/.exec(content)?.[1] ?? "?"
      const valid = mail && rcpts.length > 0
      const taken = rcpts
      mail = false
      rcpts = []
      chunks = ""
      if (options.dropAfter === id && session.index === 0) return session.drop()
      if (!valid) return session.reply("554 5.5.1 Error: no valid recipients")
      if (content.includes("X-Refuse: yes")) return session.reply("554 5.6.0 Refused by rule")
      if (content.includes("X-Defer: yes") && !seen.has(`defer ${id}`)) {
        seen.add(`defer ${id}`)
        return session.reply("451 4.3.0 Deferred by rule")
      }
      deliveries.push({ id, rcpts: taken, connection: session.index })
      return session.reply("250 2.0.0 Ok: queued")
    }
    for (;;) {
      let line: string
      try {
        line = await session.readLine()
      } catch (error) {
        if (error instanceof ClientClosedError) return
        throw error
      }
      const verb = verbOf(line)
      if (verb === "MAIL") {
        rcpts = []
        chunks = ""
        mail = !address(line).startsWith("refuse-mail")
        await session.reply(mail ? "250 2.1.0 Ok" : "550 5.7.1 Sender refused by rule")
      } else if (verb === "RCPT") {
        const to = address(line)
        if (!mail) await session.reply("503 5.5.1 Error: need MAIL command")
        else if (to.startsWith("perm")) await session.reply("550 5.1.1 Unknown user")
        else if (to.startsWith("temp") && !seen.has(to)) {
          seen.add(to)
          await session.reply("451 4.2.1 Try again later")
        } else {
          rcpts.push(to)
          await session.reply("250 2.1.5 Ok")
        }
      } else if (verb === "DATA") {
        if (!mail || rcpts.length === 0) {
          mail = false
          await session.reply("554 5.5.1 Error: no valid recipients")
        } else {
          await session.reply("354 End data with <CR><LF>.<CR><LF>")
          await end(await session.readData())
        }
      } else if (verb === "BDAT") {
        const [, size, last] = /^BDAT (\d+)( LAST)?$/.exec(line)!
        chunks += await session.readBytes(Number(size))
        if (last !== undefined) await end(chunks)
        else await session.reply(mail && rcpts.length > 0 ? "250 2.0.0 Ok" : "554 5.5.1 Error: no valid recipients")
      } else if (verb === "RSET") {
        mail = false
        rcpts = []
        chunks = ""
        await session.reply("250 2.0.0 Ok")
      } else if (verb === "QUIT") {
        await session.reply("221 2.0.0 Bye")
        return session.end()
      } else {
        await session.reply("502 5.5.2 Error: command not recognized")
      }
    }
  }
  return Effect.map(scriptedServer(serve), (server) => ({ server, deliveries }))
}

/** Message `i`, over 4 KiB: alone on a connection it goes as DATA, so BDAT shows that it shared a pipeline. */
const body = (i: number, extra = "") =>
  `Message-ID: <m${i}@example.org>\r\n${extra}Subject: ${i}\r\n\r\n${`body ${i} ${"x".repeat(70)}\r\n`.repeat(60)}`

/** What each message of the mixed batch is, by its number. */
const kinds = ["ok", "perm-rcpt", "temp-rcpt", "refuse-mail", "refuse-data", "defer-data", "all-perm"] as const

const mixed = (i: number) => {
  const kind = kinds[i % kinds.length]!
  const to = kind === "perm-rcpt"
    ? [`ok${i}@example.org`, `perm${i}@example.org`]
    : kind === "temp-rcpt"
    ? [`ok${i}@example.org`, `temp${i}@example.org`]
    : kind === "all-perm"
    ? [`perm${i}a@example.org`, `perm${i}b@example.org`]
    : [`ok${i}@example.org`]
  const from = kind === "refuse-mail" ? `refuse-mail${i}@example.org` : `s${i}@example.org`
  const extra = kind === "refuse-data" ? "X-Refuse: yes\r\n" : kind === "defer-data" ? "X-Defer: yes\r\n" : ""
  return { kind, envelope: { from, to }, body: body(i, extra) }
}

/** What each send must get: its outcome, attempts, and the deliveries the server must hold for it, in order. */
const expectedOf = (i: number) => {
  switch (mixed(i).kind) {
    case "ok":
      return { ok: true, accepted: [`ok${i}@example.org`], rejected: [], attempts: 1, stored: [[`ok${i}@example.org`]] }
    case "perm-rcpt":
      return {
        ok: true,
        accepted: [`ok${i}@example.org`],
        rejected: [[`perm${i}@example.org`, 550]],
        attempts: 1,
        stored: [[`ok${i}@example.org`]]
      }
    case "temp-rcpt":
      // Only the recipient refused with 451 is tried again, with the message sent a second time to it alone.
      return {
        ok: true,
        accepted: [`ok${i}@example.org`, `temp${i}@example.org`],
        rejected: [],
        attempts: 2,
        stored: [[`ok${i}@example.org`], [`temp${i}@example.org`]]
      }
    case "refuse-mail":
      return { ok: false, code: 550, tag: "SmtpPermanentError", stored: [] }
    case "refuse-data":
      return { ok: false, code: 554, tag: "SmtpPermanentError", stored: [] }
    case "defer-data":
      return { ok: true, accepted: [`ok${i}@example.org`], rejected: [], attempts: 2, stored: [[`ok${i}@example.org`]] }
    case "all-perm":
      return { ok: false, code: 550, tag: "SmtpPermanentError", stored: [] }
  }
}

const outcomeOf = (result: Either.Either<SmtpClient.SendResult, SmtpClient.SendError>) =>
  Either.isRight(result)
    ? {
      ok: true,
      accepted: result.right.accepted.map((a) => a.recipient),
      rejected: result.right.rejected.map((r) => [r.recipient, r.error.code]),
      attempts: result.right.attempts
    }
    : { ok: false, tag: result.left._tag, code: "code" in result.left ? result.left.code : undefined }

describe("sends share a connection's pipeline", () => {
  for (const capabilities of [["PIPELINING", "8BITMIME"], ["PIPELINING", "8BITMIME", "CHUNKING"]]) {
    it.scopedLive(
      `${
        capabilities.join(" ")
      }: among mixed refusals, each send gets its own outcome and retries only its own message`,
      () =>
        Effect.gen(function*() {
          const count = 140
          const { deliveries, server } = yield* rulesServer(capabilities)
          const results = yield* withClient(
            server.port,
            { pool: { maxConnections: 1, maxMessagesPerConnection: 1000 } },
            (client) =>
              Effect.forEach(
                Array.from({ length: count }, (_, i) => i),
                (i) => Effect.either(client.send(mixed(i).envelope, mixed(i).body)),
                { concurrency: "unbounded" }
              )
          )
          for (let i = 0; i < count; i++) {
            const { stored, ...outcome } = expectedOf(i)
            expect({ i, ...outcomeOf(results[i]!) }).toEqual({ i, ...outcome })
            const mine = deliveries.filter((d) => d.id === `m${i}@example.org`).map((d) => d.rcpts)
            expect({ i, mine }).toEqual({ i, mine: stored })
          }
          // Every send and every retry on the one connection, which stayed in step to its QUIT.
          expect(server.connections()).toBe(1)
          expect(server.scriptErrors()).toEqual([])
          expect(server.transcripts()[0]!.endsWith("QUIT\r\n")).toBe(true)
          if (capabilities.includes("CHUNKING")) {
            // A message this long goes as BDAT only when another is in flight or follows at once on the connection:
            // the sends shared its pipeline.
            const bdat = results.filter((r) => Either.isRight(r) && r.right.method === "BDAT").length
            expect(bdat).toBeGreaterThan(count / 4)
          }
        }),
      60_000
    )
  }

  it.scopedLive("SmtpClient.sendAll: one result per submission, in order, over the pool", () =>
    Effect.gen(function*() {
      const count = 70
      const { deliveries, server } = yield* rulesServer(["PIPELINING", "8BITMIME", "CHUNKING"])
      const results = yield* withClient(
        server.port,
        { pool: { maxConnections: 2 } },
        (client) =>
          Stream.runCollect(client.sendAll(
            Stream.fromIterable(Array.from({ length: count }, (_, i) => i)).pipe(
              Stream.map((i) => ({ envelope: mixed(i).envelope, body: mixed(i).body }))
            )
          ))
      )
      const list = Array.from(results)
      expect(list).toHaveLength(count)
      for (let i = 0; i < count; i++) {
        const { stored, ...outcome } = expectedOf(i)
        expect({ i, ...outcomeOf(list[i]!) }).toEqual({ i, ...outcome })
        expect(deliveries.filter((d) => d.id === `m${i}@example.org`).map((d) => d.rcpts)).toEqual(stored)
      }
    }))
})

describe("each send's span", () => {
  it.scopedLive("a send is one client span under the caller's span, ended, with the server's address", () =>
    Effect.gen(function*() {
      const { server } = yield* rulesServer(["PIPELINING", "8BITMIME"])
      const { spans, tracer: recording } = yield* recordingTracer
      yield* withClient(server.port, { pool: { maxConnections: 1 } }, (client) =>
        Effect.forEach(
          [1, 2, 3],
          (i) => client.send({ from: `s${i}@example.org`, to: [`ok${i}@example.org`] }, body(i)),
          { concurrency: "unbounded" }
        ).pipe(Effect.withSpan("app.request"))).pipe(Effect.withTracer(recording))
      const request = spans.find((span) => span.name === "app.request")!
      const sends = spans.filter((span) => span.name === "smtp.client.send")
      expect(sends).toHaveLength(3)
      for (const span of sends) {
        expect(span.kind).toBe("client")
        expect(span.attributes.get("server.address")).toBe("127.0.0.1")
        expect(span.status._tag).toBe("Ended")
        expect(span.parent._tag === "Some" && span.parent.value.spanId).toBe(request.spanId)
      }
    }))
})

describe("a connection that breaks under queued sends", () => {
  it.scopedLive(
    "dropped after a message's end of data: it is flagged, not resent; the sends not yet written go on a new connection",
    () =>
      Effect.gen(function*() {
        const count = 20
        const { deliveries, server } = yield* rulesServer(["PIPELINING", "8BITMIME"], { dropAfter: "m5@example.org" })
        const results = yield* withClient(
          server.port,
          { pool: { maxConnections: 1 } },
          (client) =>
            Effect.forEach(
              Array.from({ length: count }, (_, i) => i),
              (i) => Effect.either(client.send({ from: `s${i}@example.org`, to: [`ok${i}@example.org`] }, body(i))),
              { concurrency: "unbounded" }
            )
        )
        // Message 5 may have been delivered: not resent (the default rule of every policy).
        const dropped = results[5]!
        expect(Either.isLeft(dropped) && dropped.left._tag === "NetworkError" && dropped.left.mayHaveBeenDelivered)
          .toBe(true)
        // Message 6's envelope had left with 5's end of data: it failed with the connection and its retry sent it.
        // The sends behind it had not begun: they went on the new connection as their first attempt.
        expect(results.map((r, i) => [i, Either.isRight(r) ? r.right.attempts : r.left._tag])).toEqual(
          results.map((_, i) => [i, i === 5 ? "NetworkError" : i === 6 ? 2 : 1])
        )
        expect(server.connections()).toBe(2)
        const on = (connection: number) => deliveries.filter((d) => d.connection === connection).map((d) => d.id).sort()
        expect(on(0)).toEqual([0, 1, 2, 3, 4].map((i) => `m${i}@example.org`).sort())
        expect(on(1)).toEqual(Array.from({ length: 14 }, (_, k) => `m${k + 6}@example.org`).sort())
      }),
    30_000
  )

  it.scopedLive("closed by the server while idle: the sends queued on it go on a new connection, none lost", () =>
    Effect.gen(function*() {
      const count = 20
      let first = true
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["PIPELINING", "8BITMIME", "CHUNKING"])
        if (first) {
          first = false
          // One message, then the server times the idle session out.
          await session.readLine()
          await session.readLine()
          const bdat = /^BDAT (\d+)/.exec(await session.readLine())
          if (bdat !== null) await session.readBytes(Number(bdat[1]))
          await session.write("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n")
          await new Promise((resolve) => setTimeout(resolve, 100))
          await session.reply("421 4.4.2 Idle timeout, closing")
          return session.end()
        }
        await serveTransaction(session)
      })
      const results = yield* withClient(
        server.port,
        // No retries and no health check: only the hand-over keeps these sends alive.
        { pool: { maxConnections: 1, healthCheck: false }, retry: false },
        (client) =>
          Effect.gen(function*() {
            yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, body(0), { chunking: true })
            yield* Effect.sleep("300 millis")
            return yield* Effect.forEach(
              Array.from({ length: count }, (_, i) => i + 1),
              (i) => Effect.either(client.send({ from: "a@example.org", to: ["b@example.org"] }, body(i))),
              { concurrency: "unbounded" }
            )
          })
      )
      expect(results.map((r) => Either.isRight(r) ? r.right.attempts : r.left._tag)).toEqual(
        Array.from({ length: count }, () => 1)
      )
      expect(server.connections()).toBe(2)
    }))
})
