/**
 * The submission engine as a machine, sans-IO like `SmtpReply` and the encoders: no sockets, timers, fibers or Effect
 * runtime inside. It is fed submissions, replies, "the output was written" and body chunks; it answers with bytes to
 * write, the reply it awaits (and in which phase), the body it wants next, each message's result, and whether the
 * session is broken. A small Effect driver (`submission.ts`) runs it: write what it asks, read what it awaits, feed.
 *
 * Every protocol rule of a transaction lives here, once:
 * - which replies are due, in order (RFC 2920: replies come in the order of the commands), and what each does to
 *   each message; a reply with nothing due, or of a class that makes no sense for its command, breaks the session;
 * - DATA: MAIL, every RCPT and DATA in one group; the body only after 354 (any other positive reply to DATA breaks
 *   the session); its end goes out with the next message's group, so a stream of messages costs about one round trip
 *   each;
 * - BDAT (RFC 3030): MAIL, every RCPT and the body in chunks without waiting, up to `window` transactions in flight;
 * - LMTP (RFC 2033 §4.2): one reply per accepted recipient after the end of data;
 * - RSET after a transaction the server may still hold; a 421 anywhere ends the session.
 */
import * as Either from "effect/Either"
import { isAscii } from "node:buffer"
import type * as Capabilities from "../Capabilities.js"
import * as SmtpCommand from "../SmtpCommand.js"
import {
  InvalidInputError,
  NetworkError,
  SmtpCapabilityError,
  type SmtpPermanentError,
  SmtpProtocolError,
  type SmtpTransientError,
  TimeoutError
} from "../SmtpError.js"
import * as SmtpReply from "../SmtpReply.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import type * as SmtpTimeouts from "../SmtpTimeouts.js"
import * as Body from "./body.js"
import { LineCanonicalizer, maxOutput } from "./lineCanonicalizer.js"
import * as Plan from "./plan.js"

type RefusalError = SmtpTransientError | SmtpPermanentError
/** What breaks the session: after it, nothing more can be sent on the connection. */
export type Fatal = NetworkError | TimeoutError | SmtpProtocolError | RefusalError

/** Bytes gathered before a write even though no reply is awaited yet: what keeps a streamed body moving. */
const FLUSH_AT = 64 * 1024
/** BDAT chunk replies of one message left unread before the engine waits for one. */
const BDAT_REPLIES_AHEAD = 8
/**
 * The size of the block streamed bodies are canonicalized into, one per connection and reused once what was queued
 * from it is written: room for a whole read (`Body.READ_SIZE`) at its worst case, twice over.
 */
export const BODY_BLOCK_SIZE = 2 * maxOutput(Body.READ_SIZE)
/**
 * The least size of a streamed body's BDAT chunks (the last may be smaller): each chunk costs a reply, so a long body
 * goes in few; the block holds one and the worst case of the next read.
 */
const STREAMED_CHUNK_SIZE = 512 * 1024
/** A piece of a chunk smaller than this, and smaller than what is left of the chunk, waits for an empty block. */
const MIN_PIECE = 4 * 1024

const END_OF_DATA = new TextEncoder().encode(".\r\n")
const DATA_COMMAND = SmtpCommand.encode(SmtpCommand.data).pipe(Either.getOrThrow)
const RSET_COMMAND = SmtpCommand.encode(SmtpCommand.rset).pipe(Either.getOrThrow)

/** What the driver must do next. */
export type Step =
  /** Write `takeOutput()`, then call `written()`. */
  | "write"
  /** Read one reply, bounded by `awaited()`'s phase, and `reply()` it. */
  | "read"
  /** Feed the body of `wantedBody()`: `bodyChunk` for each chunk, then `bodyEnd` (or `bodyFailed`). */
  | "body"
  /** The window has room: `submit` the next message, or call `drain()` when none is ready. */
  | "accept"
  /** Everything written is answered. */
  | "idle"
  /** The session is broken (`broken`); every open message has its result. */
  | "broken"

/** The reply the engine awaits: the phase whose timeout bounds it, the verb it answers, and what its loss means. */
export interface Awaited {
  readonly phase: SmtpTimeouts.Phase
  readonly verb: string
  readonly mayHaveBeenDelivered: boolean
  /** The recipient, when the reply is to a RCPT. */
  readonly recipient?: string | undefined
}

/** A message's outcome; `E` is what its body may fail with. */
export type Result<E> = Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>

/** How the engine reports to its driver, synchronously. */
export interface Hooks<K, E> {
  /** A line the client sends, for the transcript (credentials never pass here: MAIL, RCPT, DATA, BDAT, RSET). */
  readonly note: (line: string) => void
  /**
   * A message's result, in submission order. `untouched`: the session broke before any of the message's commands was
   * handed to the transport, so nothing of it reached the server and it may go on another connection as it is.
   */
  readonly result: (key: K, result: Result<E>, untouched: boolean) => void
}

