/**
 * The session behind `SmtpConnection`: one primitive, "write a group of commands, then read one reply per command in
 * order" (RFC 2920), and every command built on it.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as os from "node:os"
import * as Capabilities from "../Capabilities.js"
import * as Mailbox from "../Mailbox.js"
import * as SmtpAuth from "../SmtpAuth.js"
import * as SmtpCommand from "../SmtpCommand.js"
import type * as SmtpConnection from "../SmtpConnection.js"
import {
  breaksConnection,
  InvalidInputError,
  NetworkError,
  SmtpAuthError,
  SmtpProtocolError,
  TimeoutError,
  TlsError
} from "../SmtpError.js"
import type { ReadError, ReplyError, SmtpError, SmtpPermanentError, SmtpTransientError } from "../SmtpError.js"
import * as SmtpReply from "../SmtpReply.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import * as SmtpTimeouts from "../SmtpTimeouts.js"
import type { Phase, Timeouts } from "../SmtpTimeouts.js"
import { SmtpTransport } from "../SmtpTransport.js"
import type { SmtpSocket, TlsDetails, TlsOptions } from "../SmtpTransport.js"
import * as Engine from "./engine.js"
import * as QueueStream from "./queueStream.js"
import * as Sasl from "./sasl.js"
import * as Submission from "./submission.js"
import * as Transcript from "./transcript.js"

/** Results of `sendAll` that may wait for their reader before the batch waits too. */
const RESULTS_AHEAD = 64

/** What each phase is called in a `TimeoutError`. */
const phaseNames: Record<Phase, string> = {
  connect: "connect",
  greeting: "the greeting",
  hello: "the reply to EHLO/HELO/LHLO",
  startTls: "STARTTLS",
  auth: "an AUTH step",
  mail: "the reply to MAIL",
  rcpt: "the reply to RCPT",
  dataStart: "the reply to DATA",
  dataBlock: "a write of the message body",
  dataEnd: "the reply to the end of data",
  command: "the reply to a command",
  quit: "the reply to QUIT"
}

/** The timeout that bounds the reply to each command. */
const phases: Record<SmtpCommand.SmtpCommand["_tag"], Phase> = {
  Ehlo: "hello",
  Helo: "hello",
  Lhlo: "hello",
  Mail: "mail",
  Rcpt: "rcpt",
  Data: "dataStart",
  Bdat: "dataEnd",
  Rset: "command",
  Noop: "command",
  Vrfy: "command",
  Expn: "command",
  Help: "command",
  Quit: "quit",
  StartTls: "startTls",
  Auth: "auth",
  AuthResponse: "auth",
  AuthCancel: "auth",
  Raw: "command"
}

const phaseOf = (command: SmtpCommand.SmtpCommand): Phase => phases[command._tag]

/** The client name: this host's name when it is a fully qualified domain, else an address literal (RFC 5321 §4.1.4). */
const defaultClientName = (localAddress: string): string => {
  const hostname = os.hostname()
  if (hostname.includes(".") && Mailbox.isDomain(hostname)) return hostname
  if (localAddress.includes(":")) {
    const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(localAddress)
    return v4 === null ? `[IPv6:${localAddress}]` : `[${v4[1]}]`
  }
  return localAddress === "" ? "[127.0.0.1]" : `[${localAddress}]`
}

const QUIT_COMMAND = SmtpCommand.encode(SmtpCommand.quit).pipe(Either.getOrThrow)

const closedError = (reason: string) =>
  new NetworkError({ operation: "use", code: "ECLOSED", cause: new Error(reason) })

/** Reply codes that mean the command worked, per command. */
const expectedClass = (command: SmtpCommand.SmtpCommand): (reply: SmtpReply.SmtpReply) => boolean =>
  SmtpCommand.$is("Data")(command) ? (reply) => reply.code === 354 : SmtpReply.isPositiveCompletion

