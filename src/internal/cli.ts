/**
 * The `effect-smtp` command line ("the swaks of the Effect world"): `probe` shows what a server offers, `send` sends
 * one message. The bin file only wires this up to Node; everything here is testable on its own.
 */
import * as Args from "@effect/cli/Args"
import type * as CliApp from "@effect/cli/CliApp"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeStream from "@effect/platform-node/NodeStream"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import { createRequire } from "node:module"
import * as Capabilities from "../Capabilities.js"
import * as DataEncoder from "../DataEncoder.js"
import * as SmtpAuth from "../SmtpAuth.js"
import * as SmtpCommand from "../SmtpCommand.js"
import * as SmtpConfig from "../SmtpConfig.js"
import * as SmtpConnection from "../SmtpConnection.js"
import { isSmtpError, SmtpAuthError, TlsError } from "../SmtpError.js"
import type { SmtpReply } from "../SmtpReply.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import type { SmtpTransport, TlsDetails, TlsOptions } from "../SmtpTransport.js"

// -----------------------------------------------------------------------------
// Exit codes and errors
// -----------------------------------------------------------------------------

/** The exit codes, from BSD's sysexits.h. */
export const ExitCode = {
  /** Sent, or the probe succeeded. */
  ok: 0,
  /** EX_USAGE: bad arguments, an unknown scheme, a malformed URL. */
  usage: 64,
  /** EX_DATAERR: an address or a message that cannot be sent as it is. */
  dataError: 65,
  /** EX_NOINPUT: the message file (or standard input) could not be read. */
  noInput: 66,
  /**
   * EX_UNAVAILABLE: the server refused for good (5xx, a refused login), TLS failed, or authentication could not
   * happen (no AUTH, no common mechanism, cleartext not allowed, an unverified server).
   */
  unavailable: 69,
  /** EX_SOFTWARE: a bug in effect-smtp. */
  software: 70,
  /** EX_TEMPFAIL: a 4xx reply, a network failure or a timeout; try again later. */
  tempFail: 75,
  /** EX_PROTOCOL: the server broke the SMTP protocol. */
  protocol: 76,
  /** Interrupted by SIGINT or SIGTERM (128 + SIGINT). */
  interrupted: 130
} as const

/** A command line that parses but makes no sense: an invalid URL, no command. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly reason: string }> {
  override get message(): string {
    return this.reason
  }
}

/** The message could not be read from its file or from standard input. */
export class InputError extends Data.TaggedError("InputError")<{
  /** The file name, or "standard input". */
  readonly source: string
  /** Why, e.g. "ENOENT: no such file or directory, open 'message.eml'". */
  readonly reason: string
}> {
  override get message(): string {
    return `Cannot read the message from ${this.source}: ${this.reason}`
  }
}

/** The exit code for an error of any command (sysexits.h). */
export const exitCodeOf = (error: unknown): number => {
  if (ValidationError.isValidationError(error)) return ExitCode.usage
  if (error instanceof UsageError) return ExitCode.usage
  if (error instanceof InputError) return ExitCode.noInput
  if (isSmtpError(error)) {
    switch (error._tag) {
      case "InvalidInputError":
        return ExitCode.dataError
      case "SmtpPermanentError":
      case "TlsError":
      case "SmtpAuthError":
      case "SmtpCapabilityError":
        return ExitCode.unavailable
      case "SmtpTransientError":
      case "NetworkError":
      case "TimeoutError":
        return ExitCode.tempFail
      case "SmtpProtocolError":
        return ExitCode.protocol
    }
  }
  return ExitCode.software
}

/** The exit code for how the whole program ended: its own code, 130 when interrupted, 70 for a bug. */
export const exitCodeOfExit = (exit: Exit.Exit<unknown, unknown>): number =>
  Exit.match(exit, {
    onSuccess: (code) => typeof code === "number" ? code : ExitCode.ok,
    onFailure: (cause) =>
      Cause.isInterruptedOnly(cause)
        ? ExitCode.interrupted
        : Option.match(Cause.failureOption(cause), { onNone: () => ExitCode.software, onSome: exitCodeOf })
  })

/** One line, whatever the message holds. */
const oneLine = (text: string): string => text.replace(/\s*[\r\n]+\s*/g, " ").trim()

