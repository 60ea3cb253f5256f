/**
 * A scoped SMTP (or LMTP) session: connect, greeting, EHLO with HELO fallback, STARTTLS, and every command as an
 * Effect whose error channel lists what can really go wrong. Closing the scope sends QUIT (bounded by a short
 * timeout) and closes the socket, after success, failure or interruption.
 *
 * @since 0.1.0
 */
import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type * as Capabilities from "./Capabilities.js"
import * as body from "./internal/body.js"
import * as internal from "./internal/connection.js"
import type * as SmtpAuth from "./SmtpAuth.js"
import type * as SmtpCommand from "./SmtpCommand.js"
import type {
  InvalidInputError,
  NetworkError,
  SmtpAuthError,
  SmtpCapabilityError,
  SmtpPermanentError,
  SmtpProtocolError,
  SmtpTransientError,
  TimeoutError,
  TlsError
} from "./SmtpError.js"
import type { SmtpReply } from "./SmtpReply.js"
import type { Endpoints, SmtpTransport, TlsDetails, TlsOptions } from "./SmtpTransport.js"

/**
 * How the connection uses TLS: `implicit` (TLS from the first byte, port 465), `starttls` (STARTTLS required: fail
 * when the server does not offer it), `opportunistic` (STARTTLS when offered, else plaintext) or `none`.
 *
 * @since 0.1.0
 * @category models
 */
export type TlsMode = "implicit" | "starttls" | "opportunistic" | "none"

/**
 * One timeout per phase (RFC 5321 §4.5.3.2 where it gives one).
 *
 * @since 0.1.0
 * @category models
 */
export interface Timeouts {
  /** TCP connect and, with implicit TLS, the handshake. Default 30 s. */
  readonly connect: Duration.DurationInput
  /** The server's 220 greeting. Default 5 min. */
  readonly greeting: Duration.DurationInput
  /** EHLO, HELO and LHLO. Default 5 min. */
  readonly hello: Duration.DurationInput
  /** STARTTLS and its handshake. Default 2 min. */
  readonly startTls: Duration.DurationInput
  /** Each step of an AUTH exchange. Default 5 min. */
  readonly auth: Duration.DurationInput
  /** MAIL FROM. Default 5 min. */
  readonly mail: Duration.DurationInput
  /** Each RCPT TO. Default 5 min. */
  readonly rcpt: Duration.DurationInput
  /** The 354 reply to DATA. Default 2 min. */
  readonly dataStart: Duration.DurationInput
  /** Each write of the message body. Default 3 min. */
  readonly dataBlock: Duration.DurationInput
  /** The reply after the end of data (or the last BDAT). Default 10 min. */
  readonly dataEnd: Duration.DurationInput
  /** RSET, NOOP, VRFY, EXPN, HELP and raw commands. Default 5 min. */
  readonly command: Duration.DurationInput
  /** QUIT when the connection is released. Default 5 s. */
  readonly quit: Duration.DurationInput
}

/**
 * The default timeouts: RFC 5321 §4.5.3.2 for the phases it names.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultTimeouts: Timeouts = internal.defaultTimeouts

/**
 * Options of `make`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The server's host name or address; with `path`, only the name TLS checks and spans report. */
  readonly host: string
  /** A UNIX socket to connect to instead of host and port (LMTP servers often listen on one). */
  readonly path?: string | undefined
  /** Default 465 with implicit TLS, else 25 (24 is customary for LMTP, but give it). */
  readonly port?: number | undefined
  /** Default "opportunistic". */
  readonly tls?: TlsMode | undefined
  readonly tlsOptions?: TlsOptions | undefined
  /** Speak LMTP (RFC 2033): LHLO instead of EHLO. */
  readonly lmtp?: boolean | undefined
  /** The name sent with EHLO/HELO/LHLO; default this host's name when it is a fully qualified domain, else an
   * address literal of the local address. */
  readonly clientName?: string | undefined
  /** Per-phase timeouts, each overriding the default. */
  readonly timeouts?: Partial<Timeouts> | undefined
  /** One timeout for every phase, overriding the others (Poco's `setTimeout`). */
  readonly timeout?: Duration.DurationInput | undefined
  /** Log a warning when one command takes this long or longer (Qore's warning queue); 0 warns for every command. */
  readonly slowCommandThreshold?: Duration.DurationInput | undefined
  /**
   * Called with every transcript line as it happens (Hunny's `SetTraceOutput`), before the connection's
   * `transcript` stream gets it; for a live trace that must not miss the last lines.
   */
  readonly onTranscript?: ((entry: TranscriptEntry) => Effect.Effect<void>) | undefined
}

