/**
 * A scoped SMTP (or LMTP) session: connect, greeting, EHLO with HELO fallback, STARTTLS, and every command as an
 * Effect whose error channel lists what can really go wrong. Closing the scope sends QUIT (bounded by a short
 * timeout) and closes the socket, after success, failure or interruption.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type * as Capabilities from "./Capabilities.js"
import * as internal from "./internal/connection.js"
import type * as SmtpAuth from "./SmtpAuth.js"
import type * as SmtpCommand from "./SmtpCommand.js"
import type * as SmtpConfig from "./SmtpConfig.js"
import type {
  InvalidInputError,
  NetworkError,
  ReadError,
  ReplyError,
  SmtpAuthError,
  TimeoutError,
  TlsError
} from "./SmtpError.js"
import type { SmtpReply } from "./SmtpReply.js"
import type * as SmtpSubmission from "./SmtpSubmission.js"
import type * as SmtpTimeouts from "./SmtpTimeouts.js"
import type { Endpoints, SmtpTransport, TlsDetails, TlsMode, TlsOptions } from "./SmtpTransport.js"

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
  readonly timeouts?: Partial<SmtpTimeouts.Timeouts> | undefined
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
    body: SmtpSubmission.Body<E, R>,
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
  readonly timeouts: { readonly [K in SmtpTimeouts.Phase]: Duration.Duration }
  /**
   * One message: every address and extension checked before anything is sent, then MAIL, every RCPT and DATA in one
   * write when the server offers PIPELINING (the body only after 354, and never when no recipient was taken), or
   * MAIL, RCPT and `BDAT n LAST` in one write when the server offers CHUNKING and the message is small (see the
   * `chunking` option). SIZE, BODY=8BITMIME and SMTPUTF8 are declared
   * when the message needs them, and a server that lacks what it needs is an `SmtpCapabilityError`. Refused
   * recipients are reported; when every recipient is refused the send fails (transient if any refusal was 4xx).
   */
  readonly send: <E = never, R = never>(
    envelope: SmtpSubmission.Envelope,
    body: SmtpSubmission.Body<E, R>,
    options?: SmtpSubmission.SendOptions
  ) => Effect.Effect<SmtpSubmission.SendResult, SmtpSubmission.SendError | E, R>
  /**
   * Many messages on this connection, pipelined across transactions: with DATA, each end of data leaves with the next
   * message's envelope; with BDAT (when the server offers CHUNKING), up to `window` transactions are in flight. One result per message, in order; a
   * failure that closes the connection fails the messages still unanswered and every later one. From a stream, the
   * messages of one chunk are pipelined together, and every one is answered before the next chunk is pulled.
   */
  readonly sendAll: <E = never, R = never, R2 = never>(
    submissions: Iterable<SmtpSubmission.Submission<E, R>> | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>,
    options?: SmtpSubmission.SendAllOptions
  ) => Stream.Stream<Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>, never, R | R2>
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
 * The options of `make` for the server a URL names (`SmtpConfig.fromUrl` or `SmtpConfig.url`), with the other options.
 *
 * @since 0.1.0
 * @category constructors
 */
export const optionsFromUrl = (
  settings: SmtpConfig.UrlSettings,
  options: Omit<Options, "host" | "port" | "tls"> = {}
): Options => ({ ...options, host: settings.host, port: settings.port, tls: settings.tls })