const messageOf = (error: unknown): string =>
  error instanceof Error ? error.message : typeof error === "string" ? error : "unknown error"

// -----------------------------------------------------------------------------
// Options shared by the commands
// -----------------------------------------------------------------------------

const url = Args.text({ name: "URL" }).pipe(
  Args.withDescription(
    "smtp:// (STARTTLS when offered), smtptls:// (STARTTLS required) or smtps:// (implicit TLS); esmtp, esmtptls " +
      "and esmtps default to port 587/465. E.g. smtp://127.0.0.1:2525"
  )
)

const insecure = Options.boolean("insecure").pipe(
  Options.withDescription("Do not verify the server's TLS certificate (dangerous: anyone on the path can listen in)")
)

const timeout = Options.float("timeout").pipe(
  Options.withPseudoName("SECONDS"),
  Options.mapEffect((seconds) =>
    Number.isFinite(seconds) && seconds > 0
      ? Effect.succeed(seconds)
      : Effect.fail(ValidationError.invalidValue(HelpDoc.p("--timeout must be a positive number of seconds")))
  ),
  Options.withDescription("The timeout of every phase (connect, greeting, each command, each write), in seconds"),
  Options.optional
)

const helo = Options.text("helo").pipe(
  Options.withPseudoName("NAME"),
  Options.withDescription("The name sent with EHLO/HELO (default: this host's name, or its address)"),
  Options.optional
)

const json = Options.boolean("json").pipe(Options.withDescription("Print the result as JSON on standard output"))

const trace = Options.boolean("trace").pipe(
  Options.withDescription("Print the SMTP session on standard error as it happens (C: client, S: server)")
)

interface Common {
  readonly url: string
  readonly insecure: boolean
  readonly timeout: Option.Option<number>
  readonly helo: Option.Option<string>
  readonly trace: boolean
}

const settingsOf = (text: string): Effect.Effect<SmtpConfig.UrlSettings, UsageError> =>
  Either.match(SmtpConfig.fromUrl(text), {
    // The message never shows the password (SmtpConfig promises that).
    onLeft: (error) => Effect.fail(new UsageError({ reason: error.message })),
    onRight: Effect.succeed
  })

/** The warnings that go with the options, on standard error, before anything is sent. */
const warnings = (common: Common): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (common.insecure) {
      yield* Console.error(
        "WARNING: --insecure: TLS certificates are NOT verified; the server may not be who it claims to be"
      )
    }
  })

// -----------------------------------------------------------------------------
// Authentication
// -----------------------------------------------------------------------------

const user = Options.text("user").pipe(
  Options.withPseudoName("NAME"),
  Options.withDescription(
    "Sign in (AUTH) as this user, with the password from --password-env; or put user:password in the URL"
  ),
  Options.optional
)

const passwordEnv = Options.text("password-env").pipe(
  Options.withPseudoName("VAR"),
  Options.withDescription(
    "The environment variable that holds the password of --user (a password is never taken as an argument: other " +
      "users of the machine can see those)"
  ),
  Options.optional
)

const authMechanism = Options.text("auth").pipe(
  Options.withPseudoName("MECHANISM"),
  Options.withDescription(
    "Sign in with this SASL mechanism or fail, e.g. PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256 (default: the strongest " +
      "one both sides support)"
  ),
  Options.optional
)

const allowCleartextAuth = Options.boolean("allow-cleartext-auth").pipe(
  Options.withDescription(
    "Sign in even over a connection without TLS, e.g. to a test server on loopback (dangerous: anyone on the path " +
      "can read or replay the credentials; said loudly)"
  )
)

interface AuthArgs {
  readonly user: Option.Option<string>
  readonly passwordEnv: Option.Option<string>
  readonly auth: Option.Option<string>
  readonly allowCleartextAuth: boolean
}

/** The mechanisms the command line can use: those that sign in with a password. */
const passwordMechanisms = SmtpAuth.all.filter((mechanism) => mechanism.credential === "password")

