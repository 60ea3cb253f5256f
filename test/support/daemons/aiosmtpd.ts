/**
 * aiosmtpd (Debian's `python3-aiosmtpd`) for integration tests: an SMTP server with AUTH PLAIN, LOGIN and CRAM-MD5 for
 * one account, on 127.0.0.1 and a free port, owned by the test run. It accepts every message (any sender, any
 * recipient) and keeps each one, with its envelope, in its folder.
 *
 * By default there is no TLS and AUTH is offered in cleartext (for clients that opt in to that on loopback); with
 * `starttls`, it offers STARTTLS with a self-signed certificate for localhost and AUTH only after STARTTLS. It
 * advertises PIPELINING (aiosmtpd does not by default).
 *
 * Runs `/usr/bin/python3 test/support/daemons/aiosmtpd_server.py`; needs
 * `apt-get install -y python3-aiosmtpd openssl`, not root.
 */
import { Clock, Context, Effect, Layer, Schedule } from "effect"
import type { Duration, Scope } from "effect"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { selfSigned } from "../helpers/tls.js"
import { isRunning, killGroup, readText, spawnGroup } from "./processes.js"
import { greetingLine, serverDirectory } from "./servers.js"

/** What `requireServer` should find for these tests, and how to install it. */
export const aiosmtpdBinaries: ReadonlyArray<string> = ["/usr/bin/python3", "/usr/bin/aiosmtpd", "/usr/bin/openssl"]
export const aiosmtpdInstall = "apt-get install -y python3-aiosmtpd openssl"

/** The first line the server sends. */
export const aiosmtpdGreeting = "220 localhost ESMTP effect-smtp test aiosmtpd"

/** The AUTH mechanisms offered, as the EHLO lists them (`250-AUTH CRAM-MD5 LOGIN PLAIN`). */
export const aiosmtpdMechanisms: ReadonlyArray<string> = ["CRAM-MD5", "LOGIN", "PLAIN"]

export interface AiosmtpdOptions {
  /** The one user name AUTH accepts (compared as UTF-8 bytes, case-sensitive). */
  readonly user: string
  /** Its password. */
  readonly password: string
  /**
   * Offer STARTTLS (certificate from `selfSigned()`: CN and SAN localhost, SAN IP 127.0.0.1) and AUTH only after it
   * (`auth_require_tls=True`: before, AUTH is not advertised and answered 538). Default: no TLS, AUTH in cleartext.
   */
  readonly starttls?: boolean
  /** Refuse MAIL, RCPT, DATA, VRFY and HELP with 530 until AUTH succeeded. Default: false. */
  readonly authRequired?: boolean
  /** Advertise PIPELINING. Default: true. */
  readonly pipelining?: boolean
  /** Advertise SMTPUTF8 (and accept UTF-8 addresses). Default: true. */
  readonly smtputf8?: boolean
  /** How long start-up may take before it fails with the log. Default: 10 seconds. */
  readonly startTimeout?: Duration.DurationInput
}

/** One message accepted (after the final dot, before the 250 reply). */
export interface AiosmtpdMessage {
  /** The MAIL FROM address, without angle brackets ("" for the null sender). */
  readonly mailFrom: string
  /** The accepted RCPT TO addresses, in order. */
  readonly rcptTos: ReadonlyArray<string>
  /** MAIL FROM parameters, e.g. `SIZE=123`, `BODY=8BITMIME`, `SMTPUTF8`. */
  readonly mailOptions: ReadonlyArray<string>
  /** RCPT TO parameters of all recipients, in order. */
  readonly rcptOptions: ReadonlyArray<string>
  /** The content as received: CRLF line ends, dot-stuffing removed, without the final `.`. */
  readonly bytes: Uint8Array
  /** The bytes decoded as UTF-8. */
  readonly raw: string
  /** The user name of the session's successful AUTH, if any. */
  readonly login: string | undefined
  /** Whether the session had done STARTTLS. */
  readonly tls: boolean
  /** The EHLO/HELO name. */
  readonly helo: string | undefined
}

export interface AiosmtpdServer {
  readonly host: "127.0.0.1"
  readonly port: number
  /** The name the certificate is for: use it as the TLS servername. */
  readonly servername: "localhost"
  /** With `starttls`, the self-signed certificate: trust it as the only CA. */
  readonly certificatePem: string | undefined
  /** The instance's own folder (config, `messages/`, log). */
  readonly directory: string
  /** Every message accepted so far, oldest first. */
  readonly messages: () => Effect.Effect<ReadonlyArray<AiosmtpdMessage>>
  /** The server's log so far (the whole conversation, AUTH payloads masked), for debugging. */
  readonly log: () => string
}

const host = "127.0.0.1"
const servername = "localhost"
const script = fileURLToPath(new URL("./aiosmtpd_server.py", import.meta.url))

interface StoredMessage {
  readonly mailFrom: string
  readonly rcptTos: ReadonlyArray<string>
  readonly mailOptions: ReadonlyArray<string>
  readonly rcptOptions: ReadonlyArray<string>
  readonly data: string
  readonly login: string | null
  readonly tls: boolean
  readonly helo: string | null
}

