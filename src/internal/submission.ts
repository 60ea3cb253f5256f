/**
 * The submission engine behind `SmtpConnection.send` and `sendAll`: a plan per message (every check before anything
 * is sent), then transactions written into one output buffer that is flushed only when a reply must be awaited, and
 * a FIFO of the replies still due (RFC 2920: replies come in the order of the commands). Pipelining is then a choice
 * of when to wait:
 *
 * - DATA: MAIL, every RCPT and DATA in one group; the body only after 354; its end-of-data goes out with the next
 *   message's group, so a stream of messages costs about one round trip each.
 * - BDAT (RFC 3030): MAIL, every RCPT and the whole body as `BDAT n LAST` without waiting, with up to `window`
 *   transactions in flight.
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Stream from "effect/Stream"
import { isAscii } from "node:buffer"
import * as BdatEncoder from "../BdatEncoder.js"
import * as Capabilities from "../Capabilities.js"
import * as DataEncoder from "../DataEncoder.js"
import * as Mailbox from "../Mailbox.js"
import * as SmtpCommand from "../SmtpCommand.js"
import {
  InvalidInputError,
  NetworkError,
  SmtpCapabilityError,
  type SmtpPermanentError,
  type SmtpProtocolError,
  type SmtpTransientError,
  TimeoutError
} from "../SmtpError.js"
import * as SmtpReply from "../SmtpReply.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import type { Phase } from "../SmtpTimeouts.js"
import * as Body from "./body.js"
import { LineCanonicalizer, maxOutput } from "./lineCanonicalizer.js"

type RefusalError = SmtpTransientError | SmtpPermanentError
/** What ends a batch: the connection can no longer be trusted. */
type Fatal = NetworkError | TimeoutError | SmtpProtocolError | RefusalError

/** What the engine needs of the connection. */
export interface Session {
  readonly capabilities: () => Capabilities.Capabilities
  readonly secure: Effect.Effect<boolean>
  readonly lmtp: boolean
  readonly write: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void, NetworkError | TimeoutError>
  readonly readReply: (
    phase: Phase,
    verb: string,
    mayHaveBeenDelivered: boolean
  ) => Effect.Effect<SmtpReply.SmtpReply, NetworkError | TimeoutError | SmtpProtocolError>
  /** Notes a line the client sent in the transcript (published before the next write). */
  readonly note: (line: string) => void
  /** A 421 closes the connection; a reply outside `ok` fails with its error. */
  readonly check: (
    reply: SmtpReply.SmtpReply,
    verb: string,
    ok: (reply: SmtpReply.SmtpReply) => boolean
  ) => Effect.Effect<SmtpReply.SmtpReply, RefusalError | SmtpProtocolError>
  readonly breakConnection: (reason: string) => Effect.Effect<void>
  /** The error further use gets, once the connection is closed. */
  readonly broken: () => NetworkError | undefined
  /**
   * The connection's block of `BODY_BLOCK_SIZE` octets for streamed bodies, made at first use and kept for its life:
   * free whenever no batch runs.
   */
  readonly bodyBlock: () => Buffer
}

/** Bytes gathered before a write even though no reply is awaited yet: what keeps a streamed body moving. */
const FLUSH_AT = 64 * 1024
/** BDAT chunk replies of one message left unread before the engine waits for one. */
const BDAT_REPLIES_AHEAD = 8
const END_OF_DATA = new TextEncoder().encode(".\r\n")
const DATA_COMMAND = SmtpCommand.encode(SmtpCommand.data).pipe(Either.getOrThrow)
const RSET_COMMAND = SmtpCommand.encode(SmtpCommand.rset).pipe(Either.getOrThrow)
/** No bytes: the default of what follows a command, shared so that a command allocates no array for it. */
const NOTHING: ReadonlyArray<Uint8Array> = []
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

/** What can stop a streamed body: its own line rule or 8-bit octets, the session, or what `E2` adds. */
type StreamFailure<E2> = InvalidInputError | SmtpCapabilityError | SessionFailure | E2

/** A failure of the session met while a body streams, kept apart from the body's own failures. */
class SessionFailure {
  constructor(readonly error: Fatal) {}
}
const asSessionFailure = <A, R>(effect: Effect.Effect<A, Fatal, R>) =>
  Effect.mapError(effect, (error) => new SessionFailure(error))

// ---------------------------------------------------------------------------------------------------------------
// Planning: everything that can be checked before a byte is sent
// ---------------------------------------------------------------------------------------------------------------

/** The body, ready for the wire (in memory), or to be encoded as it streams. */
type PreparedBody<E, R> =
  | {
    readonly _tag: "Encoded"
    readonly chunks: ReadonlyArray<Uint8Array>
    /** The body's own size, before encoding. */
    readonly octets: number
  }
  | {
    readonly _tag: "Streamed"
    /** A `Stream` or a `ReaderBody`. */
    readonly body: SmtpSubmission.Body<E, R>
    /** The server lacks 8BITMIME and the body was not declared 8-bit: an 8-bit octet ends the send. */
    readonly sevenBitOnly: boolean
  }

interface Plan<E, R> {
  readonly method: "DATA" | "BDAT"
  readonly pipelining: boolean
  readonly allOrNothing: boolean
  readonly mail: Uint8Array
  readonly mailLine: string
  readonly recipients: ReadonlyArray<{ readonly recipient: string; readonly bytes: Uint8Array; readonly line: string }>
  readonly binary: boolean
  readonly allowLongLines: boolean
  readonly body: PreparedBody<E, R>
}

