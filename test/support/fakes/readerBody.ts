import * as Effect from "effect/Effect"
import * as SmtpSubmission from "../../../src/SmtpSubmission.js"

/**
 * A reader body over `bytes`: each open starts from the beginning (and calls `onOpen`), and each read hands out the
 * next of `sizes` in turn (all that fits, by default), never more than it is asked.
 */
export const readerOver = (
  bytes: Uint8Array,
  options: {
    readonly sizes?: ReadonlyArray<number>
    readonly size?: number
    readonly onOpen?: () => void
  } = {}
): SmtpSubmission.ReaderBody =>
  SmtpSubmission.readerBody({
    size: options.size,
    open: Effect.sync(() => {
      options.onOpen?.()
      const sizes = options.sizes ?? [Number.POSITIVE_INFINITY]
      let at = 0
      let i = 0
      return (buffer: Uint8Array) =>
        Effect.sync(() => {
          const n = Math.min(sizes[i++ % sizes.length]!, buffer.length, bytes.length - at)
          buffer.set(bytes.subarray(at, at + n))
          at += n
          return n
        })
    })
  })