/** What the engine knows of the session when it starts. */
export interface Settings {
  readonly capabilities: Capabilities.Capabilities
  readonly secure: boolean
  readonly lmtp: boolean
  /** BDAT transactions (and DATA ends) in flight at most. */
  readonly window: number
  readonly options: SmtpSubmission.SendOptions
  /** The block streamed bodies are canonicalized into (`BODY_BLOCK_SIZE`), lent by the connection. */
  readonly block: () => Buffer
}

type Stage =
  /** MAIL and RCPT queued one by one, each read before the next (no PIPELINING). */
  | "InTurn"
  /** Envelope queued; its replies decide whether the body goes (no PIPELINING, or all-or-nothing). */
  | "Decide"
  /** DATA queued; awaiting its 354. */
  | "AwaitGo"
  /** The body is fed by the driver. */
  | "Body"
  /** A streamed BDAT body failed between chunks: RSET is queued, and the message waits for its replies. */
  | "Failing"
  /** All of it is written or queued; only replies are left. */
  | "Ended"

/** One message in the engine. */
class Transaction<K> {
  readonly accepted: Array<SmtpSubmission.AcceptedRecipient> = []
  readonly rejected: Array<SmtpSubmission.RejectedRecipient> = []
  mailError: RefusalError | undefined = undefined
  dataReply: SmtpReply.SmtpReply | undefined = undefined
  chunkError: RefusalError | undefined = undefined
  /** The reply to a hand-fed BDAT chunk that is not the last (`submitHandFed`). */
  lastReply: SmtpReply.SmtpReply | undefined = undefined
  /** The LMTP replies to its end of data read so far. */
  endReplies: Array<SmtpReply.SmtpReply> | undefined = undefined
  /**
   * How many flushes this message waited for replies after: its round trips. Replies come in order and flushes are
   * numbered upwards, so counting a flush when it differs from the last one counts each once.
   */
  roundTrips = 0
  lastFlush = -1
  /** How many of the entries due are this message's: replies still due, or its turn. */
  owed = 0
  /** `flushes` when it was submitted: while no flush came after, none of its commands was handed to the transport. */
  submittedAt = -1
  /** The end of its data (`.` or the last BDAT) is queued or written. */
  endQueued = false
  /** The end of its data was handed to the transport: from here on the server may have accepted it. */
  endSent = false
  done = false
  stage: Stage = "Ended"
  /** The next RCPT to queue, in turn. */
  nextRecipient = 0
  /** A streamed body's canonicalizer (undefined for a binary body) and octets so far. */
  lines: LineCanonicalizer | undefined = undefined
  octets = 0
  failure: unknown = undefined
  constructor(
    readonly key: K,
    readonly method: "DATA" | "BDAT",
    readonly plan: Plan.Plan<unknown, unknown> | undefined,
    /** A message refused before anything was sent: it only waits for its turn. */
    readonly refused: unknown = undefined
  ) {}
}

const enum Kind {
  Reset,
  Mail,
  Rcpt,
  Data,
  End,
  Chunk,
  /** Not a reply: the turn of a message refused before sending. */
  Turn,
  /** The reply to the end of an empty DATA, which nobody waits for. */
  Ignored
}

interface Due<K> {
  readonly kind: Kind
  readonly transaction: Transaction<K> | undefined
  /** The recipient of a RCPT. */
  readonly recipient: string
}

/** Refused by every recipient: transient if any refusal was 4xx (RFC 5321 §4.2.5), else the first refusal. */
const refusedByAll = (rejected: ReadonlyArray<SmtpSubmission.RejectedRecipient>): RefusalError => {
  const transient = rejected.find((r) => r.error._tag === "SmtpTransientError")
  return (transient ?? rejected[0]!).error
}

/** A connection failure as seen by one message: flagged when the message may have been delivered, or not. */
const deliveredOrNot = <E>(error: E, endSent: boolean): E => {
  const tagged = error as { readonly _tag?: string }
  if (tagged._tag === "NetworkError") {
    const e = error as NetworkError
    if ((e.mayHaveBeenDelivered === true) !== endSent) {
      return new NetworkError({ ...e, mayHaveBeenDelivered: endSent }) as E
    }
  } else if (tagged._tag === "TimeoutError") {
    const e = error as TimeoutError
    if (e.mayHaveBeenDelivered !== endSent) return new TimeoutError({ ...e, mayHaveBeenDelivered: endSent }) as E
  }
  return error
}

const protocolError = (reason: string, command: string | undefined) => new SmtpProtocolError({ reason, command })

