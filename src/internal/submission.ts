/**
 * The driver of the submission engine (`engine.ts`): a loop that does what the machine asks. It writes what the
 * machine queued, reads the reply it awaits (bounded by that phase's timeout), pulls the body it wants, and hands
 * each result on in order. Every protocol decision is the machine's; this module only does the I/O.
 */
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Capabilities from "../Capabilities.js"
import type { NetworkError, SmtpProtocolError, TimeoutError } from "../SmtpError.js"
import type * as SmtpReply from "../SmtpReply.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import type { Phase } from "../SmtpTimeouts.js"
import * as Body from "./body.js"
import * as Engine from "./engine.js"

/** What the driver needs of the connection. */
export interface Session {
  readonly capabilities: () => Capabilities.Capabilities
  readonly secure: Effect.Effect<boolean>
  readonly lmtp: boolean
  readonly write: (chunks: ReadonlyArray<Uint8Array>) => Effect.Effect<void, NetworkError | TimeoutError>
  readonly readReply: (
    phase: Phase,
    verb: string,
    mayHaveBeenDelivered: boolean
  ) => Effect.Effect<SmtpReply.SmtpReply, NetworkError | TimeoutError | SmtpProtocolError>
  /**
   * A reply already read and parsed, taken without an effect; undefined when the next one must be waited for
   * (`readReply`). Most replies of a pipelined batch arrive together, so most are taken here.
   */
  readonly readParsed: () => SmtpReply.SmtpReply | undefined
  /**
   * Fails when the server sent anything that no command awaits (a reply already read, or bytes received and not
   * read): checked before a write when every reply due is in.
   */
  readonly expectSilence: Effect.Effect<void, SmtpProtocolError>
  /** Notes a line the client sent in the transcript (published before the next write). */
  readonly note: (line: string) => void
  /** Closes the connection after `error`, which leaves the session out of step: never reused, no QUIT. */
  readonly breakConnection: (error: Engine.Fatal) => Effect.Effect<void>
  /** The error further use gets, once the connection is closed. */
  readonly broken: () => NetworkError | undefined
  /** The machine running on the connection now, so that an interruption knows whether QUIT is legal. */
  readonly track: (engine: Engine.Engine<unknown, unknown>) => void
  /**
   * The machine stopped. Had it stopped midway (a defect, an interruption), the connection is retired: closed at once
   * inside a body, else left to its release, which says QUIT after the replies the machine was still owed.
   */
  readonly untrack: Effect.Effect<void>
  /**
   * The connection's block of `BODY_BLOCK_SIZE` octets for streamed bodies, made at first use and kept for its life:
   * free whenever no batch runs.
   */
  readonly bodyBlock: () => Buffer
}

/** A message's result, with its key and whether nothing of it reached the server (see `Engine.Hooks`). */
export interface Outcome<K, E> {
  readonly key: K
  readonly result: Engine.Result<E>
  readonly untouched: boolean
}

/** Results of the batch, handed on in order. */
type Emit<K, E> = (outcome: Outcome<K, E>) => Effect.Effect<void>

/** Thrown into a body's walk (as a failure) to stop it once the machine no longer wants it. */
const STOP: unique symbol = Symbol("effect-smtp/Submission/stop")

/**
 * Runs the machine until it asks for a submission it has none for, or is done: the one place that turns the machine's
 * steps into I/O. A broken session is closed here, whatever broke it.
 */
