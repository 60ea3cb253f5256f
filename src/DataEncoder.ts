/**
 * The DATA body encoder (RFC 5321 §4.1.1.4, §4.5.2): a streaming transform from message bytes, in chunks of any size
 * split anywhere, to what goes on the wire after the 354 reply. Every line end becomes CRLF (a bare CR or bare LF
 * cannot end the message early: no "SMTP smuggling"), every line start is dot-stuffed, lines over 998 octets fail
 * unless allowed, and the stream ends with exactly one `CRLF.CRLF`.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import { LineCanonicalizer, MAX_LINE_LENGTH } from "./internal/lineCanonicalizer.js"
import type { InvalidInputError } from "./SmtpError.js"

/**
 * The longest line SMTP allows, in octets before the CRLF (RFC 5321 §4.5.3.1.6).
 *
 * @since 0.1.0
 * @category constants
 */
export const maxLineLength: number = MAX_LINE_LENGTH

/**
 * Options of the DATA and BDAT encoders.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * Let lines over 998 octets through. Off by default: such a message fails with an `InvalidInputError` before its
   * end-of-data is sent, so no server can accept it and then truncate or bounce it.
   */
  readonly allowLongLines?: boolean | undefined
}

/**
 * A streaming DATA encoder: `push` each chunk and write what it returns, then write what `end` returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface DataEncoder {
  /** Encodes one chunk; returns the chunk itself when it needed no change. */
  readonly push: (chunk: Uint8Array) => Either.Either<Uint8Array, InvalidInputError>
  /** Closes the last line if it was open and returns the terminating `.CRLF`. */
  readonly end: () => Either.Either<Uint8Array, InvalidInputError>
}

const TERMINATOR = new Uint8Array([0x2e, 0x0d, 0x0a])

const toEither = (result: Uint8Array | InvalidInputError): Either.Either<Uint8Array, InvalidInputError> =>
  result instanceof Uint8Array ? Either.right(result) : Either.left(result)

/**
 * Creates a DATA encoder for one message.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): DataEncoder => {
  const lines = new LineCanonicalizer({ dotStuff: true, allowLongLines: options.allowLongLines ?? false })
  return {
    push: (chunk) => toEither(lines.push(chunk)),
    end: () =>
      Either.map(toEither(lines.end()), (close) => {
        const out = new Uint8Array(close.length + TERMINATOR.length)
        out.set(close, 0)
        out.set(TERMINATOR, close.length)
        return out
      })
  }
}

/**
 * Encodes a whole message at once: a convenience over `make` for bodies already in memory.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encode = (
  body: Uint8Array | string,
  options: Options = {}
): Either.Either<Uint8Array, InvalidInputError> => {
  const encoder = make(options)
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body
  return Either.flatMap(encoder.push(bytes), (encoded) =>
    Either.map(encoder.end(), (tail) => {
      const out = new Uint8Array(encoded.length + tail.length)
      out.set(encoded, 0)
      out.set(tail, encoded.length)
      return out
    }))
}