const VERBS: Record<Kind, string> = {
  [Kind.Reset]: "RSET",
  [Kind.Mail]: "MAIL",
  [Kind.Rcpt]: "RCPT",
  [Kind.Data]: "DATA",
  [Kind.End]: "DATA",
  [Kind.Chunk]: "BDAT",
  [Kind.Turn]: "",
  [Kind.Ignored]: "DATA"
}
const PHASES: Record<Kind, SmtpTimeouts.Phase> = {
  [Kind.Reset]: "command",
  [Kind.Mail]: "mail",
  [Kind.Rcpt]: "rcpt",
  [Kind.Data]: "dataStart",
  [Kind.End]: "dataEnd",
  [Kind.Chunk]: "dataBlock",
  [Kind.Turn]: "command",
  [Kind.Ignored]: "dataEnd"
}

/**
 * The machine. One per batch (`sendAll`, `send`), or per hand-fed body (`data`, `bdat`, through `submitHandFed`, given
 * the recipients the connection saw accepted after the caller's own MAIL and RCPT).
 */
export class Engine<K, E> {
  private out: Array<Uint8Array> = []
  private outBytes = 0
  private flushes = 0
  /** Written, not yet `written()`: the ends of data in it were sent once it is. */
  private writing = false
  private readonly due: Array<Due<K>> = []
  private dueHead = 0
  /** Messages whose result is not out yet, oldest first. */
  private readonly open: Array<Transaction<K>> = []
  /** The message being written, if its writing is not over. */
  private active: Transaction<K> | undefined = undefined
  /** The previous transaction may still be open on the server: RSET before the next MAIL. */
  private resetPending = false
  /** No message is ready (1): answer everything; at the end of the batch (2) also RSET what the server may hold. */
  private draining: 0 | 1 | 2 = 0
  private failure: Fatal | undefined = undefined
  /** Streamed bodies are canonicalized here: [blockStart, blockEnd) is written but not queued yet. */
  private block: Buffer | undefined = undefined
  private blockStart = 0
  private blockEnd = 0
  /** Replies owed to commands queued since the last write, and to commands written and not answered yet. */
  private queuedReplies = 0
  private unanswered = 0
  /** A DATA command is written and its reply unread, or a DATA body is open: no command may be written now. */
  private dataOpen = false

  constructor(readonly settings: Settings, private readonly hooks: Hooks<K, E>) {}

  // -------------------------------------------------------------------------------------------------------------
  // What the driver asks
  // -------------------------------------------------------------------------------------------------------------

  /** The error that broke the session, if it is broken. */
  get broken(): Fatal | undefined {
    return this.failure
  }

  /**
   * True while no command may be written: after DATA until its reply, and inside a DATA body. A session that ends
   * now must be closed without QUIT (QUIT would be read as message data).
   */
  get inBody(): boolean {
    return this.dataOpen
  }

  /** True when no written command awaits its reply: anything the server sends now is out of place. */
  get quiet(): boolean {
    return this.unanswered === 0
  }

  /**
   * Replies owed to what was written, LMTP's end-of-data replies counted one by one: what a QUIT written now would be
   * answered after.
   */
  get outstanding(): number {
    let n = 0
    let entries = this.unanswered
    for (let i = this.dueHead; i < this.due.length && entries > 0; i++) {
      const entry = this.due[i]!
      if (entry.kind === Kind.Turn) continue
      entries--
      const t = entry.transaction
      n += entry.kind === Kind.End && t !== undefined && this.settings.lmtp && t.accepted.length > 0
        ? t.accepted.length - (t.endReplies?.length ?? 0)
        : 1
    }
    return n
  }

  /** The reply awaited now. */
  awaited(): Awaited {
    const entry = this.due[this.dueHead]
    if (entry === undefined) return { phase: "command", verb: "", mayHaveBeenDelivered: false }
    return {
      phase: PHASES[entry.kind],
      verb: entry.kind === Kind.End && entry.transaction?.method === "BDAT" ? "BDAT" : VERBS[entry.kind],
      mayHaveBeenDelivered: entry.kind === Kind.End,
      recipient: entry.kind === Kind.Rcpt ? entry.recipient : undefined
    }
  }

  /** True when some reply is due. */
  get awaiting(): boolean {
    return this.dueHead < this.due.length
  }

  /** What to do next. */
  next(): Step {
    while (true) {
      if (this.failure !== undefined) return "broken"
      this.settleTurns()
      if (this.outBytes >= FLUSH_AT && !this.writing) return "write"
      const t = this.active
      if (t !== undefined) {
        const step = this.advance(t)
        if (step === undefined) continue
        return step
      }
      if (this.open.length >= this.settings.window) return this.needReply()
      if (this.draining !== 0) {
        if (this.dueHead < this.due.length) return this.needReply()
        if (this.draining === 2 && this.resetPending) {
          this.resetPending = false
          this.queueReset()
          continue
        }
        if (this.out.length > 0) return "write"
        this.draining = 0
        return "idle"
      }
      return "accept"
    }
  }

  /** The bytes to write now; `written()` once they are. */
  takeOutput(): ReadonlyArray<Uint8Array> {
    const chunks = this.out
    this.out = []
    this.outBytes = 0
    this.flushes++
    this.writing = true
    this.unanswered += this.queuedReplies
    this.queuedReplies = 0
    return chunks
  }

