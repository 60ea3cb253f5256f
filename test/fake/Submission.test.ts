/**
 * The submission engine on scripted servers: what is pipelined (a script that reads a whole group before it answers
 * anything would wait forever for a client that does not pipeline), every reply checked, per-recipient results,
 * LMTP, the extensions, and what never reaches the wire.
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as BdatEncoder from "../../src/BdatEncoder.js"
import * as DataEncoder from "../../src/DataEncoder.js"
import * as SmtpSubmission from "../../src/SmtpSubmission.js"
import { readerOver } from "../support/fakes/readerBody.js"
import type { ScriptedSession, ServedMessage } from "../support/fakes/scriptedServer.js"
import {
  answerEhlo,
  ClientClosedError,
  greet,
  scriptedServer,
  serveTransaction
} from "../support/fakes/scriptedServer.js"
import { smtpServer } from "../support/fakes/smtpServer.js"
import { latin1 } from "../support/helpers/bytes.js"
import { connectLocal } from "../support/helpers/connect.js"
import { random } from "../support/helpers/random.js"

/** What every connection here shares, on top of `connectLocal`'s plaintext to 127.0.0.1. */
const clientOptions = { clientName: "client.example", timeout: "5 seconds" } as const

/** Reads `n` command lines before answering any of them: a client that waits for a reply in between never gets one. */
const readGroup = async (session: ScriptedSession, n: number): Promise<Array<string>> => {
  const lines: Array<string> = []
  for (let i = 0; i < n; i++) lines.push(await session.readLine())
  return lines
}

/** Greets, answers EHLO with `capabilities`, runs `body`, then serves until QUIT. */
const scripted = (capabilities: ReadonlyArray<string>, body: (session: ScriptedSession) => Promise<void>) =>
  scriptedServer(async (session) => {
    await greet(session)
    await answerEhlo(session, capabilities)
    await body(session)
    await serveTransaction(session)
  })

/** A server that serves transactions with `capabilities`, for checking what the client declares. */
const recording = (capabilities: ReadonlyArray<string>) => scripted(capabilities, async () => {})

/** The command lines the client sent after EHLO, QUIT excluded. */
const commandsAfterEhlo = (transcript: string): Array<string> =>
  transcript.split("\r\n").slice(1).filter((line) => line !== "" && line !== "QUIT")