/** The pinned mechanism, upper case, when this client has it and it takes a password. */
const pinnedOf = (name: string): Effect.Effect<string, UsageError> => {
  const upper = name.toUpperCase()
  const mechanism = SmtpAuth.all.find((m) => m.name === upper)
  if (mechanism === undefined) {
    return new UsageError({
      reason: `--auth: unknown mechanism "${oneLine(name)}"; use one of ${
        passwordMechanisms.map((m) => m.name).join(", ")
      }`
    })
  }
  if (mechanism.credential !== "password") {
    return new UsageError({
      reason: `--auth ${upper} signs in with an OAuth access token; the command line signs in with a password`
    })
  }
  return Effect.succeed(upper)
}

/** The password in the environment variable; never shown, not even in an error. */
const passwordFromEnv = (variable: string): Effect.Effect<Redacted.Redacted<string>, UsageError> =>
  Effect.suspend(() => {
    if (variable === "" || variable.includes("=")) {
      return new UsageError({ reason: `--password-env: "${oneLine(variable)}" is not an environment variable name` })
    }
    const value = process.env[variable]
    if (value === undefined) {
      return new UsageError({ reason: `--password-env: the environment variable ${variable} is not set` })
    }
    if (value === "") {
      return new UsageError({ reason: `--password-env: the environment variable ${variable} is empty` })
    }
    return Effect.succeed(Redacted.make(value))
  })

/**
 * The authentication settings, from the URL's credentials or from --user and --password-env (one or the other), or
 * undefined when there are none. Every mistake is a usage error that never shows the password.
 */
const authSettingsOf = (
  args: AuthArgs,
  settings: SmtpConfig.UrlSettings
): Effect.Effect<SmtpAuth.Settings | undefined, UsageError> =>
  Effect.gen(function*() {
    const fromUrl = settings.credentials
    const userName = Option.getOrUndefined(args.user)
    const variable = Option.getOrUndefined(args.passwordEnv)
    if (fromUrl !== undefined && (userName !== undefined || variable !== undefined)) {
      return yield* new UsageError({
        reason: "Give the credentials either in the URL or with --user and --password-env, not both"
      })
    }
    if (userName !== undefined && variable === undefined) {
      return yield* new UsageError({
        reason: "--user needs --password-env VAR: the password is read from an environment variable, never from " +
          "the command line"
      })
    }
    if (userName === undefined && variable !== undefined) {
      return yield* new UsageError({ reason: "--password-env needs --user NAME" })
    }
    if (userName === "") return yield* new UsageError({ reason: "--user must not be empty" })
    const pinned = Option.isSome(args.auth) ? yield* pinnedOf(args.auth.value) : undefined
    const credentials: SmtpAuth.Credentials | undefined = fromUrl ??
      (userName !== undefined && variable !== undefined
        ? { username: userName, password: yield* passwordFromEnv(variable) }
        : undefined)
    if (credentials === undefined) {
      if (pinned !== undefined) {
        return yield* new UsageError({
          reason: "--auth needs credentials: user:password in the URL, or --user with --password-env"
        })
      }
      return undefined
    }
    return SmtpAuth.fromCredentials(credentials, { mechanism: pinned, allowCleartext: args.allowCleartextAuth })
  })

/**
 * Signs in on an open connection (after STARTTLS) when there are credentials, and returns the mechanism that did.
 * When the connection is in cleartext and --allow-cleartext-auth allows signing in anyway, says so loudly first.
 */
const signIn = (
  connection: SmtpConnection.SmtpConnection,
  auth: SmtpAuth.Settings | undefined
): Effect.Effect<string | undefined, SmtpConnection.ConnectError> =>
  auth === undefined ? Effect.succeed(undefined) : Effect.gen(function*() {
    const state = yield* connection.state
    // Only when a mechanism will really be tried (authenticate fails before sending anything otherwise).
    const willTry = Capabilities.has(state.capabilities, "AUTH") &&
      Either.isRight(
        SmtpAuth.choose(Capabilities.authMechanisms(state.capabilities), {
          pinned: auth.mechanism,
          credential: "password"
        })
      )
    if (!state.secure && auth.allowCleartext === true && willTry) {
      yield* Console.error(
        "WARNING: --allow-cleartext-auth: signing in over a connection WITHOUT TLS; anyone on the path can read or " +
          "replay the credentials"
      )
    }
    return yield* connection.authenticate(auth).pipe(
      Effect.catchIf(
        (error) => error._tag === "SmtpAuthError" && error.failure === "cleartext",
        () =>
          new SmtpAuthError({
            failure: "cleartext",
            detail: "give --allow-cleartext-auth to sign in anyway, e.g. to a test server on loopback"
          })
      )
    )
  })