  /**
   * The bytes of the last `takeOutput()` are written: the ends of data among them were sent (from here on the server
   * may have accepted those messages), and the block they came from may be reused.
   */
  written(): void {
    this.writing = false
    for (const t of this.open) if (t.endQueued) t.endSent = true
    this.reclaimBlock()
  }

  /** The body the engine wants, when `next()` said "body". */
  wantedBody(): SmtpSubmission.Body<unknown, unknown> {
    const body = this.active!.plan!.body
    return body._tag === "Streamed" ? body.body : new Uint8Array(0)
  }

  // -------------------------------------------------------------------------------------------------------------
  // What the driver feeds
  // -------------------------------------------------------------------------------------------------------------

  /**
   * Takes the next message (when `next()` said "accept"). A message the server cannot take fails here, in turn.
   * `followed`: another message is ready to be submitted right after this one. With it, or with another message in
   * flight, the session is busy, which lets it go as BDAT (`Plan`).
   */
  submit(key: K, submission: SmtpSubmission.Submission<unknown, unknown>, followed = false): void {
    this.draining = 0
    const options = submission.options === undefined
      ? this.settings.options
      : { ...this.settings.options, ...submission.options }
    const planned = Plan.plan(
      submission.envelope,
      submission.body,
      options,
      this.settings.capabilities,
      this.settings.secure,
      followed || this.open.length > 0
    )
    if (Either.isLeft(planned)) {
      // Nothing of it was sent; its result still comes out in order.
      const placeholder = new Transaction<K>(key, "DATA", undefined, planned.left)
      this.open.push(placeholder)
      this.owe({ kind: Kind.Turn, transaction: placeholder, recipient: "" })
      return
    }
    const p = planned.right
    const t = new Transaction<K>(key, p.method, p)
    t.submittedAt = this.flushes
    this.open.push(t)
    this.active = t
    if (!p.pipelining) {
      // Without PIPELINING every command waits for the reply to the one before (RFC 5321 §4.3.1).
      t.stage = "InTurn"
      t.nextRecipient = -1
      return
    }
    if (this.resetPending) {
      this.resetPending = false
      this.queueReset()
    }
    this.command(p.mail, p.mailLine, { kind: Kind.Mail, transaction: t, recipient: "" })
    for (const r of p.recipients) {
      this.command(r.bytes, r.line, { kind: Kind.Rcpt, transaction: t, recipient: r.recipient })
    }
    if (p.allOrNothing) t.stage = "Decide"
    else this.startBody(t)
  }

  /**
   * A body sent by hand after the caller's own MAIL and RCPT (`SmtpConnection.data`, and `bdat` with `last`):
   * `accepted` are the recipients the server took, whose count LMTP's end-of-data replies follow.
   */
  submitHandFed(
    key: K,
    method: "DATA" | "BDAT",
    body: SmtpSubmission.Body<unknown, unknown>,
    accepted: ReadonlyArray<SmtpSubmission.AcceptedRecipient>,
    options: { readonly allowLongLines: boolean; readonly binary: boolean; readonly last: boolean }
  ): void {
    this.draining = 0
    const inMemory = Body.inMemory(body)
    const p: Plan.Plan<unknown, unknown> = {
      method,
      pipelining: false,
      allOrNothing: false,
      mail: new Uint8Array(0),
      mailLine: "",
      recipients: [],
      binary: options.binary,
      allowLongLines: options.allowLongLines,
      // A hand-fed BDAT chunk goes as it is: the caller framed it.
      body: inMemory !== undefined && method === "BDAT"
        ? { _tag: "Encoded", chunks: [inMemory], octets: inMemory.length }
        : { _tag: "Streamed", body, sevenBitOnly: false },
      last: options.last
    }
    const t = new Transaction<K>(key, method, p)
    t.accepted.push(...accepted)
    this.open.push(t)
    this.active = t
    this.startBody(t)
  }

  /** The reply awaited (`next()` said "read"). A reply with nothing due breaks the session. */
  reply(reply: SmtpReply.SmtpReply): void {
    if (this.failure !== undefined) return
    const entry = this.due[this.dueHead]
    if (entry === undefined) {
      this.fail(protocolError(`a reply (${reply.code}) came while no command awaited one`, undefined))
      return
    }
    const t = entry.transaction
    if (t !== undefined && t.lastFlush !== this.flushes) {
      t.lastFlush = this.flushes
      t.roundTrips++
    }
    // LMTP: the end of data is answered once per accepted recipient; the entry stays due until the last.
    if (entry.kind === Kind.End && t !== undefined && this.settings.lmtp && t.accepted.length > 0) {
      const replies = t.endReplies ??= []
      replies.push(reply)
      if (replies.length < t.accepted.length) {
        this.classOk(reply, 200, t.method)
        return
      }
    }
    this.dueHead++
    this.unanswered--
    if (this.dueHead === this.due.length) {
      this.due.length = 0
      this.dueHead = 0
    }
    if (t !== undefined) t.owed--
    this.handle(entry, reply)
  }

