/**
 * The submission engine against hostile servers (scripted, over real sockets on 127.0.0.1): replies out of place,
 * replies nobody asked for, and sends cut short. The session either stays in step or is closed and never reused.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import type { ScriptedSession } from "../support/fakes/scriptedServer.js"
import { answerEhlo, greet, scriptedServer } from "../support/fakes/scriptedServer.js"
import { connect } from "../support/helpers/connect.js"

const envelope = { from: "a@example.org", to: ["b@example.org"] }

/** Answers MAIL and RCPT, then `onData` plays the reply to DATA and what follows. */
const envelopeThen = (onData: (session: ScriptedSession) => Promise<void>) => async (session: ScriptedSession) => {
  await greet(session)
  await answerEhlo(session)
  for (let i = 0; i < 2; i++) await session.reply(`250 2.0.0 ok ${await session.readLine()}`)
  await session.readLine()
  await onData(session)
}

describe("the engine against hostile servers", () => {
  it.scopedLive("a 250 to DATA is a protocol violation: the send fails with it and the connection is never reused", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(envelopeThen(async (session) => {
        await session.reply("250 2.0.0 ok, but not 354")
        await session.stall()
      }))
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        const error = yield* Effect.flip(c.send(envelope, "Subject: x\r\n\r\nhi\r\n"))
        expect(error._tag).toBe("SmtpProtocolError")
        expect((yield* c.state).closed).toBe(true)
        expect((yield* Effect.flip(c.send(envelope, "again")))._tag).toBe("NetworkError")
      }))
      yield* Effect.promise(() => server.allClosed(1000))
      // No RSET, no body, no QUIT into a server that may be reading message data.
      expect(server.transcripts()[0]).toMatch(/DATA\r\n$/)
    }))

  it.scopedLive("a reply right after the greeting, before any command: the session refuses to go out of step", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await session.write("220 scripted.example ESMTP\r\n250 nobody asked\r\n")
        await answerEhlo(session)
        await session.stall()
      })
      const error = yield* Effect.flip(Effect.scoped(connect({ host: "127.0.0.1", port: server.port })))
      expect(error._tag).toBe("SmtpProtocolError")
      expect(error.message).toMatch(/no command awaited/)
      yield* Effect.promise(() => server.allClosed(1000))
      expect(server.transcripts()[0]).not.toContain("EHLO")
    }))

  it.scopedLive("a reply after the end-of-data reply: the next send fails before it writes, nothing is misattributed", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(envelopeThen(async (session) => {
        await session.reply("354 go ahead")
        await session.readData()
        await session.reply("250 2.0.0 queued")
        await new Promise((resolve) => setTimeout(resolve, 50))
        await session.reply("250 2.0.0 and again, unasked")
        await session.stall()
      }))
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        const sent = yield* c.send(envelope, "Subject: x\r\n\r\nhi\r\n")
        expect(sent.response.text).toBe("queued")
        yield* Effect.sleep("150 millis")
        const error = yield* Effect.flip(c.send(envelope, "Subject: y\r\n\r\nhi\r\n"))
        expect(error._tag).toBe("SmtpProtocolError")
        expect((yield* c.state).closed).toBe(true)
      }))
      yield* Effect.promise(() => server.allClosed(1000))
      expect(server.transcripts()[0]!.match(/MAIL FROM/g)).toHaveLength(1)
    }))

  it.scopedLive("a body Stream that dies mid-body: the send dies, the socket closes at once, no QUIT into the body", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(envelopeThen(async (session) => {
        await session.reply("354 go ahead")
        await session.stall()
      }))
      const started = Date.now()
      const body = Stream.concat(
        Stream.make(new TextEncoder().encode("Subject: x\r\n\r\nfirst part\r\n")),
        Stream.die(new Error("the body's source broke"))
      )
      const exit = yield* Effect.exit(Effect.scoped(Effect.flatMap(
        connect({ host: "127.0.0.1", port: server.port }),
        (c) => c.send(envelope, body)
      )))
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      yield* Effect.promise(() => server.allClosed(1000))
      expect(Date.now() - started).toBeLessThan(2000)
      // Nothing after the body's first bytes (which may still sit in the client's buffer): no QUIT into the body.
      expect(server.transcripts()[0]).toMatch(/DATA\r\n(Subject: x\r\n\r\nfirst part\r\n)?$/)
    }))

  it.scopedLive("interrupted while it awaits the end-of-data reply, a send still ends the session with QUIT", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(envelopeThen(async (session) => {
        await session.reply("354 go ahead")
        await session.readData()
        await session.stall()
      }))
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, timeouts: { quit: "200 millis" } })
        const fiber = yield* Effect.fork(c.send(envelope, "Subject: x\r\n\r\nhi\r\n"))
        yield* Effect.sleep("150 millis")
        yield* Fiber.interrupt(fiber)
      }))
      yield* Effect.promise(() => server.allClosed(1000))
      expect(server.transcripts()[0]).toMatch(/\r\n\.\r\nQUIT\r\n$/)
    }))
})
