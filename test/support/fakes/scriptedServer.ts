/**
 * A tiny programmable SMTP server on 127.0.0.1 for fault tests.
 *
 * Every accepted connection runs the same {@link Script}: an async function over a {@link ScriptedSession} that reads
 * what the client sent and answers (or misbehaves) at any phase. Everything the client sends is recorded, byte for
 * byte, as latin1 (one character per octet), whether or not the script reads it.
 *
 * Connection lifecycle:
 * - the socket is half-open capable: when the client ends its side, the script may still write (a `QUIT` sent just
 *   before the client's FIN still gets its `221`), but reads that cannot be satisfied reject with
 *   {@link ClientClosedError};
 * - when the script settles (returns or throws), the server ends the socket gracefully unless it is already gone; a
 *   thrown error is recorded (see {@link ScriptedServer.scriptErrors}), never rethrown;
 * - closing the server destroys every socket, which also rejects every pending read and `stall`, so nothing keeps
 *   the process alive.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as net from "node:net"

/** A read could not be satisfied because the client closed its side (or the socket was destroyed) first. */
export class ClientClosedError extends Error {
  override readonly name = "ClientClosedError"
  constructor(
    readonly waitingFor: string,
    /** What the client sent that no read consumed. */
    readonly unread: string
  ) {
    super(`the connection closed while the script waited for ${waitingFor} (unread: ${JSON.stringify(unread)})`)
  }
}

export interface ScriptedSession {
  /** The connection number, from 0, in accept order. */
  readonly index: number
  /**
   * Resolves with the next line the client sent, without its CRLF (bytes decoded as latin1 so every octet survives);
   * rejects with {@link ClientClosedError} if the client closes first. Lines end at CRLF only: a bare LF stays inside
   * the line.
   */
  readonly readLine: () => Promise<string>
  /**
   * Reads the DATA content up to its end line `.` and returns it as latin1, exactly as sent (still dot-stuffed). The
   * CRLF that ends the last content line is kept and the end line `.\r\n` is dropped, so `"a\r\nb\r\n.\r\n"` reads
   * as `"a\r\nb\r\n"` and an empty message (`".\r\n"` right after the DATA line) reads as `""`.
   */
  readonly readData: () => Promise<string>
  /** Reads exactly `n` bytes (a BDAT chunk), as latin1. */
  readonly readBytes: (n: number) => Promise<string>
  /** Writes raw text exactly as given (no CRLF added); a string is written as latin1, one octet per character. */
  readonly write: (text: string | Uint8Array) => Promise<void>
  /** Writes one reply line, adding CRLF. */
  readonly reply: (line: string) => Promise<void>
  /**
   * Never answers again, but keeps the socket open and keeps recording (a stall). Rejects with
   * {@link ClientClosedError} once the client closes or the socket is destroyed, so the script still ends.
   */
  readonly stall: () => Promise<never>
  /** Destroys the socket at once (a drop): the client sees its FIN, then the close. */
  readonly drop: () => void
  /** Destroys the socket with a TCP RST (an abortive drop): the client sees ECONNRESET. */
  readonly reset: () => void
  /** Ends the socket gracefully (sends FIN); resolves once the FIN is written. */
  readonly end: () => Promise<void>
  /** Everything the client sent on this connection so far, as latin1. */
  readonly received: () => string
  /** Resolves when the client closes its side or the socket is destroyed. */
  readonly closed: Promise<void>
}

export type Script = (session: ScriptedSession) => Promise<void>