  /** One chunk of the wanted body, from `from`; returns how far it was taken (the rest after a "write"). */
  bodyChunk(chunk: Uint8Array, from: number): number {
    const t = this.active!
    const plan = t.plan!
    if (from === 0) {
      const streamed = plan.body
      if (streamed._tag === "Streamed" && streamed.sevenBitOnly && !isAscii(chunk)) {
        this.bodyFailed(
          new SmtpCapabilityError({
            capability: "8BITMIME",
            reason: "the body has 8-bit octets and the server does not offer 8BITMIME"
          })
        )
        return chunk.length
      }
      t.octets += chunk.length
    }
    const block = this.block ??= this.settings.block()
    const lines = t.lines
    let at = from
    while (at < chunk.length) {
      const left = chunk.length - at
      const room = block.length - this.blockEnd
      const take = Math.min(left, lines === undefined ? room : (room - 1) >> 1)
      if (take < Math.min(left, MIN_PIECE)) {
        // The block is full: what it holds goes out, and the rest of the chunk waits for the write.
        this.cutBlock(t, false)
        if (this.out.length > 0) return at
        this.reclaimBlock()
        continue
      }
      const part = chunk.subarray(at, at + take)
      if (lines === undefined) {
        block.set(part, this.blockEnd)
        this.blockEnd += take
      } else {
        const end = lines.pushInto(part, block, this.blockEnd)
        if (typeof end !== "number") {
          this.bodyFailed(end)
          return chunk.length
        }
        this.blockEnd = end
      }
      at += take
    }
    if (plan.method === "BDAT" && this.blockEnd - this.blockStart >= STREAMED_CHUNK_SIZE) this.cutBlock(t, false)
    return at
  }

  /** The wanted body ended. */
  bodyEnd(): void {
    const t = this.active!
    const close = t.lines?.end()
    if (close instanceof InvalidInputError) return this.bodyFailed(close)
    if (t.method === "DATA") {
      const region = this.takeBlock()
      if (region !== undefined) this.enqueue(region)
      if (close !== undefined && close.length > 0) this.enqueue(close)
      this.enqueue(END_OF_DATA)
      this.endData(t)
      return
    }
    this.cutBlock(t, true, close)
    this.endWriting(t)
  }

  /**
   * The wanted body failed (its own error, or a defect: either way it cannot go on). Inside DATA nothing but closing
   * the connection makes the server drop the message, so the session breaks; between BDAT chunks RSET drops what was
   * sent (RFC 3030 §2) and the session goes on.
   */
  bodyFailed(error: unknown): void {
    const t = this.active!
    this.blockEnd = this.blockStart
    if (t.method === "DATA") {
      this.finish(t, Either.left(error as E))
      this.fail(
        new NetworkError({
          operation: "write",
          code: "ECLOSED",
          cause: new Error("the connection was closed after a failure of the message body")
        })
      )
      return
    }
    t.failure = error
    t.stage = "Failing"
    this.queueReset()
  }

  /**
   * No message is ready: answer everything sent before more come. At the end of the batch (`last`), also RSET a
   * transaction the server may still hold.
   */
  drain(last: boolean): void {
    this.draining = last ? 2 : 1
  }

  /** The session failed outside the engine (network, timeout, protocol): every open message fails, in order. */
  fail(error: Fatal): void {
    if (this.failure !== undefined) return
    this.failure = error
    this.dataOpen = false
    this.due.length = 0
    this.dueHead = 0
    this.unanswered = 0
    this.queuedReplies = 0
    this.out = []
    this.outBytes = 0
    this.active = undefined
    for (const t of [...this.open]) {
      const untouched = t.refused === undefined && t.submittedAt === this.flushes
      this.finish(
        t,
        Either.left((t.refused ?? deliveredOrNot(error, t.endSent)) as SmtpSubmission.SendError),
        untouched
      )
    }
  }

  // -------------------------------------------------------------------------------------------------------------
  // Inside
  // -------------------------------------------------------------------------------------------------------------

  /** Flush before a reply is read: a reply already read still waits for the write (see `submission.ts`). */
  private needReply(): Step {
    if (this.out.length > 0) return "write"
    this.reclaimBlock()
    return "read"
  }

