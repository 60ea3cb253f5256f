/**
 * The practical limit: an SMTP client that writes pre-encoded commands and bodies straight to a `net.Socket` and only
 * counts and checks reply codes. It knows the order of the replies it is owed (one expected code per command, FIFO)
 * and fails on the first reply that is not the one expected, on a malformed reply, on a closed connection and at
 * its deadline.
 *
 * - DATA mode (RFC 2920 pipelining): one write per message holds the previous body with its `.` end and the next
 *   `MAIL`, `RCPT`, `DATA`; the client then waits for the replies up to the 354. About one round trip per message.
 * - BDAT mode (RFC 3030): `MAIL`, `RCPT`, `BDAT n LAST` and the body per transaction, `window` transactions in
 *   flight; each transaction's last reply lets the next one be written.
 *
 * Sessions on several connections can share one batch through a `Cursor`: each takes the next transaction when it has
 * room for one.
 */
import * as net from "node:net"

/** One reply the client is owed: the code it must have, and what to do when it came. */
interface Owed {
  readonly code: number
  readonly what: string
  readonly then?: ((text: string) => void) | undefined
}

/** One connection: writes, the replies owed, and a promise for "every reply owed so far has come". */
class Session {
  private readonly owed: Array<Owed> = []
  private owedHead = 0
  private partial = ""
  private lines: Array<string> = []
  private failure: Error | undefined
  private idleWaiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = []
  private readonly timer: NodeJS.Timeout

  constructor(readonly socket: net.Socket, deadlineMs: number) {
    socket.setNoDelay(true)
    socket.on("data", (chunk: Buffer) => this.read(chunk))
    socket.on("error", (error) => this.fail(error))
    socket.on("close", () => this.fail(new Error("the server closed the connection")))
    this.timer = setTimeout(() => this.fail(new Error(`no end within ${deadlineMs} ms`)), deadlineMs)
  }

  /** Writes `chunks` in one go (corked) and adds the replies they are owed. */
  write(chunks: ReadonlyArray<Uint8Array>, owed: ReadonlyArray<Owed>): void {
    if (this.failure !== undefined) return
    for (const o of owed) this.owed.push(o)
    if (chunks.length === 1) this.socket.write(chunks[0]!)
    else {
      this.socket.cork()
      for (const chunk of chunks) this.socket.write(chunk)
      this.socket.uncork()
    }
  }

  /** Resolves once every reply owed so far has come (and was right). */
  idle(): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure)
    if (this.owedHead === this.owed.length) return Promise.resolve()
    return new Promise((resolve, reject) => this.idleWaiters.push({ resolve, reject }))
  }

  /** Ends the session; after `QUIT`'s reply, closing is expected. */
  close(): void {
    clearTimeout(this.timer)
    this.failure ??= new Error("closed")
    this.socket.destroy()
  }

  private fail(error: Error): void {
    if (this.failure !== undefined) return
    this.failure = error
    clearTimeout(this.timer)
    this.socket.destroy()
    for (const waiter of this.idleWaiters.splice(0)) waiter.reject(error)
  }

  private read(chunk: Buffer): void {
    // Writes done by the callbacks of one chunk's replies go out together.
    this.socket.cork()
    try {
      let text = this.partial + chunk.toString("latin1")
      let at: number
      while ((at = text.indexOf("\r\n")) >= 0) {
        const line = text.slice(0, at)
        text = text.slice(at + 2)
        this.line(line)
        if (this.failure !== undefined) return
      }
      this.partial = text
    } finally {
      this.socket.uncork()
    }
  }

  private line(line: string): void {
    if (!/^\d{3}([ -]|$)/.test(line)) return this.fail(new Error(`malformed reply line: ${JSON.stringify(line)}`))
    this.lines.push(line)
    if (line[3] === "-") return
    const code = Number(line.slice(0, 3))
    const text = this.lines.join("\n")
    this.lines = []
    const owed = this.owed[this.owedHead]
    if (owed === undefined) return this.fail(new Error(`a reply nobody asked for: ${text}`))
    this.owedHead++
    if (code !== owed.code) return this.fail(new Error(`${owed.what}: expected ${owed.code}, got: ${text}`))
    if (this.owedHead === this.owed.length) {
      this.owed.length = 0
      this.owedHead = 0
    }
    owed.then?.(text)
    if (this.owedHead === this.owed.length) { for (const waiter of this.idleWaiters.splice(0)) waiter.resolve() }
  }
}

const ascii = (text: string): Buffer => Buffer.from(text, "latin1")

/** Connects, reads the 220, sends EHLO and checks that the reply lists every one of `needs`. */
const open = async (port: number, deadlineMs: number, needs: ReadonlyArray<string>): Promise<Session> => {
  const socket = net.connect({ host: "127.0.0.1", port })
  const session = new Session(socket, deadlineMs)
  session.write([], [{ code: 220, what: "greeting" }])
  // smtp-server refuses a client that talks before the greeting (421 "You talk too soon").
  await session.idle()
  let capabilities = ""
  session.write([ascii("EHLO bench.example\r\n")], [{
    code: 250,
    what: "EHLO",
    then: (text) => {
      capabilities = text
    }
  }])
  await session.idle()
  for (const need of needs) {
    if (!new RegExp(`^250[ -]${need}\\b`, "im").test(capabilities)) {
      session.close()
      throw new Error(`the server does not offer ${need}:\n${capabilities}`)
    }
  }
  return session
}

const quit = async (session: Session): Promise<void> => {
  session.write([ascii("QUIT\r\n")], [{ code: 221, what: "QUIT" }])
  await session.idle()
  session.close()
}