const connectionOptions = (common: Common, settings: SmtpConfig.UrlSettings): SmtpConnection.Options => {
  const tlsOptions: TlsOptions = common.insecure ? { rejectUnauthorized: false } : {}
  return SmtpConnection.optionsFromUrl(settings, {
    tlsOptions,
    clientName: Option.getOrUndefined(common.helo),
    timeout: Option.getOrUndefined(Option.map(common.timeout, (seconds) => Duration.millis(seconds * 1000))),
    onTranscript: common.trace
      ? (entry) => Console.error(`${entry.direction === "client" ? "C" : "S"}: ${entry.line}`)
      : undefined
  })
}

const where = (settings: SmtpConfig.UrlSettings): string =>
  settings.host.includes(":") ? `[${settings.host}]:${settings.port}` : `${settings.host}:${settings.port}`

// -----------------------------------------------------------------------------
// probe
// -----------------------------------------------------------------------------

const capabilityJson = (capabilities: Capabilities.Capabilities) =>
  capabilities.entries.map((entry) => ({ keyword: entry.keyword, parameters: entry.parameters }))

const tlsJson = (via: "implicit" | "starttls", details: TlsDetails) => ({
  via,
  protocol: details.protocol,
  cipher: details.cipher,
  authorized: details.authorized,
  certificate: details.certificate === undefined ? null : {
    subject: details.certificate.subject,
    issuer: details.certificate.issuer,
    validFrom: details.certificate.validFrom,
    validTo: details.certificate.validTo,
    subjectAltName: details.certificate.subjectAltName ?? null
  }
})

const replyJson = (reply: SmtpReply) => ({
  code: reply.code,
  enhancedCode: reply.enhancedCode ?? null,
  text: reply.text
})

/** What a probe found. */
export interface ProbeReport {
  readonly settings: SmtpConfig.UrlSettings
  readonly greeting: SmtpReply
  readonly extended: boolean
  /** The capabilities of the first EHLO: before STARTTLS, or over implicit TLS. */
  readonly capabilities: Capabilities.Capabilities
  readonly tls: { readonly via: "implicit" | "starttls"; readonly details: TlsDetails } | undefined
  readonly capabilitiesAfterStartTls: Capabilities.Capabilities | undefined
  /** The user and the mechanism that signed in, when the command line had credentials. */
  readonly authenticated: { readonly user: string; readonly mechanism: string } | undefined
}

/**
 * Connects as the URL says and reads what the server offers, then signs in when there are credentials. For the
 * STARTTLS schemes the connection is opened without TLS, so that the capabilities before STARTTLS can be read, then
 * upgraded here.
 */
export const probeServer = (
  args: Common & AuthArgs
): Effect.Effect<ProbeReport, SmtpConnection.ConnectError | UsageError, SmtpTransport> =>
  Effect.gen(function*() {
    const settings = yield* settingsOf(args.url)
    const auth = yield* authSettingsOf(args, settings)
    yield* warnings(args)
    const options = connectionOptions(args, settings)
    const implicit = settings.tls === "implicit"
    return yield* Effect.scoped(Effect.gen(function*() {
      const connection = yield* SmtpConnection.make({ ...options, tls: implicit ? "implicit" : "none" })
      const before = yield* connection.state
      const report = {
        settings,
        greeting: before.greeting,
        extended: before.extended,
        capabilities: before.capabilities
      }
      let tls: ProbeReport["tls"] = undefined
      let capabilitiesAfterStartTls: Capabilities.Capabilities | undefined = undefined
      if (implicit) {
        tls = before.tls === undefined ? undefined : { via: "implicit", details: before.tls }
      } else if (settings.tls !== "none") {
        if (Capabilities.startTls(before.capabilities)) {
          tls = { via: "starttls", details: yield* connection.startTls() }
          capabilitiesAfterStartTls = (yield* connection.state).capabilities
        } else if (settings.tls === "starttls") {
          return yield* new TlsError({ failure: "not-offered", host: settings.host })
        }
      }
      const mechanism = yield* signIn(connection, auth)
      return {
        ...report,
        tls,
        capabilitiesAfterStartTls,
        authenticated: auth === undefined || mechanism === undefined
          ? undefined
          : { user: auth.username, mechanism }
      }
    }))
  })

