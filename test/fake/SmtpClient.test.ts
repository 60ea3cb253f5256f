/**
 * SmtpClient against real sockets: the pool (limits, age, reuse checks, dropping broken connections, fairness,
 * shutdown), retries as Schedules (only the recipients refused with a 4xx again; never a permanent error; never a
 * message that may have been delivered), the rate limit and the cap on transactions, metrics, and the test layer.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as SmtpClient from "../../src/SmtpClient.js"
import { InvalidInputError, SmtpPermanentError, SmtpTransientError } from "../../src/SmtpError.js"
import * as SmtpRetry from "../../src/SmtpRetry.js"
import * as SmtpTransport from "../../src/SmtpTransport.js"
import { readerOver } from "../support/fakes/readerBody.js"
import type { ScriptedSession } from "../support/fakes/scriptedServer.js"
import { answerEhlo, greet, scriptedServer, serveTransaction, verbOf } from "../support/fakes/scriptedServer.js"
import { smtpServer } from "../support/fakes/smtpServer.js"

const fast = SmtpRetry.policy({ base: "5 millis", cap: "20 millis", jitter: false })

const clientLayer = (port: number, options: Partial<SmtpClient.Options> = {}) =>
  SmtpClient.layer({
    connection: { host: "127.0.0.1", port, tls: "none", clientName: "client.example", timeout: "2 seconds" },
    retry: fast,
    ...options
  }).pipe(Layer.provide(SmtpTransport.layerNode))

const withClient = <A, E>(
  port: number,
  options: Partial<SmtpClient.Options>,
  use: (client: SmtpClient.Service) => Effect.Effect<A, E>
) => Effect.provide(Effect.flatMap(SmtpClient.SmtpClient, use), clientLayer(port, options))

const message = (i: number) => `Subject: message ${i}\r\n\r\nbody ${i}\r\n`

/** smtp-server, with the sessions (connections) that carried a MAIL. */
const sessionCountingServer = Effect.suspend(() => {
  const sessions = new Set<string>()
  return Effect.map(
    smtpServer({
      onMailFrom(_address, session, callback) {
        sessions.add(session.id)
        callback()
      }
    }),
    (server) => ({ server, sessions })
  )
})

/** Waits on real time, for sockets to do their work while the test clock stands still. */
const realSleep = (millis: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, millis)))