  /** Moves the active message on as far as it can go without a reply; the step it waits on, or undefined. */
  private advance(t: Transaction<K>): Step | undefined {
    const p = t.plan!
    switch (t.stage) {
      case "InTurn": {
        if (t.nextRecipient === -1) {
          if (this.awaiting) return this.needReply()
          if (this.resetPending) {
            this.resetPending = false
            this.queueReset()
            return undefined
          }
          this.command(p.mail, p.mailLine, { kind: Kind.Mail, transaction: t, recipient: "" })
          t.nextRecipient = 0
          return undefined
        }
        if (t.owed > 0) return this.needReply()
        if (t.nextRecipient < p.recipients.length) {
          const r = p.recipients[t.nextRecipient++]!
          this.command(r.bytes, r.line, { kind: Kind.Rcpt, transaction: t, recipient: r.recipient })
          return undefined
        }
        t.stage = "Decide"
        return undefined
      }
      case "Decide": {
        // Decide on the envelope before any data goes: one round trip more under all-or-nothing.
        if (t.owed > 0) return this.needReply()
        const refused = this.refusedEnvelope(t, p.allOrNothing)
        if (refused !== undefined) {
          if (t.mailError === undefined) this.queueReset()
          this.active = undefined
          this.finish(t, Either.left(refused))
          return undefined
        }
        this.startBody(t)
        return undefined
      }
      case "AwaitGo": {
        if (t.owed > 0) return this.needReply()
        const go = t.dataReply!
        const refused = p.last === undefined ? this.refusedEnvelope(t, false) : undefined
        if (refused !== undefined || go.code !== 354) {
          this.dataOpen = false
          this.active = undefined
          if (go.code === 354) {
            // A server that says 354 although nothing can be delivered gets an empty message, never the body.
            this.enqueue(END_OF_DATA)
            this.hooks.note(".")
            this.owe({ kind: Kind.Ignored, transaction: undefined, recipient: "" })
          } else if (t.mailError === undefined) {
            this.resetPending = true
          }
          this.finish(t, Either.left(refused ?? SmtpReply.toError(go, "DATA")))
          return undefined
        }
        return this.startDataBody(t)
      }
      case "Body":
        if (t.method === "BDAT") {
          if (!p.pipelining && p.last === undefined && t.owed > 0) return this.needReply()
          if (t.owed > BDAT_REPLIES_AHEAD) return this.needReply()
        }
        return "body"
      case "Failing":
        if (t.owed > 0) return this.needReply()
        this.active = undefined
        this.finish(t, Either.left(t.failure as E))
        return undefined
      case "Ended":
        this.active = undefined
        return undefined
    }
  }

  /** After the envelope: DATA, or the BDAT body. */
  private startBody(t: Transaction<K>): void {
    const p = t.plan!
    if (p.method === "DATA") {
      this.command(DATA_COMMAND, "DATA", { kind: Kind.Data, transaction: t, recipient: "" })
      this.dataOpen = true
      t.stage = "AwaitGo"
      return
    }
    const body = p.body
    if (body._tag === "Encoded") {
      // In memory: one BDAT for the whole body (its size is known, so more chunks would only cost replies).
      this.chunk(t, body.chunks.reduce((n, c) => n + c.length, 0), p.last ?? true, body.chunks)
      this.endWriting(t)
      return
    }
    t.lines = p.binary ? undefined : new LineCanonicalizer({ dotStuff: false, allowLongLines: p.allowLongLines })
    t.stage = "Body"
  }

  /** After 354: the body in memory at once, or streamed. */
  private startDataBody(t: Transaction<K>): Step | undefined {
    const body = t.plan!.body
    if (body._tag === "Encoded") {
      for (const chunk of body.chunks) this.enqueue(chunk)
      t.octets = body.octets
      this.endData(t)
      return undefined
    }
    t.lines = new LineCanonicalizer({ dotStuff: true, allowLongLines: t.plan!.allowLongLines })
    t.stage = "Body"
    return "body"
  }

  /** The end of data is queued: the message awaits its reply (or, with LMTP, one per accepted recipient). */
  private endData(t: Transaction<K>): void {
    this.hooks.note(`<message body, ${t.octets} octets, then .>`)
    t.endQueued = true
    this.dataOpen = false
    this.owe({ kind: Kind.End, transaction: t, recipient: "" })
    this.endWriting(t)
  }

  private endWriting(t: Transaction<K>): void {
    t.stage = "Ended"
    if (this.active === t) this.active = undefined
  }

  /** Queues a BDAT chunk: its header, its data, and the reply it is owed. */
  private chunk(t: Transaction<K>, size: number, last: boolean, data: ReadonlyArray<Uint8Array>): void {
    const header = SmtpCommand.encode(SmtpCommand.bdat(size, last)).pipe(Either.getOrThrow)
    if (last) t.endQueued = true
    this.hooks.note(`BDAT ${size}${last ? " LAST" : ""} <${size} octets>`)
    this.owe({ kind: last && t.plan!.last !== false ? Kind.End : Kind.Chunk, transaction: t, recipient: "" })
    this.enqueue(header)
    for (const piece of data) this.enqueue(piece)
  }