export interface ScriptedServer {
  readonly port: number
  readonly host: "127.0.0.1"
  /** Everything received on each connection, in connection order. */
  readonly transcripts: () => ReadonlyArray<string>
  /** How many connections were accepted. */
  readonly connections: () => number
  /** How many connections are still open right now (to assert the client leaves nothing open). */
  readonly openConnections: () => number
  /** Errors thrown by scripts (including {@link ClientClosedError}), in the order they happened. */
  readonly scriptErrors: () => ReadonlyArray<ScriptError>
  /**
   * Resolves when every accepted connection has been closed and its script has settled; rejects after `timeoutMs`
   * (default 2000). Only counts connections accepted so far.
   */
  readonly allClosed: (timeoutMs?: number) => Promise<void>
  /** Stops listening and destroys every socket; resolves once the server is closed. Idempotent. */
  readonly close: () => Promise<void>
}

export interface ScriptError {
  readonly connection: number
  readonly error: unknown
}

/** Keeps a promise that nobody awaits from becoming an unhandled rejection, and returns it unchanged. */
const handled = <A>(promise: Promise<A>): Promise<A> => {
  promise.catch(() => {})
  return promise
}

interface Waiter {
  readonly what: string
  readonly take: (pending: string) => { readonly value: unknown; readonly consumed: number } | undefined
  readonly resolve: (value: unknown) => void
  readonly reject: (error: unknown) => void
}

interface Connection {
  readonly session: ScriptedSession
  readonly socket: net.Socket
  /** Set when the socket emits "close". */
  readonly state: { isOpen: boolean }
  /** The socket has closed and the script has settled. */
  readonly done: Promise<void>
}

const openSession = (socket: net.Socket, index: number) => {
  let log = ""
  let pending = ""
  let ended = false
  const waiters: Array<Waiter> = []

  const pump = () => {
    while (waiters.length > 0) {
      const waiter = waiters[0]!
      const taken = waiter.take(pending)
      if (taken === undefined) break
      pending = pending.slice(taken.consumed)
      waiters.shift()
      waiter.resolve(taken.value)
    }
    if (ended) {
      for (const waiter of waiters.splice(0)) waiter.reject(new ClientClosedError(waiter.what, pending))
    }
  }

  const read = <A>(
    what: string,
    take: (pending: string) => { readonly value: A; readonly consumed: number } | undefined
  ): Promise<A> =>
    handled(
      new Promise<A>((resolve, reject) => {
        waiters.push({ what, take, resolve: resolve as (value: unknown) => void, reject })
        pump()
      })
    )

  let markClosed: () => void = () => {}
  const closed = new Promise<void>((resolve) => {
    markClosed = resolve
  })
  const onEnd = () => {
    if (ended) return
    ended = true
    markClosed()
    pump()
  }

  socket.on("data", (chunk: Buffer) => {
    const text = chunk.toString("latin1")
    log += text
    pending += text
    pump()
  })
  socket.on("end", onEnd)
  socket.on("close", onEnd)
  // Resets and broken pipes are what fault tests are about; the "close" that follows is what matters.
  socket.on("error", () => {})

  const write = (text: string | Uint8Array): Promise<void> =>
    handled(
      new Promise<void>((resolve, reject) => {
        if (socket.destroyed || !socket.writable) {
          reject(new Error(`scripted server: cannot write ${JSON.stringify(String(text))}, the socket is closed`))
          return
        }
        socket.write(typeof text === "string" ? Buffer.from(text, "latin1") : text, (error) => {
          if (error) reject(error)
          else resolve()
        })
      })
    )

  const session: ScriptedSession = {
    index,
    readLine: () =>
      read("a line", (p) => {
        const at = p.indexOf("\r\n")
        return at < 0 ? undefined : { value: p.slice(0, at), consumed: at + 2 }
      }),
    readData: () =>
      read("the end of DATA", (p) => {
        if (p.startsWith(".\r\n")) return { value: "", consumed: 3 }
        const at = p.indexOf("\r\n.\r\n")
        return at < 0 ? undefined : { value: p.slice(0, at + 2), consumed: at + 5 }
      }),
    readBytes: (n) => {
      if (!Number.isSafeInteger(n) || n < 0) return handled(Promise.reject(new RangeError(`readBytes(${n})`)))
      return read(`${n} bytes`, (p) => p.length < n ? undefined : { value: p.slice(0, n), consumed: n })
    },
    write,
    reply: (line) => write(line + "\r\n"),
    stall: () => handled(closed.then(() => Promise.reject(new ClientClosedError("nothing (stalled)", pending)))),
    drop: () => {
      socket.destroy()
    },
    reset: () => {
      if (!socket.destroyed) socket.resetAndDestroy()
    },
    end: () =>
      handled(
        new Promise<void>((resolve) => {
          if (socket.destroyed || socket.writableEnded) resolve()
          else socket.end(() => resolve())
        })
      ),
    received: () => log,
    closed
  }
  return session
}

