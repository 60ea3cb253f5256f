import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as net from "node:net"
import { afterEach } from "vitest"
import type { Script, ScriptedServer, ServedTransactions } from "../support/fakes/scriptedServer.js"
import {
  answerEhlo,
  ClientClosedError,
  greet,
  scriptedServer,
  serveTransaction,
  startScriptedServer,
  wellBehaved
} from "../support/fakes/scriptedServer.js"

/** A plain `node:net` client that reads lines and replies as latin1. */
interface Client {
  readonly socket: net.Socket
  readonly send: (text: string) => Promise<void>
  /** The next line from the server, without CRLF; rejects if the server closes first. */
  readonly readLine: () => Promise<string>
  /** The lines of the next (possibly multi-line) reply. */
  readonly readReply: () => Promise<ReadonlyArray<string>>
  /** Everything received from the server so far. */
  readonly received: () => string
  /** Resolves on "close" with the socket error seen, if any. */
  readonly closed: Promise<Error | undefined>
}

const connect = (port: number): Promise<Client> =>
  new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    let log = ""
    let pending = ""
    let ended = false
    let error: Error | undefined
    const waiters: Array<{ resolve: (line: string) => void; reject: (error: Error) => void }> = []
    const pump = () => {
      for (;;) {
        const at = pending.indexOf("\r\n")
        if (at < 0 || waiters.length === 0) break
        const line = pending.slice(0, at)
        pending = pending.slice(at + 2)
        waiters.shift()!.resolve(line)
      }
      if (ended) {
        for (const w of waiters.splice(0)) w.reject(new Error(`server closed, unread ${JSON.stringify(pending)}`))
      }
    }
    const closed = new Promise<Error | undefined>((resolveClosed) =>
      socket.once("close", () => {
        ended = true
        pump()
        resolveClosed(error)
      })
    )
    socket.on("data", (chunk: Buffer) => {
      const text = chunk.toString("latin1")
      log += text
      pending += text
      pump()
    })
    socket.on("end", () => {
      ended = true
      pump()
    })
    socket.on("error", (e) => {
      error = e
    })
    socket.once("connect", () => {
      socket.off("error", reject)
      const readLine = () =>
        new Promise<string>((res, rej) => {
          waiters.push({ resolve: res, reject: rej })
          pump()
        })
      resolve({
        socket,
        send: (text) =>
          new Promise((res, rej) => socket.write(Buffer.from(text, "latin1"), (e) => (e ? rej(e) : res()))),
        readLine,
        readReply: async () => {
          const lines: Array<string> = []
          for (;;) {
            const line = await readLine()
            lines.push(line)
            if (line.charAt(3) !== "-") return lines
          }
        },
        received: () => log,
        closed
      })
    })
    socket.once("error", reject)
  })

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const servers: Array<ScriptedServer> = []
const clients: Array<Client> = []
const start = async (script: Script) => {
  const server = await startScriptedServer(script)
  servers.push(server)
  return server
}
const open = async (server: ScriptedServer) => {
  const client = await connect(server.port)
  clients.push(client)
  return client
}
afterEach(async () => {
  for (const client of clients.splice(0)) client.socket.destroy()
  await Promise.all(servers.splice(0).map((server) => server.close()))
})

