/**
 * A fast SMTP server for soak tests that misbehaves at random, from a seeded generator: it drops connections at every
 * phase, stalls, answers 421 (and closes), 451 to MAIL and 452 to RCPT, and on some connections lies about PIPELINING
 * (offers it, then drops every command but the first of each read). It counts the messages it stored by their
 * `Message-ID`, so a test can check that each was stored once at most, and exactly when the client said so.
 */
import * as net from "node:net"
import { random } from "../helpers/random.js"

/** What goes wrong on one connection. */
export type Fault =
  | "none"
  | "drop-at-greeting"
  | "drop-after-ehlo"
  | "drop-after-mail"
  | "drop-mid-data"
  | "drop-before-storing"
  | "drop-after-storing"
  | "stall-at-rcpt"
  | "stall-after-storing"
  | "421-at-mail"
  | "421-at-data"
  | "lie-about-pipelining"

/** How often each fault strikes a connection, in parts per 1,000; the rest behave, but for random 451s and 452s. */
export const defaultFaultRates: Readonly<Partial<Record<Fault, number>>> = {
  "drop-at-greeting": 10,
  "drop-after-ehlo": 10,
  "drop-after-mail": 15,
  "drop-mid-data": 15,
  "drop-before-storing": 15,
  "drop-after-storing": 15,
  "stall-at-rcpt": 5,
  "stall-after-storing": 5,
  "421-at-mail": 15,
  "421-at-data": 15,
  "lie-about-pipelining": 10
}

export interface FaultyServer {
  readonly port: number
  /** How often each Message-ID was stored. */
  readonly stored: ReadonlyMap<string, number>
  /** How many connections each fault struck. */
  readonly faults: ReadonlyMap<Fault, number>
  readonly connections: () => number
  readonly openConnections: () => number
  readonly close: () => Promise<void>
}

export interface FaultyServerOptions {
  readonly seed: number
  readonly faultRates?: Readonly<Partial<Record<Fault, number>>>
  /** Per 1,000 MAIL commands answered 451 on a healthy connection. Default 10. */
  readonly mail451?: number
  /** Per 1,000 RCPT commands answered 452 on a healthy connection. Default 20. */
  readonly rcpt452?: number
}

const END_OF_DATA = "\r\n.\r\n"
const MESSAGE_ID = /^Message-ID: <([^>]+)>/im

export const startFaultyServer = (options: FaultyServerOptions): Promise<FaultyServer> => {
  const next = random(options.seed)
  const rates = options.faultRates ?? defaultFaultRates
  const stored = new Map<string, number>()
  const faults = new Map<Fault, number>()
  const sockets = new Set<net.Socket>()
  let connections = 0

  const pickFault = (): Fault => {
    let roll = next() * 1000
    for (const [fault, rate] of Object.entries(rates) as Array<[Fault, number]>) {
      if (roll < rate) return fault
      roll -= rate
    }
    return "none"
  }

  const server = net.createServer((socket) => {
    connections++
    sockets.add(socket)
    socket.setNoDelay(true)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => {})
    const fault = pickFault()
    faults.set(fault, (faults.get(fault) ?? 0) + 1)
    let buffer = ""
    let inData = false
    let stalled = false
    let hasMail = false
    let recipients = 0

    const drop = () => {
      stalled = true
      socket.destroy()
    }
    const store = (content: string) => {
      const id = MESSAGE_ID.exec(content)?.[1] ?? "(no Message-ID)"
      stored.set(id, (stored.get(id) ?? 0) + 1)
    }

    /** One command line; returns the reply, or undefined when the connection was dropped or stalls. */
    const command = (line: string): string | undefined => {
      const verb = line.slice(0, 4).toUpperCase()
      switch (verb) {
        case "EHLO":
          if (fault === "drop-after-ehlo") return void drop()
          return "250-faulty.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000"
        case "HELO":
          return "250 faulty.example"
        case "MAIL":
          if (fault === "drop-after-mail") return void drop()
          if (fault === "421-at-mail") return "421 4.3.2 Shutting down"
          if (next() * 1000 < (options.mail451 ?? 10)) return "451 4.3.0 Try again later"
          hasMail = true
          recipients = 0
          return "250 2.1.0 Ok"
        case "RCPT":
          if (fault === "stall-at-rcpt") {
            stalled = true
            return undefined
          }
          if (!hasMail) return "503 5.5.1 Need MAIL first"
          if (next() * 1000 < (options.rcpt452 ?? 20)) return "452 4.2.2 Mailbox full, try later"
          recipients++
          return "250 2.1.5 Ok"
        case "DATA":
          if (fault === "421-at-data") return "421 4.3.2 Shutting down"
          if (!hasMail || recipients === 0) return "554 5.5.1 No valid recipients"
          inData = true
          return "354 Go ahead"
        case "RSET":
          hasMail = false
          recipients = 0
          return "250 2.0.0 Ok"
        case "NOOP":
          return "250 2.0.0 Ok"
        case "QUIT":
          socket.end("221 2.0.0 Bye\r\n")
          stalled = true
          return undefined
        default:
          return "502 5.5.2 Not implemented"
      }
    }

    const endOfData = (content: string): string | undefined => {
      inData = false
      hasMail = false
      if (fault === "drop-before-storing") return void drop()
      store(content.split("\r\n..").join("\r\n."))
      if (fault === "drop-after-storing") return void drop()
      if (fault === "stall-after-storing") {
        stalled = true
        return undefined
      }
      return "250 2.0.0 Ok: queued"
    }

    socket.on("data", (chunk: Buffer) => {
      if (stalled) return
      buffer += chunk.toString("latin1")
      const replies: Array<string> = []
      let first = true
      while (!stalled) {
        if (inData) {
          const end = buffer.indexOf(END_OF_DATA)
          if (fault === "drop-mid-data" && buffer.length > 0) return drop()
          if (end === -1) break
          const content = buffer.slice(0, end + 2)
          buffer = buffer.slice(end + END_OF_DATA.length)
          const reply = endOfData(content)
          if (reply !== undefined) replies.push(reply)
          continue
        }
        const end = buffer.indexOf("\r\n")
        if (end === -1) break
        const line = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        // The liar: whatever else came in this read is lost.
        if (fault === "lie-about-pipelining" && !first) {
          buffer = ""
          break
        }
        first = false
        const reply = command(line)
        if (reply !== undefined) replies.push(reply)
        if (reply?.startsWith("421")) {
          socket.end(replies.join("\r\n") + "\r\n")
          stalled = true
          return
        }
      }
      if (replies.length > 0 && !socket.destroyed) socket.write(replies.join("\r\n") + "\r\n")
    })

    if (fault === "drop-at-greeting") return drop()
    socket.write("220 faulty.example ESMTP\r\n")
  })

  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        stored,
        faults,
        connections: () => connections,
        openConnections: () => sockets.size,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      })
    })
  })
}
