/**
 * A real Exim (Debian's exim4-daemon-light 4.96) for integration tests: a private instance on 127.0.0.1 high ports,
 * owned by the test run, delivering every recipient `@example.org` into one Maildir and refusing everything else.
 *
 * Debian's Exim package conflicts with Postfix, so it is not installed but unpacked into `/opt/effect-smtp-exim` by
 * `test/support/install-exim.sh` (which also adds the `Debian-exim` user the binary is built for, and `libidn12`).
 * Needs root: the daemon must bind its ports and hand each message to its own delivery processes.
 *
 * Security model, as Exim sees it: the daemon is started by root with `-C` (a config of our own), so it keeps root;
 * but it receives as the Exim user, and the delivery process that it re-executes for every message then runs with
 * that user's real uid, for which a `-C` config is not trusted (Debian's build trusts only the paths listed in
 * `/etc/exim4/trusted_configs`). So the config sets `deliver_drop_privilege`, and deliveries run as `Debian-exim`,
 * which owns the spool, the logs and the Maildir.
 */
import { Clock, Context, Duration, Effect, Layer, Schedule } from "effect"
import type { Scope } from "effect"
import { execFile, spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { greetingLine } from "./servers.js"

/** Where `test/support/install-exim.sh` unpacks the package. */
const eximRoot = "/opt/effect-smtp-exim"
const eximBinary = `${eximRoot}/usr/sbin/exim4`
/** The user Debian's binary is built to run as (`EXIM_USER=ref:Debian-exim`): it will not start without it. */
const eximUser = "Debian-exim"

/** What `requireServer` should find for these tests, and how to install it. */
export const eximBinaries: ReadonlyArray<string> = [eximBinary, "/usr/bin/openssl"]
export const eximInstall = "sudo bash test/support/install-exim.sh (and apt-get install -y openssl)"

/** The first line every port sends. */
export const eximGreeting = "220 localhost ESMTP effect-smtp test Exim"

/**
 * The header fields Exim puts on top of every delivered copy, in this order: strip them to get the message as it was
 * received. `Received` is folded over five to seven lines (continuations start with a tab).
 */
export const eximAddedHeaders: ReadonlyArray<string> = ["Return-path", "Envelope-to", "Received"]

export interface EximPorts {
  /** Offers no TLS at all. */
  readonly plain: number
  /** Offers STARTTLS (`tls_advertise_hosts` matches this port only). */
  readonly starttls: number
  /** Implicit TLS (`tls_on_connect_ports`). */
  readonly smtps: number
}

/**
 * One file from the Maildir: one per recipient (appendfile's `batch_max` is 1).
 *
 * The file is the message as received with three header fields on top (see `eximAddedHeaders`):
 * `Return-path: <sender>` (`<>` for the null sender), `Envelope-to: recipient` (this copy's one envelope recipient),
 * and Exim's `Received` field. Exim adds nothing else to mail from a client that is not in submission mode (no
 * `Message-ID`, `Date`, `From` or `Sender`), keeps the other header fields as sent (folding too), and removes any
 * `Return-path`, `Envelope-to` and `Delivery-date` the client sent (`return_path_remove` and friends).
 *
 * Line ends: Exim stores lines with LF, so every CRLF of the message arrives as LF (or as CRLF again, every line the
 * added ones too, with the `crlf` option). Bare CR and bare LF do not survive: in DATA, Debian's 4.96 turns a bare LF
 * into a space and a bare CR into a line end; in BDAT, both become line ends (and count as two bytes in the reply's
 * "total"). Dot-stuffing is undone for DATA; BDAT content is taken as is.
 */
export interface EximMessage {
  readonly file: string
  readonly bytes: Uint8Array
  /** The bytes decoded as UTF-8. */
  readonly raw: string
  /** The envelope sender, without angle brackets ("" for the null sender). */
  readonly returnPath: string | undefined
  /** The envelope recipient this copy was delivered for (from `Envelope-to`). */
  readonly deliveredTo: string | undefined
}

export interface EximServer {
  readonly host: "127.0.0.1"
  /** The name the certificate is for (also `primary_hostname`): use it as the TLS servername. */
  readonly servername: "localhost"
  readonly ports: EximPorts
  /** The self-signed certificate (CN and SAN `localhost`, SAN IP 127.0.0.1): trust it as the only CA. */
  readonly certificatePem: string
  /**
   * The instance's own folder (config and TLS key in `etc/`, spool in `spool/`, Maildir in `mail/inbox/`, logs in
   * `log/`: `mainlog`, `rejectlog`, `paniclog`, and the daemon's own output in `exim.out`).
   */
  readonly directory: string
  /** Every message delivered so far (Maildir `new/` and `cur/`), oldest first. */
  readonly messages: () => Effect.Effect<ReadonlyArray<EximMessage>>
  /** Polls until at least `count` messages were delivered (delivery is asynchronous); fails with the log on timeout. */
  readonly waitForMessages: (
    count: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<ReadonlyArray<EximMessage>, Error>
  /** The main log so far (and the panic log and the daemon's output, if any), for debugging. */
  readonly log: () => string
}

export interface EximOptions {
  /**
   * Main-section options added to, or overriding, the harness's own (`message_size_limit`, `smtputf8_advertise_hosts`,
   * …), written as `name = value`.
   */
  readonly main?: Readonly<Record<string, string>>
  /** Store messages with CRLF line ends (appendfile's `use_crlf`) instead of LF. Default: false, like Postfix. */
  readonly crlf?: boolean
  /** How long start-up may take before it fails with the log. Default: 15 seconds. */
  readonly startTimeout?: Duration.DurationInput
}

const host = "127.0.0.1"
const servername = "localhost"

const run = (file: string, args: ReadonlyArray<string>, cwd?: string): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const child = execFile(file, args, { cwd, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) {
        resume(Effect.fail(new Error(`${file} ${args.join(" ")} failed: ${error.message}\n${stdout}${stderr}`)))
      } else resume(Effect.succeed(stdout.trim()))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const freePorts = (count: number): Effect.Effect<Array<number>, Error> =>
  Effect.tryPromise({
    try: async () => {
      const servers = Array.from({ length: count }, () => net.createServer())
      try {
        return await Promise.all(servers.map((server) =>
          new Promise<number>((resolve, reject) => {
            server.once("error", reject)
            server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port))
          })
        ))
      } finally {
        await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))))
      }
    },
    catch: (cause) => new Error(`cannot find free ports on ${host}: ${String(cause)}`)
  })

