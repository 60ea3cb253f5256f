/**
 * The client's connections as lanes. Every send waits in one backlog, first come, first served, and each open
 * connection takes from it into its own pipeline (the submission engine, run as `sendAll` runs it) whenever its window
 * has room. So N fibers each sending one message get the wire behaviour of `sendAll`: pipelined across transactions
 * with DATA, a window of BDAT transactions while more are waiting, each send still with its own result.
 *
 * A lane opens while sends wait, no lane is idle and fewer than `maxConnections` are open or opening. It closes (QUIT)
 * when idle too long, too old, after its quota of messages, when its health check fails, or with the client. When its
 * session breaks, the sends it had taken and not begun to write go back to the head of the backlog for another lane;
 * the others get the error (flagged when the message may have been delivered), for their retry policy to judge.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SmtpConnection from "../SmtpConnection.js"
import { NetworkError } from "../SmtpError.js"
import * as SmtpSubmission from "../SmtpSubmission.js"
import type { SmtpTransport } from "../SmtpTransport.js"
import * as Body from "./body.js"
import * as Connection from "./connection.js"
import type * as Submission from "./submission.js"

export const poolConnections = Metric.gauge("smtp_client_pool_connections", {
  description: "Connections open in the pool"
})
export const poolWaiters = Metric.gauge("smtp_client_pool_waiters", {
  description: "Sends waiting for a connection to take them"
})

/** How the lanes are run. */
export interface Settings {
  readonly connection: SmtpConnection.Options
  readonly maxConnections: number
  readonly maxMessagesPerConnection: number
  readonly maxConnectionAge: number
  readonly idleTimeout: Duration.DurationInput
  readonly healthCheck: "NOOP" | "RSET" | false
  readonly healthCheckAfter: number
  /** Transactions in flight on one connection at most. */
  readonly window: number
  /** Transactions in flight on all connections together at most, if capped. */
  readonly maxInFlight: number | undefined
  readonly sendOptions: SmtpSubmission.SendOptions | undefined
}

/** A send's outcome: its result, or the error of its transaction or of the connection it needed. */
export type Outcome = Either.Either<SmtpSubmission.SendResult, unknown>

/** A send in the backlog or on a lane: its message, and where its outcome goes. */
interface Pending extends SmtpSubmission.Submission<unknown> {
  /** The waiting send's callback, once it waits; undefined after it got its outcome or gave up. */
  resume: ((outcome: Effect.Effect<Outcome>) => void) | undefined
  /** An outcome that came before the send began to wait. */
  early: Effect.Effect<Outcome> | undefined
  done: boolean
}

interface Lane {
  readonly connection: SmtpConnection.SmtpConnection
  readonly createdAt: number
  lastUsed: number
  /** Messages taken over the lane's life. */
  taken: number
  /** Too old for more: takes nothing new. */
  expired: boolean
  /** Sends taken and not answered yet. */
  readonly riding: Set<Pending>
  /** Wakes the lane while it is parked: true for work, false to close. */
  wake: ((work: Effect.Effect<boolean>) => void) | undefined
}

/** The lanes' service: a send's outcome (it never fails), and closing every lane at once. */
export interface Lanes {
  readonly send: <E, R>(submission: SmtpSubmission.Submission<E, R>) => Effect.Effect<Outcome, never, R>
  /** Closes every lane at once, each with QUIT after the replies it is owed, bounded by its QUIT timeout. */
  readonly close: Effect.Effect<void>
}

const complete = (pending: Pending, outcome: Effect.Effect<Outcome>): void => {
  if (pending.done) return
  pending.done = true
  const resume = pending.resume
  pending.resume = undefined
  if (resume === undefined) pending.early = outcome
  else resume(outcome)
}

/** A stream or reader body read on a lane's fiber, with the services of the send that gave it. */
const withContext = <E, R>(
  body: Stream.Stream<Uint8Array, E, R> | SmtpSubmission.ReaderBody<E, R>,
  context: Context.Context<R>
): SmtpSubmission.Body<E> => {
  // The lane's own services (its Scope above all) win over the sender's.
  const merge = <I>(inner: Context.Context<I>) => Context.merge(context, inner)
  if (Body.isReaderBody(body)) {
    const reader = body as SmtpSubmission.ReaderBody<E, R>
    return SmtpSubmission.readerBody<E>({
      size: reader.size,
      open: Effect.mapInputContext(reader.open, merge<Scope.Scope>)
    })
  }
  return Stream.mapInputContext(body as Stream.Stream<Uint8Array, E, R>, merge<never>)
}