describe("pipelined DATA (RFC 2920)", () => {
  it.scopedLive("MAIL, every RCPT and DATA leave as one group; refusals are reported and the session stays in step", () =>
    Effect.gen(function*() {
      let group: Array<string> = []
      const server = yield* scripted(["PIPELINING", "8BITMIME"], async (session) => {
        group = await readGroup(session, 5)
        await session.write(
          "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.2.1 Mailbox busy\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n"
        )
        const data = await session.readData()
        if (data !== "first\r\n") throw new Error(`unexpected body ${JSON.stringify(data)}`)
        await session.reply("250 2.0.0 Ok: queued as FIRST")
      })
      const [first, second] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connectLocal(server.port, clientOptions)
        const first = yield* c.send(
          { from: "a@example.org", to: ["ok@example.org", "busy@example.org", "gone@example.org"] },
          "first"
        )
        const second = yield* c.send({ from: "a@example.org", to: ["next@example.org"] }, "second")
        return [first, second] as const
      }))
      expect(group).toEqual([
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<ok@example.org>",
        "RCPT TO:<busy@example.org>",
        "RCPT TO:<gone@example.org>",
        "DATA"
      ])
      expect(first.accepted.map((a) => [a.recipient, a.reply.code])).toEqual([["ok@example.org", 250]])
      expect(first.rejected.map((r) => [r.recipient, r.error._tag, r.error.code, r.error.enhancedCode])).toEqual([
        ["busy@example.org", "SmtpTransientError", 451, "4.2.1"],
        ["gone@example.org", "SmtpPermanentError", 550, "5.1.1"]
      ])
      expect(first.rejected[1]!.error.lines).toEqual(["No such user"])
      expect(first.response.code).toBe(250)
      expect(first.response.lines[0]).toContain("queued as FIRST")
      expect(first.method).toBe("DATA")
      // One write for the envelope and DATA, one for the body: two round trips.
      expect(first.roundTrips).toBe(2)
      expect(second.accepted.map((a) => a.recipient)).toEqual(["next@example.org"])
      expect(server.transcripts()[0]).toContain("RCPT TO:<next@example.org>\r\nDATA\r\nsecond\r\n.\r\n")
    }))

  it.scopedLive("a server that answers DATA with 354 although no recipient was taken gets an empty message", () =>
    Effect.gen(function*() {
      let content: string | undefined
      const server = yield* scripted(["PIPELINING"], async (session) => {
        await readGroup(session, 3)
        await session.write("250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n354 Go ahead anyway\r\n")
        content = await session.readData()
        await session.reply("554 5.5.1 Error: no valid recipients")
      })
      const result = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, clientOptions),
          (c) => Effect.either(c.send({ from: "a@example.org", to: ["gone@example.org"] }, "SECRET BODY\r\n"))
        )
      )
      expect(Either.isLeft(result) && result.left._tag === "SmtpPermanentError" && result.left.code).toBe(550)
      expect(content).toBe("")
      expect(server.transcripts()[0]).not.toContain("SECRET BODY")
    }))

  it.scopedLive("every recipient refused: transient when one refusal was 4xx, and RSET before the next MAIL", () =>
    Effect.gen(function*() {
      const server = yield* scripted(["PIPELINING"], async (session) => {
        await readGroup(session, 4)
        await session.write("250 2.1.0 Ok\r\n550 5.1.1 No\r\n450 4.2.1 Later\r\n554 5.5.1 No valid recipients\r\n")
      })
      const [refused, next] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connectLocal(server.port, clientOptions)
        const refused = yield* Effect.flip(
          c.send({ from: "a@example.org", to: ["gone@example.org", "later@example.org"] }, "x")
        )
        const next = yield* c.send({ from: "a@example.org", to: ["b@example.org"] }, "y")
        return [refused, next] as const
      }))
      expect(refused._tag).toBe("SmtpTransientError")
      expect(refused._tag === "SmtpTransientError" && refused.code).toBe(450)
      expect(next.response.code).toBe(250)
      expect(server.transcripts()[0]).toContain("DATA\r\nRSET\r\nMAIL FROM:<a@example.org>")
    }))

  it.scopedLive("all-or-nothing: one refused recipient means RSET and no DATA at all", () =>
    Effect.gen(function*() {
      const server = yield* scripted(["PIPELINING"], async (session) => {
        await readGroup(session, 3)
        await session.write("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n")
      })
      const error = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Effect.flip(
            c.send({ from: "a@example.org", to: ["ok@example.org", "gone@example.org"] }, "x", {
              policy: "all-or-nothing"
            })
          ))
      )
      expect(error._tag === "SmtpPermanentError" && error.code).toBe(550)
      expect(commandsAfterEhlo(server.transcripts()[0]!)).toEqual([
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<ok@example.org>",
        "RCPT TO:<gone@example.org>",
        "RSET"
      ])
    }))

  it.scopedLive("without PIPELINING each command waits for its reply", () =>
    Effect.gen(function*() {
      const server = yield* scripted(["8BITMIME"], async (session) => {
        // Answered one by one: the script would see the next line early if the client did not wait.
        for (const [expected, reply] of [["MAIL", "250 Ok"], ["RCPT", "250 Ok"], ["DATA", "354 Go"]] as const) {
          const line = await session.readLine()
          if (!line.startsWith(expected)) throw new Error(`expected ${expected}, got ${line}`)
          if (session.received().endsWith(`${line}\r\n`) === false) throw new Error("the client did not wait")
          await session.reply(reply)
        }
        await session.readData()
        await session.reply("250 Ok: queued")
      })
      const result = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          c.send({ from: "a@example.org", to: ["b@example.org"] }, "x"))
      )
      expect(result.roundTrips).toBe(4)
      expect(server.scriptErrors()).toEqual([])
    }))
})

