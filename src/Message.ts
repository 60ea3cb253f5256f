/**
 * Structured messages: addresses, subject, text and HTML, attachments and inline images, custom headers and DKIM,
 * turned into an SMTP envelope and a streamed RFC 5322 / MIME body by Nodemailer's mail composer. Everything is
 * checked before anything is composed; the body is composed as it is read, so a large attachment is never held in
 * memory, and it feeds `SmtpConnection.send` as it is.
 *
 * @since 0.1.0
 */
import * as NodeStream from "@effect/platform-node/NodeStream"
import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import type * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import type * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Stream from "effect/Stream"
import { type Readable, Transform } from "node:stream"
import DKIM from "nodemailer/lib/dkim"
import MailComposer from "nodemailer/lib/mail-composer"
import { LineCanonicalizer } from "./internal/lineCanonicalizer.js"
import * as internal from "./internal/message.js"
import type * as SmtpConnection from "./SmtpConnection.js"
import { type InvalidInputError, TypeId } from "./SmtpError.js"
import type * as SmtpSubmission from "./SmtpSubmission.js"

/**
 * A mailbox with an optional display name.
 *
 * @since 0.1.0
 * @category models
 */
export interface Address {
  readonly name?: string | undefined
  /** `local@domain`, as `Mailbox.parse` accepts it. */
  readonly address: string
}

/**
 * An address: an `Address`, or a string read by Nodemailer's addressparser (`"Name <a@example.org>"`, or several
 * separated by commas; a group's members are taken one by one).
 *
 * @since 0.1.0
 * @category models
 */
export type AddressInput = string | Address

/**
 * A file to read the content from, through `@effect/platform`'s `FileSystem`, as the body is read.
 *
 * @since 0.1.0
 * @category models
 */
export interface FileContent {
  readonly path: string
}

/**
 * The content of a text, HTML or attachment part: a string (UTF-8), bytes, a stream of bytes (read as the body is
 * read, with backpressure), or a file.
 *
 * @since 0.1.0
 * @category models
 */
export type Content<E = never, R = never> = Uint8Array | string | Stream.Stream<Uint8Array, E, R> | FileContent

/**
 * An attachment, or with `cid` an inline part (an image the HTML shows as `<img src="cid:…">`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Attachment<E = never, R = never> {
  /** Default: the file's name for a file, else `attachment-N` with an extension from the content type. */
  readonly filename?: string | undefined
  readonly content: Content<E, R>
  /** Default: guessed from the filename. */
  readonly contentType?: string | undefined
  /** The Content-ID (without angle brackets) the HTML refers to as `cid:…`; the part goes next to the HTML. */
  readonly cid?: string | undefined
  /** Default "attachment", or "inline" for an image with a `cid`. */
  readonly contentDisposition?: "attachment" | "inline" | undefined
  readonly headers?: Readonly<Record<string, string>> | undefined
}

/**
 * DKIM signing (RFC 6376) with Nodemailer's signer: rsa-sha256, relaxed/relaxed. The signer holds the whole message
 * until the body hash is known (the signature goes before the body), in memory unless `cacheDir` is given.
 *
 * @since 0.1.0
 * @category models
 */
export interface DkimOptions {
  /** The signing domain, `d=`. */
  readonly domainName: string
  /** The selector, `s=`: the key's DNS record is `<selector>._domainkey.<domain>`. */
  readonly keySelector: string
  /** An RSA private key in PEM; unwrapped only when it is handed to the signer. */
  readonly privateKey: Redacted.Redacted<string>
  /** The header fields to sign; default the RFC 6376 §5.4.1 list. */
  readonly headerFieldNames?: ReadonlyArray<string> | undefined
  /** Header fields to leave out of the signature. */
  readonly skipFields?: ReadonlyArray<string> | undefined
  /** A directory where a message over `cacheThreshold` is buffered (mode 0600) instead of memory. */
  readonly cacheDir?: string | undefined
  /** Bytes from which the message goes to `cacheDir`; default 10 MB. */
  readonly cacheThreshold?: number | undefined
}

/**
 * The envelope of a composed message, in the shape `SmtpConnection.send` takes.
 *
 * @since 0.1.0
 * @category models
 */
export type Envelope = Pick<SmtpSubmission.Envelope, "from" | "to">

