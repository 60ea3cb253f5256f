import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as net from "node:net"
import { eximBinaries, eximGreeting, eximInstall, EximServer, startExim } from "../support/daemons/exim.js"
import type { EximMessage } from "../support/daemons/exim.js"
import { requireServer } from "../support/daemons/servers.js"
import { connectionRefused, conversation, expectEveryPort } from "../support/daemons/smtpConversation.js"

const available = requireServer("Exim", eximBinaries, eximInstall)
const extensions = ["PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "SIZE"]

/** The message as received: without Exim's `Return-path`, `Envelope-to` and (folded) `Received`, in this order. */
const withoutAddedHeaders = (message: EximMessage): string => {
  const added = /^Return-path: [^\r\n]*\r?\nEnvelope-to: [^\r\n]*\r?\nReceived: [^\r\n]*\r?\n(?:\t[^\r\n]*\r?\n)+/
    .exec(message.raw)?.[0]
  expect(added, message.raw).toBeDefined()
  return message.raw.slice(added?.length ?? 0)
}

const dotStuffed = (message: string): string => message.replace(/^\./gm, "..")

const dataMessage = [
  "From: <a@example.org>",
  "Subject: harness DATA",
  "X-Folded: one",
  "  two",
  "",
  "Hello from the harness test.",
  ".A line that starts with a dot.",
  "Non-ASCII: jörg ✓",
  ""
].join("\r\n")

const bdatMessage = ["Subject: harness BDAT", "", ".Taken as is, no dot-stuffing.", "Ünïcode too.", ""].join("\r\n")

describe.skipIf(!available)("Exim test harness", () => {
  it.scopedLive("greets on every port, advertises the extensions, delivers DATA and BDAT to example.org only", () =>
    Effect.gen(function*() {
      const server = yield* EximServer
      yield* expectEveryPort(server, {
        greeting: eximGreeting,
        ehlo: [/^250-localhost Hello client\.example\.org \[127\.0\.0\.1\]\r\n/, /^250[ -]SIZE 52428800\r\n/m],
        extensions,
        plain: ({ say, send }) =>
          Effect.gen(function*() {
            const replies = yield* Effect.promise(async () => [
              await say("MAIL FROM:<a@example.org> SMTPUTF8"),
              await say("RCPT TO:<b@example.org>"),
              await say("RCPT TO:<jörg@example.org>"),
              await say("RCPT TO:<reject5@example.org>"),
              await say("RCPT TO:<reject4@example.org>"),
              await say("RCPT TO:<x@elsewhere.test>"),
              await say("DATA"),
              await say(`${dotStuffed(dataMessage)}.`)
            ])
            expect(replies.map((reply) => reply.slice(0, 3))).toEqual([
              "250",
              "250",
              "250",
              "550",
              "451",
              "550",
              "354",
              "250"
            ])
            expect(replies[3]).toMatch(/^550 5\.1\.1 <reject5@example\.org>/)
            expect(replies[4]).toMatch(/^451 4\.2\.1 <reject4@example\.org>/)
            expect(replies[5]).toMatch(/^550 5\.7\.1 <x@elsewhere\.test>/)
            // MAIL, RCPT and the whole BDAT chunk in one write: PIPELINING with CHUNKING, as a client would send them.
            const size = Buffer.byteLength(bdatMessage, "utf8")
            const pipelined = yield* Effect.promise(() =>
              send(`MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<c@example.org>\r\nBDAT ${size} LAST\r\n${bdatMessage}`, 3)
            )
            expect(pipelined.map((reply) => reply.slice(0, 3))).toEqual(["250", "250", "250"])
            expect(pipelined[2]).toMatch(new RegExp(`^250- ${size} byte chunk, total ${size}\\r\\n250 OK id=`))
          })
      })
      const delivered = yield* server.waitForMessages(3)
      expect(delivered).toHaveLength(3)
      const byRecipient = new Map(delivered.map((message) => [message.deliveredTo, message]))
      expect([...byRecipient.keys()].sort()).toEqual(["b@example.org", "c@example.org", "jörg@example.org"])
      const expectedData = dataMessage.replaceAll("\r\n", "\n")
      for (const recipient of ["b@example.org", "jörg@example.org"]) {
        const message = byRecipient.get(recipient)!
        expect(message.returnPath).toBe("a@example.org")
        expect(message.raw).not.toContain("\r")
        expect(withoutAddedHeaders(message)).toBe(expectedData)
      }
      const bdat = byRecipient.get("c@example.org")!
      expect(bdat.returnPath).toBe("")
      expect(Buffer.from(withoutAddedHeaders(bdat), "utf8")).toEqual(Buffer.from(bdatMessage.replaceAll("\r\n", "\n")))
    }))

  it.scopedLive("with crlf, stores the message with its CRLF line ends", () =>
    Effect.gen(function*() {
      const server = yield* startExim({ crlf: true })
      const socket = net.connect(server.ports.plain, server.host)
      const { say } = conversation(socket)
      const replies = yield* Effect.promise(async () => [
        await say(),
        await say("EHLO client.example.org"),
        await say("MAIL FROM:<a@example.org>"),
        await say("RCPT TO:<b@example.org>"),
        await say("DATA"),
        await say(`${dotStuffed(dataMessage)}.`),
        await say("QUIT")
      ])
      expect(replies.map((reply) => reply.slice(0, 3))).toEqual(["220", "250", "250", "250", "354", "250", "221"])
      socket.destroy()
      const [message] = yield* server.waitForMessages(1)
      expect(message!.raw).not.toMatch(/[^\r]\n/)
      expect(Buffer.from(withoutAddedHeaders(message!), "utf8")).toEqual(Buffer.from(dataMessage, "utf8"))
    }))

  it.live("stops Exim and removes its folder when the scope closes", () =>
    Effect.gen(function*() {
      const server = yield* Effect.scoped(EximServer)
      expect(fs.existsSync(server.directory)).toBe(false)
      expect(yield* connectionRefused(server.ports.plain, server.host)).toBe(true)
    }))
})