describe("many messages on one connection", () => {
  it.scopedLive("with DATA, each end of data leaves with the next message's envelope", () =>
    Effect.gen(function*() {
      const count = 5
      const bodies: Array<string> = []
      const server = yield* scripted(["PIPELINING"], async (session) => {
        for (let k = 0; k < count; k++) {
          // The end of data of message k-1 is answered only once message k's whole group is here.
          const group = await readGroup(session, 3)
          if (!group[0]!.startsWith("MAIL") || group[2] !== "DATA") throw new Error(`bad group ${group.join("|")}`)
          await session.write(`${k > 0 ? `250 2.0.0 Ok: queued as M${k - 1}\r\n` : ""}250 Ok\r\n250 Ok\r\n354 Go\r\n`)
          bodies.push(await session.readData())
        }
        await session.reply(`250 2.0.0 Ok: queued as M${count - 1}`)
      })
      const results = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        Stream.runCollect(c.sendAll(
          Array.from({ length: count }, (_, i) => ({
            envelope: { from: "a@example.org", to: [`r${i}@example.org`] },
            body: `message ${i}`
          }))
        ))))
      const sent = Chunk.toReadonlyArray(results).map(Either.getOrThrow)
      expect(sent.map((r) =>
        r.response.lines[0]
      )).toEqual(
        Array.from({ length: count }, (_, i) => `Ok: queued as M${i}`)
      )
      expect(bodies).toEqual(Array.from({ length: count }, (_, i) => `message ${i}\r\n`))
      expect(sent.every((r) => r.roundTrips === 2)).toBe(true)
    }))

  it.scopedLive("with BDAT, a window of transactions is in flight before the first reply is read", () =>
    Effect.gen(function*() {
      const window = 4
      const rounds = 2
      const contents: Array<string> = []
      const server = yield* scripted(["PIPELINING", "CHUNKING"], async (session) => {
        for (let round = 0; round < rounds; round++) {
          let replies = ""
          for (let k = 0; k < window; k++) {
            const [mail, rcpt, bdat] = await readGroup(session, 3)
            const size = /^BDAT (\d+) LAST$/.exec(bdat!)
            if (!mail!.startsWith("MAIL") || !rcpt!.startsWith("RCPT") || size === null) {
              throw new Error(`bad transaction ${mail}|${rcpt}|${bdat}`)
            }
            contents.push(await session.readBytes(Number(size[1])))
            replies += `250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued as B${round * window + k}\r\n`
          }
          await session.write(replies)
        }
      })
      const results = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Stream.runCollect(c.sendAll(
            Array.from({ length: window * rounds }, (_, i) => ({
              envelope: { from: "a@example.org", to: [`r${i}@example.org`] },
              body: `.dot\nbare LF ${i}`
            })),
            { window, chunking: true }
          )))
      )
      const sent = Chunk.toReadonlyArray(results).map(Either.getOrThrow)
      expect(sent.map((r) => [r.method, r.response.lines[0]])).toEqual(
        Array.from({ length: window * rounds }, (_, i) => ["BDAT", `Ok: queued as B${i}`])
      )
      // BDAT carries the canonical text as is: no dot-stuffing, CRLF line ends.
      expect(contents).toEqual(Array.from({ length: window * rounds }, (_, i) => `.dot\r\nbare LF ${i}\r\n`))
      expect(sent.every((r) => r.roundTrips === 1)).toBe(true)
    }))

  it.scopedLive("a message refused by bad input comes out in its place and costs nothing on the wire", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "SIZE 1000"])
      const results = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Stream.runCollect(c.sendAll([
            { envelope: { from: "a@example.org", to: ["one@example.org"] }, body: "one" },
            { envelope: { from: "a@example.org", to: ["bad\r\nRSET@example.org"] }, body: "two" },
            { envelope: { from: "a@example.org", to: ["big@example.org"] }, body: "line\r\n".repeat(300) },
            { envelope: { from: "a@example.org", to: ["four@example.org"] }, body: "four" }
          ])))
      )
      const outcomes = Chunk.toReadonlyArray(results).map(Either.match({
        onLeft: (error) => error._tag,
        onRight: (result) => result.accepted[0]!.recipient
      }))
      expect(outcomes).toEqual(["one@example.org", "InvalidInputError", "SmtpCapabilityError", "four@example.org"])
      const transcript = server.transcripts()[0]!
      expect(transcript).not.toContain("bad")
      expect(transcript).not.toContain("big@example.org")
    }))

  it.scopedLive("a connection that fails midway fails the messages still unanswered and every later one", () =>
    Effect.gen(function*() {
      const server = yield* scripted(["PIPELINING", "CHUNKING"], async (session) => {
        await readGroup(session, 3)
        await session.readBytes(2)
        await session.write("250 Ok\r\n250 Ok\r\n250 Ok: queued as FIRST\r\n")
        await readGroup(session, 3)
        session.drop()
      })
      const results = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Stream.runCollect(c.sendAll(
            Array.from({ length: 4 }, (_, i) => ({
              envelope: { from: "a@example.org", to: [`r${i}@example.org`] },
              body: "m"
            })),
            { window: 1 }
          )))
      )
      const outcomes = Chunk.toReadonlyArray(results).map(Either.match({
        onLeft: (error) => error._tag,
        onRight: (result) => result.response.lines[0]
      }))
      expect(outcomes).toEqual(["Ok: queued as FIRST", "NetworkError", "NetworkError", "NetworkError"])
    }))
})

describe("what a failure says about delivery", () => {
  it.scopedLive("a connection dropped after the end of data: the message may have been delivered", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["PIPELINING"])
        await readGroup(session, 3)
        await session.write("250 Ok\r\n250 Ok\r\n354 Go\r\n")
        await session.readData()
        session.drop()
      })
      const error = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, clientOptions),
          (c) => Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, "x"))
        )
      )
      expect(error._tag === "NetworkError" && error.mayHaveBeenDelivered).toBe(true)
      expect(error.message).toContain("may have been delivered")
    }))

  it.scopedLive("in a BDAT window, a drop flags only the messages whose data was all written", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["PIPELINING", "CHUNKING"])
        for (let k = 0; k < 2; k++) {
          const [, , bdat] = await readGroup(session, 3)
          await session.readBytes(Number(/^BDAT (\d+) LAST$/.exec(bdat!)![1]))
        }
        session.drop()
      })
      const results = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Stream.runCollect(c.sendAll(
            Array.from({ length: 3 }, (_, i) => ({
              envelope: { from: "a@example.org", to: [`r${i}@example.org`] },
              body: `m${i}`
            })),
            { window: 2 }
          )))
      )
      const flags = Chunk.toReadonlyArray(results).map(Either.match({
        onLeft: (error) => error._tag === "NetworkError" ? error.mayHaveBeenDelivered === true : error._tag,
        onRight: () => "sent"
      }))
      // The third never left: the window was full until the drop.
      expect(flags).toEqual([true, true, false])
    }))
})

