/**
 * The submission engine against real servers: smtp-server (npm; PIPELINING, no CHUNKING), aiosmtpd (Debian; no
 * PIPELINING), Postfix and Exim (Debian; PIPELINING, CHUNKING, DSN, SMTPUTF8). The same tricky message must arrive
 * byte-exact over DATA and, where offered, over BDAT, and a message full of smuggling sequences must arrive as one.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { aiosmtpdBinaries, aiosmtpdInstall, startAiosmtpd } from "../support/daemons/aiosmtpd.js"
import { eximAddedHeaders, eximBinaries, eximInstall, startExim } from "../support/daemons/exim.js"
import { postfixBinaries, postfixInstall, startPostfix } from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"
import { smtpServer } from "../support/fakes/smtpServer.js"
import { connectLocal } from "../support/helpers/connect.js"

const utf8 = new TextEncoder()

/** Leading dots, bare CR and bare LF, 8-bit UTF-8 (headers too), trailing spaces, a 900-octet line. */
const tricky = (mark: string) =>
  [
    "From: Jörg Müller <jörg@example.org>",
    "To: Receiver <rcpt@example.org>",
    `Subject: tricky ${mark} — ünïcödé`,
    "Date: Tue, 01 Dec 2026 10:00:00 +0000",
    `Message-ID: <tricky-${mark}@example.org>`,
    "",
    ".leading dot",
    "..two leading dots",
    ".",
    "bare LF follows\nbare CR follows\rtrailing spaces   ",
    "8-bit: Grüße, 日本語",
    "x".repeat(900),
    "end"
  ].join("\r\n") + "\r\n"

/** Smuggling sequences: none of them may end the message. */
const smuggled = (mark: string) =>
  `From: sender@example.org\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nSubject: smuggle ${mark}\r\nMessage-ID: <smuggle-${mark}@example.org>\r\n\r\n` +
  "before\n.\nMAIL FROM:<evil@example.org>\r\n.\r\rRCPT TO:<rcpt@example.org>\r\n.\nDATA\r\nafter\r\n"

/** What a server must store: every line end CRLF. */
const canonical = (message: string) => message.replace(/\r\n|\r|\n/g, "\r\n")

/** The header lines a server put on top (and their continuation lines) removed. */
const withoutAdded = (raw: string, added: ReadonlyArray<string>, lineEnd: string) => {
  const lines = raw.split(lineEnd)
  let i = 0
  const pattern = new RegExp(`^(${added.join("|")}):`, "i")
  while (i < lines.length && (pattern.test(lines[i]!) || (i > 0 && /^\s/.test(lines[i]!)))) i++
  return lines.slice(i).join(lineEnd)
}

/** One server under test: how to reach it and how to read what it stored, as CRLF text. */
interface Target {
  readonly port: number
  readonly chunking: boolean
  /** The messages stored so far (waiting for at least `count`), each as its content with CRLF line ends. */
  readonly stored: (count: number) => Effect.Effect<ReadonlyArray<string>, Error>
}

/** What every connection here shares, on top of `connectLocal`'s plaintext to 127.0.0.1. */
const clientOptions = { clientName: "client.example", timeout: "20 seconds" } as const

const decode = (bytes: Uint8Array) => Buffer.from(bytes).toString("utf8")

const targets: ReadonlyArray<
  readonly [name: string, available: () => boolean, start: Effect.Effect<Target, Error, Scope.Scope>]