describe("the pool", () => {
  it.scopedLive("spreads concurrent sends over at most maxConnections, fairly, and QUITs them all at the end", () =>
    Effect.gen(function*() {
      const perConnection = new Map<string, number>()
      let quits = 0
      const server = yield* smtpServer({
        onMailFrom(_address, session, callback) {
          perConnection.set(session.id, (perConnection.get(session.id) ?? 0) + 1)
          callback()
        },
        onClose() {
          quits++
        }
      })
      yield* withClient(server.port, { pool: { maxConnections: 4 } }, (client) =>
        Effect.forEach(
          Array.from({ length: 80 }, (_, i) => i),
          (i) => client.send({ from: "a@example.org", to: [`r${i}@example.org`] }, message(i)),
          { concurrency: 16, discard: true }
        ))
      expect(server.received).toHaveLength(80)
      expect(perConnection.size).toBeLessThanOrEqual(4)
      expect(perConnection.size).toBeGreaterThanOrEqual(2)
      // Every connection carried a share: none starved while another took everything.
      for (const count of perConnection.values()) expect(count).toBeGreaterThanOrEqual(80 / perConnection.size / 3)
      yield* realSleep(100)
      expect(quits).toBe(perConnection.size)
    }))

  it.scopedLive("a connection carries at most maxMessagesPerConnection messages", () =>
    Effect.gen(function*() {
      const { server, sessions } = yield* sessionCountingServer
      yield* withClient(server.port, { pool: { maxConnections: 1, maxMessagesPerConnection: 3 } }, (client) =>
        Effect.forEach(
          Array.from({ length: 10 }, (_, i) =>
            i),
          (i) =>
            client.send({ from: "a@example.org", to: ["b@example.org"] }, message(i)),
          { discard: true }
        ))
      expect(server.received).toHaveLength(10)
      expect(sessions.size).toBe(4)
    }))

  it.scopedLive("a connection older than maxConnectionAge is replaced before its next send", () =>
    Effect.gen(function*() {
      const { server, sessions } = yield* sessionCountingServer
      yield* withClient(
        server.port,
        { pool: { maxConnections: 1, maxConnectionAge: "200 millis" } },
        (client) =>
          Effect.gen(function*() {
            yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1))
            yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(2))
            yield* Effect.sleep("300 millis")
            yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(3))
          })
      )
      expect(sessions.size).toBe(2)
    }))

  it.scopedLive(
    "a server that closes idle connections after 2 s: the pool notices before reuse and sends succeed",
    () =>
      Effect.gen(function*() {
        const server = yield* scriptedServer(async (session) => {
          await greet(session)
          await answerEhlo(session)
          const idle = setTimeout(() => session.drop(), 2000)
          try {
            await serveOne(session)
          } finally {
            clearTimeout(idle)
          }
          const again = setTimeout(() => session.drop(), 2000)
          session.closed.then(() => clearTimeout(again), () => clearTimeout(again))
          await serveTransaction(session).catch(() => {})
        })
        const results = yield* withClient(server.port, { pool: { maxConnections: 1, healthCheckAfter: "1 second" } }, (
          client
        ) =>
          Effect.gen(function*() {
            const first = yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1))
            yield* Effect.sleep("2500 millis")
            const second = yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(2))
            return [first, second]
          }))
        // One attempt each: the health check, not a retry, found the dead connection and took a new one.
        expect(results.map((r) => [r.response.code, r.attempts])).toEqual([[250, 1], [250, 1]])
        expect(server.connections()).toBe(2)
        // Without the check, the dead connection is used, fails, and the send needs a second attempt.
        const unchecked = yield* withClient(
          server.port,
          { pool: { maxConnections: 1, healthCheck: false } },
          (client) =>
            Effect.gen(function*() {
              yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(3))
              yield* Effect.sleep("2500 millis")
              return yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, message(4))
            })
        )
        expect(unchecked.attempts).toBe(2)
      }),
    20_000
  )

  it.scopedLive("a connection that answered 421 is dropped at once, and the send is retried on a new one", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        if (session.index === 0) {
          await session.readLine()
          await session.reply("421 4.3.2 Maximum lifetime reached")
          return session.drop()
        }
        await serveTransaction(session)
      })
      const result = yield* withClient(
        server.port,
        { pool: { maxConnections: 1 } },
        (client) => client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1))
      )
      expect(result.attempts).toBe(2)
      expect(server.connections()).toBe(2)
    }))

  it.scopedLive("interrupting a pooled send at any phase leaves the pool healthy", () =>
    Effect.gen(function*() {
      for (const phase of ["MAIL", "DATA", "body", "end of data"] as const) {
        const server = yield* scriptedServer(async (session) => {
          await greet(session)
          await answerEhlo(session, ["8BITMIME"])
          if (session.index === 0) {
            // The first connection stops answering at `phase`; the client is interrupted there.
            for (;;) {
              const line = await session.readLine()
              const verb = verbOf(line)
              if (phase === "MAIL" && verb === "MAIL") return void (await session.stall())
              await session.reply(verb === "DATA" ? "354 Go" : "250 Ok")
              if (verb === "DATA") {
                if (phase === "DATA" || phase === "body") return void (await session.stall())
                await session.readData()
                return void (await session.stall())
              }
            }
          }
          await serveTransaction(session)
        })
        const outcome = yield* withClient(server.port, { pool: { maxConnections: 1 }, retry: false }, (client) =>
          Effect.gen(function*() {
            const fiber = yield* Effect.fork(
              client.send({ from: "a@example.org", to: ["b@example.org"] }, `${"line\r\n".repeat(10)}`)
            )
            yield* Effect.sleep("150 millis")
            yield* Fiber.interrupt(fiber)
            return yield* client.send({ from: "a@example.org", to: ["c@example.org"] }, message(2))
          }))
        expect(outcome.response.code, phase).toBe(250)
        expect(server.connections(), phase).toBe(2)
        yield* Effect.promise(() =>
          server.allClosed(2000)
        )
        expect(server.openConnections(), phase).toBe(0)
      }
    }), 20_000)

  it.scopedLive("closing the layer waits for the sends in flight, then QUITs", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        await session.readLine()
        await session.reply("250 Ok")
        await session.readLine()
        await session.reply("250 Ok")
        await session.readLine()
        await session.reply("354 Go")
        await session.readData()
        await new Promise((resolve) => setTimeout(resolve, 300))
        await session.reply("250 Ok: queued after a while")
        await serveTransaction(session)
      })
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(clientLayer(server.port, { pool: { maxConnections: 1 } }), scope)
      const client = yield* Effect.provide(SmtpClient.SmtpClient, context)
      const fiber = yield* Effect.fork(client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1)))
      yield* Effect.sleep("100 millis")
      yield* Scope.close(scope, Exit.void)
      const result = yield* Fiber.join(fiber)
      expect(result.response.lines[0]).toBe("Ok: queued after a while")
      yield* Effect.promise(() => server.allClosed(2000))
      expect(server.transcripts()[0]).toMatch(/QUIT\r\n$/)
    }))

  it.scopedLive("closing the pool QUITs every connection at once, not one after another", () =>
    Effect.gen(function*() {
      // The server answers no QUIT until every open connection has one pending: a client that QUITs one connection
      // after another waits for its first reply until that QUIT times out, and never has them all pending at once.
      let pending = 0
      let allAtOnce = false
      const release: Array<() => void> = []
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        for (;;) {
          const line = await session.readLine()
          const verb = verbOf(line)
          if (verb === "QUIT") {
            pending++
            if (pending === server.openConnections()) {
              allAtOnce = true
              for (const go of release.splice(0)) go()
            } else {
              const released = await Promise.race([
                new Promise<boolean>((go) => release.push(() => go(true))),
                session.closed.then(() => false)
              ])
              if (!released) {
                // The client gave up on this QUIT and closed: it is no longer pending.
                pending--
                return
              }
            }
            await session.reply("221 2.0.0 Bye")
            await session.end()
            return
          }
          if (verb === "DATA") {
            await session.reply("354 Go")
            await session.readData()
          }
          await session.reply("250 2.0.0 Ok")
        }
      })
      const layer = SmtpClient.layer({
        connection: { host: "127.0.0.1", port: server.port, tls: "none", timeout: "2 seconds" },
        pool: { maxConnections: 4 }
      }).pipe(Layer.provide(SmtpTransport.layerNode))
      yield* Effect.provide(
        Effect.flatMap(SmtpClient.SmtpClient, (client) =>
          Effect.forEach(
            Array.from({ length: 8 }, (_, i) => i),
            (i) => client.send({ from: "a@example.org", to: [`r${i}@example.org`] }, message(i)),
            { concurrency: 8, discard: true }
          )),
        layer
      )
      yield* Effect.promise(() => server.allClosed(2000))
      expect(server.connections()).toBeGreaterThanOrEqual(2)
      expect(allAtOnce).toBe(true)
      for (const transcript of server.transcripts()) expect(transcript).toMatch(/QUIT\r\n$/)
    }))

  it.scopedLive("pool: false opens a fresh connection per send", () =>
    Effect.gen(function*() {
      const { server, sessions } = yield* sessionCountingServer
      yield* withClient(server.port, { pool: false }, (client) =>
        Effect.forEach(
          [1, 2, 3],
          (i) => client.send({ from: "a@example.org", to: ["b@example.org"] }, message(i)),
          { discard: true }
        ))
      expect(sessions.size).toBe(3)
    }))
})

