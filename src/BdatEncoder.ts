/**
 * The BDAT framer (RFC 3030 CHUNKING): cuts a message stream into chunks, each announced by `BDAT <size>` and the
 * last by `BDAT <size> LAST`. No dot-stuffing and no terminator: the size says where the data ends. Text bodies are
 * still brought to canonical CRLF with the 998-octet line rule, so a message arrives the same over DATA and BDAT;
 * binary bodies (BODY=BINARYMIME) pass through untouched.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import type * as DataEncoder from "./DataEncoder.js"
import { LineCanonicalizer } from "./internal/lineCanonicalizer.js"
import * as SmtpCommand from "./SmtpCommand.js"
import type { InvalidInputError } from "./SmtpError.js"

/**
 * Options of the BDAT framer.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options extends DataEncoder.Options {
  /** Gather at least this many octets before a chunk is cut (the last chunk may be smaller). Default 128 KiB. */
  readonly chunkSize?: number | undefined
  /** Send the body exactly as given, for BODY=BINARYMIME. Default false: text, canonicalized. */
  readonly binary?: boolean | undefined
}

/**
 * One BDAT chunk: its command and the data that follows it, as pieces to write in order.
 *
 * @since 0.1.0
 * @category models
 */
export interface Chunk {
  /** The `BDAT <size> [LAST]` command. */
  readonly command: SmtpCommand.SmtpCommand
  /** The data, `size` octets in all. */
  readonly data: ReadonlyArray<Uint8Array>
}

/**
 * A streaming BDAT framer: `push` each chunk of the message and send the chunks it returns, then those of `end`.
 *
 * @since 0.1.0
 * @category models
 */
export interface BdatEncoder {
  /** Adds message bytes; returns the chunks that are now complete (often none). */
  readonly push: (bytes: Uint8Array) => Either.Either<ReadonlyArray<Chunk>, InvalidInputError>
  /** Ends the message; returns the last chunk, marked LAST. */
  readonly end: () => Either.Either<Chunk, InvalidInputError>
}

/**
 * The default least chunk size: 128 KiB.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultChunkSize = 128 * 1024

/**
 * Creates a BDAT framer for one message.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): BdatEncoder => {
  const chunkSize = Math.max(1, options.chunkSize ?? defaultChunkSize)
  const lines = options.binary === true
    ? undefined
    : new LineCanonicalizer({ dotStuff: false, allowLongLines: options.allowLongLines ?? false })
  let pieces: Array<Uint8Array> = []
  let gathered = 0
  const cut = (last: boolean): Chunk => {
    const chunk = { command: SmtpCommand.bdat(gathered, last), data: pieces }
    pieces = []
    gathered = 0
    return chunk
  }
  const gather = (bytes: Uint8Array): void => {
    if (bytes.length === 0) return
    pieces.push(bytes)
    gathered += bytes.length
  }
  return {
    push: (bytes) => {
      const canonical = lines === undefined ? bytes : lines.push(bytes)
      if (!(canonical instanceof Uint8Array)) return Either.left(canonical)
      gather(canonical)
      return Either.right(gathered >= chunkSize ? [cut(false)] : [])
    },
    end: () => {
      const close = lines === undefined ? undefined : lines.end()
      if (close !== undefined && !(close instanceof Uint8Array)) return Either.left(close)
      if (close !== undefined) gather(close)
      return Either.right(cut(true))
    }
  }
}