/** The SASL mechanisms offered on the final (most secure) session. */
const authMechanismsOf = (report: ProbeReport): ReadonlyArray<string> =>
  Capabilities.authMechanisms(report.capabilitiesAfterStartTls ?? report.capabilities)

/** The probe report as JSON. */
export const probeJson = (report: ProbeReport) => ({
  host: report.settings.host,
  port: report.settings.port,
  tlsMode: report.settings.tls,
  greeting: replyJson(report.greeting),
  extended: report.extended,
  capabilities: capabilityJson(report.capabilities),
  tls: report.tls === undefined ? null : tlsJson(report.tls.via, report.tls.details),
  capabilitiesAfterStartTls: report.capabilitiesAfterStartTls === undefined
    ? null
    : capabilityJson(report.capabilitiesAfterStartTls),
  authMechanisms: authMechanismsOf(report),
  authenticated: report.authenticated?.mechanism ?? null
})

const capabilityLines = (capabilities: Capabilities.Capabilities): Array<string> =>
  capabilities.entries.length === 0
    ? ["  (none)"]
    : capabilities.entries.map((entry) => `  ${[entry.keyword, ...entry.parameters].join(" ")}`)

/** The probe report for people. */
export const probeText = (report: ProbeReport): string => {
  const lines: Array<string> = []
  lines.push(`Server:        ${where(report.settings)} (TLS mode: ${report.settings.tls})`)
  const [first = "", ...rest] = report.greeting.lines
  lines.push(`Greeting:      ${report.greeting.code} ${first}`.trimEnd())
  for (const line of rest) lines.push(`               ${line}`)
  if (!report.extended) lines.push("Extensions:    none (the server does not know EHLO; HELO was used)")
  const startTls = report.tls?.via === "starttls"
  lines.push(startTls ? "Capabilities before STARTTLS:" : "Capabilities:")
  lines.push(...capabilityLines(report.capabilities))
  if (report.tls === undefined) {
    lines.push("TLS:           none (the server does not offer STARTTLS)")
  } else {
    const { details, via } = report.tls
    const verified = details.authorized ? "certificate verified" : "certificate NOT verified"
    const how = via === "implicit" ? "implicit" : "STARTTLS"
    lines.push(`TLS:           ${how}, ${details.protocol}, ${details.cipher}, ${verified}`)
    if (details.certificate === undefined) {
      lines.push("  Certificate: none")
    } else {
      lines.push(`  Subject:     ${details.certificate.subject}`)
      lines.push(`  Issuer:      ${details.certificate.issuer}`)
      lines.push(`  Valid:       ${details.certificate.validFrom} to ${details.certificate.validTo}`)
      if (details.certificate.subjectAltName !== undefined) {
        lines.push(`  Alt names:   ${details.certificate.subjectAltName}`)
      }
    }
  }
  if (report.capabilitiesAfterStartTls !== undefined) {
    lines.push("Capabilities after STARTTLS:")
    lines.push(...capabilityLines(report.capabilitiesAfterStartTls))
  }
  const mechanisms = authMechanismsOf(report)
  lines.push(`AUTH:          ${mechanisms.length === 0 ? "none offered" : mechanisms.join(" ")}`)
  if (report.authenticated !== undefined) {
    lines.push(`Signed in:     as ${report.authenticated.user} with ${report.authenticated.mechanism}`)
  }
  return lines.join("\n")
}

const probe = Command.make(
  "probe",
  { url, json, insecure, timeout, helo, trace, user, passwordEnv, auth: authMechanism, allowCleartextAuth },
  (args) =>
    Effect.flatMap(
      probeServer(args),
      (report) => Console.log(args.json ? JSON.stringify(probeJson(report), null, 2) : probeText(report))
    )
).pipe(
  Command.withDescription(
    "Connect, read the greeting and the capabilities, STARTTLS when the URL asks or the server offers it, and show " +
      "the TLS details, the capabilities after STARTTLS and the AUTH mechanisms; with credentials, sign in and show " +
      "which mechanism did"
  )
)

