/**
 * @since 0.1.0
 */
export * as BdatEncoder from "./BdatEncoder.js"

/**
 * @since 0.1.0
 */
export * as Capabilities from "./Capabilities.js"

/**
 * @since 0.1.0
 */
export * as DataEncoder from "./DataEncoder.js"

/**
 * @since 0.1.0
 */
export * as SmtpConfig from "./SmtpConfig.js"

/**
 * @since 0.1.0
 */
export * as SmtpConnection from "./SmtpConnection.js"

/**
 * @since 0.1.0
 */
export * as Mailbox from "./Mailbox.js"

/**
 * @since 0.1.0
 */
export * as Message from "./Message.js"

/**
 * @since 0.1.0
 */
export * as SmtpAuth from "./SmtpAuth.js"

/**
 * @since 0.1.0
 */
export * as SmtpClient from "./SmtpClient.js"

/**
 * @since 0.1.0
 */
export * as SmtpCommand from "./SmtpCommand.js"

/**
 * @since 0.1.0
 */
export * as SmtpError from "./SmtpError.js"

/**
 * @since 0.1.0
 */
export * as SmtpReply from "./SmtpReply.js"

/**
 * @since 0.1.0
 */
export * as SmtpRetry from "./SmtpRetry.js"

/**
 * @since 0.1.0
 */
export * as SmtpSubmission from "./SmtpSubmission.js"

/**
 * @since 0.1.0
 */
export * as SmtpTimeouts from "./SmtpTimeouts.js"

/**
 * @since 0.1.0
 */
export * as SmtpTransport from "./SmtpTransport.js"

/**
 * The error classes, at the package root: the four every command can fail with, and the precise extras.
 *
 * @since 0.1.0
 */
export {
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
