/**
 * The service an Effect application depends on: `send` over a pool of connections (or a fresh one per send), with
 * retries as a `Schedule` (only the recipients that got a 4xx are tried again), a rate limit, a cap on concurrent
 * transactions, and metrics. Sends started together share the pool's connections as pipelines: while a connection is
 * busy, sends waiting for it join its stream of transactions, each with its own result. `layerTest` gives the same
 * service backed by memory, for users' own tests.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as internal from "./internal/client.js"
import type * as Message from "./Message.js"
import type * as SmtpConnection from "./SmtpConnection.js"
import type { SmtpPermanentError, SmtpTransientError } from "./SmtpError.js"
import type * as SmtpSubmission from "./SmtpSubmission.js"
import type { SmtpTransport } from "./SmtpTransport.js"

/**
 * How the pool keeps its connections.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions {
  /** Connections open at once at most. Default 4. */
  readonly maxConnections?: number | undefined
  /** Messages one connection carries before it is closed (QUIT) and replaced. Default 100. */
  readonly maxMessagesPerConnection?: number | undefined
  /** A connection older than this is not used again (servers that send "421 maximum lifetime"). Default 5 min. */
  readonly maxConnectionAge?: Duration.DurationInput | undefined
  /** Connections left unused this long are closed. Default 30 s. */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** How a connection idle for `healthCheckAfter` is checked before reuse. Default "NOOP"; false: not checked. */
  readonly healthCheck?: "NOOP" | "RSET" | false | undefined
  /** Default 1 s. */
  readonly healthCheckAfter?: Duration.DurationInput | undefined
  /**
   * Transactions in flight on one connection at most: sends waiting for the pool join a busy connection's pipeline
   * up to this many (pipelined across transactions with DATA, a window of BDAT transactions). Default 16.
   */
  readonly window?: number | undefined
}

/**
 * Options of `layer`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Where and how to connect; with `SmtpAuth` in context when the layer is built, every connection signs in. */
  readonly connection: SmtpConnection.Options
  /** The pool (default), or false for a fresh connection per send. */
  readonly pool?: PoolOptions | false | undefined
  /** The retry policy (default `SmtpRetry.defaultPolicy`), or false for none. */
  readonly retry?: Schedule.Schedule<unknown, unknown> | false | undefined
  /** At most `messages` transactions started per `per` (Nodemailer's `rateLimit` and `rateDelta`). */
  readonly rateLimit?: { readonly messages: number; readonly per: Duration.DurationInput } | undefined
  /**
   * Transactions under way at once at most, on all connections together. Default: no cap beyond the pool's
   * (`maxConnections` connections of `window` transactions each); without a pool, none.
   */
  readonly maxConcurrentTransactions?: number | undefined
  /** Options for every send, under each send's own. */
  readonly sendOptions?: SmtpSubmission.SendOptions | undefined
  /** How long closing the layer waits for sends in flight before it closes the connections. Default 30 s. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
}

/**
 * What a send through the client returns: the transaction's result, with every recipient the server took across
 * the attempts, the refusals that stood, and how many attempts it took.
 *
 * @since 0.1.0
 * @category models
 */
export interface SendResult extends SmtpSubmission.SendResult {
  readonly attempts: number
}

/**
 * What a send through the client can fail with: the connection could not be opened or signed in, or the message
 * could not be sent, after the retries the policy allowed.
 *
 * @since 0.1.0
 * @category models
 */
export type SendError = SmtpSubmission.SendError | SmtpConnection.ConnectError

/**
 * What the client does: the service behind the `SmtpClient` tag.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** One message: envelope and body, with the client's pool, retries and limits. */
  readonly send: <E = never, R = never>(
    envelope: SmtpSubmission.Envelope,
    body: SmtpSubmission.Body<E, R>,
    options?: SmtpSubmission.SendOptions
  ) => Effect.Effect<SendResult, SendError | E, R>
  /**
   * Many messages, each sent like `send` (the pool, retries, the rate limit), up to `concurrency` at once (default:
   * twice what every connection's window holds): one result per submission, in the order given.
   */
  readonly sendAll: <E = never, R = never, R2 = never>(
    submissions:
      | Iterable<SmtpSubmission.Submission<E, R>>
      | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>,
    options?: { readonly concurrency?: number | undefined }
  ) => Stream.Stream<Either.Either<SendResult, SendError | E>, never, R | R2>
  /** A structured message, composed (`Message.compose`) and sent like `send`. */
  readonly sendMessage: <M extends Message.Message<unknown, unknown>>(
    message: M,
    options?: SmtpSubmission.SendOptions
  ) => Effect.Effect<
    SendResult & { readonly messageId: string },
    SendError | Message.BodyError<M> | Message.ComposeError,
    Message.BodyContext<M>
  >
}