/** Serves one transaction of a scripted session, then returns. */
const serveOne = async (session: ScriptedSession) => {
  for (;;) {
    const line = await session.readLine()
    const verb = verbOf(line)
    if (verb === "DATA") {
      await session.reply("354 Go")
      await session.readData()
      return session.reply("250 2.0.0 Ok: queued")
    }
    await session.reply("250 Ok")
  }
}

describe("retries", () => {
  it.scopedLive("only the recipients refused with a 4xx are tried again", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer({
        onRcptTo(address, session, callback) {
          if (address.address === "later@example.org" && !seen.has("later")) {
            seen.add("later")
            return callback(Object.assign(new Error("4.2.1 Try later"), { responseCode: 450 }))
          }
          if (address.address === "gone@example.org") {
            return callback(Object.assign(new Error("5.1.1 No such user"), { responseCode: 550 }))
          }
          void session
          callback()
        }
      })
      const seen = new Set<string>()
      const result = yield* withClient(server.port, {}, (client) =>
        client.send(
          { from: "a@example.org", to: ["now@example.org", "later@example.org", "gone@example.org"] },
          message(1)
        ))
      expect(result.attempts).toBe(2)
      expect(result.accepted.map((a) => a.recipient)).toEqual(["now@example.org", "later@example.org"])
      expect(result.rejected.map((r) => [r.recipient, r.error.code])).toEqual([["gone@example.org", 550]])
      expect(server.received.map((m) => m.to)).toEqual([
        ["now@example.org"],
        ["later@example.org"]
      ])
    }))

  it.scopedLive("a reader body is opened again for the retry, and both attempts send it whole", () =>
    Effect.gen(function*() {
      const seen = new Set<string>()
      const server = yield* smtpServer({
        onRcptTo(address, _session, callback) {
          if (address.address === "later@example.org" && !seen.has("later")) {
            seen.add("later")
            return callback(Object.assign(new Error("4.2.1 Try later"), { responseCode: 450 }))
          }
          callback()
        }
      })
      const content = Buffer.from(`Subject: a reader\r\n\r\n${"line of the body\r\n".repeat(20_000)}`)
      let opens = 0
      const body = readerOver(content, { size: content.length, onOpen: () => opens++ })
      const result = yield* withClient(
        server.port,
        {},
        (client) => client.send({ from: "a@example.org", to: ["now@example.org", "later@example.org"] }, body)
      )
      expect(result.attempts).toBe(2)
      expect(opens).toBe(2)
      expect(server.received.map((m) => m.to)).toEqual([["now@example.org"], ["later@example.org"]])
      expect(server.received.map((m) => m.bytes.equals(content))).toEqual([true, true])
    }))

  it.scopedLive("a permanent refusal is never retried", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const error = yield* withClient(server.port, {}, (client) =>
        Effect.flip(client.send({ from: "a@example.org", to: ["reject5@example.org"] }, message(1))))
      expect(error._tag === "SmtpPermanentError" && error.code).toBe(550)
      expect(
        yield* Effect.sync(() =>
          server.received.length
        )
      ).toBe(0)
    }))

  it.scopedLive("a timeout after the end of data is not retried: it says the message may have been delivered", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        for (;;) {
          const verb = verbOf(await session.readLine())
          if (verb === "DATA") break
          await session.reply("250 Ok")
        }
        await session.reply("354 Go")
        await session.readData()
        await session.stall()
      })
      const error = yield* withClient(
        server.port,
        {
          connection: {
            host: "127.0.0.1",
            port: server.port,
            tls: "none",
            clientName: "client.example",
            timeout: "300 millis"
          }
        },
        (client) => Effect.flip(client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1)))
      )
      expect(error._tag === "TimeoutError" && error.mayHaveBeenDelivered).toBe(true)
      expect(server.connections()).toBe(1)
    }))

  it("the default policy: retries what can go away, with growing delays, and stops", () => {
    expect(
      SmtpRetry.shouldRetry(new SmtpTransientError({ command: "RCPT", code: 451, enhancedCode: "4.3.0", lines: [] }))
    )
      .toBe(true)
    expect(
      SmtpRetry.shouldRetry(new SmtpPermanentError({ command: "RCPT", code: 550, enhancedCode: undefined, lines: [] }))
    )
      .toBe(false)
    expect(SmtpRetry.shouldRetry(new InvalidInputError({ field: "x", reason: "y" }))).toBe(false)
    expect(SmtpRetry.shouldRetry(new Error("not ours"))).toBe(false)
  })

  it.effect("policy delays grow exponentially up to the cap, for at most `retries` retries", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const transient = new SmtpTransientError({ command: "MAIL", code: 451, enhancedCode: undefined, lines: [] })
      const fiber = yield* Effect.fork(
        Effect.retry(
          Effect.flatMap(TestClock.currentTimeMillis, (now) => {
            attempts.push(now)
            return Effect.fail(transient)
          }),
          SmtpRetry.policy({ base: "1 second", cap: "5 seconds", retries: 4, jitter: false })
        )
      )
      yield* TestClock.adjust("1 minute")
      const exit = yield* Fiber.await(fiber)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(attempts).toEqual([0, 1000, 3000, 7000, 12000])
    }))
})

