/**
 * The client behind `SmtpClient`: each send's retries driven by a `Schedule` (only the recipients refused with a 4xx
 * are tried again), its rate limit, metrics and span, over the pool's connections as lanes (`lanes.ts`) or a fresh
 * connection per attempt; and the test client backed by memory.
 */
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as RateLimiter from "effect/RateLimiter"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Capabilities from "../Capabilities.js"
import * as Message from "../Message.js"
import type * as SmtpClient from "../SmtpClient.js"
import * as SmtpConnection from "../SmtpConnection.js"
import type { SmtpPermanentError, SmtpTransientError } from "../SmtpError.js"
import * as SmtpReply from "../SmtpReply.js"
import * as SmtpRetry from "../SmtpRetry.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import type { SmtpTransport } from "../SmtpTransport.js"
import * as Body from "./body.js"
import * as Engine from "./engine.js"
import * as Lanes from "./lanes.js"
import * as Submission from "./submission.js"

// ---------------------------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------------------------

export const messagesSent = Metric.counter("smtp_client_messages_sent", {
  description: "Messages the server accepted for at least one recipient",
  incremental: true
})
export const messagesFailed = Metric.counter("smtp_client_messages_failed", {
  description: "Messages that failed after every retry, tagged with the error",
  incremental: true
})
export const recipientsRefused = Metric.counter("smtp_client_recipients_refused", {
  description: "Recipients refused for good, tagged transient (4xx) or permanent (5xx)",
  incremental: true
})
export const sendDuration = Metric.timer("smtp_client_send_duration", "A send from its start to its result")
export const poolConnections = Lanes.poolConnections
export const poolWaiters = Lanes.poolWaiters

// ---------------------------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------------------------

/**
 * A first-come, first-served gate with `permits` places: each release hands its place to the oldest waiter. Effect's
 * `Semaphore` wakes every waiter on each release and all but one wait again, so thousands of sends started at once
 * cost the square of their number; this gate costs one wake-up per send.
 */
const makeGate = (permits: number) => {
  let free = permits
  const waiting: Array<Deferred.Deferred<void>> = []
  const release: Effect.Effect<void> = Effect.suspend(() => {
    const next = waiting.shift()
    if (next === undefined) {
      free++
      return Effect.void
    }
    return Deferred.succeed(next, undefined)
  })
  const take: Effect.Effect<void> = Effect.suspend(() => {
    if (free > 0) {
      free--
      return Effect.void
    }
    return Effect.flatMap(Deferred.make<void>(), (place) => {
      waiting.push(place)
      return Effect.onInterrupt(Deferred.await(place), () =>
        Effect.suspend(() => {
          const at = waiting.indexOf(place)
          if (at >= 0) {
            waiting.splice(at, 1)
            return Effect.void
          }
          // The place was handed over just as the wait was interrupted: pass it on.
          return release
        }))
    })
  })
  return <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.uninterruptibleMask((restore) => Effect.zipRight(restore(take), Effect.ensuring(restore(effect), release)))
}

const millis = (duration: Duration.DurationInput) => Duration.toMillis(Duration.decode(duration))

const refusedTransient = Metric.tagged(recipientsRefused, "class", "transient")
const refusedPermanent = Metric.tagged(recipientsRefused, "class", "permanent")

/** One attempt at one message: its result or its error as a value. */
type Attempt = <E, R>(submission: SmtpSubmission.Submission<E, R>) => Effect.Effect<Lanes.Outcome, never, R>