const readMessages = (folder: string): ReadonlyArray<AiosmtpdMessage> =>
  fs.readdirSync(folder).filter((name) => name.endsWith(".json")).sort().map((name) => {
    const record = JSON.parse(fs.readFileSync(path.join(folder, name), "utf8")) as StoredMessage
    const bytes = Buffer.from(record.data, "base64")
    return {
      mailFrom: record.mailFrom,
      rcptTos: record.rcptTos,
      mailOptions: record.mailOptions,
      rcptOptions: record.rcptOptions,
      bytes: new Uint8Array(bytes),
      raw: bytes.toString("utf8"),
      login: record.login ?? undefined,
      tls: record.tls,
      helo: record.helo ?? undefined
    }
  })

/** Its own process group: whatever it may have started goes too. */
const kill = (child: ChildProcess, signal: NodeJS.Signals): void => {
  if (child.pid !== undefined) killGroup(child.pid, signal)
}

/** SIGTERM, then SIGKILL after 3 seconds; waits until the process has exited. */
const stop = (child: ChildProcess): Effect.Effect<void> => {
  const exited = Effect.suspend(() => isRunning(child) ? Effect.fail("running") : Effect.void).pipe(
    Effect.retry(Schedule.spaced("10 millis"))
  )
  return Effect.sync(() => isRunning(child) && kill(child, "SIGTERM")).pipe(
    Effect.zipRight(exited.pipe(Effect.timeout("3 seconds"))),
    Effect.catchAll(() =>
      Effect.sync(() => kill(child, "SIGKILL")).pipe(
        Effect.zipRight(exited.pipe(Effect.timeout("2 seconds"))),
        Effect.ignore
      )
    ),
    Effect.withClock(Clock.make())
  )
}

/** Starts aiosmtpd; stops it and removes its folder when the scope closes. */
export const startAiosmtpd = (options: AiosmtpdOptions): Effect.Effect<AiosmtpdServer, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const dir = yield* serverDirectory("aiosmtpd")
    const messagesDir = path.join(dir, "messages")
    const portFile = path.join(dir, "port")
    const logFile = path.join(dir, "aiosmtpd.log")
    const configFile = path.join(dir, "config.json")
    fs.mkdirSync(messagesDir)
    const certificate = options.starttls === true ? yield* Effect.try(() => selfSigned()) : undefined
    if (certificate !== undefined) {
      fs.writeFileSync(path.join(dir, "cert.pem"), certificate.cert)
      fs.writeFileSync(path.join(dir, "key.pem"), certificate.key, { mode: 0o600 })
    }
    const config = {
      directory: dir,
      host,
      user: options.user,
      password: options.password,
      starttls: certificate === undefined
        ? null
        : { cert: path.join(dir, "cert.pem"), key: path.join(dir, "key.pem") },
      authRequired: options.authRequired ?? false,
      pipelining: options.pipelining ?? true,
      smtputf8: options.smtputf8 ?? true
    }
    fs.writeFileSync(configFile, JSON.stringify(config), { mode: 0o600 })
    const log = () => readText(logFile)

    // stdin stays an open pipe: the server stops when it closes, so it cannot outlive this process.
    const child = yield* spawnGroup("/usr/bin/python3", [script, configFile], {
      cwd: dir,
      output: logFile,
      stdin: "pipe",
      stop
    })

    const port = yield* Effect.gen(function*() {
      const text = readText(portFile).trim()
      if (!/^\d+$/.test(text)) return yield* Effect.fail(new Error("no port yet"))
      const port = Number(text)
      const line = yield* greetingLine(port)
      if (!line.startsWith("220")) return yield* Effect.fail(new Error(`port ${port} greeted with: ${line}`))
      return port
    }).pipe(
      Effect.retry({ schedule: Schedule.spaced("20 millis"), while: () => isRunning(child) }),
      Effect.timeoutFail({
        duration: options.startTimeout ?? "10 seconds",
        onTimeout: () => new Error("timed out waiting for the 220 greeting")
      }),
      Effect.catchAll((error) =>
        Effect.fail(
          new Error(
            [
              "aiosmtpd did not start",
              isRunning(child) ? "" : `python3 exited with ${child.exitCode ?? child.signalCode}`,
              `last probe: ${error.message}`,
              `--- log ---\n${log()}`
            ].filter((line) => line !== "").join("\n")
          )
        )
      )
    )

    const server: AiosmtpdServer = {
      host,
      port,
      servername,
      certificatePem: certificate?.cert,
      directory: dir,
      messages: () => Effect.sync(() => readMessages(messagesDir)),
      log
    }
    return server
  }).pipe(
    // Real time even under @effect/vitest's TestClock: start-up waits on a real process.
    Effect.withClock(Clock.make())
  )

/** The same as a service, for `layer(Aiosmtpd.make(options))` in @effect/vitest: one server for a whole `describe`. */
export class Aiosmtpd extends Context.Tag("effect-smtp/test/Aiosmtpd")<Aiosmtpd, AiosmtpdServer>() {
  static readonly make = (options: AiosmtpdOptions) => Layer.scoped(Aiosmtpd, startAiosmtpd(options))
}