  /** The block's bytes not queued yet go out: as DATA body bytes, or as one BDAT chunk (none after a refusal). */
  private cutBlock(t: Transaction<K>, last: boolean, close?: Uint8Array): void {
    if (t.method === "DATA") {
      const region = this.takeBlock()
      if (region !== undefined) this.enqueue(region)
      return
    }
    const size = this.blockEnd - this.blockStart + (close?.length ?? 0)
    if (!last && (size === 0 || t.chunkError !== undefined)) {
      // RFC 3030 §2: after a refused chunk, the rest of the message is not sent.
      this.blockEnd = this.blockStart
      return
    }
    const region = this.takeBlock()
    const data = region === undefined ? [] : [region]
    if (close !== undefined && close.length > 0) data.push(close)
    this.chunk(t, size, last, data)
  }

  private takeBlock(): Uint8Array | undefined {
    if (this.blockEnd === this.blockStart) return undefined
    const region = this.block!.subarray(this.blockStart, this.blockEnd)
    this.blockStart = this.blockEnd
    return region
  }

  /** Once everything queued is written, the block's bytes not queued yet move to its start. */
  private reclaimBlock(): void {
    if (this.block === undefined || this.blockStart === 0 || this.writing || this.out.length > 0) return
    if (this.blockEnd > this.blockStart) this.block.copyWithin(0, this.blockStart, this.blockEnd)
    this.blockEnd -= this.blockStart
    this.blockStart = 0
  }

  private enqueue(bytes: Uint8Array): void {
    this.out.push(bytes)
    this.outBytes += bytes.length
  }

  private owe(entry: Due<K>): void {
    this.due.push(entry)
    if (entry.kind !== Kind.Turn) this.queuedReplies++
    if (entry.transaction !== undefined) entry.transaction.owed++
  }

  private command(bytes: Uint8Array, line: string, entry: Due<K>): void {
    this.hooks.note(line)
    this.owe(entry)
    this.enqueue(bytes)
  }

  private queueReset(): void {
    this.command(RSET_COMMAND, "RSET", { kind: Kind.Reset, transaction: undefined, recipient: "" })
  }

  /** Messages refused before sending whose turn has come give their result. */
  private settleTurns(): void {
    while (this.dueHead < this.due.length) {
      const entry = this.due[this.dueHead]!
      if (entry.kind !== Kind.Turn) return
      this.dueHead++
      const t = entry.transaction!
      t.owed--
      this.finish(t, Either.left(t.refused as SmtpSubmission.SendError))
    }
    if (this.dueHead === this.due.length && this.dueHead > 0) {
      this.due.length = 0
      this.dueHead = 0
    }
  }

  /**
   * Checks a reply's class: `expected` (200, or 300 for 354) is fine, 4xx and 5xx are refusals (false, the caller
   * files them), a 421 or any other class breaks the session (false too).
   */
  private classOk(reply: SmtpReply.SmtpReply, expected: number, verb: string): boolean {
    const cls = Math.floor(reply.code / 100) * 100
    if (cls === expected) return true
    if (reply.code === 421) {
      this.fail(SmtpReply.toError(reply, verb))
      return false
    }
    if (cls !== 400 && cls !== 500) this.fail(protocolError(`unexpected reply ${reply.code}`, verb))
    return false
  }

  private handle(entry: Due<K>, reply: SmtpReply.SmtpReply): void {
    const t = entry.transaction
    switch (entry.kind) {
      case Kind.Reset:
      case Kind.Ignored:
        // Nobody waits for these; only a broken session matters.
        this.classOk(reply, 200, VERBS[entry.kind])
        return
      case Kind.Mail:
        if (!this.classOk(reply, 200, "MAIL") && this.failure === undefined) {
          t!.mailError = SmtpReply.toError(reply, "MAIL")
        }
        return
      case Kind.Rcpt: {
        if (this.classOk(reply, 200, "RCPT")) {
          t!.accepted.push({ recipient: entry.recipient, reply, delivery: undefined })
        } else if (this.failure === undefined && t!.mailError === undefined) {
          // After a refused MAIL every RCPT is refused too (503): only the MAIL refusal is the reason.
          t!.rejected.push({ recipient: entry.recipient, error: SmtpReply.toError(reply, "RCPT") })
        }
        return
      }
      case Kind.Data: {
        // RFC 5321 §4.3.2: DATA is answered 354, or refused; anything else leaves client and server out of step.
        if (reply.code === 354) {
          t!.dataReply = reply
          return
        }
        this.dataOpen = false
        if (reply.code === 421) {
          this.fail(SmtpReply.toError(reply, "DATA"))
        } else if (SmtpReply.isTransientNegative(reply) || SmtpReply.isPermanentNegative(reply)) {
          t!.dataReply = reply
        } else {
          this.fail(protocolError(`DATA was answered ${reply.code}, not 354`, "DATA"))
        }
        return
      }
      case Kind.Chunk: {
        t!.lastReply = reply
        if (!this.classOk(reply, 200, "BDAT") && this.failure === undefined) {
          t!.chunkError ??= SmtpReply.toError(reply, "BDAT")
        }
        if (t!.plan!.last === false && t!.owed === 0) this.handFedChunkDone(t!)
        return
      }
      case Kind.End:
        return this.endOfData(t!, reply)
      case Kind.Turn:
        return
    }
  }

