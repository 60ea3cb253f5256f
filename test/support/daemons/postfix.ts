/**
 * A real Postfix (Debian's package) for integration tests: a private instance on 127.0.0.1 high ports, owned by the
 * test run, delivering every recipient `@example.org` into one Maildir and refusing everything else.
 *
 * Needs root (the Postfix master refuses to start otherwise) and `apt-get install -y postfix openssl`.
 *
 * With `sasl`, it also offers SMTP AUTH through a private Dovecot auth server (`apt-get install -y dovecot-core`).
 */
import { Clock, Context, Effect, Layer, Schedule } from "effect"
import type { Duration, Scope } from "effect"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import { serverCertificate } from "../helpers/tls.js"
import { openMaildir } from "./maildir.js"
import type { MaildirMessage } from "./maildir.js"
import { awaitGroupGone, isRunning, killGroup, readText, run, spawnGroup } from "./processes.js"
import { awaitGreetings, serverDirectory, withFreePorts } from "./servers.js"

/** What `requireServer` should find for these tests, and how to install it. */
export const postfixBinaries: ReadonlyArray<string> = ["/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/bin/openssl"]
export const postfixInstall = "apt-get install -y postfix openssl"

/** What `requireServer` should find for the `sasl` option (Dovecot's auth server), and how to install it. */
export const dovecotBinaries: ReadonlyArray<string> = [...postfixBinaries, "/usr/sbin/dovecot"]
export const dovecotInstall = "apt-get install -y postfix openssl dovecot-core"

/** The SASL mechanisms Postfix offers with the `sasl` option, in the order its EHLO lists them. */
export const postfixSaslMechanisms: ReadonlyArray<string> = [
  "PLAIN",
  "LOGIN",
  "CRAM-MD5",
  "SCRAM-SHA-1",
  "SCRAM-SHA-256"
]

/** The first line every port sends. */
export const postfixGreeting = "220 localhost ESMTP effect-smtp test Postfix"

export interface PostfixPorts {
  /** smtpd that offers no TLS at all. */
  readonly plain: number
  /** smtpd that offers STARTTLS (`smtpd_tls_security_level = may`). */
  readonly starttls: number
  /** smtpd with implicit TLS (`smtpd_tls_wrappermode = yes`). */
  readonly smtps: number
}

/** One file from the Maildir. Postfix puts `Return-Path` (envelope sender) and `Delivered-To` on top. */
export interface PostfixMessage extends MaildirMessage {}