/**
 * A structured message. Bcc recipients go in the envelope, never in the headers.
 *
 * @since 0.1.0
 * @category models
 */
export interface Message<E = never, R = never> {
  readonly from: AddressInput | ReadonlyArray<AddressInput>
  /** Required when `from` holds several addresses; the envelope sender when given. */
  readonly sender?: AddressInput | undefined
  readonly to?: AddressInput | ReadonlyArray<AddressInput> | undefined
  readonly cc?: AddressInput | ReadonlyArray<AddressInput> | undefined
  readonly bcc?: AddressInput | ReadonlyArray<AddressInput> | undefined
  readonly replyTo?: AddressInput | ReadonlyArray<AddressInput> | undefined
  readonly subject?: string | undefined
  readonly text?: Content<E, R> | undefined
  readonly html?: Content<E, R> | undefined
  readonly attachments?: ReadonlyArray<Attachment<E, R>> | undefined
  /**
   * Extra header fields. The fields the message sets itself (From, To, Subject, Message-ID, Date, Content-Type, …)
   * are refused here: use the message's own field.
   */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** `id@domain`, with or without angle brackets; default a random id on the sender's domain. */
  readonly messageId?: string | undefined
  /** Default: the time of `compose`, from the `Clock`. */
  readonly date?: Date | undefined
  /** Replaces the envelope derived from the headers. */
  readonly envelope?: { readonly from: string; readonly to: ReadonlyArray<string> } | undefined
  readonly dkim?: DkimOptions | undefined
}

/**
 * Nodemailer failed to compose or sign the message. Not caused by the input, which is checked before: report it.
 *
 * @since 0.1.0
 * @category errors
 */
export class ComposeError extends Data.TaggedError("ComposeError")<{
  /** What failed, in words. */
  readonly reason: string
  readonly cause?: unknown
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `Could not compose the message: ${this.reason}`
  }
}

type PartContents<M> =
  | M["text" & keyof M]
  | M["html" & keyof M]
  | (M["attachments" & keyof M] extends infer A ?
    A extends ReadonlyArray<infer T> ? T extends { readonly content: infer C } ? C : never : never :
    never)

type UsesFiles<M> = [Extract<PartContents<M>, FileContent>] extends [never] ? false : true

/**
 * What reading a message's body can fail with, besides `ComposeError`: the errors of its content streams, and a
 * `PlatformError` (naming the file) when a part is read from a file.
 *
 * @since 0.1.0
 * @category models
 */
export type BodyError<M> =
  | (PartContents<M> extends infer C ? C extends Stream.Stream<infer _A, infer E, infer _R> ? E : never : never)
  | (UsesFiles<M> extends true ? PlatformError : never)

/**
 * What reading a message's body needs: the context of its content streams, and `FileSystem` when a part is read from
 * a file.
 *
 * @since 0.1.0
 * @category models
 */
export type BodyContext<M> =
  | (PartContents<M> extends infer C ? C extends Stream.Stream<infer _A, infer _E, infer R> ? R : never : never)
  | (UsesFiles<M> extends true ? FileSystem.FileSystem : never)

/**
 * A composed message: its envelope, its Message-ID (with angle brackets, as in the header) and its body. The body is
 * composed each time it is run, with the same headers, so a retry sends the same message.
 *
 * @since 0.1.0
 * @category models
 */
export interface Composed<E = never, R = never> {
  readonly envelope: Envelope
  readonly body: Stream.Stream<Uint8Array, E | ComposeError, R>
  readonly messageId: string
}

/**
 * Builds a message; the identity, there to keep the types of its content streams.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <M extends Message<unknown, unknown>>(message: M): M => message

/** Stands for a content failure inside Nodemailer's streams; the failure itself is kept beside them, cause and all. */
class ContentFailed extends globalThis.Error {}

/**
 * Rewrites every bare CR and bare LF to CRLF (the project's one line scanner, without dot-stuffing or a line limit:
 * the connection applies those). It runs before the DKIM signer, so the signed bytes are the bytes that are sent.
 */
const canonicalLines = (): Transform => {
  const lines = new LineCanonicalizer({ dotStuff: false, allowLongLines: true })
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      const out = lines.push(chunk)
      return out instanceof Uint8Array ? done(null, out) : done(out)
    },
    flush(done) {
      const out = lines.end()
      return out instanceof Uint8Array ? done(null, out) : done(out)
    }
  })
}