const headerValue = (raw: string, name: string): string | undefined => {
  const headerEnd = raw.search(/\r?\n\r?\n/)
  const unfolded = (headerEnd >= 0 ? raw.slice(0, headerEnd) : raw).replace(/\r?\n[ \t]+/g, " ")
  const prefix = `${name.toLowerCase()}:`
  const line = unfolded.split(/\r?\n/).find((l) => l.toLowerCase().startsWith(prefix))
  return line?.slice(prefix.length).trim()
}

const readMaildir = (maildir: string): ReadonlyArray<EximMessage> => {
  const found: Array<{ message: EximMessage; mtime: number }> = []
  for (const folder of ["new", "cur"]) {
    let names: Array<string>
    try {
      names = fs.readdirSync(path.join(maildir, folder))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue
      throw error
    }
    for (const name of names) {
      const file = path.join(maildir, folder, name)
      const bytes = fs.readFileSync(file)
      const raw = bytes.toString("utf8")
      const returnPath = headerValue(raw, "Return-path")?.replace(/^<(.*)>$/, "$1")
      found.push({
        message: { file, bytes: new Uint8Array(bytes), raw, returnPath, deliveredTo: headerValue(raw, "Envelope-to") },
        mtime: fs.statSync(file).mtimeMs
      })
    }
  }
  return found.sort((a, b) => a.mtime - b.mtime || a.message.file.localeCompare(b.message.file)).map((f) => f.message)
}

const readText = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return ""
  }
}

interface Layout {
  readonly dir: string
  readonly ports: EximPorts
  readonly crlf: boolean
  readonly main: Readonly<Record<string, string>>
}

