/**
 * The errors every part of effect-smtp fails with, and the predicates that answer the user's real question:
 * is this worth retrying, is it my input, or is the server broken?
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Predicate from "effect/Predicate"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-smtp/SmtpError")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * The socket failed: it could not connect, was reset, or closed before the exchange was over.
 *
 * @since 0.1.0
 * @category errors
 */
export class NetworkError extends Data.TaggedError("NetworkError")<{
  /** What the client was doing when the socket failed, e.g. "connect" or "write". */
  readonly operation: string
  /** The errno code (`ECONNREFUSED`, `ECONNRESET`, …) when the system gave one. */
  readonly code?: string | undefined
  readonly cause?: unknown
  /**
   * True when the connection failed after the whole message was sent, before its reply: the server may have
   * accepted it, so a retry may deliver it twice.
   */
  readonly mayHaveBeenDelivered?: boolean | undefined
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    const code = this.code === undefined ? "" : ` (${this.code})`
    const cause = this.cause instanceof Error ? `: ${this.cause.message}` : ""
    const delivered = this.mayHaveBeenDelivered === true ? "; the message may have been delivered" : ""
    return `Network failure during ${this.operation}${code}${cause}${delivered}`
  }
}

/**
 * A phase's timer ran out. The connection is closed, since its state is unknown.
 *
 * @since 0.1.0
 * @category errors
 */
export class TimeoutError extends Data.TaggedError("TimeoutError")<{
  /** The phase that ran out of time: "connect", "greeting", "MAIL", "end of data", … */
  readonly phase: string
  /** How long the phase was allowed, in milliseconds. */
  readonly timeoutMillis: number
  /**
   * True when the timer ran out after the whole message was sent: the server may have accepted it, so a retry may
   * deliver it twice.
   */
  readonly mayHaveBeenDelivered: boolean
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    const delivered = this.mayHaveBeenDelivered ? "; the message may have been delivered" : ""
    return `Timed out after ${this.timeoutMillis} ms waiting for ${this.phase}${delivered}`
  }
}

/**
 * The fields shared by the two reply errors.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReplyErrorFields {
  /** The verb of the command the server answered ("MAIL", "RCPT", "DATA", …), or "greeting". Never its arguments. */
  readonly command: string
  /** The three-digit reply code. */
  readonly code: number
  /** The RFC 3463 enhanced status code (`5.1.1`) when the server sent one. */
  readonly enhancedCode: string | undefined
  /** The reply's text lines, without code and enhanced code. */
  readonly lines: ReadonlyArray<string>
}

const replyMessage = (kind: string, fields: ReplyErrorFields): string => {
  const enhanced = fields.enhancedCode === undefined ? "" : ` ${fields.enhancedCode}`
  const text = fields.lines.join(" ").trim()
  return `${kind} to ${fields.command}: ${fields.code}${enhanced}${text === "" ? "" : ` ${text}`}`
}

/**
 * The server answered with a 4xx reply: the command failed but may succeed later. A 421 also closes the connection.
 *
 * @since 0.1.0
 * @category errors
 */
export class SmtpTransientError extends Data.TaggedError("SmtpTransientError")<ReplyErrorFields> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return replyMessage("Transient failure", this)
  }
}

/**
 * The server answered with a 5xx reply: the same command will fail again.
 *
 * @since 0.1.0
 * @category errors
 */
export class SmtpPermanentError extends Data.TaggedError("SmtpPermanentError")<ReplyErrorFields> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return replyMessage("Permanent failure", this)
  }
}

/**
 * The server broke the protocol: bytes that are not an SMTP reply, a reply over the size limits, a reply where none
 * was due. The connection cannot be trusted afterwards.
 *
 * @since 0.1.0
 * @category errors
 */
export class SmtpProtocolError extends Data.TaggedError("SmtpProtocolError")<{
  /** What was wrong, in words a person can act on. */
  readonly reason: string
  /** The verb of the command whose reply was being read, when there was one. */
  readonly command?: string | undefined
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `SMTP protocol violation${this.command === undefined ? "" : ` in reply to ${this.command}`}: ${this.reason}`
  }
}

/**
 * An argument, address, option or message body that cannot be sent as it is. Raised before anything reaches the wire.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidInputError extends Data.TaggedError("InvalidInputError")<{
  /** The field that was rejected: "client host name", "MAIL FROM address", "ENVID", "message body", … */
  readonly field: string
  /** Why it was rejected. */
  readonly reason: string
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `Invalid ${this.field}: ${this.reason}`
  }
}

/**
 * Why TLS failed: the certificate is not trusted, has expired (or is not valid yet), was issued for another name
 * (Hunny's `BAD_CERTIFICATE_NAME_ERROR`), the handshake itself failed, or TLS was required and the server did not
 * offer STARTTLS.
 *
 * @since 0.1.0
 * @category models
 */
export type TlsFailure =
  | "untrusted-certificate"
  | "expired-certificate"
  | "wrong-host-name"
  | "handshake"
  | "not-offered"

/**
 * The TLS handshake failed, or the certificate was refused. Not retryable: the same server gives the same answer.
 *
 * @since 0.1.0
 * @category errors
 */
