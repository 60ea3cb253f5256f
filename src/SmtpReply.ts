/**
 * SMTP replies (RFC 5321 §4.2): the model, the four reply classes, enhanced status codes (RFC 3463), and the parsers,
 * both for one whole reply and incremental over bytes in any chunking.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as internal from "./internal/replyParser.js"
import type { SmtpProtocolError } from "./SmtpError.js"
import { SmtpPermanentError, SmtpTransientError } from "./SmtpError.js"

/**
 * One reply from the server: its code, its enhanced status code when it had one, and its text lines (without code
 * and enhanced code).
 *
 * @since 0.1.0
 * @category models
 */
export class SmtpReply extends Data.Class<{
  /** The three-digit reply code, 200 to 599. */
  readonly code: number
  /** The RFC 3463 enhanced status code (`2.1.0`) from the first line, when the server sent one. */
  readonly enhancedCode: string | undefined
  /** The text of each line, without the code, the separator and the enhanced status code. */
  readonly lines: ReadonlyArray<string>
}> {
  /**
   * The text of all lines joined by a newline.
   *
   * @since 0.1.0
   */
  get text(): string {
    return this.lines.join("\n")
  }
}

/**
 * The options that bound what the parser will buffer, so memory stays bounded whatever the server sends.
 *
 * @since 0.1.0
 * @category models
 */
export interface ParserOptions {
  /** The longest line accepted, in octets without the line end. Default 8,192. */
  readonly maxLineLength?: number | undefined
  /** The most lines one reply may have. Default 1,000. */
  readonly maxLines?: number | undefined
  /** The most octets one reply may have, line ends included. Default 65,536. */
  readonly maxReplyLength?: number | undefined
}

/**
 * What one `push` of bytes into a parser produced: the replies completed by those bytes, in order, and the protocol
 * violation that stopped the parser, if one did. A stopped parser returns the same error for every later push.
 *
 * @since 0.1.0
 * @category models
 */
export interface ParseStep {
  readonly replies: ReadonlyArray<SmtpReply>
  readonly error: SmtpProtocolError | undefined
}

/**
 * An incremental, sans-IO reply parser: feed it bytes as they arrive, in any chunking, and it returns whole replies.
 *
 * @since 0.1.0
 * @category models
 */
export interface Parser {
  /** Feeds bytes in and returns the replies they complete. */
  readonly push: (chunk: Uint8Array) => ParseStep
  /** The number of octets held for a reply not yet complete. */
  readonly bufferedLength: number
}

/**
 * Creates an incremental reply parser.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeParser: (options?: ParserOptions) => Parser = internal.makeParser

/**
 * Parses exactly one whole reply, given as a string or bytes; the final line end may be left off.
 *
 * @since 0.1.0
 * @category parsers
 */
export const parse: (
  input: string | Uint8Array,
  options?: ParserOptions
) => Either.Either<SmtpReply, SmtpProtocolError> = (input, options) => {
  const result = internal.parseOne(input, options)
  return result instanceof SmtpReply ? Either.right(result) : Either.left(result)
}

const inClass = (reply: SmtpReply | number, low: number): boolean => {
  const code = typeof reply === "number" ? reply : reply.code
  return code >= low && code < low + 100
}

/**
 * 2yz: the command succeeded (Poco's `isPositiveCompletion`). Takes a reply or a bare code.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isPositiveCompletion = (reply: SmtpReply | number): boolean => inClass(reply, 200)

/**
 * 3yz: the command was accepted and the server waits for more (354 after DATA, 334 during AUTH).
 *
 * @since 0.1.0
 * @category predicates
 */
export const isPositiveIntermediate = (reply: SmtpReply | number): boolean => inClass(reply, 300)

/**
 * 4yz: the command failed, and the same command may succeed later.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isTransientNegative = (reply: SmtpReply | number): boolean => inClass(reply, 400)

/**
 * 5yz: the command failed, and the same command will fail again.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isPermanentNegative = (reply: SmtpReply | number): boolean => inClass(reply, 500)

/**
 * Tells whether a reply says the server is closing the connection (421, RFC 5321 §3.8).
 *
 * @since 0.1.0
 * @category predicates
 */
export const isServiceClosing = (reply: SmtpReply): boolean => reply.code === 421

/**
 * Turns a negative reply into the matching error: 4yz into `SmtpTransientError`, anything else into
 * `SmtpPermanentError`. `command` is the verb that was answered, never its arguments.
 *
 * @since 0.1.0
 * @category errors
 */
export const toError = (reply: SmtpReply, command: string): SmtpTransientError | SmtpPermanentError => {
  const fields = { command, code: reply.code, enhancedCode: reply.enhancedCode, lines: reply.lines }
  return isTransientNegative(reply) ? new SmtpTransientError(fields) : new SmtpPermanentError(fields)
}

/**
 * Writes a reply back in wire form, one CRLF-terminated line per text line.
 *
 * @since 0.1.0
 * @category encoding
 */
export const format = (reply: SmtpReply): string => formatLines(reply).map((line) => `${line}\r\n`).join("")

/**
 * The reply's lines as the server sends them, without their CRLF: `250-first`, …, `250 last`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const formatLines = (reply: SmtpReply): ReadonlyArray<string> => {
  const lines = reply.lines.length === 0 ? [""] : reply.lines
  const enhanced = reply.enhancedCode === undefined ? "" : `${reply.enhancedCode} `
  return lines.map((line, i) => {
    const separator = i === lines.length - 1 ? " " : "-"
    const text = `${enhanced}${line}`
    return text === "" && separator === " " ? `${reply.code}` : `${reply.code}${separator}${text}`
  })
}
