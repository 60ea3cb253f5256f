/**
 * What a submission is: the envelope, the body, the options of a send, and what a send returns or fails with. A leaf
 * module: the connection, the client, the submission engine and `Message` all speak these types, and none of them has
 * to import another to learn what an envelope is.
 *
 * @since 0.1.0
 */
import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as body from "./internal/body.js"
import type * as SmtpCommand from "./SmtpCommand.js"
import type {
  InvalidInputError,
  ReplyError,
  SmtpCapabilityError,
  SmtpPermanentError,
  SmtpTransientError
} from "./SmtpError.js"
import type { SmtpReply } from "./SmtpReply.js"

/**
 * A message body: bytes, a string (sent as UTF-8), a stream of bytes, or a reader (a file, by `fileBody`).
 *
 * @since 0.1.0
 * @category models
 */
export type Body<E = never, R = never> = Uint8Array | string | Stream.Stream<Uint8Array, E, R> | ReaderBody<E, R>

/**
 * The mark of a `ReaderBody`.
 *
 * @since 0.1.0
 * @category type ids
 */
export const ReaderBodyTypeId: unique symbol = body.ReaderBodyTypeId

/**
 * The type of the mark of a `ReaderBody`.
 *
 * @since 0.1.0
 * @category type ids
 */
export type ReaderBodyTypeId = typeof ReaderBodyTypeId

/**
 * A body given as a source that fills the sender's buffers, as a file does: the sender reads it into one buffer
 * that it reuses, so a body of any size makes no garbage per chunk (a `Stream` hands over a new array per chunk).
 * Made by `fileBody`, or by `readerBody` for any source with a `read(buffer)`.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReaderBody<E = never, R = never> {
  readonly [ReaderBodyTypeId]: ReaderBodyTypeId
  /** The body's size in octets, declared with SIZE (RFC 1870) when the server offers it. */
  readonly size: number | undefined
  /**
   * Opens the source in the send's scope, once per send, and returns its reader: it fills `buffer` from the start
   * and returns how many octets it put there, 0 at the end.
   */
  readonly open: Effect.Effect<(buffer: Uint8Array) => Effect.Effect<number, E>, E, R | Scope.Scope>
}

/**
 * Makes a `ReaderBody` from a source that reads into a buffer it is given.
 *
 * @since 0.1.0
 * @category constructors
 */
export const readerBody = <E = never, R = never>(options: {
  readonly size?: number | undefined
  readonly open: ReaderBody<E, R>["open"]
}): ReaderBody<E, R> => ({ [ReaderBodyTypeId]: ReaderBodyTypeId, size: options.size, open: options.open })

/**
 * True for a `ReaderBody`.
 *
 * @since 0.1.0
 * @category guards
 */
export const isReaderBody: (u: unknown) => u is ReaderBody<unknown, unknown> = body.isReaderBody

/**
 * A recipient with its own RCPT parameters (DSN's NOTIFY and ORCPT, per recipient).
 *
 * @since 0.1.0
 * @category models
 */
export interface Recipient {
  readonly address: string
  /** Replaces the envelope's `rcptParameters` for this recipient. */
  readonly parameters?: SmtpCommand.RcptParameters | undefined
}

/**
 * The envelope of one transaction.
 *
 * @since 0.1.0
 * @category models
 */
export interface Envelope {
  /** The reverse-path; "" for the null reverse-path `<>`. */
  readonly from: string
  readonly to: ReadonlyArray<string | Recipient>
  /**
   * MAIL parameters. SIZE, BODY and SMTPUTF8 are worked out by `send` when not given; RET, ENVID and REQUIRETLS
   * are the caller's to ask for.
   */
  readonly mailParameters?: SmtpCommand.MailParameters | undefined
  /** RCPT parameters for every recipient that has none of its own. */
  readonly rcptParameters?: SmtpCommand.RcptParameters | undefined
}

