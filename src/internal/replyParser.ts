/**
 * The incremental reply parser (RFC 5321 §4.2). Sans-IO: bytes in, replies out; no sockets, timers or fibers.
 *
 * Tolerant where real servers are sloppy (a bare LF ends a line), strict where it matters: a non-numeric code, a code
 * outside 2yz–5yz, a code that changes between the lines of one reply, and every size limit are protocol errors, so
 * memory stays bounded whatever the server sends.
 */
import { SmtpProtocolError } from "../SmtpError.js"
import type { ParserOptions, ParseStep, SmtpReply as SmtpReplyType } from "../SmtpReply.js"
import { SmtpReply } from "../SmtpReply.js"

const LF = 0x0a
const CR = 0x0d
const SPACE = 0x20
const HYPHEN = 0x2d
const DIGIT_0 = 0x30
const DIGIT_9 = 0x39
const DOT = 0x2e

/** The default bounds; see `ParserOptions`. */
export const defaults = {
  maxLineLength: 8192,
  maxLines: 1000,
  maxReplyLength: 65536
} as const

const noReplies: ReadonlyArray<SmtpReplyType> = []

const isDigit = (code: number): boolean => code >= DIGIT_0 && code <= DIGIT_9

/** Counts the digits from `at`: 1 to 3 of them, or 0 when there are none or too many. */
const digitRun = (text: string, at: number): number => {
  let i = at
  while (i - at < 4 && isDigit(text.charCodeAt(i))) i++
  return i - at <= 3 ? i - at : 0
}

/**
 * The length of the RFC 3463 enhanced status code (`class.subject.detail`) that starts `text`, with the space after
 * it; 0 when there is none or its class is not the reply's (only 2, 4 and 5 exist).
 */
const enhancedCodeLength = (text: string, replyClass: number): number => {
  if (replyClass === 3 || text.charCodeAt(0) !== DIGIT_0 + replyClass || text.charCodeAt(1) !== DOT) return 0
  const subject = digitRun(text, 2)
  if (subject === 0 || text.charCodeAt(2 + subject) !== DOT) return 0
  const detail = digitRun(text, 3 + subject)
  const end = 3 + subject + detail
  if (detail === 0) return 0
  if (end === text.length) return end
  return text.charCodeAt(end) === SPACE ? end + 1 : 0
}

/** Builds the reply from its code and text lines, taking the enhanced status code from the lines that carry it. */
const finishReply = (code: number, texts: Array<string>): SmtpReply => {
  const replyClass = Math.floor(code / 100)
  const first = enhancedCodeLength(texts[0]!, replyClass)
  if (first === 0) return new SmtpReply({ code, enhancedCode: undefined, lines: texts })
  const enhancedCode = texts[0]!.slice(0, first).trimEnd()
  for (let i = 0; i < texts.length; i++) {
    const length = i === 0 ? first : enhancedCodeLength(texts[i]!, replyClass)
    if (length > 0) texts[i] = texts[i]!.slice(length)
  }
  return new SmtpReply({ code, enhancedCode, lines: texts })
}

const violation = (reason: string): SmtpProtocolError => new SmtpProtocolError({ reason })

const describeLine = (line: string): string => {
  const shown = JSON.stringify(fromLatin1(line.slice(0, 40)))
  return line.length > 40 ? `${shown}…` : shown
}

const NON_ASCII = /[\x80-\xFF]/

/** Turns octets held as latin1 characters into text: as they are when ASCII, else decoded as UTF-8. */
const fromLatin1 = (octets: string): string =>
  NON_ASCII.test(octets) ? Buffer.from(octets, "latin1").toString("utf8") : octets

/** A Buffer view of the bytes, without a copy, for the native `indexOf` and `toString(encoding, start, end)`. */
const asBuffer = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)

/**
 * The parser's state machine. One instance per connection; `push` may be called with any chunking of the stream.
 */
class ReplyParserImpl {
  private readonly maxLineLength: number
  private readonly maxLines: number
  private readonly maxReplyLength: number
  /** The pieces of the current line that arrived in earlier chunks (octets as latin1), and their total length. */
  private pending: Array<string> = []
  private pendingLength = 0
  /** The reply being assembled: its code (0 when between replies), its lines' text and its size so far. */
  private code = 0
  private texts: Array<string> = []
  private replyLength = 0
  private failure: SmtpProtocolError | undefined

  constructor(options: ParserOptions | undefined) {
    this.maxLineLength = options?.maxLineLength ?? defaults.maxLineLength
    this.maxLines = options?.maxLines ?? defaults.maxLines
    this.maxReplyLength = options?.maxReplyLength ?? defaults.maxReplyLength
  }

  get bufferedLength(): number {
    return this.pendingLength + this.replyLength
  }

