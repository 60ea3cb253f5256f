import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as net from "node:net"
import * as tls from "node:tls"
import { postfixBinaries, postfixGreeting, postfixInstall, PostfixServer } from "./support/postfix.js"
import { requireServer } from "./support/servers.js"

const available = requireServer("Postfix", postfixBinaries, postfixInstall)
const extensions = ["PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "SIZE"]

/** A bare SMTP conversation over a socket: `say` sends a line (if any) and resolves with the next whole reply. */
const conversation = (socket: net.Socket) => {
  let buffer = ""
  let failure: Error | undefined
  let wake = () => {}
  socket.setTimeout(5_000, () => socket.destroy(new Error("no reply within 5 s")))
  socket.on("data", (chunk: Buffer) => {
    buffer += chunk.toString("utf8")
    wake()
  })
  socket.on("error", (error) => {
    failure = error
    wake()
  })
  socket.on("close", () => {
    failure ??= new Error(`connection closed; unread: ${buffer}`)
    wake()
  })
  const nextReply = () =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const reply = /^(?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n/.exec(buffer)?.[0]
        if (reply !== undefined) {
          buffer = buffer.slice(reply.length)
          resolve(reply)
        } else if (failure) reject(failure)
        else wake = check
      }
      check()
    })
  return (line?: string) => {
    if (line !== undefined) socket.write(`${line}\r\n`)
    return nextReply()
  }
}

describe.skipIf(!available)("Postfix test harness", () => {
  it.scopedLive("greets on every port, offers STARTTLS only on its port, delivers to example.org only", () =>
    Effect.gen(function*() {
      const server = yield* PostfixServer
      const { host, ports } = server
      const sockets = {
        plain: () => net.connect(ports.plain, host),
        starttls: () => net.connect(ports.starttls, host),
        smtps: () => tls.connect({ host, port: ports.smtps, ca: server.certificatePem, servername: server.servername })
      }
      for (const [name, open] of Object.entries(sockets)) {
        const socket = open()
        const say = conversation(socket)
        expect(yield* Effect.promise(() => say())).toBe(`${postfixGreeting}\r\n`)
        const ehlo = yield* Effect.promise(() => say("EHLO client.example.org"))
        expect(ehlo).toMatch(/^250-localhost\r\n/)
        for (const keyword of extensions) {
          expect(ehlo).toMatch(new RegExp(`^250[ -]${keyword}\\b`, "m"))
        }
        expect(ehlo.includes("STARTTLS"), name).toBe(name === "starttls")
        if (name === "plain") {
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
        }
        expect(yield* Effect.promise(() => say("QUIT"))).toMatch(/^221 /)
        socket.destroy()
      }
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
      const refused = yield* Effect.promise(() =>
        new Promise<boolean>((resolve) => {
          const socket = net.connect(server.ports.plain, server.host)
          socket.on("connect", () => resolve(false)).on("error", () => resolve(true))
        })
      )
      expect(refused).toBe(true)
    }))
})
