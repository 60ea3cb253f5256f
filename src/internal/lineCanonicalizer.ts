/**
 * The one place that scans message bodies for line ends. Sans-IO and streaming: chunks of any size, split anywhere.
 *
 * It rewrites every line end to CRLF (a bare CR and a bare LF each become CRLF, RFC 5321 §2.3.8), optionally
 * dot-stuffs every line start (RFC 5321 §4.5.2), and measures every line against a limit (RFC 5321 §4.5.3.1.6: 998
 * octets before the CRLF). Line ends are found with the platform's native byte search (`indexOf`), so JavaScript runs
 * once per line, not once per byte; a chunk that needs no change is passed through without a copy.
 */
import { InvalidInputError } from "../SmtpError.js"

const CR = 0x0d
const LF = 0x0a
const DOT = 0x2e

/** The longest line RFC 5321 allows in a message, in octets before the CRLF. */
export const MAX_LINE_LENGTH = 998

/** Options of a canonicalizer. */
export interface CanonicalizerOptions {
  /** Double a dot at the start of every line (DATA), or not (BDAT). */
  readonly dotStuff: boolean
  /** Let lines over 998 octets through instead of failing. */
  readonly allowLongLines: boolean
}

/** The most octets `pushInto` can write for an input of `n` octets. */
export const maxOutput = (n: number): number => 2 * n + 1

/** What `push` returns: the canonical bytes of the chunk, or the error that stopped the stream. */
export type PushResult = Uint8Array | InvalidInputError

/** The streaming canonicalizer. One per message. */
export class LineCanonicalizer {
  private readonly dotStuff: boolean
  private readonly maxLineLength: number
  /** True when the next byte starts a line. */
  private atLineStart = true
  /** True when the last chunk ended in a CR, already written, whose LF is still owed. */
  private pendingCr = false
  /** Octets of the current line so far, line end excluded; and the current line's number, from 1. */
  private lineLength = 0
  private lineNumber = 1
  private failure: InvalidInputError | undefined

  constructor(options: CanonicalizerOptions) {
    this.dotStuff = options.dotStuff
    this.maxLineLength = options.allowLongLines ? Number.POSITIVE_INFINITY : MAX_LINE_LENGTH
  }

  /** Canonicalizes one chunk. Returns the chunk itself when nothing in it had to change. */
  push(input: Uint8Array): PushResult {
    const result = this.scan(input, undefined, 0)
    return typeof result === "number" ? input : result
  }

  /**
   * Canonicalizes one chunk into `target` from `at`, always copying, and returns where the output ends. `target`
   * must have room for the worst case, `2 * input.length + 1` octets (see `maxOutput`): the caller owns the buffer
   * and may reuse it once the bytes are written, so a stream of any length allocates nothing per chunk.
   */
  pushInto(input: Uint8Array, target: Buffer, offset: number): number | InvalidInputError {
    return this.scan(input, target, offset)
  }

  /**
   * The one scanning loop. Without a target, the output is allocated at the first change and `scan` returns it, or
   * -1 when nothing changed; with a target, it writes there from `offset` and returns the end offset.
   */
  private scan(input: Uint8Array, target: Buffer, offset: number): number | InvalidInputError
  private scan(input: Uint8Array, target: undefined, offset: 0): Buffer | -1 | InvalidInputError
  private scan(input: Uint8Array, target: Buffer | undefined, offset: number): Buffer | number | InvalidInputError {
    if (this.failure !== undefined) return this.failure
    // A Buffer view (no copy) gives the native `indexOf` and `copy`, which beat their TypedArray twins here.
    const chunk = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.length)
    const n = chunk.length
    // Each input octet yields at most two output octets (a line end becomes CRLF, or a leading dot is doubled), plus
    // the LF owed from the previous chunk.
    let out: Buffer | undefined = target
    let written = offset
    let copied = 0
    const insert = (at: number, byte: number): void => {
      if (out === undefined) out = Buffer.allocUnsafe(maxOutput(n))
      if (at > copied) written += chunk.copy(out, written, copied, at)
      out[written++] = byte
      copied = at
    }
    let p = 0
    if (this.pendingCr) {
      this.pendingCr = false
      if (n > 0 && chunk[0] === LF) p = 1
      else insert(0, LF)
    }
    let nextCr = chunk.indexOf(CR, p)
    let nextLf = chunk.indexOf(LF, p)
    while (true) {
      if (this.atLineStart && p < n) {
        this.atLineStart = false
        if (this.dotStuff && chunk[p] === DOT) insert(p, DOT)
      }
      const end = nextCr === -1 ? nextLf : nextLf === -1 ? nextCr : nextCr < nextLf ? nextCr : nextLf
      if (end === -1) {
        this.lineLength += n - p
        if (this.lineLength > this.maxLineLength) return this.tooLong()
        break
      }
      this.lineLength += end - p
      if (this.lineLength > this.maxLineLength) return this.tooLong()
      if (chunk[end] === CR) {
        if (end + 1 === n) {
          this.pendingCr = true
          p = n
        } else if (chunk[end + 1] === LF) {
          p = end + 2
        } else {
          insert(end + 1, LF)
          p = end + 1
        }
      } else {
        insert(end, CR)
        p = end + 1
      }
      this.atLineStart = true
      this.lineLength = 0
      this.lineNumber++
      if (nextCr !== -1 && nextCr < p) nextCr = chunk.indexOf(CR, p)
      if (nextLf !== -1 && nextLf < p) nextLf = chunk.indexOf(LF, p)
    }
    if (out === undefined) return -1
    if (n > copied) written += chunk.copy(out, written, copied, n)
    return target === undefined ? out.subarray(0, written) : written
  }

  /**
   * Ends the stream: returns the bytes that close the last line (the LF owed to a final CR, or a CRLF when the body
   * did not end with a line end), or nothing when it ended at a line start.
   */
  end(): Uint8Array | InvalidInputError {
    if (this.failure !== undefined) return this.failure
    if (this.pendingCr) {
      this.pendingCr = false
      this.atLineStart = true
      return LF_ONLY
    }
    if (this.atLineStart) return EMPTY
    this.atLineStart = true
    return CRLF
  }

  private tooLong(): InvalidInputError {
    this.failure = new InvalidInputError({
      field: "message body",
      reason: `line ${this.lineNumber} is longer than ${MAX_LINE_LENGTH} octets, the most SMTP allows ` +
        "(RFC 5321 §4.5.3.1.6); wrap it, encode the body (quoted-printable or base64), or allow long lines"
    })
    return this.failure
  }
}

const EMPTY = new Uint8Array(0)
const LF_ONLY = new Uint8Array([LF])
const CRLF = new Uint8Array([CR, LF])