// -----------------------------------------------------------------------------
// send
// -----------------------------------------------------------------------------

const from = Options.text("from").pipe(
  Options.withPseudoName("ADDRESS"),
  Options.withDescription("The envelope sender (MAIL FROM); \"\" for the null sender <>")
)

const to = Options.text("to").pipe(
  Options.withPseudoName("ADDRESS"),
  Options.atLeast(1),
  Options.withDescription("An envelope recipient (RCPT TO); repeat --to for more")
)

const file = Options.file("file").pipe(
  Options.withPseudoName("FILE"),
  Options.withDescription("The message (headers and body, e.g. a .eml file); default: standard input"),
  Options.optional
)

/** Every byte of a readable stream, as one buffer. */
const readAll = <E>(stream: Stream.Stream<Uint8Array, E>): Effect.Effect<Uint8Array, E> =>
  Effect.map(Stream.runCollect(stream), (chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)))

/**
 * The message, as bytes. It is read whole before connecting (from the file, or from standard input until its end):
 * so a slow producer, or a person typing at a terminal, does not hold an SMTP session open into the server's
 * timeouts, a failure to read leaves nothing half sent, and the message is checked before anything reaches the wire.
 * Messages are bounded by the servers' SIZE limits (tens of megabytes), so memory is not a concern.
 */
const readMessage = (path: Option.Option<string>): Effect.Effect<Uint8Array, InputError, FileSystem.FileSystem> =>
  Option.match(Option.filter(path, (p) => p !== "-"), {
    onSome: (p) =>
      Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFile(p)).pipe(
        Effect.mapError((error) =>
          new InputError({
            source: p,
            reason: error._tag === "SystemError" ? error.description ?? error.reason : error.message
          })
        )
      ),
    onNone: () =>
      Effect.gen(function*() {
        if (process.stdin.isTTY) {
          yield* Console.error("Reading the message from standard input; end it with Ctrl-D on a line of its own")
        }
        return yield* readAll(
          NodeStream.fromReadable<InputError>(
            () => process.stdin,
            (cause) => new InputError({ source: "standard input", reason: messageOf(cause) }),
            { closeOnDone: false }
          )
        )
      })
  })

/** What the server said about one transaction, and the mechanism that signed in (null when none did). */
export const sendJson = (result: SmtpSubmission.SendResult, authenticated: string | undefined) => ({
  accepted: result.accepted.map((entry) => entry.recipient),
  rejected: result.rejected.map((entry) => ({
    recipient: entry.recipient,
    code: entry.error.code,
    enhancedCode: entry.error.enhancedCode ?? null,
    message: entry.error.lines.join("\n")
  })),
  response: replyJson(result.response),
  method: result.method,
  roundTrips: result.roundTrips,
  authenticated: authenticated ?? null
})

const replyLine = (code: number, enhancedCode: string | undefined, lines: ReadonlyArray<string>): string =>
  [String(code), enhancedCode, lines.join(" ").trim()].filter((part) => part !== undefined && part !== "").join(" ")

/** The outcome for people. */
export const sendText = (
  settings: SmtpConfig.UrlSettings,
  result: SmtpSubmission.SendResult,
  authenticated?: { readonly user: string; readonly mechanism: string }
): string => {
  const total = result.accepted.length + result.rejected.length
  const lines = [
    `Sent to ${where(settings)}: ${result.accepted.length} of ${total} recipient${total === 1 ? "" : "s"} accepted`,
    `  Server: ${replyLine(result.response.code, result.response.enhancedCode, result.response.lines)}`,
    `  Sent with ${result.method} in ${result.roundTrips} round trip${result.roundTrips === 1 ? "" : "s"}`
  ]
  if (authenticated !== undefined) {
    lines.push(`  Signed in: as ${authenticated.user} with ${authenticated.mechanism}`)
  }
  for (const entry of result.accepted) lines.push(`  Accepted: ${entry.recipient}`)
  for (const entry of result.rejected) {
    lines.push(
      `  Rejected: ${entry.recipient}: ${replyLine(entry.error.code, entry.error.enhancedCode, entry.error.lines)}`
    )
  }
  return lines.join("\n")
}