describe("limits", () => {
  it.scoped("the rate limit lets at most `messages` transactions start per window", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      yield* Effect.gen(function*() {
        const client = yield* SmtpClient.SmtpClient
        const fiber = yield* Effect.fork(
          Effect.forEach(
            Array.from({ length: 10 }, (_, i) => i),
            (i) => client.send({ from: "a@example.org", to: ["b@example.org"] }, message(i)),
            { concurrency: "unbounded", discard: true }
          )
        )
        yield* realSleep(500)
        expect(server.received).toHaveLength(4)
        yield* TestClock.adjust("1 second")
        yield* realSleep(500)
        expect(server.received).toHaveLength(8)
        yield* TestClock.adjust("1 second")
        yield* Fiber.join(fiber)
        expect(server.received).toHaveLength(10)
      }).pipe(Effect.provide(clientLayer(server.port, { rateLimit: { messages: 4, per: "1 second" } })))
    }), 15_000)

  it.scopedLive("thousands of sends started at once go through in turn, a few at a time", () =>
    Effect.gen(function*() {
      const order: Array<number> = []
      const server = yield* smtpServer({
        onRcptTo(address, _session, callback) {
          order.push(Number(/^r(\d+)@/.exec(address.address)![1]))
          callback()
        }
      })
      const count = 3000
      yield* withClient(server.port, { pool: { maxConnections: 4, maxMessagesPerConnection: count } }, (client) =>
        Effect.forEach(
          Array.from({ length: count }, (_, i) =>
            i),
          (i) =>
            client.send({ from: "a@example.org", to: [`r${i}@example.org`] }, message(i)),
          { concurrency: "unbounded", discard: true }
        ))
      expect(server.received).toHaveLength(count)
      // First come, first served: no send overtakes many that were waiting before it.
      expect(order.every((sent, k) =>
        Math.abs(sent - k) <= 16
      )).toBe(true)
    }), 60_000)

  it.scopedLive("maxConcurrentTransactions caps the transactions under way", () =>
    Effect.gen(function*() {
      let active = 0
      let most = 0
      const server = yield* smtpServer({
        onMailFrom(_address, _session, callback) {
          most = Math.max(most, ++active)
          setTimeout(callback, 20)
        },
        onData(stream, _session, callback) {
          stream.on("data", () => {})
          stream.on("end", () => {
            active--
            callback(null, "Ok")
          })
        }
      })
      yield* withClient(server.port, { pool: { maxConnections: 4 }, maxConcurrentTransactions: 2 }, (client) =>
        Effect.forEach(
          Array.from({ length: 12 }, (_, i) =>
            i),
          (i) =>
            client.send({ from: "a@example.org", to: ["b@example.org"] }, message(i)),
          { concurrency: "unbounded", discard: true }
        ))
      expect(most).toBe(2)
    }))
})