export const startScriptedServer = (script: Script): Promise<ScriptedServer> => {
  const connections: Array<Connection> = []
  const errors: Array<ScriptError> = []

  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.setNoDelay(true)
    const index = connections.length
    const session = openSession(socket, index)
    const state = { isOpen: true }
    const socketClosed = new Promise<void>((resolve) =>
      socket.once("close", () => {
        state.isOpen = false
        resolve()
      })
    )
    const settled = Promise.resolve()
      .then(() => script(session))
      .catch((error: unknown) => {
        errors.push({ connection: index, error })
      })
      .then(() => {
        if (!socket.destroyed && !socket.writableEnded) socket.end()
      })
    const connection: Connection = {
      session,
      socket,
      state,
      done: Promise.all([socketClosed, settled]).then(() => {})
    }
    connections.push(connection)
  })
  server.on("error", () => {})

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    if (closing === undefined) {
      closing = new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const connection of connections) connection.socket.destroy()
      })
    }
    return closing
  }

  const allClosed = (timeoutMs = 2000): Promise<void> => {
    const watched = [...connections]
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const open = watched.filter((c) => c.state.isOpen).length
        reject(
          new Error(
            `scripted server: ${open} of ${watched.length} connection(s) still open after ${timeoutMs} ms` +
              (open === 0 ? " (all sockets closed, but a script has not settled)" : "")
          )
        )
      }, timeoutMs)
    })
    return Promise.race([Promise.all(watched.map((c) => c.done)).then(() => {}), timeout]).finally(() =>
      clearTimeout(timer)
    )
  }

  return new Promise<ScriptedServer>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject)
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        reject(new Error("scripted server: no TCP address"))
        return
      }
      resolve({
        port: address.port,
        host: "127.0.0.1",
        transcripts: () => connections.map((c) => c.session.received()),
        connections: () => connections.length,
        openConnections: () => connections.filter((c) => c.state.isOpen).length,
        scriptErrors: () => [...errors],
        allClosed,
        close
      })
    })
  })
}

/** The same as an Effect resource: the server is closed (all sockets destroyed) when the scope closes. */
export const scriptedServer = (script: Script): Effect.Effect<ScriptedServer, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => startScriptedServer(script)),
    (server) => Effect.promise(() => server.close())
  )

// ---------------------------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------------------------

export const serverName = "scripted.example"

/** The upper-cased first word of a command line. */
export const verbOf = (line: string): string => (line.split(" ", 1)[0] ?? "").toUpperCase()

/** Sends the greeting. */
export const greet = (session: ScriptedSession, text = `220 ${serverName} ESMTP`): Promise<void> => session.reply(text)

/** Writes a reply of several lines: `code-` on every line but the last, `code ` on the last. */
export const replyLines = (session: ScriptedSession, code: string, lines: ReadonlyArray<string>): Promise<void> =>
  session.write(lines.map((line, i) => `${code}${i === lines.length - 1 ? " " : "-"}${line}\r\n`).join(""))

export const defaultCapabilities: ReadonlyArray<string> = ["PIPELINING", "8BITMIME", "SIZE 1000000"]

/**
 * Reads the client's EHLO and answers a multi-line 250 with the capabilities; a HELO gets `250 scripted.example`.
 * Anything else gets a 503 and throws. Returns the line the client sent.
 */
