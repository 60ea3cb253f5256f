/**
 * A queue read as a stream up to an end marker: how a producing fiber hands its elements to a stream's reader
 * (`sendAll`'s results, a transcript's lines) without a `Take` per element or a stage per chunk.
 */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"

/** What follows the last element of a queue read by `untilEnd`. */
export const END: unique symbol = Symbol("effect-smtp/internal/end")

/**
 * A queue as a stream that ends after `END`: everything offered before `END` comes out, and whatever is waiting is
 * taken in one chunk (up to `max`), with no stage between the queue and the stream.
 */
export const untilEnd = <A>(queue: Queue.Dequeue<A | typeof END>, max: number): Stream.Stream<A> =>
  Stream.suspend(() => {
    let ended = false
    const pull: Effect.Effect<Chunk.Chunk<A>, Option.Option<never>> = Effect.suspend(() =>
      ended ? Effect.fail(Option.none()) : Effect.flatMap(Queue.takeBetween(queue, 1, max), (taken) => {
        if (Chunk.unsafeLast(taken) !== END) return Effect.succeed(taken as Chunk.Chunk<A>)
        ended = true
        return taken.length === 1
          ? Effect.fail(Option.none())
          : Effect.succeed(Chunk.dropRight(taken, 1) as Chunk.Chunk<A>)
      })
    )
    return Stream.repeatEffectChunkOption(pull)
  })
