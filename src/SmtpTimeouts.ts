/**
 * How long each phase of a session may take: one timeout per phase, and the defaults (RFC 5321 §4.5.3.2 where it
 * gives one). A leaf module, shared by the connection and the submission engine.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"

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
 * A phase of the session that has its own timeout.
 *
 * @since 0.1.0
 * @category models
 */
export type Phase = keyof Timeouts

/**
 * The default timeouts: RFC 5321 §4.5.3.2 for the phases it names.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaults: Timeouts = {
  connect: "30 seconds",
  greeting: "5 minutes",
  hello: "5 minutes",
  startTls: "2 minutes",
  auth: "5 minutes",
  mail: "5 minutes",
  rcpt: "5 minutes",
  dataStart: "2 minutes",
  dataBlock: "3 minutes",
  dataEnd: "10 minutes",
  command: "5 minutes",
  quit: "5 seconds"
}