describe("scriptedServer", () => {
  it("greets and serves a full well-behaved transaction, recording exactly what the client sent", async () => {
    let served: ServedTransactions | undefined
    const server = await start(async (session) => {
      await greet(session)
      await answerEhlo(session)
      served = await serveTransaction(session)
    })
    expect(server.host).toBe("127.0.0.1")
    const client = await open(server)
    expect(await client.readLine()).toBe("220 scripted.example ESMTP")
    await client.send("EHLO client.example\r\n")
    expect(await client.readReply()).toEqual([
      "250-scripted.example",
      "250-PIPELINING",
      "250-8BITMIME",
      "250 SIZE 1000000"
    ])
    // Pipelined in one write, as a PIPELINING client would.
    await client.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n")
    expect(await client.readLine()).toBe("250 2.1.0 Ok")
    expect(await client.readLine()).toBe("250 2.1.5 Ok")
    expect(await client.readLine()).toBe("250 2.1.5 Ok")
    expect(await client.readLine()).toBe("354 End data with <CR><LF>.<CR><LF>")
    const body = "Subject: hi\r\n\r\n..dotted\r\nnon-ASCII \xe9\xff\r\n"
    await client.send(body + ".\r\nNOOP\r\nXFOO\r\nRSET\r\n")
    expect(await client.readLine()).toBe("250 2.0.0 Ok: queued as TEST")
    expect(await client.readLine()).toBe("250 2.0.0 Ok")
    expect(await client.readLine()).toBe("502 5.5.2 Error: command not recognized")
    expect(await client.readLine()).toBe("250 2.0.0 Ok")
    await client.send("QUIT\r\n")
    expect(await client.readLine()).toBe("221 2.0.0 Bye")
    expect(await client.closed).toBeUndefined()
    await server.allClosed()

    expect(server.connections()).toBe(1)
    expect(server.openConnections()).toBe(0)
    expect(server.scriptErrors()).toEqual([])
    expect(server.transcripts()).toEqual([
      "EHLO client.example\r\n" +
      "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n" +
      body + ".\r\nNOOP\r\nXFOO\r\nRSET\r\nQUIT\r\n"
    ])
    expect(served).toEqual({
      quit: true,
      messages: [{
        mailFrom: "MAIL FROM:<a@example.org>",
        rcptTo: ["RCPT TO:<b@example.org>", "RCPT TO:<c@example.org>"],
        data: body
      }]
    })
  })

  it("reads DATA up to its end line, however it is split, and BDAT chunks by size", async () => {
    const read: Array<string> = []
    const server = await start(async (session) => {
      read.push(await session.readData())
      read.push(await session.readData())
      read.push(await session.readLine())
      read.push(await session.readBytes(7))
      read.push(await session.readLine())
      await session.reply("250 done")
    })
    const client = await open(server)
    // An empty message, then one whose end line arrives in pieces.
    for (const piece of [".\r\n", "a", "\r", "\n.", "\r", "\nBDAT 7 LAST\r\n", "1\r\n.\r\n", "2QUIT\r\n"]) {
      await client.send(piece)
    }
    expect(await client.readLine()).toBe("250 done")
    expect(read).toEqual(["", "a\r\n", "BDAT 7 LAST", "1\r\n.\r\n2", "QUIT"])
  })

  it("answers HELO with a single 250", async () => {
    const server = await start(wellBehaved)
    const client = await open(server)
    await client.readLine()
    await client.send("HELO client.example\r\n")
    expect(await client.readReply()).toEqual(["250 scripted.example"])
  })

  it("stalls: no reply comes, and once the client closes nothing stays open", async () => {
    const server = await start(async (session) => {
      await greet(session)
      await session.stall()
    })
    const client = await open(server)
    await client.readLine()
    await client.send("EHLO client.example\r\n")
    await delay(200)
    expect(client.received()).toBe("220 scripted.example ESMTP\r\n")
    expect(server.openConnections()).toBe(1)
    client.socket.end()
    await server.allClosed()
    expect(await client.closed).toBeUndefined()
    expect(server.openConnections()).toBe(0)
    expect(server.transcripts()).toEqual(["EHLO client.example\r\n"])
    expect(server.scriptErrors().map((e) => e.error)).toEqual([expect.any(ClientClosedError)])
  })

  it("closing the server ends a stall and destroys its socket", async () => {
    const server = await start(async (session) => {
      await greet(session)
      await session.stall()
    })
    const client = await open(server)
    await client.readLine()
    await server.close()
    await client.closed
    expect(server.openConnections()).toBe(0)
    await server.allClosed()
  })

  const dropAfterDataLine = (how: "drop" | "reset"): Script => async (session) => {
    await greet(session)
    await answerEhlo(session)
    await session.readLine()
    await session.reply("250 2.1.0 Ok")
    await session.readLine()
    await session.reply("250 2.1.5 Ok")
    await session.readLine()
    await session.reply("354 go ahead")
    await session.readLine()
    session[how]()
  }

  const runIntoDrop = async (server: ScriptedServer) => {
    const client = await open(server)
    await client.readLine()
    await client.send("EHLO client.example\r\n")
    await client.readReply()
    await client.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    await client.readLine()
    await client.readLine()
    expect(await client.readLine()).toBe("354 go ahead")
    await client.send("Subject: x\r\n")
    const error = await client.closed
    await server.allClosed()
    expect(server.transcripts()[0]).toMatch(/DATA\r\nSubject: x\r\n$/)
    expect(server.scriptErrors()).toEqual([])
    return error
  }

  it("drops the connection mid-DATA: the client sees the close", async () => {
    const error = await runIntoDrop(await start(dropAfterDataLine("drop")))
    expect(error).toBeUndefined()
  })

  it("resets the connection mid-DATA: the client sees ECONNRESET", async () => {
    const error = await runIntoDrop(await start(dropAfterDataLine("reset")))
    expect(error).toMatchObject({ code: "ECONNRESET" })
  })

  it("writes garbage exactly as given", async () => {
    const server = await start(async (session) => {
      await session.write("HTTP/1.1 400 Bad Request\r\n")
      await session.end()
    })
    const client = await open(server)
    expect(await client.readLine()).toBe("HTTP/1.1 400 Bad Request")
    await expect(client.readLine()).rejects.toThrow(/server closed/)
    client.socket.end()
    await server.allClosed()
    expect(client.received()).toBe("HTTP/1.1 400 Bad Request\r\n")
  })

  it("records a script that throws, ends its connection and keeps serving", async () => {
    const server = await start(async (session) => {
      await greet(session)
      if (session.index === 0) throw new Error("boom")
      await answerEhlo(session)
      await serveTransaction(session)
    })
    const first = await open(server)
    expect(await first.readLine()).toBe("220 scripted.example ESMTP")
    await expect(first.readLine()).rejects.toThrow(/server closed/)
    first.socket.end()
    const second = await open(server)
    await second.readLine()
    await second.send("EHLO x\r\n")
    expect((await second.readReply()).length).toBe(4)
    second.socket.end()
    await server.allClosed()
    expect(server.scriptErrors()).toEqual([{ connection: 0, error: new Error("boom") }])
  })

  it("allClosed waits for every connection, and times out while one stays open", async () => {
    const server = await start(wellBehaved)
    const quitting = await open(server)
    const lingering = await open(server)
    await quitting.readLine()
    await lingering.readLine()
    await quitting.send("EHLO x\r\nQUIT\r\n")
    await quitting.readReply()
    expect(await quitting.readLine()).toBe("221 2.0.0 Bye")
    quitting.socket.end()
    await expect(server.allClosed(100)).rejects.toThrow("1 of 2 connection(s) still open after 100 ms")
    expect(server.openConnections()).toBe(1)
    lingering.socket.destroy()
    await server.allClosed()
    expect(server.connections()).toBe(2)
    expect(server.openConnections()).toBe(0)
    expect(server.transcripts()).toEqual(["EHLO x\r\nQUIT\r\n", ""])
  })

  it.effect("as a scoped resource, destroys its sockets when the scope closes", () =>
    Effect.gen(function*() {
      const client = yield* Effect.scoped(
        Effect.gen(function*() {
          const server = yield* scriptedServer(async (session) => {
            await greet(session)
            await session.stall()
          })
          const client = yield* Effect.promise(() => connect(server.port))
          yield* Effect.promise(() => client.readLine())
          return client
        })
      )
      expect(yield* Effect.promise(() => client.closed)).toBeUndefined()
    }))
})
