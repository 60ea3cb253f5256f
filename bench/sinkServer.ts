/**
 * A minimal SMTP server that takes messages and throws their bytes away as fast as it can: it answers EHLO, MAIL,
 * RCPT, DATA (reading until CRLF.CRLF with native searches, never byte by byte in JavaScript), BDAT (skipping the
 * counted octets; only when `chunking` is on, which advertises CHUNKING), RSET, NOOP and QUIT, and counts what it
 * received. No parsing of addresses, no limits: for streaming benchmarks only.
 */
import * as net from "node:net"

export interface SinkStats {
  /** Transactions ended (end of data or BDAT LAST). */
  readonly messages: number
  readonly dataMessages: number
  readonly bdatMessages: number
  readonly bdatChunks: number
  /** Message octets received: DATA text up to and including the final CRLF.CRLF, or BDAT payload octets. */
  readonly octets: number
  readonly connections: number
}

export interface SinkServer {
  readonly port: number
  readonly stats: () => SinkStats
  readonly close: () => Promise<void>
}

const CRLF: Buffer = Buffer.from("\r\n")
const TERMINATOR = Buffer.from("\r\n.\r\n")

/** Where CRLF.CRLF ends when `tail` (the last octets before `chunk`, at most 4) is joined to `chunk`; -1 if not. */
const terminatorEnd = (tail: Buffer, chunk: Buffer): number => {
  if (tail.length > 0) {
    const joined = Buffer.concat([tail, chunk.subarray(0, 4)])
    const at = joined.indexOf(TERMINATOR)
    if (at >= 0 && at < tail.length) return at + 5 - tail.length
  }
  const at = chunk.indexOf(TERMINATOR)
  return at < 0 ? -1 : at + 5
}

export const startSinkServer = (chunking: boolean): Promise<SinkServer> => {
  const stats = { messages: 0, dataMessages: 0, bdatMessages: 0, bdatChunks: 0, octets: 0, connections: 0 }
  const sockets = new Set<net.Socket>()
  const ehlo = [
    "250-sink.example",
    "250-PIPELINING",
    "250-8BITMIME",
    ...(chunking ? ["250-CHUNKING"] : []),
    "250 SMTPUTF8"
  ]
    .map((line) => `${line}\r\n`).join("")

  const server = net.createServer((socket) => {
    stats.connections++
    sockets.add(socket)
    socket.setNoDelay(true)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => socket.destroy())
    let mode: "line" | "data" | "bdat" = "line"
    let line = Buffer.alloc(0)
    // DATA: the last octets seen (the DATA command's CRLF at first, so an empty message ends at once).
    let tail: Buffer = CRLF
    let bdatLeft = 0
    let bdatLast = false
    const replies: Array<string> = []

    const command = (text: string): void => {
      const verb = text.slice(0, 4).toUpperCase()
      if (verb === "EHLO") replies.push(ehlo)
      else if (verb === "HELO" || verb === "MAIL" || verb === "RCPT" || verb === "RSET" || verb === "NOOP") {
        replies.push("250 2.0.0 Ok\r\n")
      } else if (verb === "DATA") {
        replies.push("354 End data with <CR><LF>.<CR><LF>\r\n")
        mode = "data"
        tail = CRLF
      } else if (verb === "BDAT" && chunking) {
        const match = /^BDAT (\d+)( LAST)?$/i.exec(text)
        if (match === null) replies.push("501 5.5.4 Syntax: BDAT size [LAST]\r\n")
        else {
          bdatLeft = Number(match[1])
          bdatLast = match[2] !== undefined
          mode = "bdat"
          stats.bdatChunks++
        }
      } else if (verb === "QUIT") {
        replies.push("221 2.0.0 Bye\r\n")
      } else replies.push("502 5.5.2 Command not recognized\r\n")
    }

    const bdatDone = (): void => {
      mode = "line"
      if (bdatLast) {
        stats.messages++
        stats.bdatMessages++
        replies.push("250 2.0.0 Ok: queued\r\n")
      } else replies.push("250 2.0.0 Ok: chunk\r\n")
    }

    socket.on("data", (input: Buffer) => {
      let chunk = input
      while (chunk.length > 0 || (mode === "bdat" && bdatLeft === 0)) {
        if (mode === "data") {
          const end = terminatorEnd(tail, chunk)
          if (end < 0) {
            stats.octets += chunk.length
            tail = chunk.length >= 4
              ? chunk.subarray(chunk.length - 4)
              : Buffer.concat([tail, chunk]).subarray(-4)
            break
          }
          stats.octets += end
          stats.messages++
          stats.dataMessages++
          replies.push("250 2.0.0 Ok: queued\r\n")
          mode = "line"
          chunk = chunk.subarray(end)
        } else if (mode === "bdat") {
          const take = Math.min(bdatLeft, chunk.length)
          stats.octets += take
          bdatLeft -= take
          chunk = chunk.subarray(take)
          if (bdatLeft === 0) bdatDone()
        } else {
          const at = chunk.indexOf(CRLF)
          if (at < 0) {
            line = Buffer.concat([line, chunk])
            break
          }
          const text = Buffer.concat([line, chunk.subarray(0, at)]).toString("latin1")
          line = Buffer.alloc(0)
          chunk = chunk.subarray(at + 2)
          command(text)
          if (text.toUpperCase() === "QUIT") {
            socket.end(replies.splice(0).join(""))
            return
          }
        }
      }
      if (replies.length > 0) socket.write(replies.splice(0).join(""))
    })
    socket.write("220 sink.example ESMTP bench sink\r\n")
  })

  return new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        stats: () => ({ ...stats }),
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      })
    })
  })
}