const send = Command.make(
  "send",
  {
    url,
    from,
    to,
    file,
    json,
    trace,
    insecure,
    timeout,
    helo,
    user,
    passwordEnv,
    auth: authMechanism,
    allowCleartextAuth
  },
  (args) =>
    Effect.gen(function*() {
      const settings = yield* settingsOf(args.url)
      const auth = yield* authSettingsOf(args, settings)
      // The addresses are checked before the message is read or anything is sent.
      yield* SmtpCommand.encodeGroup([SmtpCommand.mail(args.from), ...args.to.map((r) => SmtpCommand.rcpt(r))])
      yield* warnings(args)
      const message = yield* readMessage(args.file)
      // So is the message (lines over 998 octets), so that a bad one never leaves a DATA half sent.
      yield* DataEncoder.encode(message)
      const { mechanism, result } = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* SmtpConnection.make(connectionOptions(args, settings))
        const mechanism = yield* signIn(connection, auth)
        const result = yield* connection.send({ from: args.from, to: args.to }, message)
        return { mechanism, result }
      }))
      const authenticated = auth === undefined || mechanism === undefined
        ? undefined
        : { user: auth.username, mechanism }
      yield* Console.log(
        args.json
          ? JSON.stringify(sendJson(result, mechanism), null, 2)
          : sendText(settings, result, authenticated)
      )
    })
).pipe(
  Command.withDescription(
    "Send one message (from --file, or from standard input) to the recipients, with STARTTLS as the URL says, " +
      "signing in first when there are credentials"
  )
)

// -----------------------------------------------------------------------------
// The application
// -----------------------------------------------------------------------------

/** The `effect-smtp` command and its subcommands. */
export const command = Command.make(
  "effect-smtp",
  {},
  () => Effect.fail(new UsageError({ reason: "Give a command: probe or send (see effect-smtp --help)" }))
).pipe(
  Command.withDescription("An SMTP client for testing servers: probe what they offer, send a message"),
  Command.withSubcommands([probe, send])
)

const version = ((): string => {
  try {
    // src/internal/cli.ts and dist/internal/cli.js are both two levels below package.json.
    const manifest: unknown = createRequire(import.meta.url)("../../package.json")
    return typeof manifest === "object" && manifest !== null && "version" in manifest &&
        typeof manifest.version === "string"
      ? manifest.version
      : "unknown"
  } catch {
    return "unknown"
  }
})()

const run = Command.run(command, { name: "effect-smtp", version })

/**
 * @effect/cli does not read `--to=ADDRESS` for a repeated option (it reads `--to ADDRESS`), so the first form is
 * turned into the second.
 */
export const normalizeArgs = (argv: ReadonlyArray<string>): Array<string> =>
  argv.flatMap((arg, i) => {
    const match = i >= 2 ? /^--to=(.*)$/s.exec(arg) : null
    return match === null ? [arg] : ["--to", match[1]!]
  })

/**
 * Runs the command line (`process.argv`: node, the script, then the arguments) and returns the exit code. Errors are
 * printed as one line on standard error (@effect/cli prints its own validation errors); logs go to standard error too,
 * so that standard output holds only the result.
 */
export const main = (
  argv: ReadonlyArray<string>
): Effect.Effect<number, never, SmtpTransport | CliApp.CliApp.Environment> =>
  run(normalizeArgs(argv)).pipe(
    Effect.as(ExitCode.ok as number),
    Effect.catchAll((error) =>
      Effect.as(
        // @effect/cli has printed its own errors already.
        ValidationError.isValidationError(error)
          ? Effect.void
          : Console.error(`effect-smtp: ${oneLine(error.message)}`),
        exitCodeOf(error)
      )
    ),
    Effect.catchAllDefect((defect) =>
      // SmtpConnection's STARTTLS turns a timeout, a network failure or a protocol violation while it waits for the
      // 220 into a defect (`Effect.orDie`); such an error is still reported as what it is.
      isSmtpError(defect)
        ? Effect.as(Console.error(`effect-smtp: ${oneLine(defect.message)}`), exitCodeOf(defect))
        : Effect.as(Console.error(`effect-smtp: internal error: ${oneLine(messageOf(defect))}`), ExitCode.software)
    ),
    Effect.provide(Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true })))
  )