describe("metrics", () => {
  it.scopedLive("count sent and failed messages, refused recipients by class, and send durations", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const value = Metric.value
      const sentBefore = (yield* value(SmtpClient.metrics.messagesSent)).count
      const refusedBefore =
        (yield* value(Metric.tagged(SmtpClient.metrics.recipientsRefused, "class", "permanent"))).count
      const failedBefore =
        (yield* value(Metric.tagged(SmtpClient.metrics.messagesFailed, "error", "SmtpPermanentError"))).count
      const durationsBefore = (yield* value(SmtpClient.metrics.sendDuration)).count
      yield* withClient(server.port, {}, (client) =>
        Effect.gen(function*() {
          yield* client.send({ from: "a@example.org", to: ["b@example.org", "reject5@example.org"] }, message(1))
          yield* Effect.flip(client.send({ from: "a@example.org", to: ["reject5-x@example.org"] }, message(2)))
        }))
      expect((yield* value(SmtpClient.metrics.messagesSent)).count - sentBefore).toBe(1)
      expect(
        (yield* value(Metric.tagged(SmtpClient.metrics.recipientsRefused, "class", "permanent"))).count - refusedBefore
      ).toBe(1)
      expect(
        (yield* value(Metric.tagged(SmtpClient.metrics.messagesFailed, "error", "SmtpPermanentError"))).count -
          failedBefore
      ).toBe(1)
      expect((yield* value(SmtpClient.metrics.sendDuration)).count - durationsBefore).toBe(2)
    }))
})