const drive = <K, E, R>(
  session: Session,
  engine: Engine.Engine<K, E>,
  results: Array<Outcome<K, E>>,
  emit: Emit<K, E>
): Effect.Effect<"accept" | "idle" | "broken", never, R> => {
  const flushResults: Effect.Effect<void> = Effect.suspend(() => {
    if (results.length === 0) return Effect.void
    if (results.length === 1) return emit(results.pop()!)
    const ready = results.splice(0, results.length)
    return Effect.forEach(ready, emit, { discard: true })
  })
  const failed = (error: Engine.Fatal) => Effect.sync(() => engine.fail(error))
  const write: Effect.Effect<void> = Effect.suspend(() => {
    const check = engine.quiet ? session.expectSilence : Effect.void
    return check.pipe(
      Effect.zipRight(Effect.suspend(() => session.write(engine.takeOutput()))),
      Effect.matchEffect({ onFailure: failed, onSuccess: () => Effect.sync(() => engine.written()) })
    )
  })
  const read: Effect.Effect<void> = Effect.suspend(() => {
    const ready = session.readParsed()
    if (ready !== undefined) return Effect.sync(() => engine.reply(ready))
    const awaited = engine.awaited()
    return Effect.matchEffect(session.readReply(awaited.phase, awaited.verb, awaited.mayHaveBeenDelivered), {
      onFailure: failed,
      onSuccess: (reply) => Effect.sync(() => engine.reply(reply))
    })
  })
  /** Writes and reads until the machine wants more of the body (true), or something else (false). */
  const serve: Effect.Effect<boolean> = Effect.suspend(() => {
    const step = engine.next()
    if (step === "write") return Effect.zipRight(write, serve)
    if (step === "read") return Effect.zipRight(read, serve)
    return Effect.succeed(step === "body")
  })
  const body = Effect.suspend(() => {
    const piece = (chunk: Uint8Array, from: number): Effect.Effect<void, typeof STOP> => {
      const at = engine.bodyChunk(chunk, from)
      if (at < chunk.length && engine.broken === undefined) {
        // The block was full: what it held goes out (and, without PIPELINING, its chunk is answered) before the rest
        // of the chunk follows.
        return Effect.flatMap(write, () => Effect.flatMap(serve, (more) => more ? piece(chunk, at) : Effect.fail(STOP)))
      }
      return Effect.flatMap(serve, (more) => more ? Effect.void : Effect.fail(STOP))
    }
    return Body.forEachChunk(engine.wantedBody() as SmtpSubmission.Body<E, R>, (chunk) => piece(chunk, 0)).pipe(
      Effect.matchCauseEffect({
        onSuccess: () => Effect.sync(() => engine.bodyEnd()),
        onFailure: (cause) => {
          if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause as Cause.Cause<never>)
          const failure = Cause.failureOption(cause)
          if (Option.isSome(failure) && failure.value === STOP) return Effect.void
          // The body's own failure, or its defect: either way it cannot go on. The machine decides what that means
          // for the session; a defect still dies, once the connection is left safe (the loop closes it otherwise).
          if (Option.isSome(failure)) return Effect.sync(() => engine.bodyFailed(failure.value))
          engine.bodyFailed(Cause.squash(cause))
          const broken = engine.broken
          const closed = broken === undefined ? Effect.void : session.breakConnection(broken)
          return Effect.zipRight(closed, Effect.failCause(cause as Cause.Cause<never>))
        }
      })
    )
  })
  const loop: Effect.Effect<"accept" | "idle" | "broken", never, R> = Effect.suspend(() => {
    let step = engine.next()
    while (step === "read") {
      const ready = session.readParsed()
      if (ready === undefined) break
      engine.reply(ready)
      step = engine.next()
    }
    let next: Effect.Effect<void, never, R>
    switch (step) {
      case "write":
        next = write
        break
      case "read":
        next = read
        break
      case "body":
        next = body
        break
      case "broken":
        return Effect.as(Effect.zipRight(flushResults, session.breakConnection(engine.broken!)), step)
      default:
        return Effect.as(flushResults, step)
    }
    return results.length === 0
      ? Effect.zipRight(next, loop)
      : Effect.zipRight(Effect.zipRight(flushResults, next), loop)
  })
  return loop
}

/** A machine for the session, tracked by it; its results are gathered into `results` for the driver to hand on. */
const start = <K, E>(
  session: Session,
  secure: boolean,
  window: number,
  options: SmtpSubmission.SendAllOptions,
  results: Array<Outcome<K, E>>
): Engine.Engine<K, E> => {
  const engine = new Engine.Engine<K, E>(
    { capabilities: session.capabilities(), secure, lmtp: session.lmtp, window, options, block: session.bodyBlock },
    { note: session.note, result: (key, result, untouched) => void results.push({ key, result, untouched }) }
  )
  session.track(engine as Engine.Engine<unknown, unknown>)
  return engine
}

/**
 * Where `run` takes its messages from. The key of each is what its result comes back with.
 */
export interface Feed<K extends SmtpSubmission.Submission<E, R>, E, R, R2> {
  /** The next message when one is ready now, else undefined. */
  readonly poll: () => K | undefined
  /** True when another message is ready now (the one `poll` would give next). */
  readonly ready: () => boolean
  /**
   * Waits until `poll` may give more; false when no more will come. Called only when every message sent is answered,
   * so that no result waits on a message that has not come yet.
   */
  readonly wait: Effect.Effect<boolean, never, R2>
}