/**
 * How `send` runs a transaction.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendOptions {
  /**
   * BDAT (RFC 3030) when the server offers CHUNKING: true always, false never (a body that needs BINARYMIME still
   * needs it). By default, BDAT when another message is in flight or follows at once on the connection, when commands
   * are not pipelined, or when the whole transaction fits in 4 KiB; else DATA: alone, a longer BDAT transaction is
   * answered about 40 ms late by Postfix.
   */
  readonly chunking?: boolean | undefined
  /** Pipeline commands (RFC 2920) when the server offers PIPELINING. Default true. */
  readonly pipelining?: boolean | undefined
  /**
   * `partial` (default): deliver to the recipients the server took and report the others. `all-or-nothing`: when
   * any recipient is refused, RSET and fail; the envelope is then read before the body goes, one round trip more.
   */
  readonly policy?: "partial" | "all-or-nothing" | undefined
  /** Let lines over 998 octets through. Default false: such a body fails with an `InvalidInputError`. */
  readonly allowLongLines?: boolean | undefined
  /**
   * The body's type. Default: worked out for a body in memory (BINARYMIME when it has NUL octets or lines over 998
   * octets and the server offers BINARYMIME with CHUNKING, 8BITMIME when it has 8-bit octets); a streamed body is
   * declared 8BITMIME when the server offers it, and fails midway on an 8-bit octet when it does not. BINARYMIME
   * (sent as is, never canonicalized) needs BINARYMIME and CHUNKING.
   */
  readonly bodyType?: SmtpCommand.BodyType | undefined
  /** The size of a streamed body in octets, for SIZE; a body in memory is measured, a `ReaderBody` says its own. */
  readonly size?: number | undefined
}

/**
 * How `sendAll` runs its messages.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendAllOptions extends SendOptions {
  /** With BDAT, how many transactions may be in flight before the oldest is waited for. Default 16. */
  readonly window?: number | undefined
}

/**
 * One message for `sendAll`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Submission<E = never, R = never> {
  readonly envelope: Envelope
  readonly body: Body<E, R>
  /** Overrides the batch's options for this message. */
  readonly options?: SendOptions | undefined
}

/**
 * A recipient the server took: its RCPT reply and, with LMTP, its own delivery reply.
 *
 * @since 0.1.0
 * @category models
 */
export interface AcceptedRecipient {
  readonly recipient: string
  readonly reply: SmtpReply
  readonly delivery: SmtpReply | undefined
}

/**
 * A recipient the server refused, at RCPT or (LMTP) at delivery, with the refusal's code, enhanced code and text.
 *
 * @since 0.1.0
 * @category models
 */
export interface RejectedRecipient {
  readonly recipient: string
  readonly error: SmtpTransientError | SmtpPermanentError
}

/**
 * What happened to one transaction: the recipients the server took, those it refused (with why), its final reply
 * (which often holds the queue id), how it was sent, and how many round trips it waited for.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendResult {
  readonly accepted: ReadonlyArray<AcceptedRecipient>
  readonly rejected: ReadonlyArray<RejectedRecipient>
  readonly response: SmtpReply
  readonly method: "DATA" | "BDAT"
  /** The writes this message waited on a reply for; with pipelining across messages they are shared. */
  readonly roundTrips: number
}

/**
 * What sending a message can fail with: a reply error, a connection failure, bad input, or a server that lacks what
 * the message needs.
 *
 * @since 0.1.0
 * @category models
 */
export type SendError = ReplyError | InvalidInputError | SmtpCapabilityError

/**
 * A file as a message body, read through `@effect/platform`'s `FileSystem` into the sender's reused buffer (constant
 * memory, no garbage per chunk, with backpressure), with its size, taken now, for SIZE:
 * `send(envelope, yield* fileBody(path))`. The file is opened when the send starts and closed when it ends.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fileBody = (
  path: string
): Effect.Effect<ReaderBody<PlatformError>, PlatformError, FileSystem.FileSystem> =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    Effect.map(fs.stat(path), (info) =>
      readerBody<PlatformError>({
        size: Number(info.size),
        open: Effect.map(fs.open(path, { flag: "r" }), (file) => (buffer) => Effect.map(file.read(buffer), Number))
      })))