describe("a message refused before sending, in a batch that then fails", () => {
  it.scopedLive("keeps its own error, and the others get the connection's", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["PIPELINING", "CHUNKING"])
        await readGroup(session, 3)
        session.drop()
      })
      const results = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        Stream.runCollect(c.sendAll([
          { envelope: { from: "a@example.org", to: ["one@example.org"] }, body: "one" },
          { envelope: { from: "a@example.org", to: ["bad\nRSET@example.org"] }, body: "two" },
          { envelope: { from: "a@example.org", to: ["three@example.org"] }, body: "three" }
        ]))))
      expect(
        Chunk.toReadonlyArray(results).map(Either.match({
          onLeft: (e) =>
            e._tag,
          onRight: () => "sent"
        }))
      )
        .toEqual(["NetworkError", "InvalidInputError", "NetworkError"])
    }))
})

describe("BDAT (RFC 3030)", () => {
  it.scopedLive("MAIL, RCPT and BDAT LAST leave together: one round trip", () =>
    Effect.gen(function*() {
      let body = ""
      const server = yield* scripted(["PIPELINING", "CHUNKING"], async (session) => {
        const [, , bdat] = await readGroup(session, 3)
        body = await session.readBytes(Number(/^BDAT (\d+) LAST$/.exec(bdat!)![1]))
        await session.write("250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued as C\r\n")
      })
      const result = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        c.send({ from: "a@example.org", to: ["b@example.org"] }, "Subject: x\r\n\r\n.leading dot\r\n", {
          chunking: true
        })))
      expect(result.method).toBe("BDAT")
      expect(result.roundTrips).toBe(1)
      expect(body).toBe("Subject: x\r\n\r\n.leading dot\r\n")
    }))

  it.scopedLive("left to the client: BDAT for a small message or a burst, DATA for a lone one over 4 KiB", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "CHUNKING"])
      const large = `Subject: large\r\n\r\n${`${"x".repeat(78)}\r\n`.repeat(60)}`
      const message = (to: string) => ({ envelope: { from: "a@example.org", to: [to] }, body: large })
      const [small, lone, burst] = yield* Effect.scoped(
        Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
          Effect.all([
            c.send({ from: "a@example.org", to: ["small@example.org"] }, "x"),
            c.send({ from: "a@example.org", to: ["lone@example.org"] }, large),
            Stream.runCollect(c.sendAll(["r1", "r2", "r3"].map((r) => message(`${r}@example.org`))))
          ]))
      )
      expect([small.method, lone.method]).toEqual(["BDAT", "DATA"])
      // The last of the burst is BDAT too: the others are still in flight when it goes.
      expect(Chunk.toReadonlyArray(burst).map((r) => Either.getOrThrow(r).method)).toEqual(["BDAT", "BDAT", "BDAT"])
      const transcript = server.transcripts()[0]!
      expect(transcript).toContain("RCPT TO:<small@example.org>\r\nBDAT 3 LAST\r\nx\r\n")
      expect(transcript).toContain("RCPT TO:<lone@example.org>\r\nDATA\r\n")
    }))

  it.scopedLive("chunking: false uses DATA even when CHUNKING is offered", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "CHUNKING"])
      const result = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        c.send({ from: "a@example.org", to: ["b@example.org"] }, "x", { chunking: false })))
      expect(result.method).toBe("DATA")
      expect(server.transcripts()[0]).toContain("DATA\r\nx\r\n.\r\n")
    }))

  it.scopedLive("a streamed body that fails between chunks is dropped with RSET and the session goes on", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "CHUNKING"])
      // Over the engine's least BDAT chunk of a streamed body (512 KiB), so that it goes before the failure.
      const chunk = new TextEncoder().encode(`${"a".repeat(70)}\r\n`.repeat(9000))
      const [failed, next] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connectLocal(server.port, clientOptions)
        const failing = Stream.concat(Stream.make(chunk), Stream.fail("disk error" as const))
        const failed = yield* Effect.flip(
          c.send({ from: "a@example.org", to: ["b@example.org"] }, failing, { chunking: true })
        )
        const next = yield* c.send({ from: "a@example.org", to: ["c@example.org"] }, "next")
        return [failed, next] as const
      }))
      expect(failed).toBe("disk error")
      expect(next.response.code).toBe(250)
      const transcript = server.transcripts()[0]!
      const reset = transcript.indexOf("\r\nRSET\r\nMAIL FROM:<a@example.org>")
      expect(reset).toBeGreaterThan(0)
      expect(transcript.slice(0, reset)).toContain(`BDAT ${chunk.length}\r\naaa`)
      expect(transcript.slice(0, reset)).not.toContain("LAST")
    }))
})

