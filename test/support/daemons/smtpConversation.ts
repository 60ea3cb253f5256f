/**
 * Raw SMTP over a socket, for the harness tests that prove a real server with nothing of ours in between: lines and
 * bytes written as they are, replies read whole.
 */
import { expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as net from "node:net"
import * as tls from "node:tls"
import type { ServerPorts } from "./servers.js"

/** Sends `line` (if any, with CRLF) and resolves with the next whole reply. */
export type Say = (line?: string) => Promise<string>

export interface SmtpConversation {
  readonly socket: net.Socket
  readonly say: Say
  /** Writes `bytes` as they are and resolves with the next `count` replies (for pipelined commands and BDAT chunks). */
  readonly send: (bytes: string, count: number) => Promise<Array<string>>
  /** Stops reading, so that the socket can be handed over (to STARTTLS). */
  readonly detach: () => void
}

/** A bare SMTP conversation over `socket`; a reply that does not come within 5 seconds destroys the socket. */
export const conversation = (socket: net.Socket): SmtpConversation => {
  let buffer = ""
  let failure: Error | undefined
  let wake = () => {}
  const onData = (chunk: Buffer) => {
    buffer += chunk.toString("utf8")
    wake()
  }
  const onError = (error: Error) => {
    failure = error
    wake()
  }
  const onClose = () => {
    failure ??= new Error(`connection closed; unread: ${buffer}`)
    wake()
  }
  const onTimeout = () => socket.destroy(new Error("no reply within 5 s"))
  socket.setTimeout(5_000, onTimeout)
  socket.on("data", onData).on("error", onError).on("close", onClose)
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
  return {
    socket,
    say: (line) => {
      if (line !== undefined) socket.write(`${line}\r\n`)
      return nextReply()
    },
    send: async (bytes, count) => {
      socket.write(bytes)
      const replies: Array<string> = []
      for (let i = 0; i < count; i++) replies.push(await nextReply())
      return replies
    },
    detach: () => {
      socket.setTimeout(0)
      socket.off("data", onData).off("error", onError).off("close", onClose).off("timeout", onTimeout)
    }
  }
}

/** A real server that listens three ways, and the certificate it offers on the implicit TLS port. */
export interface ThreePortServer {
  readonly host: string
  readonly servername: string
  readonly certificatePem: string
  readonly ports: ServerPorts
}

/** How to connect to each of the server's ports: in cleartext to `plain` and `starttls`, with TLS to `smtps`. */
const portConnections = (server: ThreePortServer): Record<keyof ServerPorts, () => net.Socket> => ({
  plain: () => net.connect(server.ports.plain, server.host),
  starttls: () => net.connect(server.ports.starttls, server.host),
  smtps: () =>
    tls.connect({
      host: server.host,
      port: server.ports.smtps,
      ca: server.certificatePem,
      servername: server.servername
    })
})

export interface EveryPortExpectations {
  /** The first line every port sends. */
  readonly greeting: string
  /** What every port's EHLO reply must match. */
  readonly ehlo: ReadonlyArray<RegExp>
  /** The EHLO keywords every port must advertise. */
  readonly extensions: ReadonlyArray<string>
  /** The rest of the conversation on the plain port, after EHLO and before QUIT. */
  readonly plain: (conversation: SmtpConversation) => Effect.Effect<void>
}

/**
 * Talks to each port of `server` in turn: expects the greeting, says EHLO and expects the reply to match and to
 * advertise every extension, and STARTTLS on the STARTTLS port only; goes on with `plain` on the plain port; says QUIT
 * and expects 221.
 */
export const expectEveryPort = (server: ThreePortServer, expected: EveryPortExpectations): Effect.Effect<void> =>
  Effect.gen(function*() {
    for (const [name, open] of Object.entries(portConnections(server))) {
      const socket = open()
      const talk = conversation(socket)
      expect(yield* Effect.promise(() => talk.say())).toBe(`${expected.greeting}\r\n`)
      const ehlo = yield* Effect.promise(() => talk.say("EHLO client.example.org"))
      for (const pattern of expected.ehlo) expect(ehlo).toMatch(pattern)
      for (const keyword of expected.extensions) {
        expect(ehlo).toMatch(new RegExp(`^250[ -]${keyword}\\b`, "m"))
      }
      expect(ehlo.includes("STARTTLS"), name).toBe(name === "starttls")
      if (name === "plain") yield* expected.plain(talk)
      expect(yield* Effect.promise(() => talk.say("QUIT"))).toMatch(/^221 /)
      socket.destroy()
    }
  })

/** Whether a connection to `port` is refused (how the tests know a stopped server is gone). */
export const connectionRefused = (port: number, host: string): Effect.Effect<boolean> =>
  Effect.promise(() =>
    new Promise<boolean>((resolve) => {
      const socket = net.connect(port, host)
      socket.on("connect", () => {
        socket.destroy()
        resolve(false)
      }).on("error", () => resolve(true))
    })
  )