export const make = (
  options: SmtpClient.Options
): Effect.Effect<SmtpClient.Service, never, Scope.Scope | SmtpTransport> =>
  Effect.gen(function*() {
    const poolOptions = options.pool === false ? undefined : options.pool ?? {}
    const retry = options.retry === undefined ? SmtpRetry.defaultPolicy : options.retry
    const limit = options.rateLimit === undefined
      ? undefined
      : yield* RateLimiter.make({
        limit: options.rateLimit.messages,
        interval: options.rateLimit.per,
        algorithm: "fixed-window"
      })

    const maxInFlight = options.maxConcurrentTransactions === undefined
      ? undefined
      : Math.max(1, options.maxConcurrentTransactions)
    let inFlight = 0
    let attempt: Attempt
    /** `sendAll`'s sends at once: the cap on transactions, else enough to keep every window full (one without a pool). */
    let sendAllConcurrency = maxInFlight ?? 1
    let closeConnections: Effect.Effect<void> = Effect.void
    if (poolOptions === undefined) {
      // A fresh connection per attempt, with the context the client was built in: the transport, and SmtpAuth when it
      // is there.
      const context = Context.omit(Scope.Scope)(yield* Effect.context<SmtpTransport>())
      const gate = maxInFlight === undefined ? undefined : makeGate(maxInFlight)
      attempt = (submission) => {
        const once = Effect.either(Effect.scoped(Effect.flatMap(
          Effect.provide(SmtpConnection.make(options.connection), context),
          (connection) =>
            connection.send(submission.envelope, submission.body, { ...options.sendOptions, ...submission.options })
        )))
        return gate === undefined ? once : gate(once)
      }
    } else {
      const maxConnections = Math.max(1, poolOptions.maxConnections ?? 4)
      const window = Math.max(1, poolOptions.window ?? 16)
      const lanes = yield* Lanes.make({
        connection: options.connection,
        maxConnections,
        maxMessagesPerConnection: Math.max(1, poolOptions.maxMessagesPerConnection ?? 100),
        maxConnectionAge: millis(poolOptions.maxConnectionAge ?? "5 minutes"),
        idleTimeout: poolOptions.idleTimeout ?? "30 seconds",
        healthCheck: poolOptions.healthCheck ?? "NOOP",
        healthCheckAfter: millis(poolOptions.healthCheckAfter ?? "1 second"),
        window,
        maxInFlight,
        sendOptions: options.sendOptions
      })
      attempt = lanes.send
      // Twice what the windows hold: a connection whose queue runs dry ends its burst, and on Postfix a burst's last
      // BDAT reply waits for the client's delayed ACK.
      sendAllConcurrency = maxInFlight ?? 2 * maxConnections * window
      closeConnections = lanes.close
    }
    const limited: Attempt = limit === undefined ? attempt : (submission) => limit(attempt(submission))

    /** After a first attempt that failed, or left recipients refused with a 4xx: the retries the policy allows. */
    const retrying = <E, R>(
      envelope: SmtpSubmission.Envelope,
      body: SmtpSubmission.Body<E, R>,
      sendOptions: SmtpSubmission.SendOptions | undefined,
      first: Lanes.Outcome
    ) =>
      Effect.gen(function*() {
        const driver = retry === false ? undefined : yield* Schedule.driver(retry)
        const tryAgain = (error: unknown): Effect.Effect<boolean> =>
          driver === undefined ? Effect.succeed(false) : Effect.isSuccess(driver.next(error))
        const accepted: Array<SmtpSubmission.AcceptedRecipient> = []
        const refused: Array<SmtpSubmission.RejectedRecipient> = []
        let current = envelope
        let last: SmtpSubmission.SendResult | undefined
        let attempts = 1
        let outcome = first
        for (;;) {
          if (Either.isLeft(outcome)) {
            if (!(yield* tryAgain(outcome.left))) {
              // Recipients an earlier attempt delivered to stay delivered; the rest keep their last refusal.
              if (last === undefined) return yield* Effect.fail(outcome.left as SmtpClient.SendError | E)
              return { ...last, accepted, rejected: [...refused, ...last.rejected.filter(isTransient)], attempts }
            }
          } else {
            const result = outcome.right
            last = result
            accepted.push(...result.accepted)
            refused.push(...result.rejected.filter((r) => !isTransient(r)))
            const transient = result.rejected.filter(isTransient)
            if (transient.length === 0 || !(yield* tryAgain(transient[0]!.error))) {
              return { ...result, accepted, rejected: [...refused, ...transient], attempts }
            }
            // Only the recipients refused with a 4xx are tried again.
            const entries = new Map(
              envelope.to.map((entry) => [typeof entry === "string" ? entry : entry.address, entry])
            )
            current = { ...envelope, to: transient.map((r) => entries.get(r.recipient) ?? r.recipient) }
          }
          attempts++
          outcome = yield* limited({ envelope: current, body, options: sendOptions })
        }
      })

    /**
     * A send counted: in flight until it ends, then its metrics (sent or failed, refusals by class) and its duration,
     * failed sends too (Metric.trackDuration counts only successes). One step before and one after, as this runs once
     * per send.
     */
    const counted = <A extends SmtpClient.SendResult, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.clockWith((clock) => {
          const started = clock.unsafeCurrentTimeMillis()
          inFlight++
          return Effect.onExit(restore(effect), (exit) =>
            FiberRef.getWith(FiberRef.currentMetricLabels, (labels) =>
              Effect.sync(() => {
                inFlight--
                sendDuration.unsafeUpdate(Duration.millis(clock.unsafeCurrentTimeMillis() - started), labels)
                if (Exit.isSuccess(exit)) {
                  const { accepted, rejected } = exit.value
                  if (accepted.length > 0) messagesSent.unsafeUpdate(1, labels)
                  for (const r of rejected) {
                    ;(isTransient(r) ? refusedTransient : refusedPermanent).unsafeUpdate(1, labels)
                  }
                } else {
                  const failure = Cause.failureOption(exit.cause)
                  if (Option.isSome(failure)) {
                    const tag = (failure.value as { readonly _tag?: string })._tag ?? "unknown"
                    Metric.tagged(messagesFailed, "error", tag).unsafeUpdate(1, labels)
                  }
                }
              })))
        })
      )

    const spanOptions = {
      captureStackTrace: false,
      kind: "client",
      attributes: { "server.address": options.connection.host }
    } as const
    // The span is made (`useSpan`) but not installed as the fiber's parent span (`withSpan`): nothing under it on this
    // fiber makes spans (the connection's work runs on its lane), and installing it copies the fiber's context for
    // every send, which thousands of sends waiting at once hold on to.
    const send: SmtpClient.Service["send"] = (envelope, body, sendOptions) =>
      Effect.useSpan("smtp.client.send", spanOptions, () =>
        counted(
          Effect.flatMap(limited({ envelope, body, options: sendOptions }), (outcome) =>
            // Through at once, with no recipient to try again: the common case pays nothing for retries.
            Either.isRight(outcome) && !outcome.right.rejected.some(isTransient)
              ? Effect.succeed({ ...outcome.right, attempts: 1 })
              : retrying(envelope, body, sendOptions, outcome))
        ))

    // Closing: wait (bounded) for the sends in flight, then close every connection at once, each with QUIT bounded by
    // its QUIT timeout.
    const idle: Effect.Effect<void> = Effect.suspend(() =>
      inFlight === 0 ? Effect.void : Effect.zipRight(Effect.sleep("10 millis"), idle)
    )
    yield* Effect.addFinalizer(() =>
      Effect.ignore(Effect.timeout(idle, options.shutdownTimeout ?? "30 seconds")).pipe(
        Effect.interruptible,
        Effect.zipRight(closeConnections)
      )
    )

    return fromSend(send, sendAllConcurrency)
  })