describe("LMTP (RFC 2033)", () => {
  it.scopedLive("one reply per accepted recipient after the end of data: some delivered, some not", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session, "220 lmtp.example LMTP")
        const lhlo = await session.readLine()
        if (!lhlo.startsWith("LHLO ")) throw new Error(`expected LHLO, got ${lhlo}`)
        await session.write("250-lmtp.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
        await readGroup(session, 5)
        await session.write("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n250 2.1.5 Ok\r\n354 Go\r\n")
        await session.readData()
        await session.write("250 2.0.0 <a@example.org> delivered\r\n452 4.2.2 <c@example.org> over quota\r\n")
        await serveTransaction(session)
      })
      const result = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, { ...clientOptions, lmtp: true }),
          (c) => c.send({ from: "s@example.org", to: ["a@example.org", "b@example.org", "c@example.org"] }, "hi")
        )
      )
      expect(result.accepted.map((a) => [a.recipient, a.delivery?.lines[0]])).toEqual([
        ["a@example.org", "<a@example.org> delivered"]
      ])
      expect(result.rejected.map((r) => [r.recipient, r.error.code, r.error.enhancedCode])).toEqual([
        ["b@example.org", 550, "5.1.1"],
        ["c@example.org", 452, "4.2.2"]
      ])
      expect(result.response.code).toBe(250)
    }))

  it.scopedLive("every accepted recipient refused at delivery is an error, transient if any was 4xx", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session, "220 lmtp.example LMTP")
        await session.readLine()
        await session.write("250-lmtp.example\r\n250 PIPELINING\r\n")
        await readGroup(session, 4)
        await session.write("250 Ok\r\n250 Ok\r\n250 Ok\r\n354 Go\r\n")
        await session.readData()
        await session.write("550 5.2.1 <a@example.org> disabled\r\n451 4.3.0 <b@example.org> try later\r\n")
        await serveTransaction(session)
      })
      const error = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, { ...clientOptions, lmtp: true }),
          (c) => Effect.flip(c.send({ from: "s@example.org", to: ["a@example.org", "b@example.org"] }, "hi"))
        )
      )
      expect(error._tag === "SmtpTransientError" && error.code).toBe(451)
    }))
})