/** The transcript line of an encoded MAIL or RCPT: the line itself, which holds no credential to redact. */
const transcriptLine = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength - 2).toString("utf8")

const capabilityError = (capability: SmtpCapabilityError["capability"], reason: string) =>
  Either.left(new SmtpCapabilityError({ capability, reason }))

/** Where the header section ends: after the first empty line (CRLF CRLF, or bare LF LF), or the whole message. */
const headerSection = (bytes: Uint8Array): Uint8Array => {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const crlf = buffer.indexOf("\r\n\r\n")
  // A bare LF LF counts only before the first CRLF CRLF: no need to scan the body after it.
  const lf = (crlf < 0 ? buffer : buffer.subarray(0, crlf + 2)).indexOf("\n\n")
  const end = lf >= 0 ? lf : crlf
  return end < 0 ? bytes : bytes.subarray(0, end)
}

const encodeAll = (
  bytes: Uint8Array,
  method: "DATA" | "BDAT",
  binary: boolean,
  allowLongLines: boolean
): Either.Either<ReadonlyArray<Uint8Array>, InvalidInputError> => {
  if (method === "DATA") {
    // The body and its end as pieces, never joined: a body that needs no change goes out as given, without a copy.
    const encoder = DataEncoder.make({ allowLongLines })
    return Either.flatMap(
      encoder.push(bytes),
      (encoded) => Either.map(encoder.end(), (end) => encoded.length === 0 ? [end] : [encoded, end])
    )
  }
  // One BDAT LAST for the whole message: its size is known, so chunks would only cost replies.
  const encoder = BdatEncoder.make({ allowLongLines, binary, chunkSize: Number.MAX_SAFE_INTEGER })
  return Either.flatMap(encoder.push(bytes), () => Either.map(encoder.end(), (last) => last.data))
}

interface Address {
  readonly given: string
  readonly mailbox: Mailbox.Mailbox | undefined
}