/**
 * The body of a plan: each run builds a fresh composer whose parts read their content through the run's context.
 */
const body = <E, R>(
  plan: internal.Plan<E, R>
): Stream.Stream<Uint8Array, E | PlatformError | ComposeError, R | FileSystem.FileSystem> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const runSync = Runtime.runSync(yield* Effect.runtime<R | FileSystem.FileSystem>())
    const readables: Array<Readable> = []
    // A part that fails is released with the body, or at once if the composer never reached it.
    yield* Effect.addFinalizer(() => Effect.sync(() => readables.forEach((readable) => readable.destroy())))
    // Nodemailer reports a failing part through its own streams, where it can arrive as another error (a premature
    // close); the first failure is kept here, with its cause, and is what the body fails with.
    let failure: Cause.Cause<E | PlatformError> | undefined
    const toNode = (stream: Stream.Stream<Uint8Array, E | PlatformError, R | FileSystem.FileSystem>): Readable => {
      const guarded = Stream.catchAllCause(stream, (cause) => {
        failure ??= cause
        return Stream.fail(new ContentFailed("a part's content failed"))
      })
      const readable = runSync(NodeStream.toReadable(guarded))
      readables.push(readable)
      return readable
    }
    const content = (part: Content<E, R>): internal.NodeContent => {
      if (typeof part === "string") return part
      if (part instanceof Uint8Array) return Buffer.from(part.buffer, part.byteOffset, part.byteLength)
      if (internal.isStream(part)) return toNode(part)
      return toNode(Stream.unwrap(Effect.map(FileSystem.FileSystem, (fs) => fs.stream(part.path))))
    }
    const mail = yield* Effect.try({
      try: () => {
        const node = new MailComposer(internal.composerOptions(plan, content)).compile()
        node.transform(canonicalLines)
        if (plan.dkim !== undefined) {
          const signer = new DKIM(internal.signerOptions(plan.dkim))
          node.processFunc((input) => signer.sign(input))
        }
        return node
      },
      catch: (cause) => new ComposeError({ reason: describe(cause), cause })
    })
    return NodeStream.fromReadable<unknown, Uint8Array>(() => mail.createReadStream(), identity).pipe(
      Stream.catchAll((error): Stream.Stream<never, E | PlatformError | ComposeError> =>
        failure === undefined
          ? Stream.fail(new ComposeError({ reason: describe(error), cause: error }))
          : Stream.failCause(failure)
      )
    )
  }))

const describe = (cause: unknown): string => cause instanceof globalThis.Error ? cause.message : String(cause)

/**
 * Checks a message and composes it: the envelope (the sender, else the From address; To, Cc and Bcc deduplicated in
 * order) unless one is given, the Message-ID, and the body stream. A CR, LF or NUL in any address, display name,
 * subject, header name or value, an invalid address, or no recipient at all is an `InvalidInputError` naming the
 * field, before anything is composed.
 *
 * @since 0.1.0
 * @category constructors
 */
export const compose = <M extends Message<unknown, unknown>>(
  message: M
): Effect.Effect<Composed<BodyError<M>, BodyContext<M>>, InvalidInputError> =>
  Effect.gen(function*() {
    const plan = yield* internal.plan(message, new Date(yield* Clock.currentTimeMillis))
    return {
      envelope: plan.envelope,
      messageId: plan.messageId,
      body: body(plan) as Stream.Stream<Uint8Array, BodyError<M> | ComposeError, BodyContext<M>>
    }
  }).pipe(Effect.withSpan("smtp.message.compose"))

/**
 * Composes a message and sends it on a connection (Poco's and Qore's `sendMessage`): the result of
 * `SmtpConnection.send`, with the Message-ID.
 *
 * @since 0.1.0
 * @category sending
 */
export const send = <M extends Message<unknown, unknown>>(
  connection: SmtpConnection.SmtpConnection,
  message: M,
  options?: SmtpSubmission.SendOptions
): Effect.Effect<
  SmtpSubmission.SendResult & { readonly messageId: string },
  SmtpSubmission.SendError | BodyError<M> | ComposeError,
  BodyContext<M>
> =>
  Effect.flatMap(compose(message), (composed) =>
    Effect.map(
      connection.send(composed.envelope, composed.body, options),
      (result) => ({ ...result, messageId: composed.messageId })
    ))