/**
 * A client from its `send`: `sendAll` sends each submission with it, `concurrency` at once by default, and
 * `sendMessage` composes the message and sends it with it.
 */
const fromSend = (send: SmtpClient.Service["send"], concurrency: number): SmtpClient.Service => ({
  send,
  sendAll: <E, R, R2>(
    submissions:
      | Iterable<SmtpSubmission.Submission<E, R>>
      | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>,
    options?: { readonly concurrency?: number | undefined }
  ) => {
    const at = { concurrency: Math.max(1, options?.concurrency ?? concurrency) }
    const one = (submission: SmtpSubmission.Submission<E, R>) =>
      Effect.either(send(submission.envelope, submission.body, submission.options))
    // An iterable goes by chunks of the stream (4,096 submissions), each sent with `Effect.forEach`, which costs far
    // less per element than `Stream.mapEffect`; a stream's chunks may be single elements, so it is mapped as it comes.
    return Submission.isStream(submissions)
      ? Stream.mapEffect(submissions, one, at)
      : Stream.mapChunksEffect(
        Stream.fromIterable(submissions),
        (chunk) => Effect.map(Effect.forEach(chunk, one, at), Chunk.unsafeFromArray)
      )
  },
  sendMessage: (message, sendOptions) =>
    Effect.flatMap(Message.compose(message), (composed) =>
      Effect.map(
        send(composed.envelope, composed.body, sendOptions),
        (result) => ({ ...result, messageId: composed.messageId })
      ))
})