describe("extensions", () => {
  const firstMail = (transcript: string) => transcript.split("\r\n").find((line) => line.startsWith("MAIL")) ?? ""

  it.scopedLive("SIZE is declared from the body, and a message over the limit fails before anything is sent", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "SIZE 100"])
      const [ok, tooBig] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connectLocal(server.port, clientOptions)
        const ok = yield* c.send({ from: "a@example.org", to: ["b@example.org"] }, "12345")
        const tooBig = yield* Effect.flip(c.send({ from: "a@example.org", to: ["big@example.org"] }, "x".repeat(101)))
        return [ok, tooBig] as const
      }))
      expect(ok.response.code).toBe(250)
      // "12345" goes as "12345\r\n.\r\n": the size counts what the server stores, 7 octets, plus the terminator.
      expect(firstMail(server.transcripts()[0]!)).toMatch(/^MAIL FROM:<a@example.org> SIZE=\d+$/)
      expect(tooBig._tag === "SmtpCapabilityError" && tooBig.capability).toBe("SIZE")
      expect(server.transcripts()[0]).not.toContain("big@example.org")
    }))

  it.scopedLive("8-bit content is declared BODY=8BITMIME, and refused before sending when 8BITMIME is not offered", () =>
    Effect.gen(function*() {
      const with8bit = yield* recording(["PIPELINING", "8BITMIME"])
      const without = yield* recording(["PIPELINING"])
      yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(with8bit.port, clientOptions),
          (c) => c.send({ from: "a@example.org", to: ["b@example.org"] }, "Subject: x\r\n\r\ncafé")
        )
      )
      const refused = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(without.port, clientOptions),
          (c) => Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, "Subject: x\r\n\r\ncafé"))
        )
      )
      expect(firstMail(with8bit.transcripts()[0]!)).toBe("MAIL FROM:<a@example.org> BODY=8BITMIME")
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("8BITMIME")
      expect(commandsAfterEhlo(without.transcripts()[0]!)).toEqual([])
    }))

  it.scopedLive("a streamed body found 8-bit for a 7-bit server ends the connection before the end of data", () =>
    Effect.gen(function*() {
      let outcome: unknown
      const server = yield* scripted(["PIPELINING"], async (session) => {
        await readGroup(session, 3)
        await session.write("250 Ok\r\n250 Ok\r\n354 Go\r\n")
        outcome = await session.readData().catch((error) => error)
      })
      const error = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        Effect.flip(
          c.send(
            { from: "a@example.org", to: ["b@example.org"] },
            Stream.make(new TextEncoder().encode("ascii\r\n"), new TextEncoder().encode("café\r\n"))
          )
        )))
      expect(error._tag === "SmtpCapabilityError" && error.capability).toBe("8BITMIME")
      yield* Effect.promise(() => server.allClosed())
      expect(outcome).toBeInstanceOf(ClientClosedError)
    }))

  it.scopedLive("a non-ASCII local part needs SMTPUTF8; an IDN domain alone goes as A-labels", () =>
    Effect.gen(function*() {
      const utf8 = yield* recording(["PIPELINING", "8BITMIME", "SMTPUTF8"])
      const ascii = yield* recording(["PIPELINING", "8BITMIME"])
      yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(utf8.port, clientOptions),
          (c) => c.send({ from: "jörg@example.org", to: ["b@bücher.example"] }, "x")
        )
      )
      const refused = yield* Effect.scoped(
        Effect.flatMap(connectLocal(ascii.port, clientOptions), (c) =>
          Effect.gen(function*() {
            const refused = yield* Effect.flip(c.send({ from: "jörg@example.org", to: ["b@example.org"] }, "x"))
            yield* c.send({ from: "a@example.org", to: ["b@bücher.example"] }, "x")
            return refused
          }))
      )
      const utf8Lines = Buffer.from(utf8.transcripts()[0]!, "latin1").toString("utf8").split("\r\n")
      expect(utf8Lines).toContain("MAIL FROM:<jörg@example.org> SMTPUTF8")
      expect(utf8Lines).toContain("RCPT TO:<b@bücher.example>")
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("SMTPUTF8")
      expect(commandsAfterEhlo(ascii.transcripts()[0]!)).toContain("RCPT TO:<b@xn--bcher-kva.example>")
      expect(ascii.transcripts()[0]).not.toContain("jörg")
    }))

  it.scopedLive("UTF-8 in the headers needs SMTPUTF8", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "8BITMIME"])
      const refused = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, "Subject: café\r\n\r\nbody\r\n"))))
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("SMTPUTF8")
    }))

  it.scopedLive("DSN parameters go per recipient when DSN is offered, and are refused when it is not", () =>
    Effect.gen(function*() {
      const dsn = yield* recording(["PIPELINING", "DSN"])
      const none = yield* recording(["PIPELINING"])
      const envelope: SmtpSubmission.Envelope = {
        from: "a@example.org",
        to: [
          {
            address: "b@example.org",
            parameters: { notify: ["FAILURE", "DELAY"], originalRecipient: "b@example.org" }
          },
          "c@example.org"
        ],
        mailParameters: { ret: "HDRS", envelopeId: "id+1" },
        rcptParameters: { notify: "NEVER" }
      }
      yield* Effect.scoped(Effect.flatMap(connectLocal(dsn.port, clientOptions), (c) => c.send(envelope, "x")))
      const refused = yield* Effect.scoped(
        Effect.flatMap(connectLocal(none.port, clientOptions), (c) => Effect.flip(c.send(envelope, "x")))
      )
      expect(commandsAfterEhlo(dsn.transcripts()[0]!).slice(0, 3)).toEqual([
        "MAIL FROM:<a@example.org> RET=HDRS ENVID=id+2B1",
        "RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.org",
        "RCPT TO:<c@example.org> NOTIFY=NEVER"
      ])
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("DSN")
      expect(commandsAfterEhlo(none.transcripts()[0]!)).toEqual([])
    }))

  it.scopedLive("REQUIRETLS is refused on a cleartext connection, before anything is sent", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING", "REQUIRETLS"])
      const refused = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
        Effect.flip(
          c.send({ from: "a@example.org", to: ["b@example.org"], mailParameters: { requireTls: true } }, "x")
        )))
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("REQUIRETLS")
      expect(refused.message).toContain("TLS connection")
      expect(commandsAfterEhlo(server.transcripts()[0]!)).toEqual([])
    }))

  it.scopedLive("BINARYMIME needs BINARYMIME and CHUNKING; with them the body goes untouched", () =>
    Effect.gen(function*() {
      const binary = yield* recording(["PIPELINING", "CHUNKING", "BINARYMIME"])
      const textOnly = yield* recording(["PIPELINING", "CHUNKING"])
      const bytes = Buffer.concat([
        Buffer.from("Content-Type: application/octet-stream\r\n\r\n"),
        Buffer.from([0x00, 0x0d, 0x2e, 0x0a, 0xff, 0x0a])
      ])
      yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(binary.port, clientOptions),
          (c) => c.send({ from: "a@example.org", to: ["b@example.org"] }, bytes, { bodyType: "BINARYMIME" })
        )
      )
      const refused = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(textOnly.port, clientOptions),
          (c) =>
            Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, bytes, { bodyType: "BINARYMIME" }))
        )
      )
      expect(binary.transcripts()[0]).toContain(
        `BINARYMIME\r\nRCPT TO:<b@example.org>\r\nBDAT ${bytes.length} LAST\r\n`
      )
      expect(binary.transcripts()[0]).toContain(`BDAT ${bytes.length} LAST\r\n${bytes.toString("latin1")}`)
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("BINARYMIME")
    }))

  it.scopedLive("a body only BINARYMIME can carry (NUL octets, a line over 998) goes as BINARYMIME when offered", () =>
    Effect.gen(function*() {
      const binary = yield* recording(["PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"])
      const textOnly = yield* recording(["PIPELINING", "CHUNKING", "8BITMIME"])
      const withNul = "Subject: nul\r\n\r\na\u0000b\r\n"
      const longLine = `Subject: long\r\n\r\n${"y".repeat(1200)}\r\n`
      yield* Effect.scoped(Effect.flatMap(connectLocal(binary.port, clientOptions), (c) =>
        Effect.zipRight(
          c.send({ from: "a@example.org", to: ["b@example.org"] }, withNul),
          c.send({ from: "a@example.org", to: ["c@example.org"] }, longLine)
        )))
      const refused = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(textOnly.port, clientOptions),
          (c) => Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, withNul))
        )
      )
      const mails = commandsAfterEhlo(binary.transcripts()[0]!).filter((line) => line.startsWith("MAIL"))
      expect(mails).toEqual([
        expect.stringMatching(/^MAIL FROM:<a@example.org> BODY=BINARYMIME/),
        expect.stringMatching(/^MAIL FROM:<a@example.org> BODY=BINARYMIME/)
      ])
      expect(binary.transcripts()[0]).toContain(`${"y".repeat(1200)}\r\n`)
      expect(refused._tag === "SmtpCapabilityError" && refused.capability).toBe("BINARYMIME")
      expect(commandsAfterEhlo(textOnly.transcripts()[0]!)).toEqual([])
    }))

  it.scopedLive("a line over 998 octets in a body in memory fails before anything is sent", () =>
    Effect.gen(function*() {
      const server = yield* recording(["PIPELINING"])
      const refused = yield* Effect.scoped(
        Effect.flatMap(
          connectLocal(server.port, clientOptions),
          (c) => Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, "x".repeat(999)))
        )
      )
      expect(refused._tag).toBe("InvalidInputError")
      expect(commandsAfterEhlo(server.transcripts()[0]!)).toEqual([])
    }))
})