/**
 * One line of the session as sent or received. AUTH payloads are never shown (`AUTH PLAIN <redacted>`).
 *
 * @since 0.1.0
 * @category models
 */
export interface TranscriptEntry {
  readonly direction: "client" | "server"
  readonly line: string
  /** Milliseconds since the epoch. */
  readonly at: number
}

/**
 * Per-connection figures (Qore's `getUsageInfo`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Usage {
  readonly bytesSent: number
  readonly bytesReceived: number
  /** Time spent writing, until the system took the bytes. */
  readonly sendingMillis: number
  /** Time spent waiting for and reading replies. */
  readonly receivingMillis: number
}

/**
 * What is known of the session.
 *
 * @since 0.1.0
 * @category models
 */
export interface State {
  readonly greeting: SmtpReply
  /** The capabilities from the last EHLO or LHLO; empty after HELO. */
  readonly capabilities: Capabilities.Capabilities
  /** True when the server answered EHLO (or LHLO), false after a HELO fallback. */
  readonly extended: boolean
  readonly secure: boolean
  readonly tls: TlsDetails | undefined
  /** The SASL mechanism that authenticated the session, if one did. */
  readonly authenticated: string | undefined
  readonly endpoints: Endpoints
  /** True once the connection was closed: by QUIT, or after a failure that left its state unknown. */
  readonly closed: boolean
}

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
  /** Use BDAT (RFC 3030) when the server offers CHUNKING. Default true. */
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
 * What a command that gets a reply can fail with: the reply was negative, or the connection failed.
 *
 * @since 0.1.0
 * @category models
 */
export type ReplyError = NetworkError | TimeoutError | SmtpProtocolError | SmtpTransientError | SmtpPermanentError

/**
 * What sending a message can fail with: a reply error, a connection failure, bad input, or a server that lacks what
 * the message needs.
 *
 * @since 0.1.0
 * @category models
 */
export type SendError = ReplyError | InvalidInputError | SmtpCapabilityError

/**
 * What reading any reply can fail with: the connection failed, without a negative reply.
 *
 * @since 0.1.0
 * @category models
 */
export type ReadError = NetworkError | TimeoutError | SmtpProtocolError

/**
 * A live session. Commands on one connection run one at a time (Qore's per-object mutex); a connection that saw a
 * timeout, a protocol violation, a network failure, a 421 or an interruption mid-command is closed and refuses
 * further commands with a `NetworkError`.
 *
 * @since 0.1.0
 * @category models
 */
export interface SmtpConnection {
  readonly state: Effect.Effect<State>
  /**
   * Every line sent and received, redacted; a late subscriber first gets the last 1,000 lines. It ends, after the
   * last line, when the connection closes.
   */
  readonly transcript: Stream.Stream<TranscriptEntry>
  readonly usage: Effect.Effect<Usage>
  /** Sets the usage figures back to zero (Qore's `clearStats`). */
  readonly resetUsage: Effect.Effect<void>