/**
 * Runs messages from `feed` on a session held for the whole run, reporting each result in order through `emit`. Ends
 * when the feed has no more (after a RSET of any transaction the server may still hold), or with the error that broke
 * the session: the messages still in the feed are then the caller's.
 */
export const run = <K extends SmtpSubmission.Submission<E, R>, E, R, R2>(
  session: Session,
  feed: Feed<K, E, R, R2>,
  options: SmtpSubmission.SendAllOptions,
  emit: Emit<K, E>
): Effect.Effect<Engine.Fatal | undefined, never, R | R2> =>
  Effect.flatMap(session.secure, (secure) => {
    const results: Array<Outcome<K, E>> = []
    const engine = start<K, E>(session, secure, Math.max(1, options.window ?? 16), options, results)
    const closed = session.broken()
    if (closed !== undefined) engine.fail(closed)
    const driven = drive<K, E, R>(session, engine, results, emit)
    let ended = false
    const loop: Effect.Effect<Engine.Fatal | undefined, never, R | R2> = Effect.flatMap(driven, (step) => {
      if (step === "broken") return Effect.succeed(session.broken() ?? engine.broken)
      if (step === "accept") {
        const next = ended ? undefined : feed.poll()
        if (next === undefined) engine.drain(ended)
        else engine.submit(next, next as SmtpSubmission.Submission<unknown, unknown>, feed.ready())
        return loop
      }
      // Idle: everything sent is answered.
      if (ended) return Effect.succeed(undefined)
      return Effect.flatMap(feed.wait, (more) => {
        if (!more) {
          ended = true
          engine.drain(true)
        }
        return loop
      })
    })
    return Effect.ensuring(loop, session.untrack)
  })

/**
 * A body sent by hand after the caller's own MAIL and RCPT (`SmtpConnection.data`, `bdat`), through the same machine:
 * its result once every reply it is owed is in.
 */
export const runHandFed = <E, R>(
  session: Session,
  secure: boolean,
  method: "DATA" | "BDAT",
  body: SmtpSubmission.Body<E, R>,
  accepted: ReadonlyArray<SmtpSubmission.AcceptedRecipient>,
  settings: { readonly allowLongLines: boolean; readonly binary: boolean; readonly last: boolean }
): Effect.Effect<Engine.Result<E>, never, R> =>
  Effect.suspend(() => {
    const results: Array<Outcome<undefined, E>> = []
    let outcome: Engine.Result<E> | undefined
    const engine = start<undefined, E>(session, secure, 1, {}, results)
    engine.submitHandFed(undefined, method, body as SmtpSubmission.Body<unknown, unknown>, accepted, settings)
    // Every reply it is owed is read before it returns, even one that comes after its result (the end of an empty
    // DATA): the session stays in step.
    engine.drain(false)
    return drive<undefined, E, R>(session, engine, results, (done) => Effect.sync(() => void (outcome = done.result)))
      .pipe(
        Effect.map(() => outcome!),
        Effect.ensuring(session.untrack)
      )
  })

/** True for a Stream of submissions, false for an iterable. */
export const isStream = <A, R>(u: Iterable<A> | Stream.Stream<A, never, R>): u is Stream.Stream<A, never, R> =>
  Predicate.hasProperty(u, Stream.StreamTypeId)

/**
 * A feed from an iterable (one batch) or a stream (a batch per chunk): `sendAll`'s. The messages of a chunk are
 * pipelined together; the next chunk is pulled once they are answered.
 */
export const feed = <E, R, R2>(
  submissions:
    | Iterable<SmtpSubmission.Submission<E, R>>
    | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>
): Effect.Effect<Feed<SmtpSubmission.Submission<E, R>, E, R, R2>, never, R2 | Scope.Scope> => {
  let batch: ReadonlyArray<SmtpSubmission.Submission<E, R>> = []
  let at = 0
  const poll = () => at < batch.length ? batch[at++] : undefined
  const ready = () => at < batch.length
  if (!isStream(submissions)) {
    return Effect.sync(() => {
      batch = Array.from(submissions)
      return { poll, ready, wait: Effect.succeed(false) }
    })
  }
  return Effect.map(Stream.toPull(submissions), (pull) => ({
    poll,
    ready,
    wait: pull.pipe(
      Effect.map((chunk) => {
        batch = Chunk.toReadonlyArray(chunk)
        at = 0
        return true
      }),
      Effect.catchAll(() => Effect.succeed(false))
    )
  }))
}