const eximConf = ({ crlf, dir, main, ports }: Layout): string => {
  const settings: Record<string, string> = {
    // The re-executed delivery processes must find this binary, not the compiled-in /usr/sbin/exim4.
    exim_path: eximBinary,
    primary_hostname: servername,
    smtp_banner: eximGreeting.slice(4),
    qualify_domain: "example.org",
    local_interfaces: host,
    // The command line's -oX sets the same ports (and would override these).
    daemon_smtp_ports: `${ports.plain} : ${ports.starttls} : ${ports.smtps}`,
    spool_directory: `${dir}/spool`,
    log_file_path: `${dir}/log/%slog`,
    pid_file_path: `${dir}/run/exim.pid`,
    message_logs: "false",
    check_spool_space: "0",
    check_log_space: "0",
    log_selector: "+smtp_connection +smtp_protocol_error +smtp_syntax_error +received_recipients",
    keep_environment: "",
    // See the module comment: deliveries run as the Exim user, without root.
    deliver_drop_privilege: "true",
    // Deliver at once, in the background of each reception, for every message of a connection.
    queue_only: "false",
    smtp_accept_queue_per_connection: "0",
    smtp_accept_max: "100",
    smtp_connect_backlog: "100",
    // A failed bounce is dropped, not frozen in the spool.
    ignore_bounce_errors_after: "0s",
    // No DNS, no ident: nothing leaves the machine, not even a lookup.
    host_lookup: "",
    helo_lookup_domains: "",
    rfc1413_hosts: "",
    rfc1413_query_timeout: "0s",
    // The extensions the tests need (most are Exim's defaults; spelled out so the intent is visible).
    pipelining_advertise_hosts: "*",
    chunking_advertise_hosts: "*",
    dsn_advertise_hosts: "*",
    smtputf8_advertise_hosts: "*",
    accept_8bitmime: "true",
    message_size_limit: "50M",
    tls_advertise_hosts: `\${if ={$received_port}{${ports.starttls}}{*}{}}`,
    tls_on_connect_ports: String(ports.smtps),
    tls_certificate: `${dir}/etc/cert.pem`,
    tls_privatekey: `${dir}/etc/key.pem`,
    acl_smtp_rcpt: "acl_check_rcpt",
    ...main
  }
  return [
    "# A private Exim for the effect-smtp tests: example.org into one Maildir, nothing anywhere else.",
    ...Object.entries(settings).map(([key, value]) => `${key} = ${value}`),
    "domainlist local_domains = example.org",
    "",
    "begin acl",
    "",
    "acl_check_rcpt:",
    "  deny    !domains = +local_domains",
    "          message = 5.7.1 <$local_part@$domain>: the effect-smtp test server sends no mail out",
    // Per-recipient results for the tests: 550 (deny) and 451 (defer), by local part.
    "  deny    local_parts = ^reject5",
    "          message = 5.1.1 <$local_part@$domain>: rejected by the effect-smtp test server",
    "  defer   local_parts = ^reject4",
    "          message = 4.2.1 <$local_part@$domain>: deferred by the effect-smtp test server",
    // DKIM verification would look keys up in DNS.
    "  accept  control = dkim_disable_verify",
    "",
    "begin routers",
    "",
    "inbox:",
    "  driver = accept",
    "  domains = +local_domains",
    "  transport = inbox",
    "",
    "begin transports",
    "",
    "inbox:",
    "  driver = appendfile",
    `  directory = ${dir}/mail/inbox`,
    "  maildir_format",
    "  create_directory",
    "  return_path_add",
    "  envelope_to_add",
    `  use_crlf = ${crlf}`,
    `  user = ${eximUser}`,
    `  group = ${eximUser}`,
    "  mode = 0600",
    ""
  ].join("\n")
}

const isRunning = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null

/** Whether a process of the group is still running (zombies wait for PID 1 to reap them: they hold nothing). */
const groupAlive = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
  } catch {
    return false
  }
  let entries: Array<string>
  try {
    entries = fs.readdirSync("/proc")
  } catch {
    return true
  }
  return entries.some((entry) => {
    if (!/^\d+$/.test(entry)) return false
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const stat = readText(`/proc/${entry}/stat`)
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return fields[2] === String(pgid) && fields[0] !== "Z" && fields[0] !== "X"
  })
}

const killGroup = (pgid: number, signal: NodeJS.Signals): void => {
  try {
    process.kill(-pgid, signal)
  } catch {
    // already gone
  }
}

/**
 * Stops the daemon and whatever it is receiving or delivering: SIGTERM to the whole process group, SIGKILL to what is
 * left after 2 seconds.
 */