/**
 * The client service: `yield* SmtpClient.SmtpClient`.
 *
 * @since 0.1.0
 * @category tags
 */
export class SmtpClient extends Context.Tag("effect-smtp/SmtpClient")<SmtpClient, Service>() {}

/**
 * Builds a client in a scope: closing it waits for sends in flight (up to `shutdownTimeout`) and QUITs every pooled
 * connection.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: Options) => Effect.Effect<Service, never, Scope.Scope | SmtpTransport> = internal.make

/**
 * The client as a layer. Connections are opened when sends need them, so building the layer cannot fail.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<SmtpClient, never, SmtpTransport> =>
  Layer.scoped(SmtpClient, internal.make(options))

/**
 * The client as a layer, with its options read from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options>
): Layer.Layer<SmtpClient, ConfigError.ConfigError, SmtpTransport> =>
  Layer.scoped(SmtpClient, Effect.flatMap(Config.unwrap(options), internal.make))

/**
 * One message as the test client saw it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Recorded {
  readonly envelope: SmtpSubmission.Envelope
  /** The body as it would go on the wire before dot-stuffing: the bytes given, read whole. */
  readonly body: Uint8Array
  readonly accepted: ReadonlyArray<string>
  readonly rejected: ReadonlyArray<
    { readonly recipient: string; readonly error: SmtpTransientError | SmtpPermanentError }
  >
}

/**
 * The errors the test client can be told to fail a send with: any the real one can fail with.
 *
 * @since 0.1.0
 * @category models
 */
export type TestFailure = SendError

/**
 * Controls of the test client (Qore's test mode): what it recorded, and what it should refuse. The service behind
 * the `TestClient` tag.
 *
 * @since 0.1.0
 * @category models
 */
export interface TestControls {
  /** Every message accepted so far, in order. */
  readonly sent: Effect.Effect<ReadonlyArray<Recorded>>
  /** Refuse, from now on, every recipient for which `refuse` returns an error. */
  readonly refuseRecipients: (
    refuse: (recipient: string) => SmtpTransientError | SmtpPermanentError | undefined
  ) => Effect.Effect<void>
  /** Fail the next `times` sends (default 1) with `error`. */
  readonly failNext: (error: TestFailure, times?: number) => Effect.Effect<void>
  /** Forgets what was recorded and every rule. */
  readonly reset: Effect.Effect<void>
}

/**
 * The test client's controls: `yield* SmtpClient.TestClient`.
 *
 * @since 0.1.0
 * @category tags
 */
export class TestClient extends Context.Tag("effect-smtp/SmtpClient/TestClient")<TestClient, TestControls>() {}

/**
 * A client backed by memory, for tests: it checks each message as the real one does (addresses, no CR/LF, lines
 * over 998 octets), records it, and connects nowhere. `TestClient` tells what it recorded and what to refuse.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTest: Layer.Layer<SmtpClient | TestClient> = Layer.effectContext(
  Effect.map(
    internal.makeTest,
    ({ client, controls }) => Context.make(SmtpClient, client).pipe(Context.add(TestClient, controls))
  )
)

/**
 * The client's metrics (Effect `Metric`): messages sent and failed (tagged with the error), recipients refused for
 * good (tagged `transient` or `permanent`), the duration of each send, the pool's open connections and waiting
 * sends.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = {
  messagesSent: internal.messagesSent,
  messagesFailed: internal.messagesFailed,
  recipientsRefused: internal.recipientsRefused,
  sendDuration: internal.sendDuration,
  poolConnections: internal.poolConnections,
  poolWaiters: internal.poolWaiters
} as const