export const answerEhlo = async (
  session: ScriptedSession,
  capabilities: ReadonlyArray<string> = defaultCapabilities
): Promise<string> => {
  const line = await session.readLine()
  const verb = verbOf(line)
  if (verb === "EHLO") {
    await replyLines(session, "250", [serverName, ...capabilities])
  } else if (verb === "HELO") {
    await session.reply(`250 ${serverName}`)
  } else {
    await session.reply("503 5.5.1 Error: send HELO/EHLO first")
    throw new Error(`scripted server: expected EHLO or HELO, got ${JSON.stringify(line)}`)
  }
  return line
}

/** One message accepted by {@link serveTransaction}: the command lines as sent, and the content as read. */
export interface ServedMessage {
  readonly mailFrom: string
  readonly rcptTo: ReadonlyArray<string>
  /** As {@link ScriptedSession.readData} returns it, or the BDAT chunks concatenated. */
  readonly data: string
}

export interface ServedTransactions {
  readonly messages: ReadonlyArray<ServedMessage>
  /** Whether the client said QUIT (otherwise it closed between commands). */
  readonly quit: boolean
}

const bdatPattern = /^BDAT ([0-9]+)( LAST)?$/i

/**
 * A well-behaved command loop: MAIL and RCPT get 250, DATA gets 354 and then, after the content, `250 2.0.0 Ok:
 * queued as TEST`; BDAT chunks are read and acknowledged (LAST queues the message); RSET and NOOP get 250; QUIT gets
 * 221 and the socket is ended; anything else gets 502. Returns when the client says QUIT or closes between commands;
 * a close in the middle of DATA or BDAT rejects with {@link ClientClosedError}.
 */
export const serveTransaction = async (session: ScriptedSession): Promise<ServedTransactions> => {
  const messages: Array<ServedMessage> = []
  let mailFrom: string | undefined
  let rcptTo: Array<string> = []
  let chunks = ""
  const queue = async (data: string) => {
    messages.push({ mailFrom: mailFrom ?? "", rcptTo, data })
    mailFrom = undefined
    rcptTo = []
    chunks = ""
    await session.reply("250 2.0.0 Ok: queued as TEST")
  }
  for (;;) {
    let line: string
    try {
      line = await session.readLine()
    } catch (error) {
      if (error instanceof ClientClosedError) return { messages, quit: false }
      throw error
    }
    const bdat = bdatPattern.exec(line)
    switch (verbOf(line)) {
      case "MAIL":
        mailFrom = line
        rcptTo = []
        chunks = ""
        await session.reply("250 2.1.0 Ok")
        break
      case "RCPT":
        rcptTo.push(line)
        await session.reply("250 2.1.5 Ok")
        break
      case "DATA":
        await session.reply("354 End data with <CR><LF>.<CR><LF>")
        await queue(await session.readData())
        break
      case "BDAT":
        if (bdat === null) {
          await session.reply("501 5.5.4 Syntax: BDAT size [LAST]")
          break
        }
        chunks += await session.readBytes(Number(bdat[1]))
        if (bdat[2] !== undefined) await queue(chunks)
        else await session.reply(`250 2.0.0 Ok: ${bdat[1]} octets received`)
        break
      case "RSET":
        mailFrom = undefined
        rcptTo = []
        chunks = ""
        await session.reply("250 2.0.0 Ok")
        break
      case "NOOP":
        await session.reply("250 2.0.0 Ok")
        break
      case "QUIT":
        await session.reply("221 2.0.0 Bye")
        await session.end()
        return { messages, quit: true }
      default:
        await session.reply("502 5.5.2 Error: command not recognized")
    }
  }
}

/** Greets, answers EHLO with the default capabilities, then serves transactions until QUIT or close. */
export const wellBehaved: Script = async (session) => {
  await greet(session)
  await answerEhlo(session)
  await serveTransaction(session)
}
