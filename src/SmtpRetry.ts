/**
 * Retry policies as `Schedule`s: what is worth trying again (a network failure, a timeout, a 4xx), with jittered
 * exponential backoff and a cap, and never a permanent error. Use one with `Effect.retry(send, policy)` or as the
 * `retry` option of `SmtpClient.layer`, which also retries only the recipients that got a 4xx.
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Schedule from "effect/Schedule"
import { isRetryable } from "./SmtpError.js"

/**
 * Options of `policy`.
 *
 * @since 0.1.0
 * @category models
 */
export interface PolicyOptions {
  /** The first delay. Default 1 second. */
  readonly base?: Duration.DurationInput | undefined
  /** How much each delay grows. Default 2. */
  readonly factor?: number | undefined
  /** No delay is longer than this. Default 5 minutes. */
  readonly cap?: Duration.DurationInput | undefined
  /** How many retries at most. Default 5. */
  readonly retries?: number | undefined
  /** Each delay is spread between 80% and 120% so that many clients do not retry in step. Default true. */
  readonly jitter?: boolean | undefined
  /**
   * Retry a timeout that came after the end of data, when the server may already have taken the message: a retry
   * may deliver it twice. Default false: such a send fails with its `TimeoutError` (`mayHaveBeenDelivered`).
   */
  readonly retryPossiblyDelivered?: boolean | undefined
}

/**
 * Tells whether a policy should try again after `error`: it is of a kind that can go away (`SmtpError.isRetryable`:
 * a network failure, a timeout, a 4xx reply), and the message cannot have been delivered already (a timeout or a
 * dropped connection after the end of data), unless `retryPossiblyDelivered` says a duplicate is acceptable.
 *
 * @since 0.1.0
 * @category predicates
 */
export const shouldRetry = (error: unknown, options?: Pick<PolicyOptions, "retryPossiblyDelivered">): boolean =>
  isRetryable(error) &&
  (error._tag === "SmtpTransientError" || error.mayHaveBeenDelivered !== true ||
    options?.retryPossiblyDelivered === true)

/**
 * A retry policy: jittered exponential backoff from `base`, capped at `cap`, at most `retries` times, and only while
 * `shouldRetry` says so.
 *
 * @since 0.1.0
 * @category constructors
 */
export const policy = (options: PolicyOptions = {}): Schedule.Schedule<Duration.Duration, unknown> => {
  const cap = Duration.decode(options.cap ?? "5 minutes")
  const backoff = Schedule.exponential(options.base ?? "1 second", options.factor ?? 2)
  const spread = options.jitter === false ? backoff : Schedule.jittered(backoff)
  return spread.pipe(
    Schedule.modifyDelay((_, delay) => Duration.min(delay, cap)),
    Schedule.intersect(Schedule.recurs(options.retries ?? 5)),
    Schedule.map(([delay]) => delay),
    Schedule.whileInput((error: unknown) => shouldRetry(error, options))
  )
}

/**
 * The default policy: up to 5 retries after about 1, 2, 4, 8 and 16 seconds (±20%), of network failures and
 * timeouts (unless the message may already have been delivered) and 4xx replies.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultPolicy: Schedule.Schedule<Duration.Duration, unknown> = policy()
