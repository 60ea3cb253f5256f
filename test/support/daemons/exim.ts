/**
 * A real Exim (Debian's exim4-daemon-light 4.96) for integration tests: a private instance on 127.0.0.1 high ports,
 * owned by the test run, delivering every recipient `@example.org` into one Maildir and refusing everything else.
 *
 * Debian's Exim package conflicts with Postfix, so it is not installed but unpacked into `/opt/effect-smtp-exim` by
 * `test/support/daemons/install-exim.sh` (which also adds the `Debian-exim` user the binary is built for, and
 * `libidn12`).
 * Needs root: the daemon must bind its ports and hand each message to its own delivery processes.
 *
 * Security model, as Exim sees it: the daemon is started by root with `-C` (a config of our own), so it keeps root;
 * but it receives as the Exim user, and the delivery process that it re-executes for every message then runs with
 * that user's real uid, for which a `-C` config is not trusted (Debian's build trusts only the paths listed in
 * `/etc/exim4/trusted_configs`). So the config sets `deliver_drop_privilege`, and deliveries run as `Debian-exim`,
 * which owns the spool, the logs and the Maildir.
 */
import { Clock, Context, Effect, Layer } from "effect"
import type { Duration, Scope } from "effect"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import { serverCertificate } from "../helpers/tls.js"
import { openMaildir } from "./maildir.js"
import type { MaildirMessage } from "./maildir.js"
import { awaitGroupGone, killGroup, readText, run, spawnGroup } from "./processes.js"
import { awaitGreetings, serverDirectory, withFreePorts } from "./servers.js"

/** Where `test/support/daemons/install-exim.sh` unpacks the package. */
const eximRoot = "/opt/effect-smtp-exim"
const eximBinary = `${eximRoot}/usr/sbin/exim4`
/** The user Debian's binary is built to run as (`EXIM_USER=ref:Debian-exim`): it will not start without it. */
const eximUser = "Debian-exim"

/** What `requireServer` should find for these tests, and how to install it. */
export const eximBinaries: ReadonlyArray<string> = [eximBinary, "/usr/bin/openssl"]
export const eximInstall = "sudo bash test/support/daemons/install-exim.sh (and apt-get install -y openssl)"

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
export interface EximMessage extends MaildirMessage {}

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

/**
 * Stops the daemon and whatever it is receiving or delivering: SIGTERM to the whole process group, SIGKILL to what is
 * left after 2 seconds.
 */
const stopDaemon = (child: ChildProcess): Effect.Effect<void> =>
  Effect.gen(function*() {
    const pgid = child.pid
    if (pgid === undefined) return
    killGroup(pgid, "SIGTERM")
    yield* awaitGroupGone(child, pgid, "2 seconds")
  }).pipe(Effect.withClock(Clock.make()))

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
    const dir = yield* serverDirectory("exim")
    // Exim's receiving and delivering processes run as its user and must reach their folders through this one.
    fs.chmodSync(dir, 0o755)
    const etc = `${dir}/etc`
    const maildir = `${dir}/mail/inbox`
    const mainLog = `${dir}/log/mainlog`
    const panicLog = `${dir}/log/paniclog`
    const outFile = `${dir}/log/exim.out`
    for (const sub of ["etc", "run", "log", "spool", "mail"]) fs.mkdirSync(`${dir}/${sub}`, { mode: 0o755 })
    for (const sub of ["log", "spool", "mail"]) fs.chownSync(`${dir}/${sub}`, Number(uid), Number(gid))

    const certificatePem = yield* serverCertificate(etc)
    // The receiving process reads the key as the Exim user.
    fs.chownSync(`${etc}/key.pem`, Number(uid), Number(gid))
    fs.chmodSync(`${etc}/key.pem`, 0o600)
    const configFile = `${etc}/exim.conf`

    const log = (): string => {
      const panic = readText(panicLog)
      const out = readText(outFile)
      return readText(mainLog) + (panic === "" ? "" : `--- paniclog ---\n${panic}`) +
        (out === "" ? "" : `--- daemon stdout/stderr ---\n${out}`)
    }

    const startTimeout = options.startTimeout ?? "15 seconds"
    const ports = yield* withFreePorts((ports) =>
      Effect.gen(function*() {
        // Exim reads a config only if root owns it and no one else may write it.
        fs.writeFileSync(configFile, eximConf({ dir, ports, crlf: options.crlf ?? false, main: options.main ?? {} }))
        fs.chownSync(configFile, 0, 0)
        fs.chmodSync(configFile, 0o644)
        // -bdf: the daemon in the foreground; its own process group, so stopping it reaches every child.
        const child = yield* spawnGroup(
          eximBinary,
          [
            "-C",
            configFile,
            "-bdf",
            "-oX",
            `${ports.plain}:${ports.starttls}:${ports.smtps}`,
            "-oP",
            `${dir}/run/exim.pid`
          ],
          { cwd: dir, output: outFile, stop: stopDaemon }
        )
        yield* awaitGreetings({
          server: "Exim",
          child,
          process: "the daemon",
          ports,
          tls: { ca: certificatePem, servername },
          timeout: startTimeout,
          log: { name: "log", text: log }
        })
        return ports
      })
    )
    const inbox = openMaildir(maildir, { returnPath: "Return-path", deliveredTo: "Envelope-to" }, log)
    const server: EximServer = { host, servername, ports, certificatePem, directory: dir, log, ...inbox }
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
