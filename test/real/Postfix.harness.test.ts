import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import { postfixBinaries, postfixGreeting, postfixInstall, PostfixServer } from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"
import { connectionRefused, expectEveryPort } from "../support/daemons/smtpConversation.js"

const available = requireServer("Postfix", postfixBinaries, postfixInstall)
const extensions = ["PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "SIZE"]

describe.skipIf(!available)("Postfix test harness", () => {
  it.scopedLive("greets on every port, offers STARTTLS only on its port, delivers to example.org only", () =>
    Effect.gen(function*() {
      const server = yield* PostfixServer
      yield* expectEveryPort(server, {
        greeting: postfixGreeting,
        ehlo: [/^250-localhost\r\n/],
        extensions,
        plain: ({ say }) =>
          Effect.gen(function*() {
            const replies = yield* Effect.promise(async () => [
              await say("MAIL FROM:<a@example.org> SMTPUTF8"),
              await say("RCPT TO:<b@example.org>"),
              await say("RCPT TO:<jörg@example.org>"),
              await say("DATA"),
              await say("Subject: harness\r\n\r\nHello from the harness test.\r\n."),
              await say("MAIL FROM:<a@example.org>"),
              await say("RCPT TO:<c@example.net>")
            ])
            expect(replies.map((reply) => reply.slice(0, 3))).toEqual(["250", "250", "250", "354", "250", "250", "554"])
          })
      })
      const delivered = yield* server.waitForMessages(2)
      expect(delivered.map((message) => message.deliveredTo).sort()).toEqual(["b@example.org", "jörg@example.org"])
      for (const message of delivered) {
        expect(message.returnPath).toBe("a@example.org")
        expect(message.raw).toMatch(/^Subject: harness\n[^]*\n\nHello from the harness test\.\n$/m)
      }
    }))

  it.live("stops Postfix and removes its folder when the scope closes", () =>
    Effect.gen(function*() {
      const server = yield* Effect.scoped(PostfixServer)
      expect(fs.existsSync(server.directory)).toBe(false)
      expect(yield* connectionRefused(server.ports.plain, server.host)).toBe(true)
    }))
})
