/**
 * SmtpClient against Postfix and Exim: many fibers each calling `send` share one connection's pipeline, and every
 * message arrives intact, once.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as SmtpClient from "../../src/SmtpClient.js"
import * as SmtpTransport from "../../src/SmtpTransport.js"
import { eximBinaries, eximInstall, startExim } from "../support/daemons/exim.js"
import type { MaildirMessage } from "../support/daemons/maildir.js"
import { postfixBinaries, postfixInstall, startPostfix } from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"

interface Target {
  readonly port: number
  readonly waitForMessages: (count: number) => Effect.Effect<ReadonlyArray<MaildirMessage>, Error>
  /** The server's log so far. */
  readonly log: () => string
  /**
   * The sessions the log shows: for each connection that carried mail from this client (not the start-up probes),
   * how many MAIL commands it took, where the log says.
   */
  readonly sessions: (log: string) => ReadonlyArray<number>
}

const targets: ReadonlyArray<
  readonly [name: string, available: () => boolean, start: Effect.Effect<Target, Error, Scope.Scope>]
> = [
  [
    "Postfix",
    () => requireServer("Postfix", postfixBinaries, postfixInstall),
    Effect.map(startPostfix(), (server) => ({
      port: server.ports.plain,
      waitForMessages: (count) => server.waitForMessages(count),
      log: server.log,
      // smtpd's summary of each session: "disconnect from … ehlo=1 mail=500 rcpt=500 data=1 bdat=499 quit=1".
      sessions: (log) =>
        log.split("\n").flatMap((line) => {
          const mail = /smtpd\[\d+\]: disconnect from .* mail=(\d+)/.exec(line)
          return mail === null ? [] : [Number(mail[1])]
        })
    }))
  ],
  [
    "Exim",
    () => requireServer("Exim", eximBinaries, eximInstall),
    Effect.map(startExim(), (server) => ({
      port: server.ports.plain,
      waitForMessages: (count) => server.waitForMessages(count, "60 seconds"),
      log: server.log,
      // Exim logs each message, but not its connection: count the sessions of this client's EHLO name, and give them
      // every message received.
      sessions: (log) => {
        const lines = log.split("\n")
        const sessions = lines.filter((line) => / SMTP connection from \(client\.example\) .*closed by QUIT/.test(line))
        const received = lines.filter((line) => / <= sender@example\.org H=\(client\.example\) /.test(line))
        return sessions.map(() => received.length / sessions.length)
      }
    }))
  ]
]

const body = (i: number) =>
  `From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: lane ${i}\r\nMessage-ID: <lane-${i}@example.org>\r\n\r\n` +
  `${`line ${i} `.repeat(40)}\r\n`.repeat(12)

describe("SmtpClient on real servers", () => {
  for (const [name, available, start] of targets) {
    describe.skipIf(!available())(name, () => {
      it.live(
        "500 messages from 50 concurrent sends share one connection, pipelined, and each arrives intact, once",
        () =>
          Effect.scoped(Effect.gen(function*() {
            const server = yield* start
            const count = 500
            const client = SmtpClient.layer({
              connection: {
                host: "127.0.0.1",
                port: server.port,
                tls: "none",
                clientName: "client.example",
                timeout: "30 seconds"
              },
              pool: { maxConnections: 1, maxMessagesPerConnection: count }
            }).pipe(Layer.provide(SmtpTransport.layerNode))
            const results = yield* Effect.provide(
              Effect.flatMap(SmtpClient.SmtpClient, (smtp) =>
                Effect.forEach(
                  Array.from({ length: 50 }, (_, fiber) => fiber),
                  (fiber) =>
                    Effect.forEach(
                      Array.from({ length: count / 50 }, (_, k) => fiber * (count / 50) + k),
                      (i) => smtp.send({ from: "sender@example.org", to: ["rcpt@example.org"] }, body(i))
                    ),
                  { concurrency: "unbounded" }
                )),
              client
            )
            const sent = results.flat()
            expect(sent).toHaveLength(count)
            expect(sent.every((r) => r.accepted.length === 1 && r.attempts === 1)).toBe(true)
            // BDAT goes only when another message follows at once on the same connection: most did.
            expect(sent.filter((r) => r.method === "BDAT").length).toBeGreaterThan(count / 2)

            const stored = yield* server.waitForMessages(count)
            expect(stored).toHaveLength(count)
            for (let i = 0; i < count; i++) {
              const copies = stored.filter((m) => m.raw.includes(`<lane-${i}@example.org>`))
              expect(copies, `lane ${i}`).toHaveLength(1)
              const content = copies[0]!.raw.replace(/\r\n/g, "\n")
              expect(content.endsWith(body(i).split("\r\n\r\n")[1]!.replace(/\r\n/g, "\n")), `lane ${i}`).toBe(true)
            }
            expect(server.sessions(server.log())).toEqual([count])
          })),
        120_000
      )
    })
  }
})