const stopDaemon = (child: ChildProcess): Effect.Effect<void> =>
  Effect.gen(function*() {
    const pgid = child.pid
    if (pgid === undefined) return
    killGroup(pgid, "SIGTERM")
    const gone = Effect.suspend(() => isRunning(child) || groupAlive(pgid) ? Effect.fail("alive") : Effect.void)
    yield* gone.pipe(
      Effect.retry(Schedule.spaced("20 millis")),
      Effect.timeout("2 seconds"),
      Effect.catchAll(() =>
        Effect.sync(() => killGroup(pgid, "SIGKILL")).pipe(
          Effect.zipRight(gone.pipe(Effect.retry(Schedule.spaced("20 millis")), Effect.timeout("2 seconds"))),
          Effect.ignore
        )
      )
    )
  }).pipe(Effect.withClock(Clock.make()))

class StartFailure extends Error {
  constructor(message: string, readonly portTaken: boolean) {
    super(message)
  }
}

/** Which of `ports` someone else holds now. */
const takenPorts = (ports: ReadonlyArray<number>): Effect.Effect<Array<number>> =>
  Effect.promise(() =>
    Promise.all(ports.map((port) =>
      new Promise<number | undefined>((resolve) => {
        const server = net.createServer()
        server.once("error", () => resolve(port))
        server.listen(port, host, () => server.close(() => resolve(undefined)))
      })
    ))
  ).pipe(Effect.map((found) => found.filter((port) => port !== undefined)))

/** Process groups of running daemons, killed if the test process exits without closing their scopes. */
const runningGroups = new Set<number>()
let exitHookInstalled = false
const killOnExit = (pgid: number): void => {
  runningGroups.add(pgid)
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once("exit", () => runningGroups.forEach((group) => killGroup(group, "SIGKILL")))
}