  /** A hand-fed BDAT chunk that is not the last: its reply is the caller's result. */
  private handFedChunkDone(t: Transaction<K>): void {
    if (t.chunkError !== undefined) this.finish(t, Either.left(t.chunkError))
    else this.finish(t, Either.right(this.result(t, t.lastReply!)))
  }

  /**
   * The replies to the end of data: one, or with LMTP one per accepted recipient (RFC 2033 §4.2). Each recipient's
   * delivery reply is filed; the message succeeds when one recipient got it.
   */
  private endOfData(t: Transaction<K>, first: SmtpReply.SmtpReply): void {
    const verb = t.method
    if (t.endReplies !== undefined) {
      const delivered: Array<SmtpSubmission.AcceptedRecipient> = []
      for (const [i, entry] of t.accepted.entries()) {
        const reply = t.endReplies[i]!
        if (this.classOk(reply, 200, verb)) {
          delivered.push({ ...entry, delivery: reply })
        } else if (this.failure !== undefined) {
          return
        } else {
          t.rejected.push({ recipient: entry.recipient, error: SmtpReply.toError(reply, verb) })
        }
      }
      t.accepted.splice(0, t.accepted.length, ...delivered)
      const response = t.endReplies.find(SmtpReply.isPositiveCompletion)
      this.finish(
        t,
        response === undefined ? Either.left(refusedByAll(t.rejected)) : Either.right(this.result(t, response))
      )
      return
    }
    if (this.classOk(first, 200, verb)) {
      this.finish(t, Either.right(this.result(t, first)))
      return
    }
    if (this.failure !== undefined) return
    this.finish(
      t,
      Either.left(
        t.mailError ?? t.chunkError ??
          (t.accepted.length === 0 && t.rejected.length > 0
            ? refusedByAll(t.rejected)
            : SmtpReply.toError(first, verb))
      )
    )
  }

  private result(t: Transaction<K>, response: SmtpReply.SmtpReply): SmtpSubmission.SendResult {
    return { accepted: t.accepted, rejected: t.rejected, response, roundTrips: t.roundTrips, method: t.method }
  }

  /** Whether the envelope already decided the message's fate (read after the MAIL and RCPT replies). */
  private refusedEnvelope(t: Transaction<K>, allOrNothing: boolean): RefusalError | undefined {
    return t.mailError ??
      (t.accepted.length === 0
        ? refusedByAll(t.rejected)
        : allOrNothing && t.rejected.length > 0
        ? t.rejected[0]!.error
        : undefined)
  }

  private finish(t: Transaction<K>, result: Result<E>, untouched = false): void {
    if (t.done) return
    t.done = true
    const at = this.open.indexOf(t)
    if (at >= 0) this.open.splice(at, 1)
    this.hooks.result(t.key, result, untouched)
  }
}

/**
 * Runs one message through the machine against a server that takes whatever the capabilities offer, refusing only
 * the recipients `refuse` names and answering the end of data with `response`: the test client's send, with every
 * check and every result rule of a real one.
 */
export const simulate = (
  submission: SmtpSubmission.Submission<never, never>,
  capabilities: Capabilities.Capabilities,
  refuse: (recipient: string) => RefusalError | undefined,
  response: SmtpReply.SmtpReply
): Result<never> => {
  let outcome: Result<never> | undefined
  const engine = new Engine<undefined, never>({
    capabilities,
    secure: true,
    lmtp: false,
    window: 1,
    options: {},
    block: () => Buffer.allocUnsafe(BODY_BLOCK_SIZE)
  }, { note: () => {}, result: (_, result) => void (outcome = result) })
  const ok = (code: number, enhancedCode: string | undefined, text: string) =>
    new SmtpReply.SmtpReply({ code, enhancedCode, lines: [text] })
  engine.submit(undefined, submission)
  engine.drain(true)
  while (outcome === undefined) {
    const step = engine.next()
    if (step === "write") {
      engine.takeOutput()
      engine.written()
    } else if (step === "read") {
      const awaited = engine.awaited()
      const refused = awaited.recipient === undefined ? undefined : refuse(awaited.recipient)
      engine.reply(
        refused !== undefined
          ? new SmtpReply.SmtpReply({ code: refused.code, enhancedCode: refused.enhancedCode, lines: refused.lines })
          : awaited.verb === "DATA" && awaited.phase === "dataStart"
          ? ok(354, undefined, "Go ahead")
          : awaited.mayHaveBeenDelivered
          ? response
          : ok(250, awaited.verb === "RCPT" ? "2.1.5" : "2.0.0", "Ok")
      )
    } else {
      // A body in memory never asks to be fed; nothing else is left once the result is out.
      break
    }
  }
  return outcome!
}