  /** EHLO; the new capabilities replace the old. */
  readonly ehlo: (clientName?: string) => Effect.Effect<Capabilities.Capabilities, ReplyError | InvalidInputError>
  /** HELO; leaves the session without extensions. */
  readonly helo: (clientName?: string) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  /** LHLO (LMTP). */
  readonly lhlo: (clientName?: string) => Effect.Effect<Capabilities.Capabilities, ReplyError | InvalidInputError>
  /** STARTTLS, the handshake, and EHLO (or LHLO) again, as RFC 3207 §4.2 requires. */
  readonly startTls: (options?: TlsOptions) => Effect.Effect<TlsDetails, ReplyError | TlsError>
  readonly mail: (
    from: string,
    parameters?: SmtpCommand.MailParameters
  ) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  readonly rcpt: (
    to: string,
    parameters?: SmtpCommand.RcptParameters
  ) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  /**
   * DATA, then the body (CRLF-canonical, dot-stuffed, lines over 998 octets refused unless allowed), then the reply to
   * the end of data. A body that fails midway closes the connection: a started DATA cannot be taken back. With LMTP,
   * every recipient's reply is read; the first positive one is returned, and only when all are negative does it fail
   * (`send` reports each recipient).
   */
  readonly data: <E = never, R = never>(
    body: Body<E, R>,
    options?: { readonly allowLongLines?: boolean | undefined }
  ) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError | E, R>
  /** One BDAT chunk (RFC 3030), sent as given; `last` ends the message. */
  readonly bdat: (chunk: Uint8Array, last: boolean) => Effect.Effect<SmtpReply, ReplyError>
  readonly rset: Effect.Effect<SmtpReply, ReplyError>
  readonly noop: (text?: string) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  readonly vrfy: (text: string) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  readonly expn: (text: string) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  readonly help: (topic?: string) => Effect.Effect<SmtpReply, ReplyError | InvalidInputError>
  /** QUIT now; the connection is closed afterwards and its release does nothing more. */
  readonly quit: Effect.Effect<SmtpReply, ReplyError>
  /**
   * Any command, for extensions (Hunny's `SendCommand`, Poco's `sendCommand`): returns the reply whatever its class.
   */
  readonly command: (command: SmtpCommand.SmtpCommand) => Effect.Effect<SmtpReply, ReadError | InvalidInputError>
  /**
   * AUTH (RFC 4954) with the strongest mechanism both sides support, or the pinned one; returns its name. Refused in
   * cleartext unless the settings allow it. A wrong password is an `SmtpPermanentError` (535), a temporary failure an
   * `SmtpTransientError` (454); a malformed challenge is a protocol error (the exchange is cancelled with `*`).
   */
  readonly authenticate: (
    settings: SmtpAuth.Settings
  ) => Effect.Effect<string, ReplyError | SmtpAuthError | InvalidInputError>
  /** Reads one more reply (Hunny's `ReceiveResponse`, D's `getResponse`). */
  readonly readReply: Effect.Effect<SmtpReply, ReadError>
  /**
   * Writes bytes exactly as given (Hunny's `SendBytes`, D's `sendData`), bounded by the data-block timeout; no reply
   * is read. The bytes are not checked: this is the one way around the encoders, for extensions and for tests.
   */
  readonly writeRaw: (bytes: Uint8Array) => Effect.Effect<void, NetworkError | TimeoutError>
  /** Closes the socket at once, without QUIT (Qore's `forceDisconnect`). Never fails. */
  readonly abort: Effect.Effect<void>
  /** The timeouts in force, after defaults and overrides. */
  readonly timeouts: { readonly [K in keyof Timeouts]: Duration.Duration }
  /**
   * One message: every address and extension checked before anything is sent, then MAIL, every RCPT and DATA in one
   * write when the server offers PIPELINING (the body only after 354, and never when no recipient was taken), or
   * MAIL, RCPT and `BDAT n LAST` in one write when it offers CHUNKING. SIZE, BODY=8BITMIME and SMTPUTF8 are declared
   * when the message needs them, and a server that lacks what it needs is an `SmtpCapabilityError`. Refused
   * recipients are reported; when every recipient is refused the send fails (transient if any refusal was 4xx).
   */
  readonly send: <E = never, R = never>(
    envelope: Envelope,
    body: Body<E, R>,
    options?: SendOptions
  ) => Effect.Effect<SendResult, SendError | E, R>
  /**
   * Many messages on this connection, pipelined across transactions: with DATA, each end of data leaves with the next
   * message's envelope; with BDAT, up to `window` transactions are in flight. One result per message, in order; a
   * failure that closes the connection fails the messages still unanswered and every later one. From a stream, the
   * messages of one chunk are pipelined together, and every one is answered before the next chunk is pulled.
   */
  readonly sendAll: <E = never, R = never, R2 = never>(
    submissions: Iterable<Submission<E, R>> | Stream.Stream<Submission<E, R>, never, R2>,
    options?: SendAllOptions
  ) => Stream.Stream<Either.Either<SendResult, SendError | E>, never, R | R2>
}

/**
 * What opening a connection can fail with.
 *
 * @since 0.1.0
 * @category models
 */
export type ConnectError = ReplyError | TlsError | InvalidInputError | SmtpAuthError

/**
 * Opens a session: connect, read the greeting, EHLO (HELO if the server answers 500 or 502; LHLO for LMTP), and
 * STARTTLS as the TLS mode says, then AUTH when `SmtpAuth` settings are in context. The connection lives in the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<SmtpConnection, ConnectError, Scope.Scope | SmtpTransport> =
  internal.make

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