export interface PostfixServer {
  readonly host: "127.0.0.1"
  /** The name the certificate is for (also `myhostname`): use it as the TLS servername. */
  readonly servername: "localhost"
  readonly ports: PostfixPorts
  /** The self-signed certificate (CN and SAN `localhost`, SAN IP 127.0.0.1): trust it as the only CA. */
  readonly certificatePem: string
  /** The instance's own folder (config in `etc/`, queue in `queue/`, Maildir in `mail/inbox/`, log in `log/`). */
  readonly directory: string
  /** Every message delivered so far (Maildir `new/` and `cur/`), oldest first. */
  readonly messages: () => Effect.Effect<ReadonlyArray<PostfixMessage>>
  /** Polls until at least `count` messages were delivered (delivery is asynchronous); fails with the log on timeout. */
  readonly waitForMessages: (
    count: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<ReadonlyArray<PostfixMessage>, Error>
  /** The maillog so far (and the master's own output, if any), for debugging. */
  readonly log: () => string
}

/** One account of the `sasl` option. */
export interface PostfixSaslUser {
  /** Taken as is: case-sensitive, any characters but `:`, tab, CR, LF and NUL. */
  readonly user: string
  /** Any characters (stored base64-encoded, as `{PLAIN.B64}`, so every mechanism can use it). */
  readonly password: string
}

export interface PostfixOptions {
  /** main.cf parameters added to, or overriding, the harness's own (the `sasl` ones too). */
  readonly mainCf?: Readonly<Record<string, string>>
  /**
   * Offer SMTP AUTH (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256) for these accounts, checked by a private
   * Dovecot auth server (`smtpd_sasl_type = dovecot`) started and stopped with Postfix. AUTH is then offered on the
   * plain port even without TLS (`smtpd_tls_auth_only = no`), on the STARTTLS port only after STARTTLS
   * (`smtpd_tls_auth_only = yes`), and on the implicit TLS port. A failed AUTH is answered at once (no failure delay,
   * no penalty for repeated failures). Authenticated clients still may not relay outside example.org.
   */
  readonly sasl?: { readonly users: ReadonlyArray<PostfixSaslUser> }
  /** How long start-up may take before it fails with the log. Default: 15 seconds. */
  readonly startTimeout?: Duration.DurationInput
}

const host = "127.0.0.1"
const servername = "localhost"

/**
 * Writes a config file dated a minute ago: Postfix will not read a file changed within the last second or two (it
 * could be half written) and waits in steps of 300 ms, which costs two seconds at every start otherwise.
 */
const writeConfig = (file: string, text: string): void => {
  fs.writeFileSync(file, text)
  const past = new Date(Date.now() - 60_000)
  fs.utimesSync(file, past, past)
}

const mainCf = (dir: string, uid: string, gid: string, extra: Readonly<Record<string, string>>): string => {
  const outbound = "error:5.7.1 the effect-smtp test server sends no mail out"
  const settings: Record<string, string> = {
    compatibility_level: "3.6",
    queue_directory: `${dir}/queue`,
    data_directory: `${dir}/data`,
    // No syslog here: without a maillog file, every failure is silent.
    maillog_file: `${dir}/log/maillog`,
    maillog_file_prefixes: `${dir}/log`,
    myhostname: "localhost",
    mydomain: "localdomain",
    myorigin: "example.org",
    mydestination: "",
    relay_domains: "",
    inet_interfaces: "127.0.0.1",
    inet_protocols: "ipv4",
    mynetworks: "127.0.0.0/8",
    smtpd_banner: postfixGreeting.slice(4),
    // Every local part @example.org goes to one Maildir (the trailing slash makes it a Maildir).
    virtual_mailbox_domains: "example.org",
    virtual_mailbox_maps: "static:inbox/",
    virtual_mailbox_base: `${dir}/mail`,
    virtual_uid_maps: `static:${uid}`,
    virtual_gid_maps: `static:${gid}`,
    virtual_minimum_uid: "1",
    virtual_mailbox_limit: "0",
    // Nothing may leave the machine, and nothing is delivered locally.
    default_transport: outbound,
    relay_transport: outbound,
    local_transport: outbound,
    local_recipient_maps: "",
    alias_maps: "",
    alias_database: "",
    // No permit_mynetworks: anything outside example.org is refused at RCPT (554 5.7.1 Relay access denied).
    smtpd_relay_restrictions: "reject_unauth_destination",
    smtpd_recipient_restrictions: "",
    smtputf8_enable: "yes",
    // No DNS anywhere.
    disable_dns_lookups: "yes",
    smtp_host_lookup: "native",
    smtp_dns_support_level: "disabled",
    smtpd_peername_lookup: "no",
    // TLS material; each port in master.cf picks its own security level.
    smtpd_tls_cert_file: `${dir}/etc/cert.pem`,
    smtpd_tls_key_file: `${dir}/etc/key.pem`,
    smtpd_tls_security_level: "none",
    smtpd_tls_loglevel: "1",
    // Fast and deterministic under test load.
    in_flow_delay: "0s",
    smtpd_error_sleep_time: "0s",
    smtpd_client_connection_count_limit: "0",
    smtpd_client_connection_rate_limit: "0",
    biff: "no",
    append_dot_mydomain: "no",
    readme_directory: "no",
    ...extra
  }
  return Object.entries(settings).map(([key, value]) => `${key} = ${value}`).join("\n") + "\n"
}

const masterCf = (ports: PostfixPorts, sasl: boolean): string =>
  [
    `${ports.plain} inet n - n - - smtpd`,
    `${ports.starttls} inet n - n - - smtpd -o smtpd_tls_security_level=may` +
    (sasl ? " -o smtpd_tls_auth_only=yes" : ""),
    `${ports.smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt`,
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "tlsmgr unix - - n 1000? 1 tlsmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "virtual unix - n n - - virtual",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
    ""
  ].join("\n")

/**
 * Stops the master by the PID in its pid file (it then stops its children), waits for the whole process group to be
 * gone, and kills what is left after 5 seconds.
 */
const stopMaster = (child: ChildProcess, pidFile: string): Effect.Effect<void> =>
  Effect.gen(function*() {
    const pgid = child.pid
    if (pgid === undefined) return
    const fromFile = Number.parseInt(readText(pidFile).trim(), 10)
    if (isRunning(child)) {
      try {
        process.kill(Number.isInteger(fromFile) && fromFile > 0 ? fromFile : pgid, "SIGTERM")
      } catch {
        killGroup(pgid, "SIGTERM")
      }
    }
    yield* awaitGroupGone(child, pgid, "5 seconds")
  }).pipe(Effect.withClock(Clock.make()))

/**
 * The queue and data directories with the owners and modes of Postfix's postfix-files, as `postfix check` would
 * create them (which takes seconds, this milliseconds).
 */
const makeQueue = (dir: string, mailOwner: number, setgidGroup: number): void => {
  const make = (sub: string, uid: number, gid: number, mode: number) => {
    fs.mkdirSync(`${dir}/${sub}`, { recursive: true })
    fs.chownSync(`${dir}/${sub}`, uid, gid)
    fs.chmodSync(`${dir}/${sub}`, mode)
  }
  make("queue", 0, 0, 0o755)
  make("queue/pid", 0, 0, 0o755)
  make("data", mailOwner, 0, 0o700)
  const owned = "active bounce corrupt defer deferred flush hold incoming private saved trace"
  for (const sub of owned.split(" ")) make(`queue/${sub}`, mailOwner, 0, 0o700)
  make("queue/maildrop", mailOwner, setgidGroup, 0o730)
  make("queue/public", mailOwner, setgidGroup, 0o710)
}

/** The private Dovecot of the `sasl` option: its auth socket for smtpd, and its log. */
interface Dovecot {
  readonly socket: string
  readonly log: () => string
}

const dovecotConf = (root: string, usersFile: string): string =>
  [
    "# A private Dovecot for the effect-smtp tests: nothing but its auth service, for Postfix's smtpd.",
    `base_dir = ${root}/run`,
    `state_dir = ${root}/state`,
    `log_path = ${root}/log/dovecot.log`,
    // Process titles "dovecot-effect-smtp-test/auth", not those of a system Dovecot.
    "instance_name = effect-smtp-test",
    "protocols = none",
    "ssl = no",
    "default_internal_user = dovecot",
    "disable_plaintext_auth = no",
    "auth_mechanisms = plain login cram-md5 scram-sha-1 scram-sha-256",
    // User names as given: any characters, case kept (the default `%Lu` lowercases).
    "auth_username_chars =",
    "auth_username_format = %u",
    // A failure is answered at once, not after 2 seconds: no delay, and `nodelay` (below) so that the reply is not
    // held for the next check of the failure queue either (every 500 ms, even with no delay).
    "auth_failure_delay = 0",
    "auth_verbose = yes",
    "passdb {",
    "  driver = passwd-file",
    `  args = scheme=PLAIN username_format=%u ${usersFile}`,
    "}",
    // Unknown users and wrong passwords for PLAIN and LOGIN end here, failing with `nodelay`.
    "passdb {",
    "  driver = static",
    "  args = nopassword=yes nodelay=yes",
    "  deny = yes",
    "}",
    "userdb {",
    "  driver = static",
    "  args = uid=dovecot gid=dovecot home=/nonexistent",
    "}",
    "service auth {",
    "  unix_listener auth-postfix {",
    "    mode = 0660",
    "    user = postfix",
    "    group = postfix",
    "  }",
    "}",
    // No penalty (up to 15 s per AUTH) for repeated failures from 127.0.0.1: this listener is how to turn it off.
    "service anvil {",
    "  unix_listener anvil-auth-penalty {",
    "    mode = 0",
    "  }",
    "}",
    ""
  ].join("\n")

/** Connects to Dovecot's auth socket and waits for its whole handshake (mechanisms, then `DONE`). */
const authHandshake = (socketPath: string): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const socket = net.connect(socketPath)
    let buffer = ""
    let done = false
    const finish = (result: Effect.Effect<string, Error>) => {
      if (done) return
      done = true
      socket.destroy()
      resume(result)
    }
    socket.setTimeout(2_000, () => finish(Effect.fail(new Error(`${socketPath}: no handshake within 2 s`))))
    socket.on("error", (error) => finish(Effect.fail(error)))
    socket.on("close", () => finish(Effect.fail(new Error(`${socketPath}: closed during the handshake: ${buffer}`))))
    socket.on("connect", () => socket.write(`VERSION\t1\t2\nCPID\t${process.pid}\n`))
    socket.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("utf8")
      if (/(?:^|\n)DONE\n/.test(buffer)) finish(Effect.succeed(buffer))
    })
    return Effect.sync(() => socket.destroy())
  })

