/**
 * A connection's transcript: the last lines kept for a late subscriber, and every new line handed to each
 * subscriber's queue as it is noted, without running an effect. A line costs an array push and one offer per
 * subscriber, so a busy connection pays next to nothing for a transcript nobody reads.
 */
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import type * as SmtpConnection from "../SmtpConnection.js"
import { END, untilEnd } from "./queueStream.js"

/** A transcript that keeps the last `replay` lines. */
export interface Transcript {
  /** Notes a line: kept, and handed to every subscriber at once. */
  readonly add: (entry: SmtpConnection.TranscriptEntry) => void
  /** The kept lines, then every new one; ends once the transcript is closed. */
  readonly stream: Stream.Stream<SmtpConnection.TranscriptEntry>
  /** Ends every subscriber's stream after the lines it has not read yet. */
  readonly close: Effect.Effect<void>
}

/** The most lines a subscriber takes at once. */
const TAKE_AT_ONCE = 1024

export const make = (replay: number): Transcript => {
  let kept: Array<SmtpConnection.TranscriptEntry> = []
  const subscribers = new Set<Queue.Queue<SmtpConnection.TranscriptEntry | typeof END>>()
  let closed = false
  return {
    add: (entry) => {
      kept.push(entry)
      // Trimmed in batches, so that keeping the last lines costs no copy per line.
      if (kept.length >= 2 * replay) kept = kept.slice(kept.length - replay)
      for (const subscriber of subscribers) subscriber.unsafeOffer(entry)
    },
    stream: Stream.unwrapScoped(
      Effect.acquireRelease(
        Effect.tap(Queue.unbounded<SmtpConnection.TranscriptEntry | typeof END>(), (queue) =>
          Effect.sync(() => {
            for (const entry of kept.slice(-replay)) queue.unsafeOffer(entry)
            if (closed) queue.unsafeOffer(END)
            else subscribers.add(queue)
          })),
        (queue) => Effect.zipRight(Effect.sync(() => subscribers.delete(queue)), Queue.shutdown(queue))
      ).pipe(Effect.map((queue) => untilEnd(queue, TAKE_AT_ONCE)))
    ),
    close: Effect.sync(() => {
      closed = true
      for (const subscriber of subscribers) subscriber.unsafeOffer(END)
      subscribers.clear()
    })
  }
}