> = [
  [
    "smtp-server",
    () => true,
    Effect.map(smtpServer(), (server) => ({
      port: server.port,
      chunking: false,
      stored: () => Effect.sync(() => server.received.map((m) => decode(m.bytes)))
    }))
  ],
  [
    "aiosmtpd",
    () => requireServer("aiosmtpd", aiosmtpdBinaries, aiosmtpdInstall),
    Effect.map(startAiosmtpd({ user: "unused", password: "unused", pipelining: false }), (server) => ({
      port: server.port,
      chunking: false,
      stored: () => Effect.map(server.messages(), (messages) => messages.map((m) => decode(m.bytes)))
    }))
  ],
  [
    "Postfix",
    () => requireServer("Postfix", postfixBinaries, postfixInstall),
    Effect.map(startPostfix(), (server) => ({
      port: server.ports.plain,
      chunking: true,
      // Postfix stores LF line ends: back to CRLF, which is safe since every line end went as CRLF.
      stored: (count) =>
        Effect.map(
          server.waitForMessages(count),
          (messages) =>
            messages.map((m) =>
              withoutAdded(m.raw, ["Return-Path", "X-Original-To", "Delivered-To", "Received"], "\n").replace(
                /\n/g,
                "\r\n"
              )
            )
        )
    }))
  ],
  [
    "Exim",
    () => requireServer("Exim", eximBinaries, eximInstall),
    Effect.map(startExim({ crlf: true }), (server) => ({
      port: server.ports.plain,
      chunking: true,
      stored: (count) =>
        Effect.map(
          server.waitForMessages(count),
          (messages) => messages.map((m) => withoutAdded(m.raw, eximAddedHeaders, "\r\n"))
        )
    }))
  ]
]

describe("the tricky message on real servers", () => {
  for (const [name, available, start] of targets) {
    describe.skipIf(!available())(name, () => {
      it.live(
        "arrives byte-exact over DATA and, where offered, BDAT; smuggling sequences leave one message",
        () =>
          Effect.scoped(Effect.gen(function*() {
            const server = yield* start
            const modes = server.chunking ? (["DATA", "BDAT"] as const) : (["DATA"] as const)
            const sent: Array<string> = []
            for (const mode of modes) {
              const chunking = mode === "BDAT"
              const results = yield* Effect.scoped(Effect.gen(function*() {
                const c = yield* connectLocal(server.port, clientOptions)
                const first = yield* c.send({ from: "jörg@example.org", to: ["rcpt@example.org"] }, tricky(mode), {
                  chunking
                })
                const second = yield* c.send({ from: "sender@example.org", to: ["rcpt@example.org"] }, smuggled(mode), {
                  chunking
                })
                return [first, second]
              }))
              for (const result of results) {
                expect(result.method).toBe(mode)
                expect(result.accepted.map((a) => a.recipient)).toEqual(["rcpt@example.org"])
              }
              sent.push(tricky(mode), smuggled(mode))
            }
            const stored = yield* server.stored(sent.length)
            // Exactly one stored message per message sent: nothing smuggled in as a message of its own.
            expect(stored).toHaveLength(sent.length)
            for (const message of sent) {
              const id = /Message-ID: <([^>]+)>/.exec(message)![1]!
              const copy = stored.find((s) => s.includes(`<${id}>`))
              expect(copy, `${name}: ${id}`).toBeDefined()
              expect(Buffer.from(copy!, "utf8").equals(Buffer.from(canonical(message), "utf8")), `${name}: ${id}`)
                .toBe(true)
            }
            expect(stored.some((s) => s.includes("evil@example.org"))).toBe(true)
          })),
        60_000
      )

      it.live(
        "many messages pipelined on one connection all arrive, in order of their results",
        () =>
          Effect.scoped(Effect.gen(function*() {
            const server = yield* start
            const count = 40
            const results = yield* Effect.scoped(Effect.flatMap(connectLocal(server.port, clientOptions), (c) =>
              Stream.runCollect(c.sendAll(
                Array.from({ length: count }, (_, i) => ({
                  envelope: { from: "sender@example.org", to: ["rcpt@example.org"] },
                  body: utf8.encode(`Subject: batch ${i}\r\nMessage-ID: <batch-${i}@example.org>\r\n\r\nbody ${i}\r\n`)
                })),
                { window: 8 }
              ))))
            const sent = Chunk.toReadonlyArray(results).map(Either.getOrThrow)
            expect(sent).toHaveLength(count)
            expect(sent.every((r) =>
              r.method === (server.chunking ? "BDAT" : "DATA")
            )).toBe(true)
            const stored = yield* server.stored(count)
            for (let i = 0; i < count; i++) {
              expect(stored.filter((s) => s.includes(`<batch-${i}@example.org>`)), `batch ${i}`).toHaveLength(1)
            }
          })),
        60_000
      )
    })
  }
})