  readonly push = (input: Uint8Array): ParseStep => {
    if (this.failure !== undefined) return { replies: noReplies, error: this.failure }
    // One latin1 string per chunk (a native copy, one character per octet) lets every line be a cheap string slice;
    // only a line holding octets over 0x7F is decoded again, as UTF-8.
    const chunk = asBuffer(input)
    const text = chunk.toString("latin1")
    let replies: Array<SmtpReply> | undefined
    let position = 0
    while (position < text.length) {
      const lf = text.indexOf("\n", position)
      if (lf === -1) {
        const rest = text.length - position
        // A line that is already too long fails now instead of when its end arrives, so it never grows unbounded.
        if (this.pendingLength + rest > this.maxLineLength + 1) {
          return this.fail(replies, violation(`a line is longer than ${this.maxLineLength} octets`))
        }
        this.pending.push(text.slice(position))
        this.pendingLength += rest
        break
      }
      let line = text.slice(position, lf)
      if (this.pendingLength > 0) {
        this.pending.push(line)
        line = this.pending.join("")
        this.pending = []
        this.pendingLength = 0
      }
      let lineEndLength = 1
      if (line.charCodeAt(line.length - 1) === CR) {
        line = line.slice(0, -1)
        lineEndLength = 2
      }
      const outcome = this.line(line, lineEndLength)
      if (outcome instanceof SmtpProtocolError) return this.fail(replies, outcome)
      if (outcome !== undefined) {
        if (replies === undefined) replies = []
        replies.push(outcome)
      }
      position = lf + 1
    }
    return { replies: replies ?? noReplies, error: undefined }
  }

  private fail(replies: ReadonlyArray<SmtpReply> | undefined, error: SmtpProtocolError): ParseStep {
    this.failure = error
    this.pending = []
    this.pendingLength = 0
    this.code = 0
    this.texts = []
    this.replyLength = 0
    return { replies: replies ?? noReplies, error }
  }

  /**
   * Handles one line (octets as latin1 characters, without its line end): the finished reply, a protocol error, or
   * `undefined` when the reply goes on.
   */
  private line(line: string, lineEndLength: number): SmtpReply | SmtpProtocolError | undefined {
    if (line.length > this.maxLineLength) return violation(`a line is longer than ${this.maxLineLength} octets`)
    const d0 = line.charCodeAt(0), d1 = line.charCodeAt(1), d2 = line.charCodeAt(2)
    if (!isDigit(d0) || !isDigit(d1) || !isDigit(d2)) {
      return violation(`a reply line must start with a three-digit code, got ${describeLine(line)}`)
    }
    const code = (d0 - DIGIT_0) * 100 + (d1 - DIGIT_0) * 10 + (d2 - DIGIT_0)
    if (code < 200 || code > 599) return violation(`reply code ${code} is outside 200–599`)
    const separator = line.length > 3 ? line.charCodeAt(3) : undefined
    if (separator !== undefined && separator !== SPACE && separator !== HYPHEN) {
      return violation(`a reply code must be followed by a space or a hyphen, got ${describeLine(line)}`)
    }
    if (this.code !== 0 && code !== this.code) {
      return violation(`reply code changed from ${this.code} to ${code} within one reply`)
    }
    this.code = code
    this.replyLength += line.length + lineEndLength
    if (this.replyLength > this.maxReplyLength) return violation(`a reply is longer than ${this.maxReplyLength} octets`)
    if (this.texts.length >= this.maxLines) return violation(`a reply has more than ${this.maxLines} lines`)
    this.texts.push(line.length > 4 ? fromLatin1(line.slice(4)) : "")
    if (separator === HYPHEN) return undefined
    const reply = finishReply(code, this.texts)
    this.code = 0
    this.texts = []
    this.replyLength = 0
    return reply
  }
}

/** Creates an incremental parser. */
export const makeParser = (options?: ParserOptions): ReplyParserImpl => new ReplyParserImpl(options)

const encoder = new TextEncoder()

/** Parses exactly one whole reply; the final line end may be left off. */
export const parseOne = (input: string | Uint8Array, options?: ParserOptions): SmtpReply | SmtpProtocolError => {
  const bytes = typeof input === "string" ? encoder.encode(input) : input
  const parser = new ReplyParserImpl(options)
  const step = parser.push(bytes)
  if (step.error !== undefined) return step.error
  let replies = step.replies
  const last = bytes[bytes.length - 1]
  if (last !== LF) {
    const end = parser.push(new Uint8Array([CR, LF]))
    if (end.error !== undefined) return end.error
    replies = [...replies, ...end.replies]
  }
  if (replies.length !== 1 || parser.bufferedLength !== 0) {
    return violation(
      replies.length === 0 ? "the reply is incomplete" : `expected exactly one reply, found ${replies.length}`
    )
  }
  return replies[0]!
}