export const make = (settings: Settings): Effect.Effect<Lanes, never, Scope.Scope | SmtpTransport> =>
  Effect.gen(function*() {
    // A lane runs in the client's context (the transport, and SmtpAuth when it is there), not the sender's.
    const laneContext = Context.omit(Scope.Scope)(yield* Effect.context<SmtpTransport>())
    const backlog: Array<Pending> = []
    const lanes = new Set<Lane>()
    const parked: Array<Lane> = []
    const fibers = new Set<Fiber.RuntimeFiber<void>>()
    let opening = 0
    /**
     * Lanes open or opening at most: `maxConnections`, lowered to the lanes open when a connection is refused while
     * others work (a server's own limit), and raised again when a lane closes.
     */
    let ceiling = settings.maxConnections
    /** Sends taken by lanes and not answered, on every lane. */
    let riding = 0
    let closing = false
    const sendOptions = { ...settings.sendOptions, window: settings.window }

    const waiting = () => poolWaiters.unsafeUpdate(backlog.length, [])

    /** The lane may take one more message now. */
    const mayTake = (lane: Lane): boolean =>
      backlog.length > 0 && !closing && !lane.expired && lane.taken < settings.maxMessagesPerConnection &&
      (settings.maxInFlight === undefined || riding < settings.maxInFlight)

    /** Wakes parked lanes for the sends waiting, and opens lanes while more wait than lanes can soon take. */
    const dispatch: Effect.Effect<void> = Effect.suspend(() => {
      if (closing) return Effect.void
      let unserved = backlog.length
      while (unserved > 0 && parked.length > 0) {
        // The lane parked last: the others may idle out, which keeps as few connections open as the load needs.
        const lane = parked.pop()!
        const wake = lane.wake!
        lane.wake = undefined
        wake(Effect.succeed(true))
        unserved--
      }
      let opened: Effect.Effect<void> = Effect.void
      while (unserved > opening && lanes.size + opening < ceiling) {
        opening++
        opened = Effect.zipRight(opened, Effect.asVoid(start))
      }
      return opened
    })

    /** Gives back sends a broken lane took but never began to write: first in line, in their order. */
    const requeue = (sends: ReadonlyArray<Pending>) => {
      const live = sends.filter((p) => !p.done)
      if (live.length === 0) return
      backlog.unshift(...live)
      waiting()
    }

    /** Parks the lane until there is work (true), or until it has been idle `idleTimeout` (false). */
    const park = (lane: Lane): Effect.Effect<boolean> =>
      Effect.async<boolean>((resume) => {
        // Work that came since the lane last looked (a send whose result it just gave may already have sent another).
        if (mayTake(lane)) return resume(Effect.succeed(true))
        lane.wake = resume
        parked.push(lane)
        return Effect.sync(() => {
          lane.wake = undefined
          const at = parked.indexOf(lane)
          if (at >= 0) parked.splice(at, 1)
        })
      }).pipe(Effect.timeoutTo({ duration: settings.idleTimeout, onTimeout: () => false, onSuccess: (work) => work }))

    /** Runs the lane's pipeline until it has nothing ready; the error that broke it, if one did. */
    const run = (lane: Lane) => {
      const untouched: Array<Pending> = []
      const feed: Submission.Feed<Pending, unknown, never, never> = {
        poll: () => {
          if (!mayTake(lane)) return undefined
          const pending = backlog.shift()!
          waiting()
          lane.taken++
          lane.riding.add(pending)
          riding++
          return pending
        },
        ready: () => mayTake(lane),
        wait: Effect.sync(() => mayTake(lane))
      }
      // Called as the driver hands results on, inside its effects: the work is done at once, and a send's result
      // costs no effect of its own.
      const emit = ({ key, result, untouched: unsent }: Submission.Outcome<Pending, unknown>): Effect.Effect<void> => {
        lane.riding.delete(key)
        riding--
        if (unsent && Either.isLeft(result)) {
          untouched.push(key)
          return Effect.void
        }
        complete(key, Effect.succeed(result))
        return settings.maxInFlight === undefined ? Effect.void : dispatch
      }
      return Connection.serve(lane.connection, feed, sendOptions, emit).pipe(
        Effect.ensuring(Effect.sync(() => requeue(untouched)))
      )
    }

    const loop = (lane: Lane): Effect.Effect<void> =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        lane.expired = now - lane.createdAt >= settings.maxConnectionAge
        if (closing || lane.expired || lane.taken >= settings.maxMessagesPerConnection) return Effect.void
        if (!mayTake(lane)) return Effect.flatMap(park(lane), (work) => work ? loop(lane) : Effect.void)
        // Idle a while: the server may have closed the connection (RFC 5321 §4.5.3.2.7 lets it), so ask first.
        const check = settings.healthCheck !== false && now - lane.lastUsed >= settings.healthCheckAfter
          ? Effect.isSuccess(settings.healthCheck === "NOOP" ? lane.connection.noop() : lane.connection.rset)
          : Effect.succeed(true)
        return Effect.flatMap(check, (fit) =>
          !fit
            ? Effect.void
            : Effect.flatMap(run(lane), (broken) =>
              Effect.flatMap(Clock.currentTimeMillis, (done) => {
                lane.lastUsed = done
                return broken === undefined ? loop(lane) : Effect.void
              })))
      })

    /** Fails every waiting send when no lane is left to take them: the connection they need could not be made. */
    const connectFailed = (cause: Cause.Cause<unknown>) =>
      Effect.suspend(() => {
        if (lanes.size > 0) ceiling = Math.max(1, lanes.size)
        if (lanes.size > 0 || opening > 0) return Effect.void
        const outcome = Cause.isFailType(cause)
          ? Effect.succeed(Either.left(cause.error))
          : Effect.failCause(cause as Cause.Cause<never>)
        const failed = backlog.splice(0, backlog.length)
        waiting()
        for (const pending of failed) complete(pending, outcome)
        return Effect.void
      })

    /** One lane: its connection, its loop, and its close, in a fiber of its own. */
    const lane: Effect.Effect<void> = Effect.acquireUseRelease(
      Scope.make(),
      (scope) =>
        Effect.gen(function*() {
          const made = yield* Effect.exit(Scope.extend(SmtpConnection.make(settings.connection), scope)).pipe(
            Effect.ensuring(Effect.sync(() => opening--))
          )
          if (Exit.isFailure(made)) return yield* connectFailed(made.cause)
          const now = yield* Clock.currentTimeMillis
          const lane: Lane = {
            connection: made.value,
            createdAt: now,
            lastUsed: now,
            taken: 0,
            expired: false,
            riding: new Set(),
            wake: undefined
          }
          lanes.add(lane)
          poolConnections.unsafeUpdate(lanes.size, [])
          yield* loop(lane).pipe(Effect.onExit((exit) =>
            Effect.sync(() => {
              lanes.delete(lane)
              ceiling = settings.maxConnections
              poolConnections.unsafeUpdate(lanes.size, [])
              // Sends still on the lane lose their results: the client is closing and cut the lane short, or a
              // defect killed it.
              const outcome = Exit.isFailure(exit) && !Exit.isInterrupted(exit)
                ? Effect.failCause(exit.cause as Cause.Cause<never>)
                : Effect.succeed(Either.left(
                  new NetworkError({ operation: "client close", mayHaveBeenDelivered: true })
                ))
              for (const pending of lane.riding) complete(pending, outcome)
              riding -= lane.riding.size
              lane.riding.clear()
            })
          ))
        }),
      // Another lane may be needed for the sends waiting: opened before this one's QUIT, which may take a while.
      (scope, exit) => Effect.zipRight(dispatch, Scope.close(scope, exit))
    ).pipe(Effect.mapInputContext(() => laneContext))

    /** Starts a lane in a fiber of its own, tracked so that closing the client can end them all at once. */
    const start: Effect.Effect<void> = Effect.flatMap(Effect.forkDaemon(lane), (fiber) =>
      Effect.sync(() => {
        fibers.add(fiber)
        fiber.addObserver(() => fibers.delete(fiber))
      }))

    const send = <E, R>(submission: SmtpSubmission.Submission<E, R>): Effect.Effect<Outcome, never, R> => {
      const body = submission.body
      return Body.isInMemory(body)
        ? enqueue(submission as SmtpSubmission.Submission<E>, body)
        : Effect.flatMap(Effect.context<R>(), (context) => enqueue(submission, withContext(body, context)))
    }

    /** Puts a send in the backlog and waits for its outcome. */
    const enqueue = (submission: SmtpSubmission.Submission<unknown, unknown>, body: SmtpSubmission.Body<unknown>) =>
      Effect.suspend((): Effect.Effect<Outcome> => {
        if (closing) return Effect.succeed(Either.left(new NetworkError({ operation: "send after the client closed" })))
        const pending: Pending = {
          envelope: submission.envelope,
          body,
          options: submission.options,
          resume: undefined,
          early: undefined,
          done: false
        }
        backlog.push(pending)
        waiting()
        return Effect.zipRight(
          dispatch,
          Effect.async<Outcome>((resume) => {
            if (pending.early !== undefined) return resume(pending.early)
            pending.resume = resume
            // Given up (the send was interrupted): out of the backlog if no lane took it yet; else its result is
            // dropped, as the message is already on its way.
            return Effect.sync(() => {
              pending.resume = undefined
              pending.done = true
              const at = backlog.indexOf(pending)
              if (at >= 0) {
                backlog.splice(at, 1)
                waiting()
              }
            })
          })
        )
      })

    const close = Effect.suspend(() => {
      closing = true
      for (const lane of parked.splice(0, parked.length)) {
        const wake = lane.wake!
        lane.wake = undefined
        wake(Effect.succeed(false))
      }
      return Fiber.interruptAll(fibers)
    })

    return { send, close }
  })