export class TlsError extends Data.TaggedError("TlsError")<{
  readonly failure: TlsFailure
  /** The host name the certificate was checked against. */
  readonly host: string
  /** The OpenSSL or Node code (`CERT_HAS_EXPIRED`, `ERR_TLS_CERT_ALTNAME_INVALID`, …) when there was one. */
  readonly code?: string | undefined
  readonly cause?: unknown
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    const what = {
      "untrusted-certificate": "the server's certificate is not trusted",
      "expired-certificate": "the server's certificate has expired or is not valid yet",
      "wrong-host-name": `the server's certificate was issued for another name than ${this.host}`,
      "handshake": "the TLS handshake failed",
      "not-offered": "TLS is required but the server does not offer STARTTLS"
    }[this.failure]
    const code = this.code === undefined ? "" : ` (${this.code})`
    const cause = this.cause instanceof Error ? `: ${this.cause.message}` : ""
    return `TLS with ${this.host}: ${what}${code}${cause}`
  }
}

/**
 * Why authentication could not happen or could not be trusted: the server offers no AUTH, no mechanism is common to
 * both sides (or the pinned one is not offered), the connection is in cleartext and the user did not allow that, or
 * the server could not prove it knows the password (SCRAM).
 *
 * @since 0.1.0
 * @category models
 */
export type AuthFailure = "not-offered" | "no-common-mechanism" | "cleartext" | "server-unverified"

/**
 * Authentication could not happen, or the server could not be trusted. Not retryable. A refused login is a reply
 * error instead (535 permanent, 454 transient).
 *
 * @since 0.1.0
 * @category errors
 */
export class SmtpAuthError extends Data.TaggedError("SmtpAuthError")<{
  readonly failure: AuthFailure
  /** What was offered, pinned or wrong; never a credential. */
  readonly detail: string
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    const what = {
      "not-offered": "the server does not offer AUTH",
      "no-common-mechanism": "no SASL mechanism is supported by both sides",
      "cleartext": "the connection is not encrypted, and authenticating in cleartext was not allowed",
      "server-unverified": "the server could not prove that it knows the password"
    }[this.failure]
    return `Authentication: ${what}${this.detail === "" ? "" : ` (${this.detail})`}`
  }
}

/**
 * What a message needs from the server: an extension, or room under its SIZE limit.
 *
 * @since 0.1.0
 * @category models
 */
export type Capability = "SIZE" | "8BITMIME" | "BINARYMIME" | "SMTPUTF8" | "DSN" | "REQUIRETLS"

/**
 * The server (or the connection) lacks what this message needs: an address or header needs SMTPUTF8, an 8-bit body
 * needs 8BITMIME, a binary body needs BINARYMIME and CHUNKING, DSN parameters need DSN, REQUIRETLS needs TLS and the
 * server's REQUIRETLS, or the message is over the server's SIZE limit. Raised before anything of the transaction is
 * sent, except for a streamed body found 8-bit midway, which ends the connection so the server cannot accept it. Not
 * retryable on the same server.
 *
 * @since 0.1.0
 * @category errors
 */
export class SmtpCapabilityError extends Data.TaggedError("SmtpCapabilityError")<{
  readonly capability: Capability
  /** What the message needs and the server lacks, in words. */
  readonly reason: string
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `The server cannot take this message (${this.capability}): ${this.reason}`
  }
}

/**
 * Any error effect-smtp fails with.
 *
 * @since 0.1.0
 * @category models
 */
export type SmtpError =
  | NetworkError
  | TimeoutError
  | SmtpTransientError
  | SmtpPermanentError
  | SmtpProtocolError
  | InvalidInputError
  | TlsError
  | SmtpAuthError
  | SmtpCapabilityError

/**
 * Tells whether a value is one of effect-smtp's errors.
 *
 * @since 0.1.0
 * @category refinements
 */
export const isSmtpError = (u: unknown): u is SmtpError => Predicate.hasProperty(u, TypeId)

/**
 * Tells whether an error may go away if the same thing is tried again later: network failures, timeouts and 4xx
 * replies. Permanent replies, protocol violations and invalid input fail the same way every time.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryable = (u: unknown): u is NetworkError | TimeoutError | SmtpTransientError =>
  isSmtpError(u) &&
  (u._tag === "NetworkError" || u._tag === "TimeoutError" || u._tag === "SmtpTransientError")

/**
 * Tells whether an error leaves the session out of step, so that the connection is closed at once and never used
 * again: a network failure, a timeout, a protocol violation, a TLS failure, or a 421 reply (the server is closing).
 * The one place that decides it: the connection, the submission engine and the pool all ask here.
 *
 * @since 0.1.0
 * @category predicates
 */
export const breaksConnection = (u: unknown): boolean =>
  isSmtpError(u) &&
  (u._tag === "NetworkError" || u._tag === "TimeoutError" || u._tag === "SmtpProtocolError" ||
    u._tag === "TlsError" || (u._tag === "SmtpTransientError" && u.code === 421))

/**
 * Tells whether an error is a negative reply from the server (4xx or 5xx).
 *
 * @since 0.1.0
 * @category predicates
 */
export const isReplyError = (u: unknown): u is SmtpTransientError | SmtpPermanentError =>
  isSmtpError(u) && (u._tag === "SmtpTransientError" || u._tag === "SmtpPermanentError")

/**
 * What a command that gets a reply can fail with: the reply was negative, or the connection failed.
 *
 * @since 0.1.0
 * @category models
 */
export type ReplyError = NetworkError | TimeoutError | SmtpProtocolError | SmtpTransientError | SmtpPermanentError

/**
 * What reading any reply can fail with: the connection failed, without a negative reply.
 *
 * @since 0.1.0
 * @category models
 */
export type ReadError = NetworkError | TimeoutError | SmtpProtocolError