describe("bodies", () => {
  it.scopedLive(
    "a file streams through FileSystem with its size declared, and arrives byte-exact",
    () =>
      Effect.gen(function*() {
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => mkdtempSync(join(tmpdir(), "effect-smtp-file-"))),
          (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
        )
        const path = join(dir, "message.eml")
        const line = (i: number) => `${i % 7 === 0 ? "." : ""}line ${i} ${"x".repeat(60)}\r\n`
        const content = "Subject: a file\r\n\r\n" + Array.from({ length: 100_000 }, (_, i) => line(i)).join("")
        writeFileSync(path, content)
        const declared: Array<unknown> = []
        const server = yield* smtpServer({
          size: 50_000_000,
          onMailFrom(address, _session, callback) {
            declared.push(address.args)
            callback()
          }
        })
        const result = yield* Effect.scoped(Effect.gen(function*() {
          const c = yield* connectLocal(server.port, clientOptions)
          return yield* c.send({ from: "a@example.org", to: ["b@example.org"] }, yield* SmtpSubmission.fileBody(path))
        })).pipe(Effect.provide(NodeFileSystem.layer))
        expect(result.response.code).toBe(250)
        // Its content is not known in advance: declared 8BITMIME, which the server offers.
        expect(declared).toEqual([{ SIZE: String(Buffer.byteLength(content)), BODY: "8BITMIME" }])
        expect(server.received[0]!.bytes.equals(Buffer.from(content))).toBe(true)
      }),
    60_000
  )
})