/**
 * Stops Dovecot: SIGTERM to its whole process group (to the master alone, it stops its services at once but keeps its
 * log process for another second), SIGKILL if anything is left after 250 ms. Postfix is stopped already.
 */
const stopDovecot = (child: ChildProcess): Effect.Effect<void> =>
  Effect.gen(function*() {
    const pgid = child.pid
    if (pgid === undefined) return
    if (isRunning(child)) killGroup(pgid, "SIGTERM")
    yield* awaitGroupGone(child, pgid, "250 millis")
  }).pipe(Effect.withClock(Clock.make()))

/**
 * Starts Dovecot's auth service in `dir/dovecot` (in the foreground, its own process group) and waits until its auth
 * socket answers; stops it when the scope closes.
 */
const startDovecot = (
  dir: string,
  users: ReadonlyArray<PostfixSaslUser>,
  timeout: Duration.DurationInput
): Effect.Effect<Dovecot, Error, Scope.Scope> =>
  Effect.gen(function*() {
    const unsafe = users.find(({ user }) => user === "" || /[:\t\r\n\0]/.test(user))
    if (unsafe !== undefined) {
      return yield* Effect.fail(
        new Error(`the Dovecot test server cannot take the user name ${JSON.stringify(unsafe.user)}`)
      )
    }
    const root = `${dir}/dovecot`
    for (const sub of ["", "/etc", "/log", "/state"]) fs.mkdirSync(`${root}${sub}`, { mode: 0o755 })
    const usersFile = `${root}/etc/users`
    const conf = `${root}/etc/dovecot.conf`
    const logFile = `${root}/log/dovecot.log`
    const outFile = `${root}/log/dovecot.out`
    const socketPath = `${root}/run/auth-postfix`
    // The auth process runs as the dovecot user and reads the file itself.
    const dovecotGid = yield* run("id", ["-g", "dovecot"])
    fs.writeFileSync(
      usersFile,
      // `nodelay` for the failures the mechanism finds (CRAM-MD5, SCRAM) after looking the user up.
      users.map(({ password, user }) =>
        `${user}:{PLAIN.B64}${Buffer.from(password, "utf8").toString("base64")}::::::nodelay=yes\n`
      ).join(""),
      { mode: 0o640 }
    )
    fs.chownSync(usersFile, 0, Number(dovecotGid))
    fs.writeFileSync(conf, dovecotConf(root, usersFile))
    const log = () => {
      const out = readText(outFile)
      return readText(logFile) + (out === "" ? "" : `--- dovecot stdout/stderr ---\n${out}`)
    }

    const child = yield* spawnGroup("/usr/sbin/dovecot", ["-c", conf, "-F"], {
      cwd: root,
      output: outFile,
      stop: stopDovecot
    })
    yield* authHandshake(socketPath).pipe(
      Effect.retry({ schedule: Schedule.spaced("25 millis"), while: () => isRunning(child) }),
      Effect.timeoutFail({ duration: timeout, onTimeout: () => new Error("timed out waiting for the auth socket") }),
      Effect.catchAll((error) =>
        Effect.fail(
          new Error(
            [
              `Dovecot's auth service did not start (${socketPath})`,
              isRunning(child) ? "" : `dovecot exited with ${child.exitCode ?? child.signalCode}`,
              `last probe: ${error.message}`,
              `--- dovecot log ---\n${log()}`
            ].filter((line) => line !== "").join("\n")
          )
        )
      )
    )
    return { socket: socketPath, log }
  })