const isTransient = (r: SmtpSubmission.RejectedRecipient): boolean => r.error._tag === "SmtpTransientError"

// ---------------------------------------------------------------------------------------------------------------
// The test client
// ---------------------------------------------------------------------------------------------------------------

/** What the test client's server offers: every extension but CHUNKING (and BINARYMIME, which needs it). */
const everything = Capabilities.fromLines([
  "test.invalid",
  "PIPELINING",
  "8BITMIME",
  "SMTPUTF8",
  "DSN",
  "ENHANCEDSTATUSCODES",
  "REQUIRETLS",
  "SIZE 0"
])

const reply = (code: number, enhancedCode: string, text: string) =>
  new SmtpReply.SmtpReply({ code, enhancedCode, lines: [text] })

/** The body, read whole (a chunk is only lent, so each is copied). */
const bodyBytes = <E, R>(body: SmtpSubmission.Body<E, R>): Effect.Effect<Uint8Array, E, R> => {
  const chunks: Array<Buffer> = []
  return Effect.map(
    Body.forEachChunk(body, (chunk) => Effect.sync(() => void chunks.push(Buffer.from(chunk)))),
    () => Buffer.concat(chunks)
  )
}

/** The test client: a client backed by memory, and the controls that tell what it recorded and what to refuse. */
export const makeTest: Effect.Effect<
  { readonly client: SmtpClient.Service; readonly controls: SmtpClient.TestControls }
> = Effect.sync(() => {
  let recorded: Array<SmtpClient.Recorded> = []
  let refuse: ((recipient: string) => SmtpTransientError | SmtpPermanentError | undefined) | undefined
  let failures: Array<SmtpClient.TestFailure> = []
  let queued = 0

  const send: SmtpClient.Service["send"] = (envelope, body, sendOptions) =>
    Effect.gen(function*() {
      const failure = failures.shift()
      if (failure !== undefined) return yield* Effect.fail(failure)
      const bytes = yield* bodyBytes(body)
      // The same engine as on the wire, against a server that offers every extension but CHUNKING (so that, as with
      // most servers, a line over 998 octets is an input error): every check, and every rule of the results.
      const outcome = Engine.simulate(
        { envelope, body: bytes, options: sendOptions },
        everything,
        (recipient) => refuse?.(recipient),
        reply(250, "2.0.0", `Ok: queued as TEST${queued + 1}`)
      )
      if (Either.isLeft(outcome)) return yield* Effect.fail(outcome.left)
      queued++
      const { accepted, rejected, response } = outcome.right
      recorded.push({
        envelope,
        body: bytes,
        accepted: accepted.map((a) => a.recipient),
        rejected: rejected.map((r) => ({ recipient: r.recipient, error: r.error }))
      })
      return {
        accepted,
        rejected,
        response,
        method: "DATA",
        roundTrips: 0,
        attempts: 1
      } satisfies SmtpClient.SendResult
    })

  const client = fromSend(send, 1)
  const controls: SmtpClient.TestControls = {
    sent: Effect.sync(() => [...recorded]),
    refuseRecipients: (rule) => Effect.sync(() => void (refuse = rule)),
    failNext: (error, times = 1) =>
      Effect.sync(() => {
        for (let i = 0; i < times; i++) failures.push(error)
      }),
    reset: Effect.sync(() => {
      recorded = []
      refuse = undefined
      failures = []
    })
  }
  return { client, controls }
})