export const make = (
  options: SmtpConnection.Options
): Effect.Effect<SmtpConnection.SmtpConnection, SmtpConnection.ConnectError, Scope.Scope | SmtpTransport> =>
  Effect.gen(function*() {
    const transport = yield* SmtpTransport
    // Taken once: the hot path reads the time through it without an effect, and a `TestClock` drives it in tests.
    const clock = yield* Effect.clock
    const now = (): number => clock.unsafeCurrentTimeMillis()
    const tlsMode = options.tls ?? "opportunistic"
    const lmtp = options.lmtp ?? false
    const port = options.port ?? (tlsMode === "implicit" ? 465 : 25)
    const timeouts: Timeouts = options.timeout === undefined
      ? { ...SmtpTimeouts.defaults, ...options.timeouts }
      : Object.fromEntries(
        Object.keys(SmtpTimeouts.defaults).map((key) => [key, options.timeout])
      ) as unknown as Timeouts
    const timeoutOf = (phase: Phase) => Duration.decode(timeouts[phase])
    /** Each phase's timeout in milliseconds, worked out once: every read and write needs its own. */
    const timeoutMillis = Object.fromEntries(
      Object.keys(SmtpTimeouts.defaults).map((key) => [key, Duration.toMillis(timeoutOf(key as Phase))])
    ) as Record<Phase, number>
    const slowThreshold = options.slowCommandThreshold === undefined
      ? undefined
      : Duration.toMillis(Duration.decode(options.slowCommandThreshold))
    const tlsOptions: TlsOptions = options.tlsOptions ?? {}
    const spanAttributes = { "server.address": options.host, "server.port": port }

    const transcript = Transcript.make(1000)
    yield* Effect.addFinalizer(() => transcript.close)
    const onTranscript = options.onTranscript
    // A line reaches the transcript's subscribers as it is noted. `onTranscript` is an effect: the lines it has not
    // had yet are run through it before the next wait on the socket, so it gets every line in order and before the
    // stream does.
    let noted: Array<SmtpConnection.TranscriptEntry> = []
    const note = (direction: "client" | "server", line: string): void => {
      const entry = { direction, line, at: now() }
      if (onTranscript === undefined) transcript.add(entry)
      else noted.push(entry)
    }
    const publishTranscript: Effect.Effect<void> = onTranscript === undefined ? Effect.void : Effect.suspend(() => {
      if (noted.length === 0) return Effect.void
      const entries = noted
      noted = []
      return Effect.forEach(
        entries,
        (entry) => Effect.zipRight(onTranscript(entry), Effect.sync(() => transcript.add(entry))),
        {
          discard: true
        }
      )
    })
    const record = (direction: "client" | "server", line: string) =>
      Effect.suspend(() => {
        note(direction, line)
        return publishTranscript
      })

    const socket: SmtpSocket = yield* transport.connect({
      host: options.host,
      port,
      path: options.path,
      tls: tlsMode === "implicit" ? tlsOptions : undefined,
      connectTimeout: timeoutOf("connect")
    })

    // Session state. Mutated only while holding `lock`.
    let parser = SmtpReply.makeParser()
    let parsed: Array<SmtpReply.SmtpReply> = []
    let parseFailure: SmtpProtocolError | undefined
    let broken: NetworkError | undefined
    /**
     * Set when the session ended at a point where QUIT is still legal (an interruption outside a message body): the
     * connection is not used again, but its release still says QUIT.
     */
    let quitLegal = false
    /** Inside a STARTTLS handshake or an AUTH exchange: a QUIT now would be read as something else. */
    let quitUnsafe = false
    let quitSent = false
    /** Replies owed to commands of `exchangeGroup` that were written and not read yet. */
    let owed = 0
    /** The submission engine running now, if one is: it knows whether a body is open and which replies it owes. */
    let engine: Engine.Engine<unknown, unknown> | undefined
    let capabilities = Capabilities.empty
    let extended = false
    let authenticated: string | undefined = undefined
    /**
     * The recipients accepted since a MAIL sent by hand (`mail`, `rcpt`): a body sent by hand after them (`data`,
     * `bdat`) is their transaction, and with LMTP each of them gets a reply to its end.
     */
    let handAccepted: Array<SmtpSubmission.AcceptedRecipient> = []
    const usage = { bytesSent: 0, bytesReceived: 0, sendingMillis: 0, receivingMillis: 0 }
    const lock = yield* Effect.makeSemaphore(1)

    /** Closes the socket after a failure that leaves the session's state unknown. */
    const breakConnection = (reason: string) =>
      Effect.suspend(() => {
        if (broken === undefined) broken = closedError(`the connection was closed after ${reason}`)
        quitLegal = false
        return socket.destroy
      })

    /**
     * After an interruption: outside a message body (and outside a handshake) QUIT is still legal, so the connection
     * is only retired, and its release says QUIT after the replies it is owed; inside one it closes at once.
     */
    const interrupted = Effect.suspend(() => {
      if (broken !== undefined) return Effect.void
      if (quitUnsafe || engine?.inBody === true) return breakConnection("an interruption inside a message body")
      return retire("an interruption")
    })

    /** Never used again, but QUIT is still legal: the release says it after the replies still owed. */
    const retire = (reason: string) =>
      Effect.sync(() => {
        broken = closedError(`the connection was closed after ${reason}`)
        quitLegal = true
      })

    /**
     * Fails when the server sent what no command awaits: a reply already parsed, or bytes received and not read.
     * Checked before a write when every reply due is in (RFC 5321 §4.1.1: the server only answers commands).
     */
    const expectSilence: Effect.Effect<void, SmtpProtocolError> = Effect.suspend(() => {
      const unsolicited = () => {
        const first = parsed[0]
        return Effect.fail(
          new SmtpProtocolError({
            reason: first === undefined
              ? "the server sent bytes while no command awaited a reply"
              : `a reply (${first.code}) came while no command awaited one`
          })
        )
      }
      if (parsed.length > 0 || parseFailure !== undefined) return unsolicited()
      return Effect.flatMap(socket.readReady, (early) => {
        if (early === undefined) return Effect.void
        usage.bytesReceived += early.length
        const step = parser.push(early)
        parsed = parsed.concat(step.replies)
        if (step.error !== undefined) parseFailure = step.error
        for (const reply of step.replies) for (const line of SmtpReply.formatLines(reply)) note("server", line)
        return unsolicited()
      })
    })

    // Every wait ends by its own timeout, even when the caller runs it uninterruptibly (an `acquireRelease`
    // acquisition, a pool's acquire, a finalizer): reads and writes carry the socket's own timer, and the rest is
    // made interruptible for Effect's.
    const timed = <A, E>(phase: Phase, mayHaveBeenDelivered: boolean) => (effect: Effect.Effect<A, E>) =>
      Effect.timeoutFail(Effect.interruptible(effect), {
        duration: timeoutOf(phase),
        onTimeout: timeoutError(phase, mayHaveBeenDelivered)
      })

    const timeoutError = (phase: Phase, mayHaveBeenDelivered: boolean) => () =>
      new TimeoutError({
        phase: phaseNames[phase],
        timeoutMillis: timeoutMillis[phase],
        mayHaveBeenDelivered
      })

    /**
     * The next reply, reading from the socket as needed until `deadline` (the phase's timeout counts for the whole
     * reply, however the server trickles it). A reply already parsed costs no read and no timer.
     */
    const nextReply = (
      verb: string | undefined,
      deadline: number,
      onTimeout: () => TimeoutError
    ): Effect.Effect<SmtpReply.SmtpReply, ReadError> =>
      Effect.suspend(() => {
        const ready = parsed.shift()
        if (ready !== undefined) return Effect.succeed(ready)
        if (parseFailure !== undefined) {
          return Effect.fail(new SmtpProtocolError({ reason: parseFailure.reason, command: verb }))
        }
        const started = now()
        return Effect.flatMap(socket.read(Math.max(0, deadline - started), onTimeout), (chunk) => {
          usage.receivingMillis += now() - started
          usage.bytesReceived += chunk.length
          const step = parser.push(chunk)
          parsed = step.replies.length === 0 ? parsed : parsed.concat(step.replies)
          if (step.error !== undefined) parseFailure = step.error
          return nextReply(verb, deadline, onTimeout)
        })
      })

    /** A reply into the transcript, and for a command of its own (`onSpan`), its code onto the command's span. */
    const replied = (reply: SmtpReply.SmtpReply, onSpan: boolean): Effect.Effect<SmtpReply.SmtpReply> => {
      for (const line of SmtpReply.formatLines(reply)) note("server", line)
      if (onSpan) {
        return Effect.as(
          Effect.zipRight(publishTranscript, Effect.annotateCurrentSpan("smtp.reply.code", reply.code)),
          reply
        )
      }
      return onTranscript === undefined ? Effect.succeed(reply) : Effect.as(publishTranscript, reply)
    }

    /**
     * The next reply, from what was already read when it holds one. The submission engine passes `onSpan` false: its
     * span is a whole message's (or batch's), and is annotated with the message's outcome instead.
     */
    const readReply = (phase: Phase, verb: string | undefined, mayHaveBeenDelivered = false, onSpan = true) =>
      Effect.suspend(() => {
        const ready = parsed.shift()
        if (ready !== undefined) return replied(ready, onSpan)
        return Effect.flatMap(
          nextReply(verb, now() + timeoutMillis[phase], timeoutError(phase, mayHaveBeenDelivered)),
          (reply) => replied(reply, onSpan)
        )
      })

    const writeBytes = (chunks: ReadonlyArray<Uint8Array>, phase: Phase) =>
      Effect.suspend(() => {
        const started = now()
        const written = Effect.map(socket.write(chunks, timeoutMillis[phase], timeoutError(phase, false)), () => {
          usage.sendingMillis += now() - started
          for (const chunk of chunks) usage.bytesSent += chunk.length
        })
        return onTranscript === undefined ? written : Effect.zipRight(publishTranscript, written)
      })

    /** True in a fiber that holds `lock`, so that a transaction can run its commands inside one use. */
    const holding = yield* FiberRef.make(false)

    /**
     * Runs `effect` as one use of the connection: one at a time, refused when the connection is closed, and closing
     * it when the effect fails in a way that leaves the session's state unknown or is interrupted midway. A use
     * inside a use (the commands of `send`, the EHLO after STARTTLS) runs in the outer one's turn.
     */
    const use = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | NetworkError, R> => {
      const guarded = Effect.suspend((): Effect.Effect<A, E | NetworkError, R> =>
        broken !== undefined ? Effect.fail(broken) : effect
      )
      // Refused at once when closed (which closes nothing more: a retired connection may still owe its QUIT).
      const run = effect.pipe(
        Effect.tapError((error) =>
          breaksConnection(error) ? breakConnection(`a ${(error as SmtpError)._tag}`) : Effect.void
        ),
        Effect.onInterrupt(() => interrupted),
        Effect.locally(holding, true)
      )
      return Effect.flatMap(FiberRef.get(holding), (held) =>
        held ? guarded : lock.withPermits(1)(
          Effect.suspend((): Effect.Effect<A, E | NetworkError, R> => broken !== undefined ? Effect.fail(broken) : run)
        ))
    }

    /**
     * Checks a reply: a reply outside `ok` fails with its error (a 421 among them, which `use` closes the connection
     * after); one that is not even a refusal is a protocol violation.
     */
    const check = (
      reply: SmtpReply.SmtpReply,
      verb: string,
      ok: (reply: SmtpReply.SmtpReply) => boolean
    ): Effect.Effect<SmtpReply.SmtpReply, SmtpTransientError | SmtpPermanentError | SmtpProtocolError> => {
      if (ok(reply)) return Effect.succeed(reply)
      if (SmtpReply.isTransientNegative(reply) || SmtpReply.isPermanentNegative(reply)) {
        return Effect.fail(SmtpReply.toError(reply, verb))
      }
      return Effect.fail(new SmtpProtocolError({ reason: `unexpected reply ${reply.code}`, command: verb }))
    }

    const warnIfSlow = (verb: string, started: number) =>
      Effect.suspend(() => {
        const took = now() - started
        return slowThreshold !== undefined && took >= slowThreshold
          ? Effect.logWarning(`SMTP ${verb} took ${took} ms`).pipe(
            Effect.annotateLogs({ "smtp.command": verb, "server.address": options.host, "duration.ms": took })
          )
          : Effect.void
      })

    /** Writes a group of commands in one write and reads one reply per command, in order (RFC 2920). */
    const exchangeGroup = (
      commands: ReadonlyArray<SmtpCommand.SmtpCommand>
    ): Effect.Effect<ReadonlyArray<SmtpReply.SmtpReply>, ReadError | InvalidInputError> =>
      Effect.gen(function*() {
        const bytes = yield* SmtpCommand.encodeGroup(commands)
        if (owed === 0) yield* expectSilence
        const started = now()
        for (const command of commands) yield* record("client", SmtpCommand.toTranscript(command))
        yield* writeBytes([bytes], phaseOf(commands[0]!))
        owed += commands.length
        const replies: Array<SmtpReply.SmtpReply> = []
        for (const command of commands) {
          const verb = SmtpCommand.verb(command)
          replies.push(yield* readReply(phaseOf(command), verb))
          owed--
          yield* warnIfSlow(verb, started)
        }
        return replies
      })

    const exchange = (command: SmtpCommand.SmtpCommand) =>
      Effect.map(exchangeGroup([command]), (replies) => replies[0]!)

    /** One command whose reply must be in the expected class. */
    const simple = (
      command: SmtpCommand.SmtpCommand
    ): Effect.Effect<SmtpReply.SmtpReply, ReplyError | InvalidInputError> => {
      const verb = SmtpCommand.verb(command)
      return use(
        Effect.flatMap(exchange(command), (reply) => check(reply, verb, expectedClass(command))).pipe(
          Effect.tap((reply) => {
            if (command._tag === "Mail" || command._tag === "Rset") handAccepted = []
            else if (command._tag === "Rcpt") handAccepted.push({ recipient: command.to, reply, delivery: undefined })
          })
        )
      ).pipe(
        Effect.withSpan(`smtp.${verb.toLowerCase()}`, {
          kind: "client",
          attributes: { ...spanAttributes, "smtp.command": verb }
        })
      )
    }

    /** A command without arguments, which cannot be invalid input. */
    const fixed = (command: SmtpCommand.SmtpCommand): Effect.Effect<SmtpReply.SmtpReply, ReplyError> =>
      simple(command).pipe(Effect.catchTag("InvalidInputError", (error) => Effect.die(error)))

    const clientName = (name: string | undefined) =>
      name ?? options.clientName ?? defaultClientName(socket.endpoints.localAddress)

    const hello = (verb: "EHLO" | "LHLO", name: string | undefined) =>
      Effect.map(
        simple(verb === "EHLO" ? SmtpCommand.ehlo(clientName(name)) : SmtpCommand.lhlo(clientName(name))),
        (reply) => {
          capabilities = Capabilities.fromReply(reply)
          extended = true
          return capabilities
        }
      )

    const ehlo = (name?: string) => hello("EHLO", name)
    const lhlo = (name?: string) => hello("LHLO", name)
    const helo = (name?: string) =>
      Effect.map(simple(SmtpCommand.helo(clientName(name))), (reply) => {
        capabilities = Capabilities.empty
        extended = false
        return reply
      })

    /** EHLO, falling back to HELO only when the server does not know EHLO (500 or 502); LHLO for LMTP. */
    const greet = lmtp
      ? lhlo()
      : ehlo().pipe(
        Effect.catchIf(
          (error): error is SmtpPermanentError =>
            error._tag === "SmtpPermanentError" && (error.code === 500 || error.code === 502),
          () => Effect.as(helo(), Capabilities.empty)
        )
      )

    /** STARTTLS, the handshake and EHLO (or LHLO) again, in one use: no other command can come in between. */
    const startTls = (overrides?: TlsOptions): Effect.Effect<TlsDetails, ReplyError | TlsError> =>
      use(
        Effect.gen(function*() {
          // From STARTTLS to the end of the handshake a QUIT would land in the handshake: an interruption closes.
          quitUnsafe = true
          const reply = yield* exchange(SmtpCommand.startTls).pipe(
            Effect.catchTag("InvalidInputError", (error) => Effect.die(error))
          )
          quitUnsafe = reply.code === 220
          yield* check(reply, "STARTTLS", (r) => r.code === 220)
          // Whatever the server sent after its 220 is dropped with the parser and with the transport's buffer.
          parser = SmtpReply.makeParser()
          parsed = []
          parseFailure = undefined
          const details = yield* socket.upgradeToTls({ ...tlsOptions, ...overrides }).pipe(timed("startTls", false))
          quitUnsafe = false
          capabilities = Capabilities.empty
          extended = false
          yield* (lmtp ? lhlo() : ehlo()).pipe(Effect.catchTag("InvalidInputError", (error) => Effect.die(error)))
          return details
        })
      ).pipe(
        Effect.withSpan("smtp.starttls", {
          kind: "client",
          attributes: { ...spanAttributes, "smtp.command": "STARTTLS" }
        })
      )

    /** A 334 challenge's base64 text, decoded; undefined when it is not base64 (RFC 4954 §4). */
    const decodeChallenge = (reply: SmtpReply.SmtpReply): Uint8Array | undefined => {
      const text = reply.lines.join("").trim()
      return text.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(text) ? Buffer.from(text, "base64") : undefined
    }

    /** Cancels an exchange the client cannot continue (RFC 4954 §4: "*"), then fails with `error`. */
    const cancelAuth = <E>(error: E) =>
      Effect.zipRight(Effect.ignore(exchange(SmtpCommand.authCancel)), Effect.fail(error))

    /** One AUTH exchange with a mechanism: the command, every 334 step, and the final reply. */
    const runExchange = (mechanism: Sasl.Mechanism, input: Sasl.StartInput) =>
      Effect.gen(function*() {
        const started = mechanism.start(input)
        if (Either.isLeft(started)) {
          return yield* new InvalidInputError({ field: "credentials", reason: started.left })
        }
        const attempt = started.right
        // Inside the exchange a QUIT would be read as a response: an interruption closes the connection.
        quitUnsafe = true
        let reply = yield* exchange(SmtpCommand.auth(mechanism.name, attempt.initialResponse))
        while (reply.code === 334) {
          const challenge = decodeChallenge(reply)
          if (challenge === undefined) {
            return yield* cancelAuth(
              new SmtpProtocolError({ reason: "a 334 challenge is not base64", command: "AUTH" })
            )
          }
          const step = attempt.step(challenge)
          if (step._tag === "Fail") {
            return yield* cancelAuth(new SmtpProtocolError({ reason: step.reason, command: "AUTH" }))
          }
          reply = yield* exchange(SmtpCommand.authResponse(step.response))
        }
        quitUnsafe = false
        yield* check(reply, "AUTH", (r) => r.code === 235)
        const unproven = attempt.finish()
        if (unproven !== undefined) {
          // Signed in to a server that could not prove it knows the password: do not use the session.
          yield* breakConnection("an unverified server")
          return yield* new SmtpAuthError({ failure: "server-unverified", detail: unproven })
        }
      })

    const authenticate = (settings: SmtpAuth.Settings) =>
      use(Effect.gen(function*() {
        if (!Capabilities.has(capabilities, "AUTH")) {
          return yield* new SmtpAuthError({ failure: "not-offered", detail: "" })
        }
        const secure = (yield* socket.tls) !== undefined
        if (!secure && settings.allowCleartext !== true) {
          return yield* new SmtpAuthError({ failure: "cleartext", detail: "allowCleartext is off" })
        }
        const usesToken = "token" in settings
        const chosen = Sasl.choose(Capabilities.authMechanisms(capabilities), {
          preference: settings.preference,
          pinned: settings.mechanism,
          credential: usesToken ? "token" : "password",
          mechanisms: [...(settings.mechanisms ?? []), ...Sasl.all]
        })
        if (Either.isLeft(chosen)) {
          return yield* new SmtpAuthError({ failure: "no-common-mechanism", detail: chosen.left })
        }
        const mechanism = chosen.right
        const base = { ...settings.startOptions, host: options.host, port }
        if ("token" in settings) {
          const attempt = (token: Redacted.Redacted<string>) =>
            runExchange(mechanism, { ...base, username: settings.username, token })
          // A refused token may just have expired: fetch it once more and try once more.
          yield* Effect.flatMap(settings.token, attempt).pipe(
            Effect.catchIf(
              (error) => error._tag === "SmtpPermanentError" && error.code === 535,
              () => Effect.flatMap(settings.token, attempt)
            )
          )
        } else {
          yield* runExchange(mechanism, { ...base, username: settings.username, password: settings.password })
        }
        authenticated = mechanism.name
        return mechanism.name
      })).pipe(
        Effect.withSpan("smtp.auth", { kind: "client", attributes: { ...spanAttributes, "smtp.command": "AUTH" } })
      )

    const quit = Effect.suspend(() => {
      quitSent = true
      return fixed(SmtpCommand.quit).pipe(Effect.ensuring(breakConnection("QUIT")))
    })

    /**
     * The release's QUIT when the session was cut short where QUIT is legal: written after whatever is owed, and
     * answered after the replies to it (which are read and dropped).
     */
    const closingQuit = Effect.suspend(() => {
      quitSent = true
      const skip = owed + (engine?.outstanding ?? 0)
      return Effect.gen(function*() {
        yield* record("client", "QUIT")
        yield* writeBytes([QUIT_COMMAND], "quit")
        for (let i = 0; i < skip; i++) yield* readReply("quit", "QUIT")
        return yield* readReply("quit", "QUIT")
      })
    })

    let bodyBlock: Buffer | undefined
    /** What the submission engine needs of this session. */
    const session: Submission.Session = {
      capabilities: () => capabilities,
      secure: Effect.map(socket.tls, (tls) => tls !== undefined),
      lmtp,
      write: (chunks) => writeBytes(chunks, "dataBlock"),
      readReply: (phase, verb, mayHaveBeenDelivered) => readReply(phase, verb, mayHaveBeenDelivered, false),
      readParsed: () => {
        // With an `onTranscript` callback the reply's lines must be published by an effect: take the slow path.
        if (onTranscript !== undefined || parsed.length === 0) return undefined
        const ready = parsed.shift()!
        for (const line of SmtpReply.formatLines(ready)) note("server", line)
        return ready
      },
      expectSilence,
      note: (line) => note("client", line),
      breakConnection: (error) => breakConnection(`a ${error._tag}`),
      broken: () => broken,
      track: (running) => void (engine = running),
      untrack: Effect.suspend(() => {
        const stopped = engine
        engine = undefined
        if (stopped === undefined || broken !== undefined) return Effect.void
        if (stopped.inBody) return breakConnection("a message body cut short")
        const left = stopped.outstanding
        if (left === 0) return Effect.void
        owed += left
        return retire("a send cut short")
      }),
      bodyBlock: () => (bodyBlock ??= Buffer.allocUnsafe(Engine.BODY_BLOCK_SIZE))
    }

    /**
     * A body after the caller's own MAIL and RCPT, through the same engine as `send`: `DATA` and the body (canonical,
     * dot-stuffed), or one BDAT chunk as given. The end of the message ends the hand-sent transaction.
     */
    const handFed = <E, R>(
      method: "DATA" | "BDAT",
      body: SmtpSubmission.Body<E, R>,
      settings: { readonly allowLongLines: boolean; readonly last: boolean }
    ): Effect.Effect<SmtpReply.SmtpReply, ReplyError | InvalidInputError | E, R> =>
      use(Effect.flatMap(session.secure, (secure) => {
        const accepted = handAccepted
        if (settings.last) handAccepted = []
        return Effect.flatMap(
          Submission.runHandFed<E, R>(session, secure, method, body, accepted, {
            ...settings,
            binary: method === "BDAT"
          }),
          (result) =>
            Either.isRight(result)
              ? Effect.as(
                Effect.annotateCurrentSpan("smtp.reply.code", result.right.response.code),
                result.right.response
              )
              : Effect.fail(result.left as ReplyError | InvalidInputError | E)
        )
      }))

    const data = <E = never, R = never>(
      body: SmtpSubmission.Body<E, R>,
      dataOptions?: { readonly allowLongLines?: boolean | undefined }
    ) =>
      handFed("DATA", body, { allowLongLines: dataOptions?.allowLongLines ?? false, last: true }).pipe(
        Effect.withSpan("smtp.data", { kind: "client", attributes: { ...spanAttributes, "smtp.command": "DATA" } })
      )

    const bdat = (chunk: Uint8Array, last: boolean) =>
      handFed<never, never>("BDAT", chunk, { allowLongLines: true, last }).pipe(
        Effect.catchTag("InvalidInputError", (error) => Effect.die(error)),
        Effect.withSpan("smtp.bdat", { kind: "client", attributes: { ...spanAttributes, "smtp.command": "BDAT" } })
      )

    /** Runs a batch through the engine in one use of the connection; on a closed one, every message fails at once. */
    const runBatch = <E, R, R2>(
      submissions:
        | Iterable<SmtpSubmission.Submission<E, R>>
        | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>,
      batchOptions: SmtpSubmission.SendAllOptions,
      emit: (result: Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>) => Effect.Effect<void>
    ) => {
      const batch = Effect.scoped(Effect.flatMap(Submission.feed(submissions), (feed) => {
        /** After a break, whatever is left fails at once, with the error further use of the connection gets. */
        const refuseRest = (error: SmtpSubmission.SendError): Effect.Effect<void, never, R2> =>
          Effect.suspend(() => {
            const rest: Array<unknown> = []
            for (let next = feed.poll(); next !== undefined; next = feed.poll()) rest.push(next)
            return Effect.zipRight(
              Effect.forEach(rest, () => emit(Either.left(error)), { discard: true }),
              Effect.flatMap(feed.wait, (more) => more ? refuseRest(error) : Effect.void)
            )
          })
        return Effect.flatMap(
          Submission.run(session, feed, batchOptions, ({ result }) => emit(result)),
          (broken) => broken === undefined ? Effect.void : refuseRest(broken)
        )
      }))
      return use(batch).pipe(Effect.catchAll(() => batch))
    }

    const send = <E = never, R = never>(
      envelope: SmtpSubmission.Envelope,
      body: SmtpSubmission.Body<E, R>,
      sendOptions?: SmtpSubmission.SendOptions
    ): Effect.Effect<SmtpSubmission.SendResult, SmtpSubmission.SendError | E, R> =>
      Effect.suspend(() => {
        let outcome: Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E> | undefined
        return runBatch<E, R, never>(
          [{ envelope, body }],
          sendOptions ?? {},
          (result) => Effect.sync(() => void (outcome = result))
        ).pipe(
          Effect.flatMap(() => outcome!),
          Effect.tap((result) =>
            Effect.annotateCurrentSpan({
              "smtp.method": result.method,
              "smtp.round_trips": result.roundTrips,
              "smtp.recipients.accepted": result.accepted.length,
              "smtp.recipients.rejected": result.rejected.length,
              "smtp.reply.code": result.response.code
            })
          )
        )
      }).pipe(
        // The hot path: no stack trace captured for the span (it costs more than the rest of the span).
        Effect.withSpan("smtp.send", { kind: "client", attributes: spanAttributes, captureStackTrace: false })
      )

    const sendAll = <E = never, R = never, R2 = never>(
      submissions:
        | Iterable<SmtpSubmission.Submission<E, R>>
        | Stream.Stream<SmtpSubmission.Submission<E, R>, never, R2>,
      batchOptions?: SmtpSubmission.SendAllOptions
    ): Stream.Stream<Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E>, never, R | R2> =>
      Stream.unwrapScoped(Effect.gen(function*() {
        const results = yield* Queue.bounded<
          Either.Either<SmtpSubmission.SendResult, SmtpSubmission.SendError | E> | typeof QueueStream.END
        >(RESULTS_AHEAD)
        yield* runBatch(submissions, batchOptions ?? {}, (result) => Queue.offer(results, result)).pipe(
          Effect.zipRight(Queue.offer(results, QueueStream.END)),
          Effect.withSpan("smtp.sendAll", { kind: "client", attributes: spanAttributes }),
          Effect.forkScoped
        )
        return QueueStream.untilEnd(results, RESULTS_AHEAD)
      }))

    // Release: QUIT, bounded by its short timeout, unless the session is already closed; the socket's own finalizer
    // (added when it was opened, so run after this one) then closes it.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() =>
        quitSent || (broken !== undefined && !quitLegal)
          ? socket.destroy
          // Finalizers run uninterruptibly; QUIT is made interruptible again so its timeout can cut it short.
          : Effect.ignore(
            Effect.interruptible(broken === undefined ? quit : closingQuit).pipe(Effect.timeout(timeoutOf("quit")))
          ).pipe(
            Effect.zipRight(socket.destroy)
          )
      )
    )

    // The greeting: 220, or a reply error (554 is permanent, RFC 5321 §3.1). Read after the finalizer is in place, so
    // that a refused session still ends with QUIT.
    const greeting = yield* use(
      Effect.flatMap(readReply("greeting", "greeting"), (reply) =>
        reply.code === 220
          ? Effect.succeed(reply)
          : check(reply, "greeting", () => false))
    ).pipe(Effect.withSpan("smtp.greeting", { kind: "client", attributes: spanAttributes }))

    const connection: SmtpConnection.SmtpConnection = {
      state: Effect.flatMap(socket.tls, (tls) =>
        Effect.sync(() => ({
          greeting,
          capabilities,
          extended,
          secure: tls !== undefined,
          tls,
          authenticated,
          endpoints: socket.endpoints,
          closed: broken !== undefined
        }))),
      transcript: transcript.stream,
      usage: Effect.sync(() => ({ ...usage })),
      resetUsage: Effect.sync(() => {
        usage.bytesSent = 0
        usage.bytesReceived = 0
        usage.sendingMillis = 0
        usage.receivingMillis = 0
      }),
      ehlo,
      helo,
      lhlo,
      startTls,
      mail: (from, parameters) => simple(SmtpCommand.mail(from, parameters)),
      rcpt: (to, parameters) => simple(SmtpCommand.rcpt(to, parameters)),
      data,
      bdat,
      rset: fixed(SmtpCommand.rset),
      noop: (text) => simple(SmtpCommand.noop(text)),
      vrfy: (text) => simple(SmtpCommand.vrfy(text)),
      expn: (text) => simple(SmtpCommand.expn(text)),
      help: (topic) => simple(SmtpCommand.help(topic)),
      quit,
      command: (command) =>
        use(exchange(command)).pipe(
          Effect.withSpan(`smtp.${SmtpCommand.verb(command).toLowerCase()}`, {
            kind: "client",
            attributes: { ...spanAttributes, "smtp.command": SmtpCommand.verb(command) }
          })
        ),
      readReply: use(readReply("command", undefined)),
      authenticate,
      writeRaw: (bytes) =>
        use(Effect.zipRight(record("client", `<${bytes.length} raw octets>`), writeBytes([bytes], "dataBlock"))),
      abort: breakConnection("abort"),
      timeouts: Object.fromEntries(
        Object.keys(SmtpTimeouts.defaults).map((key) => [key, timeoutOf(key as Phase)])
      ) as { readonly [K in Phase]: Duration.Duration },
      send,
      sendAll
    }

    yield* greet
    if (tlsMode === "starttls" || tlsMode === "opportunistic") {
      if (Capabilities.startTls(capabilities)) {
        yield* startTls()
      } else if (tlsMode === "starttls") {
        return yield* new TlsError({ failure: "not-offered", host: options.host })
      }
    }
    // With SmtpAuth in context, every connection signs in before it is handed out.
    const auth = yield* Effect.serviceOption(SmtpAuth.SmtpAuth)
    if (Option.isSome(auth)) yield* authenticate(auth.value)
    feeds.set(
      connection,
      (feed, feedOptions, emit) =>
        use(Submission.run(session, feed, feedOptions, emit)).pipe(Effect.catchAll(Effect.succeed))
    )
    return connection
  })

/** Runs a feed on one connection: see `serve`. */
type Serve = <K extends SmtpSubmission.Submission<E, R>, E, R, R2>(
  feed: Submission.Feed<K, E, R, R2>,
  options: SmtpSubmission.SendAllOptions,
  emit: (outcome: Submission.Outcome<K, E>) => Effect.Effect<void>
) => Effect.Effect<Engine.Fatal | undefined, never, R | R2>

const feeds = new WeakMap<SmtpConnection.SmtpConnection, Serve>()

/**
 * Runs messages from `feed` on a connection opened by `make`, as the client's lanes do: until the feed has no more
 * ready, or the session breaks (its error is returned; the feed's messages not taken are the caller's to place).
 */
export const serve = <K extends SmtpSubmission.Submission<E, R>, E, R, R2>(
  connection: SmtpConnection.SmtpConnection,
  feed: Submission.Feed<K, E, R, R2>,
  options: SmtpSubmission.SendAllOptions,
  emit: (outcome: Submission.Outcome<K, E>) => Effect.Effect<void>
): Effect.Effect<Engine.Fatal | undefined, never, R | R2> => feeds.get(connection)!(feed, options, emit)