/** Starts a private Exim; stops it and removes its folder when the scope closes. */
export const startExim = (options: EximOptions = {}): Effect.Effect<EximServer, Error, Scope.Scope> =>
  Effect.gen(function*() {
    if (process.getuid?.() !== 0) {
      return yield* Effect.fail(new Error("the Exim test server must run as root (the Exim daemon needs it)"))
    }
    const [uid, gid] = yield* Effect.all([run("id", ["-u", eximUser]), run("id", ["-g", eximUser])]).pipe(
      Effect.mapError((error) =>
        new Error(`the Exim test server needs the user ${eximUser}: run ${eximInstall}\n${error.message}`)
      )
    )
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "effect-smtp-exim-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5 }))
    )
    // Exim's receiving and delivering processes run as its user and must reach their folders through this one.
    fs.chmodSync(dir, 0o755)
    const etc = `${dir}/etc`
    const maildir = `${dir}/mail/inbox`
    const mainLog = `${dir}/log/mainlog`
    const panicLog = `${dir}/log/paniclog`
    const outFile = `${dir}/log/exim.out`
    for (const sub of ["etc", "run", "log", "spool", "mail"]) fs.mkdirSync(`${dir}/${sub}`, { mode: 0o755 })
    for (const sub of ["log", "spool", "mail"]) fs.chownSync(`${dir}/${sub}`, Number(uid), Number(gid))

    yield* run(
      "openssl",
      [
        ..."req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=localhost".split(" "),
        ..."-keyout key.pem -out cert.pem -addext subjectAltName=DNS:localhost,IP:127.0.0.1".split(" ")
      ],
      etc
    )
    // The receiving process reads the key as the Exim user.
    fs.chownSync(`${etc}/key.pem`, Number(uid), Number(gid))
    fs.chmodSync(`${etc}/key.pem`, 0o600)
    const certificatePem = fs.readFileSync(`${etc}/cert.pem`, "utf8")
    const configFile = `${etc}/exim.conf`

    const log = (): string => {
      const panic = readText(panicLog)
      const out = readText(outFile)
      return readText(mainLog) + (panic === "" ? "" : `--- paniclog ---\n${panic}`) +
        (out === "" ? "" : `--- daemon stdout/stderr ---\n${out}`)
    }

    const startTimeout = options.startTimeout ?? "15 seconds"
    const attempt = Effect.gen(function*() {
      const [plain = 0, starttls = 0, smtps = 0] = yield* freePorts(3)
      const ports: EximPorts = { plain, starttls, smtps }
      // Exim reads a config only if root owns it and no one else may write it.
      fs.writeFileSync(configFile, eximConf({ dir, ports, crlf: options.crlf ?? false, main: options.main ?? {} }))
      fs.chownSync(configFile, 0, 0)
      fs.chmodSync(configFile, 0o644)
      const child = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const out = fs.openSync(outFile, "a")
          // -bdf: the daemon in the foreground; its own process group (detached), so stopping it reaches every child.
          const child = spawn(
            eximBinary,
            ["-C", configFile, "-bdf", "-oX", `${plain}:${starttls}:${smtps}`, "-oP", `${dir}/run/exim.pid`],
            { cwd: dir, detached: true, stdio: ["ignore", out, out] }
          )
          fs.closeSync(out)
          child.on("error", (error) => fs.appendFileSync(outFile, `spawn failed: ${error.message}\n`))
          child.unref()
          if (child.pid !== undefined) killOnExit(child.pid)
          return child
        }),
        (child) =>
          stopDaemon(child).pipe(
            Effect.ensuring(Effect.sync(() => child.pid !== undefined && runningGroups.delete(child.pid)))
          )
      )

      const greeted = (port: number, secure: boolean) =>
        greetingLine(port, secure ? { ca: certificatePem, servername } : undefined).pipe(
          Effect.filterOrFail(
            (line) => line.startsWith("220"),
            (line) => new Error(`port ${port} greeted with: ${line}`)
          ),
          Effect.retry({ schedule: Schedule.spaced("25 millis"), while: () => isRunning(child) })
        )
      yield* Effect.all([greeted(plain, false), greeted(starttls, false), greeted(smtps, true)], {
        concurrency: "unbounded"
      }).pipe(
        Effect.timeoutFail({
          duration: startTimeout,
          onTimeout: () => new Error("timed out waiting for the 220 greetings")
        }),
        Effect.catchAll((error) =>
          Effect.gen(function*() {
            const exited = !isRunning(child)
            const taken = exited ? yield* takenPorts([plain, starttls, smtps]) : []
            return yield* Effect.fail(
              new StartFailure(
                [
                  `Exim did not start on 127.0.0.1 ports ${plain}/${starttls}/${smtps}`,
                  exited ? `the daemon exited with ${child.exitCode ?? child.signalCode}` : "",
                  `last probe: ${error.message}`,
                  taken.length > 0 ? `ports already in use: ${taken.join(", ")}` : "",
                  `--- log ---\n${log()}`
                ].filter((line) => line !== "").join("\n"),
                taken.length > 0
              )
            )
          })
        )
      )
      return ports
    })
    // A port found free may be taken before the daemon binds it: then try again with new ports.
    const ports = yield* attempt.pipe(
      Effect.retry({ times: 2, while: (error) => error instanceof StartFailure && error.portTaken })
    )

    const messages = () => Effect.sync(() => readMaildir(maildir))
    const waitForMessages = (count: number, timeout: Duration.DurationInput = "10 seconds") =>
      messages().pipe(
        Effect.filterOrFail((found) => found.length >= count, () => new Error("not yet")),
        Effect.retry(Schedule.spaced("25 millis")),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new Error(
              `expected ${count} delivered message(s) within ${Duration.format(Duration.decode(timeout))}, found ${
                readMaildir(maildir).length
              }\n${log()}`
            )
        }),
        Effect.withClock(Clock.make())
      )

    const server: EximServer = {
      host,
      servername,
      ports,
      certificatePem,
      directory: dir,
      messages,
      waitForMessages,
      log
    }
    return server
  }).pipe(
    // Real time even under @effect/vitest's TestClock: start-up waits on real processes (and so does shutdown, above).
    Effect.withClock(Clock.make())
  )

/** A private Exim with the default options, for `Effect.scoped` or `it.scopedLive`. */
export const EximServer: Effect.Effect<EximServer, Error, Scope.Scope> = startExim()

/** The same as a service, for `layer(Exim.Default)` in @effect/vitest: one server for a whole `describe`. */
export class Exim extends Context.Tag("effect-smtp/test/Exim")<Exim, EximServer>() {
  static readonly Default = Layer.scoped(Exim, EximServer)
  static readonly make = (options: EximOptions) => Layer.scoped(Exim, startExim(options))
}