/** Starts a private Postfix; stops it and removes its folder when the scope closes. */
export const startPostfix = (options: PostfixOptions = {}): Effect.Effect<PostfixServer, Error, Scope.Scope> =>
  Effect.gen(function*() {
    if (process.getuid?.() !== 0) {
      return yield* Effect.fail(new Error("the Postfix test server must run as root (the Postfix master needs it)"))
    }
    const dir = yield* serverDirectory("postfix")
    // The virtual delivery agent runs as the mailbox owner and must reach the Maildir through this folder.
    fs.chmodSync(dir, 0o755)
    const etc = `${dir}/etc`
    const maildir = `${dir}/mail/inbox`
    const logFile = `${dir}/log/maillog`
    const outFile = `${dir}/log/master.out`
    for (const sub of ["etc", "log", "mail"]) fs.mkdirSync(`${dir}/${sub}`, { mode: 0o755 })

    const startTimeout = options.startTimeout ?? "15 seconds"
    const dovecotStart: Effect.Effect<Dovecot | undefined, Error, Scope.Scope> = options.sasl === undefined
      ? Effect.succeed(undefined)
      : startDovecot(dir, options.sasl.users, startTimeout)
    const [daemonDirectory, uid, gid, postdrop, certificatePem, dovecot] = yield* Effect.all([
      run("/usr/sbin/postconf", ["-dh", "daemon_directory"]),
      run("id", ["-u", "postfix"]),
      run("id", ["-g", "postfix"]),
      run("getent", ["group", "postdrop"]).pipe(Effect.map((line) => line.split(":")[2] ?? "")),
      serverCertificate(etc),
      dovecotStart
    ], { concurrency: "unbounded" })
    fs.chownSync(`${dir}/mail`, Number(uid), Number(gid))
    makeQueue(dir, Number(uid), Number(postdrop))
    const sasl: Record<string, string> = dovecot === undefined ? {} : {
      smtpd_sasl_auth_enable: "yes",
      smtpd_sasl_type: "dovecot",
      // smtpd runs outside a chroot here, so an absolute path works.
      smtpd_sasl_path: dovecot.socket,
      // The STARTTLS port sets `yes` in master.cf.
      smtpd_tls_auth_only: "no"
    }
    writeConfig(`${etc}/main.cf`, mainCf(dir, uid, gid, { ...sasl, ...options.mainCf }))

    const log = (): string => {
      const out = readText(outFile)
      return readText(logFile) + (out === "" ? "" : `--- master stdout/stderr ---\n${out}`) +
        (dovecot === undefined ? "" : `--- dovecot ---\n${dovecot.log()}`)
    }

    const ports = yield* withFreePorts((ports) =>
      Effect.gen(function*() {
        writeConfig(`${etc}/master.cf`, masterCf(ports, dovecot !== undefined))
        // Its own process group, so the master's shutdown and our fallback reach every daemon.
        const child = yield* spawnGroup(`${daemonDirectory}/master`, ["-c", etc, "-d"], {
          cwd: dir,
          output: outFile,
          stop: (child) => stopMaster(child, `${dir}/queue/pid/master.pid`)
        })
        yield* awaitGreetings({
          server: "Postfix",
          child,
          process: "the master",
          ports,
          tls: { ca: certificatePem, servername },
          timeout: startTimeout,
          // The master logs its own start-up errors to syslog only; `postfix check` writes to the maillog.
          diagnose: run("/usr/sbin/postfix", ["-c", etc, "check"]).pipe(
            Effect.match({ onFailure: (e) => e.message, onSuccess: (out) => out }),
            Effect.map((check) => check === "" ? "" : `postfix check: ${check}`)
          ),
          log: { name: "maillog", text: log }
        })
        return ports
      })
    )
    const inbox = openMaildir(maildir, { returnPath: "Return-Path", deliveredTo: "Delivered-To" }, log)
    const server: PostfixServer = { host, servername, ports, certificatePem, directory: dir, log, ...inbox }
    return server
  }).pipe(
    // Real time even under @effect/vitest's TestClock: start-up waits on real processes (and so does shutdown, above).
    Effect.withClock(Clock.make())
  )

/** A private Postfix with the default options, for `Effect.scoped` or `it.scopedLive`. */
export const PostfixServer: Effect.Effect<PostfixServer, Error, Scope.Scope> = startPostfix()

/** The same as a service, for `layer(Postfix.Default)` in @effect/vitest: one server for a whole `describe`. */
export class Postfix extends Context.Tag("effect-smtp/test/Postfix")<Postfix, PostfixServer>() {
  static readonly Default = Layer.scoped(Postfix, PostfixServer)
  static readonly make = (options: PostfixOptions) => Layer.scoped(Postfix, startPostfix(options))
}