/** Checks the whole message against the server and builds every command; nothing is sent. */
export const plan = <E, R>(
  envelope: SmtpSubmission.Envelope,
  body: SmtpSubmission.Body<E, R>,
  options: SmtpSubmission.SendOptions,
  capabilities: Capabilities.Capabilities,
  secure: boolean
): Either.Either<Plan<E, R>, InvalidInputError | SmtpCapabilityError> => {
  // Plain code with early returns rather than `Either.gen`: this runs once per message.
  const mailParameters = envelope.mailParameters ?? {}
  const recipients = envelope.to.map((entry) =>
    typeof entry === "string"
      ? { address: entry, parameters: envelope.rcptParameters }
      : { address: entry.address, parameters: entry.parameters ?? envelope.rcptParameters }
  )
  if (recipients.length === 0) {
    return Either.left(new InvalidInputError({ field: "recipients", reason: "there is no recipient" }))
  }
  let sender: Address = { given: envelope.from, mailbox: undefined }
  if (envelope.from !== "" && envelope.from !== "<>") {
    const mailbox = Mailbox.parse(envelope.from, "MAIL FROM address")
    if (Either.isLeft(mailbox)) return Either.left(mailbox.left)
    sender = { given: envelope.from, mailbox: mailbox.right }
  }
  const rcptAddresses: Array<Address> = []
  for (const r of recipients) {
    const mailbox = Mailbox.parse(r.address, "RCPT TO address")
    if (Either.isLeft(mailbox)) return Either.left(mailbox.left)
    rcptAddresses.push({ given: r.address, mailbox: mailbox.right })
  }

  // The content: size, 8-bit octets, and 8-bit headers, known when the body is in memory.
  const inMemory = Body.inMemory(body)
  const eightBit = inMemory !== undefined && !isAscii(inMemory)
  const eightBitHeaders = eightBit && inMemory !== undefined && !isAscii(headerSection(inMemory))

  // SMTPUTF8 (RFC 6531): needed by a non-ASCII local part, or by UTF-8 in the headers. Without it, IDN domains go as
  // A-labels.
  const needsUtf8 = mailParameters.smtpUtf8 === true || eightBitHeaders ||
    [sender, ...rcptAddresses].some((a) => a.mailbox !== undefined && Mailbox.requiresSmtpUtf8(a.mailbox))
  if (needsUtf8 && !Capabilities.smtpUtf8(capabilities)) {
    return capabilityError(
      "SMTPUTF8",
      eightBitHeaders && mailParameters.smtpUtf8 !== true
        ? "the message has UTF-8 in its headers and the server does not offer SMTPUTF8"
        : "an address has a non-ASCII local part and the server does not offer SMTPUTF8"
    )
  }
  // Without SMTPUTF8 every local part is ASCII here, so only a non-ASCII domain has anything to convert.
  const wire = (address: Address, field: string): Either.Either<string, InvalidInputError> =>
    address.mailbox === undefined
      ? Either.right("")
      : needsUtf8 || Mailbox.isAscii(address.mailbox.domain)
      ? Either.right(Mailbox.format(address.mailbox))
      : Either.map(Mailbox.toAscii(address.mailbox, field), Mailbox.format)

  // BODY (RFC 6152, RFC 3030): as declared; else BINARYMIME for a body that only it can carry (NUL octets, or lines
  // over 998 octets) when the server offers it, else 8BITMIME when the content is 8-bit, or unknown and offered.
  const allowLongLines = options.allowLongLines ?? false
  const binaryOffered = Capabilities.binaryMime(capabilities) && Capabilities.chunking(capabilities)
  let declared = mailParameters.body ?? options.bodyType
  const hasNul = inMemory !== undefined &&
    Buffer.from(inMemory.buffer, inMemory.byteOffset, inMemory.byteLength).indexOf(0) >= 0
  /** The body as text for BDAT, when it was encoded to find out whether it needs BINARYMIME. */
  let asText: ReadonlyArray<Uint8Array> | undefined
  if (declared === undefined && inMemory !== undefined && binaryOffered && options.chunking !== false) {
    const text = hasNul ? undefined : encodeAll(inMemory, "BDAT", false, allowLongLines)
    if (text === undefined || Either.isLeft(text)) declared = "BINARYMIME"
    else asText = text.right
  }
  const binary = declared === "BINARYMIME"
  if (binary && !binaryOffered) {
    return capabilityError(
      "BINARYMIME",
      "the body is binary and the server does not offer BINARYMIME with CHUNKING"
    )
  }
  if (declared === undefined && hasNul) {
    return capabilityError(
      "BINARYMIME",
      "the body has NUL octets, which only BINARYMIME can carry, and the server does not offer it with CHUNKING"
    )
  }
  if (declared === "8BITMIME" && !Capabilities.eightBitMime(capabilities)) {
    return capabilityError("8BITMIME", "the body is declared 8-bit and the server does not offer 8BITMIME")
  }
  if (declared === undefined && eightBit && !Capabilities.eightBitMime(capabilities)) {
    return capabilityError("8BITMIME", "the body has 8-bit octets and the server does not offer 8BITMIME")
  }
  const bodyType: SmtpCommand.BodyType | undefined = declared ??
    (eightBit || (inMemory === undefined && Capabilities.eightBitMime(capabilities)) ? "8BITMIME" : undefined)

  // DSN (RFC 3461) and REQUIRETLS (RFC 8689) are promises the server must be able to keep.
  const usesDsn = mailParameters.ret !== undefined || mailParameters.envelopeId !== undefined ||
    recipients.some((r) => r.parameters?.notify !== undefined || r.parameters?.originalRecipient !== undefined)
  if (usesDsn && !Capabilities.dsn(capabilities)) {
    return capabilityError("DSN", "DSN parameters (RET, ENVID, NOTIFY, ORCPT) need the server's DSN extension")
  }
  if (mailParameters.requireTls === true) {
    if (!secure) return capabilityError("REQUIRETLS", "REQUIRETLS needs a TLS connection")
    if (!Capabilities.requireTls(capabilities)) {
      return capabilityError("REQUIRETLS", "the server does not offer REQUIRETLS")
    }
  }

  const method = binary || (options.chunking !== false && Capabilities.chunking(capabilities)) ? "BDAT" : "DATA"
  let chunks = asText
  if (inMemory !== undefined && chunks === undefined) {
    const encoded = encodeAll(inMemory, method, binary, allowLongLines)
    if (Either.isLeft(encoded)) return Either.left(encoded.left)
    chunks = encoded.right
  }
  const prepared: PreparedBody<E, R> = inMemory !== undefined
    ? { _tag: "Encoded", chunks: chunks!, octets: inMemory.length }
    : {
      _tag: "Streamed",
      body,
      sevenBitOnly: bodyType === undefined
    }

  // SIZE (RFC 1870): declared when known, and checked against the limit before anything is sent.
  const size = mailParameters.size ?? options.size ??
    (prepared._tag === "Encoded"
      ? prepared.chunks.reduce((n, c) => n + c.length, 0)
      : Body.isReaderBody(body)
      ? body.size
      : undefined)
  const limit = Capabilities.sizeLimit(capabilities)
  if (size !== undefined && Option.isSome(limit) && limit.value > 0 && size > limit.value) {
    return capabilityError("SIZE", `the message is ${size} octets and the server takes at most ${limit.value}`)
  }

  const senderOnWire = wire(sender, "MAIL FROM address")
  if (Either.isLeft(senderOnWire)) return Either.left(senderOnWire.left)
  const mail = SmtpCommand.mail(senderOnWire.right, {
    ...mailParameters,
    size: Capabilities.has(capabilities, "SIZE") ? size : undefined,
    body: bodyType,
    smtpUtf8: needsUtf8 ? true : undefined
  })
  const rcpts: Array<{ recipient: string; bytes: Uint8Array; line: string }> = []
  for (const [i, r] of recipients.entries()) {
    const recipientOnWire = wire(rcptAddresses[i]!, "RCPT TO address")
    if (Either.isLeft(recipientOnWire)) return Either.left(recipientOnWire.left)
    const bytes = SmtpCommand.encode(SmtpCommand.rcpt(recipientOnWire.right, r.parameters))
    if (Either.isLeft(bytes)) return Either.left(bytes.left)
    rcpts.push({ recipient: r.address, bytes: bytes.right, line: transcriptLine(bytes.right) })
  }
  const mailBytes = SmtpCommand.encode(mail)
  if (Either.isLeft(mailBytes)) return Either.left(mailBytes.left)
  return Either.right({
    method,
    pipelining: options.pipelining !== false && Capabilities.pipelining(capabilities),
    allOrNothing: options.policy === "all-or-nothing",
    mail: mailBytes.right,
    mailLine: transcriptLine(mailBytes.right),
    recipients: rcpts,
    binary,
    allowLongLines,
    body: prepared
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Running: one output buffer, one FIFO of the replies still due
// ---------------------------------------------------------------------------------------------------------------

/** One message of a batch. */
interface Transaction {
  readonly method: "DATA" | "BDAT"
  readonly accepted: Array<SmtpSubmission.AcceptedRecipient>
  readonly rejected: Array<SmtpSubmission.RejectedRecipient>
  mailError: RefusalError | undefined
  dataReply: SmtpReply.SmtpReply | undefined
  chunkError: RefusalError | undefined
  /**
   * How many flushes this message waited for replies after: its round trips. Replies come in order and flushes are
   * numbered upwards, so counting a flush when it differs from the last one counts each once.
   */
  roundTrips: number
  lastFlush: number
  /** How many of the entries in the FIFO are this message's: replies still due, or its turn. */
  owed: number
  /** The end of its data (`.` or the last BDAT) is in the output buffer, or was written. */
  endQueued: boolean
  /** The end of its data was written: from here on the server may have accepted it. */
  endSent: boolean
  /** Set once the result is out. */
  done: boolean
  /** For a message refused before sending: why; it only waits for its turn. */
  readonly refused?: SmtpSubmission.SendError | undefined
}

/** A reply still due, and what to do with it. */
interface ReplyDue {
  readonly _tag: "Reply"
  readonly verb: string
  readonly phase: Phase
  readonly mayHaveBeenDelivered: boolean
  readonly transaction: Transaction | undefined
  readonly handle: (reply: SmtpReply.SmtpReply) => Effect.Effect<void, Fatal>
}

/** The turn of a message refused before sending: its result comes out when every earlier one has. */
interface TurnDue {
  readonly _tag: "Turn"
  readonly transaction: Transaction
  readonly run: Effect.Effect<void>
}

type Due = ReplyDue | TurnDue

/** Refused by every recipient: transient if any refusal was 4xx (RFC 5321 §4.2.5), else the first refusal. */
export const refusedByAll = (rejected: ReadonlyArray<SmtpSubmission.RejectedRecipient>): RefusalError => {
  const transient = rejected.find((r) => r.error._tag === "SmtpTransientError")
  return (transient ?? rejected[0]!).error
}

/** Runs a batch of messages on a session held for the whole batch, reporting each result in order through `emit`. */
export const run = <E, R, R2>(
  session: Session,
  source: Effect.Effect<Option.Option<ReadonlyArray<SmtpSubmission.Submission<E, R>>>, never, R2>,
  options: SmtpSubmission.SendAllOptions,
  emit: (result: Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>) => Effect.Effect<void>
): Effect.Effect<void, never, R | R2> =>
  Effect.gen(function*() {
    const window = Math.max(1, options.window ?? 16)
    // A batch holds the session: its TLS state cannot change before the batch ends.
    const secure = yield* session.secure
    let out: Array<Uint8Array> = []
    let outBytes = 0
    let flushes = 0
    /** Streamed bodies are canonicalized here: [blockStart, blockEnd) is written but not queued yet. */
    let block: Buffer | undefined
    let blockStart = 0
    let blockEnd = 0
    const due: Array<Due> = []
    /** Messages whose result is not out yet, oldest first. */
    const open: Array<Transaction> = []
    /** The previous DATA transaction left the server in a transaction: RSET before the next MAIL. */
    let resetPending = false

    /** Once everything queued is written, the block's bytes not queued yet move to its start. */
    const reclaimBlock = () => {
      if (block === undefined || blockStart === 0) return
      if (blockEnd > blockStart) block.copyWithin(0, blockStart, blockEnd)
      blockEnd -= blockStart
      blockStart = 0
    }
    const flush = Effect.suspend(() => {
      if (out.length === 0) return Effect.sync(reclaimBlock)
      const chunks = out
      out = []
      outBytes = 0
      flushes++
      return Effect.tap(session.write(chunks), () => {
        for (const transaction of open) if (transaction.endQueued) transaction.endSent = true
        reclaimBlock()
      })
    })
    /** Files a reply (or a turn) as due, in order. */
    const owe = (entry: Due): void => {
      due.push(entry)
      if (entry.transaction !== undefined) entry.transaction.owed++
    }
    /**
     * Adds to the output buffer, all at once: no flush comes between `bytes` and `more`. True when the buffer holds
     * enough to be flushed before a reply is awaited (what keeps a long body moving).
     */
    const enqueue = (bytes: Uint8Array, more: ReadonlyArray<Uint8Array> = NOTHING): boolean => {
      out.push(bytes)
      outBytes += bytes.length
      for (const piece of more) {
        out.push(piece)
        outBytes += piece.length
      }
      return outBytes >= FLUSH_AT
    }
    /** As `enqueue`, for a command whose reply is `entry`, and what follows it without a reply of its own. */
    const enqueueCommand = (
      bytes: Uint8Array,
      line: string,
      entry: ReplyDue,
      data: ReadonlyArray<Uint8Array> = NOTHING
    ): boolean => {
      session.note(line)
      owe(entry)
      return enqueue(bytes, data)
    }
    const command = (bytes: Uint8Array, line: string, entry: ReplyDue) =>
      Effect.suspend(() => enqueueCommand(bytes, line, entry) ? flush : Effect.void)

    const finish = (
      transaction: Transaction,
      result: Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>
    ) =>
      Effect.suspend(() => {
        if (transaction.done) return Effect.void
        transaction.done = true
        const at = open.indexOf(transaction)
        if (at >= 0) open.splice(at, 1)
        return emit(result)
      })
    const succeed = (transaction: Transaction, response: SmtpReply.SmtpReply) =>
      finish(
        transaction,
        Either.right({
          accepted: transaction.accepted,
          rejected: transaction.rejected,
          response,
          roundTrips: transaction.roundTrips,
          method: transaction.method
        })
      )
    const fail = (transaction: Transaction, error: SmtpSubmission.SendError | E) =>
      finish(transaction, Either.left(error))

    const readDue: Effect.Effect<void, Fatal> = Effect.suspend(() => {
      const entry = due.shift()
      if (entry === undefined) return Effect.void
      if (entry.transaction !== undefined) entry.transaction.owed--
      if (entry._tag === "Turn") return entry.run
      return Effect.flatMap(session.readReply(entry.phase, entry.verb, entry.mayHaveBeenDelivered), (reply) => {
        const transaction = entry.transaction
        if (transaction !== undefined && transaction.lastFlush !== flushes) {
          transaction.lastFlush = flushes
          transaction.roundTrips++
        }
        return entry.handle(reply)
      })
    })
    /**
     * Reads the oldest reply still due and hands it on, once everything queued is written. Even when the reply was
     * read already: holding the commands back to join them with the ones the next replies let go made BDAT through
     * Postfix about half as fast at window 16 (270 msg/s against 512–531 in the bench). That fits a server that sends
     * its replies only once it has no more input (RFC 2920 §3.2 allows it): given several messages in one write, it
     * answers them in one burst, and the window then moves in bursts.
     */
    const readOne: Effect.Effect<void, Fatal> = Effect.suspend(() => {
      if (out.length > 0) return Effect.zipRight(flush, readDue)
      reclaimBlock()
      return readDue
    })
    const readAll = Effect.whileLoop({ while: () => due.length > 0, body: () => readOne, step: () => {} })
    /**
     * Reads until `transaction` leaves at most `BDAT_REPLIES_AHEAD` replies unread: a long message's chunk replies are
     * read as they come, so that a refusal stops it early.
     */
    const readAhead = (transaction: Transaction) =>
      Effect.whileLoop({
        while: () => transaction.owed > BDAT_REPLIES_AHEAD,
        body: () => readOne,
        step: () => {}
      })
    /** Reads until `transaction` has had every reply queued so far. */
    const readFor = (transaction: Transaction) =>
      Effect.whileLoop({
        while: () => transaction.owed > 0,
        body: () => readOne,
        step: () => {}
      })

    /** The error a negative reply stands for; a 421 (which closes the connection) or a reply out of place is fatal. */
    const refusal = (reply: SmtpReply.SmtpReply, verb: string): Effect.Effect<RefusalError, Fatal> =>
      Effect.matchEffect(session.check(reply, verb, () => false), {
        onSuccess: () => Effect.succeed(SmtpReply.toError(reply, verb)),
        onFailure: (error) =>
          error._tag === "SmtpProtocolError" || error.code === 421 ? Effect.fail(error) : Effect.succeed(error)
      })

    const mailDue = (transaction: Transaction): ReplyDue => ({
      _tag: "Reply",
      verb: "MAIL",
      phase: "mail",
      mayHaveBeenDelivered: false,
      transaction,
      handle: (reply) =>
        SmtpReply.isPositiveCompletion(reply)
          ? Effect.void
          : Effect.map(refusal(reply, "MAIL"), (error) => void (transaction.mailError = error))
    })
    const rcptDue = (transaction: Transaction, recipient: string): ReplyDue => ({
      _tag: "Reply",
      verb: "RCPT",
      phase: "rcpt",
      mayHaveBeenDelivered: false,
      transaction,
      handle: (reply) => {
        if (SmtpReply.isPositiveCompletion(reply)) {
          transaction.accepted.push({ recipient, reply, delivery: undefined })
          return Effect.void
        }
        return Effect.map(refusal(reply, "RCPT"), (error) => {
          // After a refused MAIL every RCPT is refused too (503): only the MAIL refusal is the reason.
          if (transaction.mailError === undefined) transaction.rejected.push({ recipient, error })
        })
      }
    })
    /** A reply nobody waits for (RSET, or the end of an empty DATA); only a broken session matters. */
    const ignoredDue = (verb: string, phase: Phase): ReplyDue => ({
      _tag: "Reply",
      verb,
      phase,
      mayHaveBeenDelivered: false,
      transaction: undefined,
      handle: (reply) => SmtpReply.isServiceClosing(reply) ? Effect.asVoid(refusal(reply, verb)) : Effect.void
    })
    const resetDue = ignoredDue("RSET", "command")
    const queueReset = command(RSET_COMMAND, "RSET", resetDue)

    /**
     * The replies to the end of data: one, or with LMTP one per accepted recipient (RFC 2033 §4.2). Each recipient's
     * delivery reply is filed; the message succeeds when one recipient got it.
     */
    const endOfData = (transaction: Transaction, verb: string, first: SmtpReply.SmtpReply) => {
      if (session.lmtp && transaction.accepted.length > 0) return lmtpEndOfData(transaction, verb, first)
      if (SmtpReply.isPositiveCompletion(first)) return succeed(transaction, first)
      return Effect.flatMap(refusal(first, verb), (error) =>
        fail(
          transaction,
          transaction.mailError ?? transaction.chunkError ??
            (transaction.accepted.length === 0 && transaction.rejected.length > 0
              ? refusedByAll(transaction.rejected)
              : error)
        ))
    }
    const lmtpEndOfData = (transaction: Transaction, verb: string, first: SmtpReply.SmtpReply) =>
      Effect.gen(function*() {
        const replies = [first]
        while (replies.length < transaction.accepted.length) {
          replies.push(yield* session.readReply("dataEnd", verb, true))
        }
        const delivered: Array<SmtpSubmission.AcceptedRecipient> = []
        for (const [i, entry] of transaction.accepted.entries()) {
          const reply = replies[i]!
          if (SmtpReply.isPositiveCompletion(reply)) {
            delivered.push({ ...entry, delivery: reply })
            continue
          }
          transaction.rejected.push({ recipient: entry.recipient, error: yield* refusal(reply, verb) })
        }
        transaction.accepted.splice(0, transaction.accepted.length, ...delivered)
        const response = replies.find(SmtpReply.isPositiveCompletion)
        return yield* response === undefined
          ? fail(transaction, refusedByAll(transaction.rejected))
          : succeed(transaction, response)
      })

    /** Whether the envelope already decided the message's fate (read after the MAIL and RCPT replies). */
    const refusedEnvelope = (transaction: Transaction, allOrNothing: boolean): RefusalError | undefined =>
      transaction.mailError ??
        (transaction.accepted.length === 0
          ? refusedByAll(transaction.rejected)
          : allOrNothing && transaction.rejected.length > 0
          ? transaction.rejected[0]!.error
          : undefined)

    /** What a streamed body that turns out 8-bit fails with, on a server that only takes 7-bit. */
    const sevenBitViolation = () =>
      new SmtpCapabilityError({
        capability: "8BITMIME",
        reason: "the body has 8-bit octets and the server does not offer 8BITMIME"
      })

    /** The block's bytes not queued yet, taken to be queued at once. */
    const takeBlock = (): ReadonlyArray<Uint8Array> => {
      if (blockEnd === blockStart) return []
      const region = block!.subarray(blockStart, blockEnd)
      blockStart = blockEnd
      return [region]
    }
    /** The block's bytes not queued yet, now queued. */
    const queueBlock = Effect.suspend(() => {
      const [region] = takeBlock()
      return region !== undefined && enqueue(region) ? flush : Effect.void
    })
    /** Drops the block's bytes not queued yet: the rest of a body that will not be sent. */
    const dropBlock = () => void (blockEnd = blockStart)

    /**
     * Canonicalizes a streamed body into the block (copied as is when binary), chunk by chunk; when the block has no
     * room, `full` sends what it holds, so that a flush frees it. The session's own failures come wrapped.
     */
    const streamIntoBlock = <E2>(
      { body, sevenBitOnly }: Extract<PreparedBody<E, R>, { _tag: "Streamed" }>,
      lines: LineCanonicalizer | undefined,
      full: Effect.Effect<void, SessionFailure | E2>,
      chunkDone: Effect.Effect<void, SessionFailure | E2>
    ) => {
      block ??= session.bodyBlock()
      let octets = 0
      const piece = (chunk: Uint8Array, from: number): Effect.Effect<void, StreamFailure<E2>> => {
        const left = chunk.length - from
        if (left === 0) return chunkDone
        const room = block!.length - blockEnd
        const take = Math.min(left, lines === undefined ? room : (room - 1) >> 1)
        if (take < Math.min(left, MIN_PIECE)) {
          return Effect.flatMap(Effect.zipRight(full, asSessionFailure(flush)), () => piece(chunk, from))
        }
        const part = chunk.subarray(from, from + take)
        if (lines === undefined) {
          block!.set(part, blockEnd)
          blockEnd += take
        } else {
          const end = lines.pushInto(part, block!, blockEnd)
          if (typeof end !== "number") return Effect.fail(end)
          blockEnd = end
        }
        return piece(chunk, from + take)
      }
      return Effect.map(
        Body.forEachChunk(body, (chunk): Effect.Effect<void, StreamFailure<E2>> => {
          if (sevenBitOnly && !isAscii(chunk)) return Effect.fail(sevenBitViolation())
          octets += chunk.length
          return piece(chunk, 0)
        }),
        () => octets
      )
    }

    /** The body into the output buffer, dot-stuffed, then the end of data. */
    const dataBody = (plan: Plan<E, R>) => {
      const body = plan.body
      if (body._tag === "Encoded") {
        return Effect.suspend(() => {
          let full = false
          for (const chunk of body.chunks) full = enqueue(chunk) || full
          return full ? Effect.as(asSessionFailure(flush), body.octets) : Effect.succeed(body.octets)
        })
      }
      return Effect.gen(function*() {
        const lines = new LineCanonicalizer({ dotStuff: true, allowLongLines: plan.allowLongLines })
        const queued = asSessionFailure(queueBlock)
        const octets = yield* streamIntoBlock(body, lines, queued, queued)
        const close = lines.end()
        if (!(close instanceof Uint8Array)) return yield* Effect.fail(close)
        if (enqueue(close, [END_OF_DATA])) yield* asSessionFailure(flush)
        return octets
      })
    }

    const sendData = (transaction: Transaction, plan: Plan<E, R>) =>
      Effect.gen(function*() {
        const dataStart: ReplyDue = {
          _tag: "Reply",
          verb: "DATA",
          phase: "dataStart",
          mayHaveBeenDelivered: false,
          transaction,
          handle: (reply) => {
            transaction.dataReply = reply
            return Effect.void
          }
        }
        if (enqueueCommand(DATA_COMMAND, "DATA", dataStart)) yield* flush
        yield* readFor(transaction)
        const refused = refusedEnvelope(transaction, false)
        const go = transaction.dataReply!
        if (refused !== undefined || go.code !== 354) {
          if (go.code === 354) {
            // A server that says 354 although nothing can be delivered gets an empty message, never the body.
            yield* command(END_OF_DATA, ".", ignoredDue("DATA", "dataEnd"))
          } else {
            yield* session.check(go, "DATA", (r) => !SmtpReply.isServiceClosing(r))
            if (transaction.mailError === undefined) resetPending = true
          }
          return yield* fail(transaction, refused ?? SmtpReply.toError(go, "DATA"))
        }
        const sent = yield* Effect.either(dataBody(plan))
        if (Either.isLeft(sent)) {
          if (sent.left instanceof SessionFailure) return yield* Effect.fail(sent.left.error)
          // A started DATA cannot be taken back: closing the connection is the only way the server drops it.
          yield* session.breakConnection("a failure of the message body")
          yield* fail(transaction, sent.left)
          return yield* session.broken()!
        }
        session.note(`<message body, ${sent.right} octets, then .>`)
        transaction.endQueued = true
        owe({
          _tag: "Reply",
          verb: "DATA",
          phase: "dataEnd",
          mayHaveBeenDelivered: true,
          transaction,
          handle: (reply) => endOfData(transaction, "DATA", reply)
        })
      })

    const bdatDue = (transaction: Transaction, last: boolean): ReplyDue => ({
      _tag: "Reply",
      verb: "BDAT",
      phase: last ? "dataEnd" : "dataBlock",
      mayHaveBeenDelivered: last,
      transaction,
      handle: (reply) => {
        if (last) return endOfData(transaction, "BDAT", reply)
        if (SmtpReply.isPositiveCompletion(reply)) return Effect.void
        return Effect.map(refusal(reply, "BDAT"), (error) => void (transaction.chunkError ??= error))
      }
    })

    const sendBdat = (transaction: Transaction, plan: Plan<E, R>) => {
      const chunk = (size: number, last: boolean, data: ReadonlyArray<Uint8Array>) =>
        Effect.suspend(() => {
          const header = SmtpCommand.encode(SmtpCommand.bdat(size, last)).pipe(Either.getOrThrow)
          if (last) transaction.endQueued = true
          const line = `BDAT ${size}${last ? " LAST" : ""} <${size} octets>`
          const full = enqueueCommand(header, line, bdatDue(transaction, last), data)
          const then = !plan.pipelining
            ? readFor(transaction)
            : transaction.owed > BDAT_REPLIES_AHEAD
            ? readAhead(transaction)
            : Effect.void
          return full ? Effect.zipRight(flush, then) : then
        })
      const body = plan.body
      if (body._tag === "Encoded") {
        // In memory: one BDAT LAST, without the generator a streamed body needs.
        return chunk(body.chunks.reduce((n, c) => n + c.length, 0), true, body.chunks)
      }
      return Effect.gen(function*() {
        /** The block's bytes not queued yet, as one chunk; none after a refused chunk (RFC 3030 §2). */
        const cut = (last: boolean) =>
          Effect.suspend(() => {
            const size = blockEnd - blockStart
            if (!last && (size === 0 || transaction.chunkError !== undefined)) return Effect.sync(dropBlock)
            return chunk(size, last, takeBlock())
          })
        const lines = plan.binary
          ? undefined
          : new LineCanonicalizer({ dotStuff: false, allowLongLines: plan.allowLongLines })
        const full = asSessionFailure(cut(false))
        const chunkDone = Effect.suspend(() => blockEnd - blockStart >= STREAMED_CHUNK_SIZE ? full : Effect.void)
        const sent = yield* Effect.either(
          Effect.flatMap(streamIntoBlock(body, lines, full, chunkDone), () => {
            const close = lines?.end()
            return close instanceof InvalidInputError ? Effect.fail(close) : Effect.succeed(close)
          })
        )
        if (Either.isLeft(sent)) {
          const failure = sent.left
          if (failure instanceof SessionFailure) return yield* Effect.fail(failure.error)
          // Between two chunks: RSET drops what was sent of this message (RFC 3030 §2), and the session goes on.
          dropBlock()
          yield* queueReset
          yield* readFor(transaction)
          return yield* fail(transaction, failure)
        }
        const close = sent.right
        if (close !== undefined && close.length > 0) {
          // At most two octets (CRLF, or the LF of a final CR): queued with the last chunk, counted in its size.
          if (block!.length - blockEnd < close.length) yield* cut(false).pipe(Effect.zipRight(flush))
          block!.set(close, blockEnd)
          blockEnd += close.length
        }
        yield* cut(true)
      })
    }

    /** A window of transactions in flight: once it is full, the oldest is waited for. */
    const awaitRoom = Effect.whileLoop({ while: () => open.length >= window, body: () => readOne, step: () => {} })

    /**
     * PIPELINING without all-or-nothing, the common case: MAIL and every RCPT are queued at once, then the body, and no
     * reply is awaited in between. Plain code rather than a generator: this runs once per message.
     */
    const sendPipelined = (transaction: Transaction, p: Plan<E, R>) => {
      open.push(transaction)
      let full = false
      if (resetPending) {
        resetPending = false
        full = enqueueCommand(RSET_COMMAND, "RSET", resetDue)
      }
      full = enqueueCommand(p.mail, p.mailLine, mailDue(transaction)) || full
      for (const r of p.recipients) full = enqueueCommand(r.bytes, r.line, rcptDue(transaction, r.recipient)) || full
      const body = p.method === "DATA" ? sendData(transaction, p) : sendBdat(transaction, p)
      return full ? Effect.zipRight(flush, body) : body
    }

    /** Without PIPELINING, or under all-or-nothing: the envelope's replies are read before the body goes. */
    const sendInTurn = (transaction: Transaction, p: Plan<E, R>) =>
      Effect.gen(function*() {
        if (!p.pipelining) yield* readAll
        open.push(transaction)
        if (resetPending) {
          resetPending = false
          yield* queueReset
        }
        if (enqueueCommand(p.mail, p.mailLine, mailDue(transaction))) yield* flush
        if (!p.pipelining) yield* readFor(transaction)
        for (const r of p.recipients) {
          if (enqueueCommand(r.bytes, r.line, rcptDue(transaction, r.recipient))) yield* flush
          if (!p.pipelining) yield* readFor(transaction)
        }
        // Decide on the envelope before any data goes: one round trip more under all-or-nothing.
        yield* readFor(transaction)
        const refused = refusedEnvelope(transaction, p.allOrNothing)
        if (refused !== undefined) {
          if (transaction.mailError === undefined) yield* queueReset
          return yield* fail(transaction, refused)
        }
        if (p.method === "DATA") yield* sendData(transaction, p)
        else yield* sendBdat(transaction, p)
      })

    const runOne = (submission: SmtpSubmission.Submission<E, R>) =>
      Effect.suspend(() => {
        const merged = submission.options === undefined ? options : { ...options, ...submission.options }
        const planned = plan(submission.envelope, submission.body, merged, session.capabilities(), secure)
        if (Either.isLeft(planned)) {
          // Nothing of it was sent; its result still comes out in order.
          if (open.length === 0) return emit(Either.left(planned.left))
          const placeholder: Transaction = { ...newTransaction("DATA"), refused: planned.left }
          open.push(placeholder)
          owe({ _tag: "Turn", transaction: placeholder, run: fail(placeholder, planned.left) })
          return Effect.void
        }
        const p = planned.right
        const transaction = newTransaction(p.method)
        const send = p.pipelining && !p.allOrNothing ? sendPipelined(transaction, p) : sendInTurn(transaction, p)
        return Effect.zipRight(send, awaitRoom)
      })

    const newTransaction = (method: "DATA" | "BDAT"): Transaction => ({
      method,
      accepted: [],
      rejected: [],
      mailError: undefined,
      dataReply: undefined,
      chunkError: undefined,
      roundTrips: 0,
      lastFlush: -1,
      owed: 0,
      endQueued: false,
      endSent: false,
      done: false
    })

    /**
     * After a failure that ends the session: every message not yet answered fails, in order, and says whether the
     * server may have taken it (its whole data had been written).
     */
    const failOpen = (error: SmtpSubmission.SendError) =>
      Effect.gen(function*() {
        due.length = 0
        out = []
        for (const transaction of [...open]) {
          yield* fail(transaction, transaction.refused ?? deliveredOrNot(error, transaction.endSent))
        }
      })

    const guarded = (effect: Effect.Effect<void, Fatal | E, R>) =>
      Effect.catchAll(effect, (error) =>
        Effect.gen(function*() {
          const tag = (error as { readonly _tag?: string })._tag
          if (tag === "NetworkError" || tag === "TimeoutError" || tag === "SmtpProtocolError") {
            yield* session.breakConnection(`a ${tag}`)
          }
          yield* failOpen(error as SmtpSubmission.SendError)
        }))

    while (true) {
      const next = yield* source
      if (Option.isNone(next)) break
      for (const submission of next.value) {
        const broken = session.broken()
        if (broken !== undefined) {
          yield* emit(Either.left(broken))
          continue
        }
        yield* guarded(runOne(submission))
      }
      // Before waiting for more input, everything sent is answered: no result waits on the next message.
      if (session.broken() === undefined) yield* guarded(readAll)
    }
    if (session.broken() === undefined && resetPending) {
      resetPending = false
      yield* guarded(Effect.zipRight(queueReset, readAll))
    }
  })

/** A connection failure as seen by one message: flagged when the message may have been delivered, or not. */
const deliveredOrNot = (error: SmtpSubmission.SendError, endSent: boolean): SmtpSubmission.SendError => {
  if (error._tag === "NetworkError" && (error.mayHaveBeenDelivered === true) !== endSent) {
    return new NetworkError({ ...error, mayHaveBeenDelivered: endSent })
  }
  if (error._tag === "TimeoutError" && error.mayHaveBeenDelivered !== endSent) {
    return new TimeoutError({ ...error, mayHaveBeenDelivered: endSent })
  }
  return error
}

const isStream = <A, R>(u: Iterable<A> | Stream.Stream<A, never, R>): u is Stream.Stream<A, never, R> =>
  Predicate.hasProperty(u, Stream.StreamTypeId)

/** A source of submissions from an iterable (one batch) or a stream (a batch per chunk), for `run`. */
export const source = <E, R, R2>(
  submissions: Iterable<SmtpSubmission.Submission<E, R>> | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>
) =>
  isStream(submissions)
    ? Effect.map(
      Stream.toPull(submissions),
      (pull) =>
        pull.pipe(
          Effect.map((chunk) => Option.some(Chunk.toReadonlyArray(chunk))),
          Effect.catchAll(() => Effect.succeed(Option.none()))
        )
    )
    : Effect.sync(() => {
      let given = false
      return Effect.sync(() => {
        if (given) return Option.none()
        given = true
        return Option.some(Array.from(submissions))
      })
    })
