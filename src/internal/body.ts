/**
 * The one place that walks a message body, whatever it was given as: bytes, a string, a `Stream`, or a reader
 * (`SmtpSubmission.ReaderBody`, a file among them).
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import type * as SmtpSubmission from "../SmtpSubmission.js"

/** The most a reader body is read at a time, into one buffer per body, reused for every read. */
export const READ_SIZE = 256 * 1024

const utf8 = new TextEncoder()

export const ReaderBodyTypeId: SmtpSubmission.ReaderBodyTypeId = Symbol.for(
  "effect-smtp/SmtpConnection/ReaderBody"
) as SmtpSubmission.ReaderBodyTypeId

/** True for a body made by `SmtpSubmission.readerBody` or `SmtpSubmission.fileBody`. */
export const isReaderBody = (u: unknown): u is SmtpSubmission.ReaderBody<unknown, unknown> =>
  typeof u === "object" && u !== null && ReaderBodyTypeId in u

/** True for a body given as bytes or a string: in memory, needing no effect to read. */
export const isInMemory = <E, R>(body: SmtpSubmission.Body<E, R>): body is Uint8Array | string =>
  typeof body === "string" || body instanceof Uint8Array

/** The body as one array when it is already in memory, else undefined. */
export const inMemory = <E, R>(body: SmtpSubmission.Body<E, R>): Uint8Array | undefined =>
  typeof body === "string" ? utf8.encode(body) : body instanceof Uint8Array ? body : undefined

/**
 * Hands every chunk of the body to `f`, in order, with backpressure: the next chunk is read only when `f` is done.
 * A chunk is only lent: a reader body's chunks are views of one buffer that the next read overwrites, so `f` must
 * copy or write out what it keeps.
 */
export const forEachChunk = <E, R, E2, R2>(
  body: SmtpSubmission.Body<E, R>,
  f: (chunk: Uint8Array) => Effect.Effect<void, E2, R2>
): Effect.Effect<void, E | E2, R | R2> => {
  const bytes = inMemory(body)
  if (bytes !== undefined) return f(bytes)
  if (!isReaderBody(body)) {
    // By chunk, not by element: `runForEach` costs more per element, and a body's chunks are mostly singletons.
    return Stream.runForEachChunk(
      body as Stream.Stream<Uint8Array, E, R>,
      (chunk) => chunk.length === 1 ? f(Chunk.unsafeGet(chunk, 0)) : Effect.forEach(chunk, f, { discard: true })
    )
  }
  const reader = body as SmtpSubmission.ReaderBody<E, R>
  return Effect.scoped(Effect.flatMap(reader.open, (read) => {
    // A small file gets a small buffer; one that grew since its size was taken just takes more reads.
    const buffer = Buffer.allocUnsafe(Math.min(READ_SIZE, Math.max(4096, (reader.size ?? READ_SIZE) + 1)))
    let done = false
    return Effect.whileLoop({
      while: () => !done,
      body: () =>
        Effect.flatMap(read(buffer), (n) => {
          if (n <= 0) {
            done = true
            return Effect.void
          }
          return f(buffer.subarray(0, Math.min(n, buffer.length)))
        }),
      step: () => {}
    })
  }))
}
