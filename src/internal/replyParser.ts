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

const decoder = new TextDecoder("utf-8")

/** Matches an RFC 3463 enhanced status code at the start of a line's text, with the space after it. */
const ENHANCED_CODE = /^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)/

/** The default bounds; see `ParserOptions`. */
export const defaults = {
  maxLineLength: 8192,
  maxLines: 1000,
  maxReplyLength: 65536
} as const

const noReplies: ReadonlyArray<SmtpReplyType> = []

const isDigit = (byte: number | undefined): boolean => byte !== undefined && byte >= DIGIT_0 && byte <= DIGIT_9

/** Builds the reply from its code and raw text lines, taking the enhanced status code from the lines that carry it. */
const finishReply = (code: number, texts: ReadonlyArray<string>): SmtpReply => {
  const classDigit = String(Math.floor(code / 100))
  let enhancedCode: string | undefined
  const lines = texts.map((text, i) => {
    const match = ENHANCED_CODE.exec(text)
    if (match === null || match[1] !== classDigit) return text
    if (i === 0) enhancedCode = `${match[1]}.${match[2]}.${match[3]}`
    return text.slice(match[0].length)
  })
  return new SmtpReply({ code, enhancedCode, lines })
}

interface LineOutcome {
  readonly reply?: SmtpReply
  readonly error?: SmtpProtocolError
}

const violation = (reason: string): SmtpProtocolError => new SmtpProtocolError({ reason })

const describeLine = (line: Uint8Array): string => {
  const shown = JSON.stringify(decoder.decode(line.subarray(0, 40)))
  return line.length > 40 ? `${shown}…` : shown
}

/**
 * The parser's state machine. One instance per connection; `push` may be called with any chunking of the stream.
 */
class ReplyParserImpl {
  private readonly maxLineLength: number
  private readonly maxLines: number
  private readonly maxReplyLength: number
  /** Pieces of the current line that arrived in earlier chunks, and their total length. */
  private pending: Array<Uint8Array> = []
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

  readonly push = (chunk: Uint8Array): ParseStep => {
    if (this.failure !== undefined) return { replies: noReplies, error: this.failure }
    let replies: Array<SmtpReply> | undefined
    let position = 0
    while (position < chunk.length) {
      const lf = chunk.indexOf(LF, position)
      if (lf === -1) {
        const rest = chunk.length - position
        // A line that is already too long fails now instead of when its end arrives, so it never grows unbounded.
        if (this.pendingLength + rest > this.maxLineLength + 1) {
          return this.fail(replies, `a line is longer than ${this.maxLineLength} octets`)
        }
        this.pending.push(chunk.slice(position))
        this.pendingLength += rest
        break
      }
      let line: Uint8Array
      if (this.pendingLength === 0) {
        line = chunk.subarray(position, lf)
      } else {
        line = new Uint8Array(this.pendingLength + lf - position)
        let offset = 0
        for (const piece of this.pending) {
          line.set(piece, offset)
          offset += piece.length
        }
        line.set(chunk.subarray(position, lf), offset)
        this.pending = []
        this.pendingLength = 0
      }
      const lineEndLength = line.length > 0 && line[line.length - 1] === CR ? 2 : 1
      const outcome = this.line(line.subarray(0, line.length + 1 - lineEndLength), lineEndLength)
      if (outcome.error !== undefined) return this.fail(replies, outcome.error)
      if (outcome.reply !== undefined) {
        if (replies === undefined) replies = []
        replies.push(outcome.reply)
      }
      position = lf + 1
    }
    return { replies: replies ?? noReplies, error: undefined }
  }

  private fail(replies: ReadonlyArray<SmtpReply> | undefined, reason: string | SmtpProtocolError): ParseStep {
    this.failure = typeof reason === "string" ? violation(reason) : reason
    this.pending = []
    this.pendingLength = 0
    this.code = 0
    this.texts = []
    this.replyLength = 0
    return { replies: replies ?? noReplies, error: this.failure }
  }

  /** Handles one line without its line end. */
  private line(line: Uint8Array, lineEndLength: number): LineOutcome {
    if (line.length > this.maxLineLength) {
      return { error: violation(`a line is longer than ${this.maxLineLength} octets`) }
    }
    const d0 = line[0], d1 = line[1], d2 = line[2], separator = line[3]
    if (!isDigit(d0) || !isDigit(d1) || !isDigit(d2)) {
      return { error: violation(`a reply line must start with a three-digit code, got ${describeLine(line)}`) }
    }
    const code = (d0! - DIGIT_0) * 100 + (d1! - DIGIT_0) * 10 + (d2! - DIGIT_0)
    if (code < 200 || code > 599) {
      return { error: violation(`reply code ${code} is outside 200–599`) }
    }
    if (separator !== undefined && separator !== SPACE && separator !== HYPHEN) {
      return { error: violation(`a reply code must be followed by a space or a hyphen, got ${describeLine(line)}`) }
    }
    if (this.code !== 0 && code !== this.code) {
      return { error: violation(`reply code changed from ${this.code} to ${code} within one reply`) }
    }
    this.code = code
    this.replyLength += line.length + lineEndLength
    if (this.replyLength > this.maxReplyLength) {
      return { error: violation(`a reply is longer than ${this.maxReplyLength} octets`) }
    }
    if (this.texts.length >= this.maxLines) {
      return { error: violation(`a reply has more than ${this.maxLines} lines`) }
    }
    this.texts.push(line.length > 4 ? decoder.decode(line.subarray(4)) : "")
    if (separator === HYPHEN) return {}
    const reply = finishReply(code, this.texts)
    this.code = 0
    this.texts = []
    this.replyLength = 0
    return { reply }
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