export interface Transaction {
  readonly from: string
  readonly to: string
}

/** The envelope commands of one transaction, with `last` (`DATA` or `BDAT n LAST`) after them. */
const envelope = (t: Transaction, last: string): Buffer =>
  ascii(`MAIL FROM:<${t.from}>\r\nRCPT TO:<${t.to}>\r\n${last}\r\n`)

/**
 * Where sessions that share one batch take their next transaction from: an index into the batch, so that a session on
 * a faster connection sends more of it. A session alone on its batch starts at 0 and takes every transaction in turn.
 */
export interface Cursor {
  next: number
}

/**
 * DATA mode: `bodies[i]` must be ready to go after the 354: dot-stuffed, ending with CRLF.CRLF. Takes transactions
 * from `cursor` until the batch is done. Returns the number of messages the server accepted (250 after the end of
 * data): every one this session took, or it throws.
 */
export const sendData = async (
  port: number,
  transactions: ReadonlyArray<Transaction>,
  bodies: ReadonlyArray<Uint8Array>,
  deadlineMs: number,
  cursor: Cursor = { next: 0 }
): Promise<number> => {
  const session = await open(port, deadlineMs, ["PIPELINING"])
  try {
    let accepted = 0
    const ended = { code: 250, what: "end of data", then: () => accepted++ }
    let previous: number | undefined
    for (let i = cursor.next++; i < transactions.length; i = cursor.next++) {
      const commands = envelope(transactions[i]!, "DATA")
      const owed: Array<Owed> = [{ code: 250, what: "MAIL" }, { code: 250, what: "RCPT" }, { code: 354, what: "DATA" }]
      session.write(
        previous === undefined ? [commands] : [bodies[previous]!, commands],
        previous === undefined ? owed : [ended, ...owed]
      )
      await session.idle()
      previous = i
    }
    if (previous !== undefined) {
      session.write([bodies[previous]!], [ended])
      await session.idle()
    }
    await quit(session)
    return accepted
  } finally {
    session.close()
  }
}

/**
 * BDAT mode: `bodies[i]` are sent as they are (no dot-stuffing), each as one `BDAT n LAST`, with up to `window`
 * transactions in flight, taken from `cursor` until the batch is done. Returns the number of messages the server
 * accepted: every one this session took, or it throws.
 *
 * `spinMicros` (default 0) spins the CPU that long at each message's last reply, before the next one is written: a
 * client that does that much work of its own per message, for telling how much of a slower client's rate its CPU
 * time explains when the client shares the cores with the server.
 */
export const sendBdat = async (
  port: number,
  transactions: ReadonlyArray<Transaction>,
  bodies: ReadonlyArray<Uint8Array>,
  window: number,
  deadlineMs: number,
  spinMicros = 0,
  cursor: Cursor = { next: 0 }
): Promise<number> => {
  const session = await open(port, deadlineMs, ["PIPELINING", "CHUNKING"])
  try {
    let accepted = 0
    const write = (): void => {
      const i = cursor.next++
      const commands = envelope(transactions[i]!, `BDAT ${bodies[i]!.length} LAST`)
      session.write([commands, bodies[i]!], [
        { code: 250, what: "MAIL" },
        { code: 250, what: "RCPT" },
        { code: 250, what: "BDAT LAST", then: ended }
      ])
    }
    const ended = (): void => {
      accepted++
      if (spinMicros > 0) {
        const until = performance.now() + spinMicros / 1000
        while (performance.now() < until) {
          // spinning: the client's own work, as a stand-in
        }
      }
      if (cursor.next < transactions.length) write()
    }
    session.socket.cork()
    for (let k = 0; k < window && cursor.next < transactions.length; k++) write()
    session.socket.uncork()
    await session.idle()
    await quit(session)
    return accepted
  } finally {
    session.close()
  }
}

/** `count` NOOPs one after another; returns the milliseconds of each, from the write to the reply. */
export const noopRoundTrips = async (port: number, count: number): Promise<ReadonlyArray<number>> => {
  const session = await open(port, 10_000, [])
  try {
    const times: Array<number> = []
    for (let i = 0; i < count; i++) {
      const start = performance.now()
      session.write([ascii("NOOP\r\n")], [{ code: 250, what: "NOOP" }])
      await session.idle()
      times.push(performance.now() - start)
    }
    await quit(session)
    return times
  } finally {
    session.close()
  }
}

/**
 * One message in DATA mode with its body written piece by piece: `next` hands out the encoded body (dot-stuffed,
 * ending with CRLF.CRLF) one chunk at a time and `undefined` at the end; a write the socket cannot take at once
 * waits for `drain`. Returns 1 when the server accepted the message, or throws.
 */
export const streamData = async (
  port: number,
  transaction: Transaction,
  next: () => Uint8Array | undefined,
  deadlineMs: number
): Promise<number> => {
  const session = await open(port, deadlineMs, ["PIPELINING"])
  const { socket } = session
  try {
    session.write([envelope(transaction, "DATA")], [{ code: 250, what: "MAIL" }, { code: 250, what: "RCPT" }, {
      code: 354,
      what: "DATA"
    }])
    await session.idle()
    let accepted = 0
    for (let chunk = next(); chunk !== undefined; chunk = next()) {
      if (!socket.write(chunk)) {
        await new Promise<void>((resolve, reject) => {
          socket.once("drain", resolve)
          socket.once("close", () => reject(new Error("the server closed the connection")))
        })
      }
    }
    session.write([], [{ code: 250, what: "end of data", then: () => accepted++ }])
    await session.idle()
    await quit(session)
    return accepted
  } finally {
    session.close()
  }
}