describe("streamed bodies through the connection's block", () => {
  /** A body rich in what framing must get right: dot lines, bare CR, bare LF, 8-bit octets; about `size` octets. */
  const trickyBody = (size: number, seed: number): Buffer => {
    const next = random(seed)
    const ends = ["\r\n", "\r\n", "\r\n", "\n", "\r"]
    let text = "Subject: streamed\r\n\r\n"
    while (text.length < size) {
      const dot = next() < 0.1 ? "." : ""
      const word = next() < 0.05 ? "caf\u00e9 " : "word "
      text += dot + word.repeat(1 + Math.floor(next() * 15)) + ends[Math.floor(next() * ends.length)]
    }
    return Buffer.from(text, "latin1")
  }
  /** `bytes` cut into chunks of the given sizes in turn: tiny, odd, and larger than the block. */
  const cut = (bytes: Buffer, sizes: ReadonlyArray<number>): Array<Uint8Array> => {
    const chunks: Array<Uint8Array> = []
    for (let at = 0, i = 0; at < bytes.length; i++) {
      const size = sizes[i % sizes.length]!
      chunks.push(Buffer.from(bytes.subarray(at, at + size)))
      at += size
    }
    return chunks
  }
  const SIZES = [1, 7, 4096, 1_500_000, 3, 65_536, 200_000]

  /** A server that records what it served: DATA still dot-stuffed, BDAT chunks joined. */
  const serving = (capabilities: ReadonlyArray<string>) => {
    const served: Array<ServedMessage> = []
    return Effect.map(
      scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, capabilities)
        served.push(...(await serveTransaction(session)).messages)
      }),
      (server) => ({ server, served })
    )
  }
  const asData = (bytes: Uint8Array) => latin1(Either.getOrThrow(DataEncoder.encode(bytes))).slice(0, -3)
  const asBdat = (bytes: Uint8Array) => {
    const encoder = BdatEncoder.make({ chunkSize: Number.MAX_SAFE_INTEGER })
    Either.getOrThrow(encoder.push(bytes))
    return latin1(Buffer.concat(Either.getOrThrow(encoder.end()).data))
  }
  for (const method of ["DATA", "BDAT"] as const) {
    it.scopedLive(
      `${method}: Streams and readers of any chunking, several messages in a row, arrive exact`,
      () =>
        Effect.gen(function*() {
          const capabilities = ["PIPELINING", "8BITMIME", ...(method === "BDAT" ? ["CHUNKING"] : [])]
          const { server, served } = yield* serving(capabilities)
          const bodies = [trickyBody(3_000_000, 1), trickyBody(50_000, 2), trickyBody(2_500_000, 3)]
          const results = yield* Effect.scoped(Effect.gen(function*() {
            const c = yield* connectLocal(server.port, { ...clientOptions, timeout: "30 seconds" })
            return yield* Stream.runCollect(c.sendAll([
              {
                envelope: { from: "a@example.org", to: ["b@example.org"] },
                body: Stream.fromIterable(cut(bodies[0]!, SIZES))
              },
              {
                envelope: { from: "a@example.org", to: ["c@example.org"] },
                body: readerOver(bodies[1]!, { sizes: [1, 999, 70_000] })
              },
              {
                envelope: { from: "a@example.org", to: ["d@example.org"] },
                body: readerOver(bodies[2]!, { sizes: [262_144, 5] })
              }
            ], { chunking: method === "BDAT" }))
          }))
          expect(Chunk.toReadonlyArray(results).map((r) => Either.isRight(r) && r.right.method)).toEqual([
            method,
            method,
            method
          ])
          const expected = bodies.map(method === "DATA" ? asData : asBdat)
          expect(served.map((m) => m.data.length)).toEqual(expected.map((e) => e.length))
          expect(served.map((m, i) => m.data === expected[i])).toEqual([true, true, true])
        }),
      60_000
    )
  }

  it.scopedLive("a reader is opened for its send and closed after it, also when a read fails midway", () =>
    Effect.gen(function*() {
      const { server, served } = yield* serving(["PIPELINING", "8BITMIME", "CHUNKING", "SIZE 50000000"])
      const events: Array<string> = []
      const block = Buffer.from(`${"a".repeat(70)}\r\n`.repeat(2000))
      const reader = (failAt: number) =>
        SmtpSubmission.readerBody<"disk error">({
          size: 10 * block.length,
          open: Effect.acquireRelease(
            Effect.sync(() => events.push("open")),
            () => Effect.sync(() => events.push("close"))
          ).pipe(Effect.as((() => {
            let reads = 0
            return (buffer: Uint8Array) =>
              ++reads === failAt ? Effect.fail("disk error" as const) : Effect.sync(() => {
                if (reads > 10) return 0
                buffer.set(block.subarray(0, Math.min(block.length, buffer.length)))
                return Math.min(block.length, buffer.length)
              })
          })()))
        })
      const [failed, sent] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connectLocal(server.port, clientOptions)
        const failed = yield* Effect.flip(
          c.send({ from: "a@example.org", to: ["b@example.org"] }, reader(4), { chunking: true })
        )
        events.push("failed")
        const sent = yield* c.send({ from: "a@example.org", to: ["c@example.org"] }, reader(0), { chunking: true })
        return [failed, sent] as const
      }))
      expect(failed).toBe("disk error")
      expect(sent.method).toBe("BDAT")
      expect(events).toEqual(["open", "close", "failed", "open", "close"])
      // The failed message was dropped with RSET; the next arrived whole, its size declared from the reader.
      expect(served.map((m) => m.data.length)).toEqual([10 * block.length])
      expect(server.transcripts()[0]).toContain(`MAIL FROM:<a@example.org> SIZE=${10 * block.length}`)
      expect(server.transcripts()[0]).toContain("\r\nRSET\r\n")
    }))
})