describe("pool metrics", () => {
  it.scopedLive("the pool's open connections and waiting sends are gauges", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer({
        onMailFrom(_address, _session, callback) {
          setTimeout(callback, 30)
        }
      })
      const waiters: Array<number> = []
      const open = yield* withClient(server.port, { pool: { maxConnections: 2 } }, (client) =>
        Effect.gen(function*() {
          const fiber = yield* Effect.fork(
            Effect.forEach(
              Array.from({ length: 8 }, (_, i) => i),
              (i) => client.send({ from: "a@example.org", to: ["b@example.org"] }, message(i)),
              { concurrency: "unbounded", discard: true }
            )
          )
          yield* Effect.sleep("20 millis")
          waiters.push((yield* Metric.value(SmtpClient.metrics.poolWaiters)).value)
          yield* Fiber.join(fiber)
          return (yield* Metric.value(SmtpClient.metrics.poolConnections)).value
        }))
      expect(waiters[0]).toBeGreaterThanOrEqual(6)
      expect(open).toBe(2)
      // The layer is closed: its connections are gone.
      expect((yield* Metric.value(SmtpClient.metrics.poolConnections)).value).toBe(0)
      expect((yield* Metric.value(SmtpClient.metrics.poolWaiters)).value).toBe(0)
    }))
})

describe("layerConfig", () => {
  it.scopedLive("reads the client's options from Config", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const layer = SmtpClient.layerConfig({
        connection: {
          host: Config.string("SMTP_HOST"),
          port: Config.integer("SMTP_PORT"),
          tls: Config.succeed("none" as const),
          clientName: Config.succeed("client.example")
        },
        pool: Config.map(Config.integer("SMTP_POOL"), (maxConnections) => ({ maxConnections }))
      }).pipe(
        Layer.provide(SmtpTransport.layerNode),
        Layer.provide(Layer.setConfigProvider(
          ConfigProvider.fromMap(
            new Map([["SMTP_HOST", "127.0.0.1"], ["SMTP_PORT", String(server.port)], ["SMTP_POOL", "2"]])
          )
        ))
      )
      const result = yield* Effect.provide(
        Effect.flatMap(SmtpClient.SmtpClient, (client) =>
          client.send({ from: "a@example.org", to: ["b@example.org"] }, message(1))),
        layer
      )
      expect(result.response.code).toBe(250)
    }))
})

describe("the test layer", () => {
  it.effect("records what would be sent, refuses and fails as told, checks input, and connects nowhere", () =>
    Effect.gen(function*() {
      const client = yield* SmtpClient.SmtpClient
      const test = yield* SmtpClient.TestClient
      const sent = yield* client.send({ from: "a@example.org", to: ["b@example.org"] }, "Subject: hi\r\n\r\nhello")
      expect(sent.accepted.map((a) => a.recipient)).toEqual(["b@example.org"])
      yield* test.refuseRecipients((recipient) =>
        recipient.startsWith("full")
          ? new SmtpTransientError({ command: "RCPT", code: 452, enhancedCode: "4.2.2", lines: ["Mailbox full"] })
          : undefined
      )
      const partial = yield* client.send({ from: "a@example.org", to: ["c@example.org", "full@example.org"] }, "x")
      expect(partial.rejected.map((r) => [r.recipient, r.error.code])).toEqual([["full@example.org", 452]])
      yield* test.failNext(new SmtpPermanentError({ command: "MAIL", code: 550, enhancedCode: "5.7.1", lines: [] }))
      const failed = yield* Effect.flip(client.send({ from: "a@example.org", to: ["d@example.org"] }, "x"))
      expect(failed._tag).toBe("SmtpPermanentError")
      const invalid = yield* Effect.flip(client.send({ from: "a@example.org", to: ["e@example.org\r\nRSET"] }, "x"))
      expect(invalid._tag).toBe("InvalidInputError")
      const composed = yield* client.sendMessage({
        from: "a@example.org",
        to: "f@example.org",
        subject: "s",
        text: "t"
      })
      expect(composed.messageId).toMatch(/^<[^>]+@example\.org>$/)
      const recorded = yield* test.sent
      expect(recorded.map((r) => r.accepted)).toEqual([["b@example.org"], ["c@example.org"], ["f@example.org"]])
      expect(Buffer.from(recorded[0]!.body).toString()).toBe("Subject: hi\r\n\r\nhello")
      yield* test.reset
      expect(yield* test.sent).toEqual([])
    }).pipe(Effect.provide(SmtpClient.layerTest)))
})
