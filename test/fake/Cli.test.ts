import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import * as net from "node:net"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type {
  SMTPServerAuthentication,
  SMTPServerAuthenticationResponse,
  SMTPServerOptions,
  SMTPServerSession
} from "smtp-server"
import { ExitCode, exitCodeOf, normalizeArgs } from "../../src/internal/cli.js"
import {
  InvalidInputError,
  NetworkError,
  SmtpAuthError,
  SmtpPermanentError,
  SmtpProtocolError,
  SmtpTransientError,
  TimeoutError,
  TlsError
} from "../../src/SmtpError.js"
import type { Received, SmtpServerFixture } from "../support/fakes/smtpServer.js"
import { startSmtpServer } from "../support/fakes/smtpServer.js"
import { selfSigned } from "../support/helpers/tls.js"

const root = fileURLToPath(new URL("../..", import.meta.url))
const TEST_TIMEOUT = 30_000

interface Outcome {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs the CLI from source (as `node --import tsx`), feeding `input` (or nothing) to its standard input, with `env`
 * added to its environment.
 */
const cli = (
  args: ReadonlyArray<string>,
  input: string | Buffer = "",
  env: Readonly<Record<string, string>> = {}
): Promise<Outcome> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/bin/effect-smtp.ts", ...args], {
      cwd: root,
      env: { ...process.env, NO_COLOR: "1", ...env },
      stdio: ["pipe", "pipe", "pipe"]
    })
    const stdout: Array<Buffer> = []
    const stderr: Array<Buffer> = []
    child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk))
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk))
    child.on("error", reject)
    child.on("close", (code) =>
      resolve({
        code,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8")
      }))
    child.stdin.on("error", () => {}) // the CLI may exit before it reads its input
    child.stdin.end(input)
  })

/** The lines of an output, without the empty ones. */
const linesOf = (text: string): Array<string> => text.split("\n").filter((line) => line.trim() !== "")

type Server = SmtpServerFixture

/** The shared smtp-server fixture (`reject5…` gets a 550, `reject4…` a 450). */
const startServer = startSmtpServer

/** A loopback port that nothing listens on (taken, then freed). */
const closedPort = async (): Promise<number> => {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

describe("exit codes", () => {
  it("follow sysexits.h", () => {
    const reply = { command: "RCPT", code: 550, enhancedCode: "5.1.1", lines: ["No such user"] }
    expect([
      exitCodeOf(new InvalidInputError({ field: "MAIL FROM address", reason: "no" })),
      exitCodeOf(new SmtpPermanentError(reply)),
      exitCodeOf(new TlsError({ failure: "untrusted-certificate", host: "localhost" })),
      exitCodeOf(new SmtpTransientError({ ...reply, code: 450 })),
      exitCodeOf(new NetworkError({ operation: "connect", code: "ECONNREFUSED" })),
      exitCodeOf(new TimeoutError({ phase: "connect", timeoutMillis: 1, mayHaveBeenDelivered: false })),
      exitCodeOf(new SmtpProtocolError({ reason: "garbage" })),
      exitCodeOf(new SmtpAuthError({ failure: "no-common-mechanism", detail: "" })),
      exitCodeOf(new SmtpAuthError({ failure: "cleartext", detail: "" })),
      exitCodeOf(new SmtpAuthError({ failure: "server-unverified", detail: "" })),
      exitCodeOf(new SmtpPermanentError({ command: "AUTH", code: 535, enhancedCode: "5.7.8", lines: ["no"] })),
      exitCodeOf(new SmtpTransientError({ command: "AUTH", code: 454, enhancedCode: "4.7.0", lines: ["later"] })),
      exitCodeOf(new Error("a bug"))
    ]).toEqual([65, 69, 69, 75, 75, 75, 76, 69, 69, 69, 69, 75, 70])
    expect(ExitCode.usage).toBe(64)
  })

  it("--to=ADDRESS is read like --to ADDRESS", () => {
    expect(normalizeArgs(["node", "bin", "send", "--to=a@example.org", "--from=b@example.org"]))
      .toEqual(["node", "bin", "send", "--to", "a@example.org", "--from=b@example.org"])
  })
})

describe("effect-smtp against a plain smtp-server", () => {
  let server: Server
  let url: string
  let dir: string

  beforeAll(async () => {
    server = await startServer({ disabledCommands: ["STARTTLS"] })
    url = `smtp://127.0.0.1:${server.port}`
    dir = mkdtempSync(join(tmpdir(), "effect-smtp-cli-"))
  })

  afterAll(async () => {
    await server.close()
    rmSync(dir, { recursive: true, force: true })
  })

  /** The message the server received for `recipient`. */
  const receivedBy = (recipient: string): Received | undefined => server.received.find((m) => m.to.includes(recipient))

  it("probe shows the greeting, the capabilities and the AUTH mechanisms", async () => {
    const { code, stderr, stdout } = await cli(["probe", url])
    expect(stderr).toBe("")
    expect(code).toBe(0)
    expect(stdout).toMatch(/^Greeting: +220 /m)
    expect(stdout).toMatch(/^Capabilities:\n(?: {2}.*\n)*  PIPELINING\n/m)
    expect(stdout).toMatch(/^TLS: +none \(the server does not offer STARTTLS\)$/m)
    expect(stdout).toMatch(/^AUTH: +LOGIN PLAIN$/m)
    expect(stdout).not.toMatch(/^ {2}STARTTLS$/m)
  }, TEST_TIMEOUT)

  it("probe --json prints one JSON object", async () => {
    const { code, stdout } = await cli(["probe", url, "--json", "--helo", "client.example.org"])
    expect(code).toBe(0)
    const report = JSON.parse(stdout)
    expect(report).toMatchObject({
      host: "127.0.0.1",
      port: server.port,
      tlsMode: "opportunistic",
      greeting: { code: 220, enhancedCode: null },
      extended: true,
      tls: null,
      capabilitiesAfterStartTls: null,
      authMechanisms: ["LOGIN", "PLAIN"],
      authenticated: null
    })
    expect(report.capabilities).toContainEqual({ keyword: "PIPELINING", parameters: [] })
    expect(report.capabilities).toContainEqual({ keyword: "AUTH", parameters: ["LOGIN", "PLAIN"] })
  }, TEST_TIMEOUT)

  it("probe smtptls:// fails when the server does not offer STARTTLS", async () => {
    const { code, stderr, stdout } = await cli(["probe", `smtptls://127.0.0.1:${server.port}`])
    expect(code).toBe(69)
    expect(stdout).toBe("")
    expect(linesOf(stderr)).toEqual([
      "effect-smtp: TLS with 127.0.0.1: TLS is required but the server does not offer STARTTLS"
    ])
  }, TEST_TIMEOUT)

  it("send --file delivers the exact bytes, with every line end made CRLF", async () => {
    const path = join(dir, "message.eml")
    const message =
      "From: a@example.org\nTo: file@example.org\nSubject: from a file\n\n.a leading dot\r\nbare CR\rend\n"
    writeFileSync(path, message)
    const { code, stderr, stdout } = await cli([
      "send",
      url,
      "--from",
      "a@example.org",
      "--to",
      "file@example.org",
      "--file",
      path
    ])
    expect(stderr).toBe("")
    expect(code).toBe(0)
    expect(linesOf(stdout)).toEqual([
      `Sent to 127.0.0.1:${server.port}: 1 of 1 recipient accepted`,
      "  Server: 250 2.0.0 Ok: queued as TEST",
      "  Sent with DATA in 2 round trips",
      "  Accepted: file@example.org"
    ])
    const got = receivedBy("file@example.org")
    expect(got?.from).toBe("a@example.org")
    expect(got?.data).toBe(message.replace(/\r\n|\r|\n/g, "\r\n"))
  }, TEST_TIMEOUT)

  it("send reads standard input and --json reports accepted and rejected recipients", async () => {
    const message = Buffer.from("Subject: from stdin\n\nGr\u00fc\u00dfe, 8 bits\nno final newline", "utf8")
    const { code, stderr, stdout } = await cli(
      ["send", url, "--from=a@example.org", "--to=stdin@example.org", "--to", "reject5-x@example.org", "--json"],
      message
    )
    expect(stderr).toBe("")
    expect(code).toBe(0)
    expect(JSON.parse(stdout)).toEqual({
      accepted: ["stdin@example.org"],
      rejected: [{ recipient: "reject5-x@example.org", code: 550, enhancedCode: "5.1.1", message: "No such user" }],
      response: { code: 250, enhancedCode: "2.0.0", text: "Ok: queued as TEST" },
      // MAIL, both RCPTs and DATA in one write (PIPELINING), then the body.
      method: "DATA",
      roundTrips: 2,
      authenticated: null
    })
    const got = receivedBy("stdin@example.org")
    expect(got?.to).toEqual(["stdin@example.org"])
    expect(got?.bytes).toEqual(
      Buffer.from("Subject: from stdin\r\n\r\nGr\u00fc\u00dfe, 8 bits\r\nno final newline\r\n")
    )
  }, TEST_TIMEOUT)

  it("--trace prints the session on standard error", async () => {
    const { code, stderr, stdout } = await cli(
      ["send", url, "--from", "trace@example.org", "--to", "traced@example.org", "--trace", "--json"],
      "Subject: traced\r\n\r\nhello\r\n"
    )
    expect(code).toBe(0)
    expect(JSON.parse(stdout).accepted).toEqual(["traced@example.org"])
    const lines = linesOf(stderr)
    expect(lines[0]).toMatch(/^S: 220 /)
    expect(lines).toContain("C: MAIL FROM:<trace@example.org>")
    expect(lines).toContain("C: RCPT TO:<traced@example.org>")
    expect(lines).toContain("C: <message body, 26 octets, then .>")
    expect(lines.at(-2)).toBe("C: QUIT")
    expect(lines.at(-1)).toMatch(/^S: 221 /)
    expect(lines.every((line) => /^[CS]: /.test(line))).toBe(true)
  }, TEST_TIMEOUT)

  it("a 550 on the only recipient exits 69 with one line", async () => {
    const { code, stderr, stdout } = await cli(
      ["send", url, "--from", "a@example.org", "--to", "reject5@example.org"],
      "Subject: x\r\n\r\nx\r\n"
    )
    expect(code).toBe(69)
    expect(stdout).toBe("")
    expect(linesOf(stderr)).toEqual(["effect-smtp: Permanent failure to RCPT: 550 5.1.1 No such user"])
  }, TEST_TIMEOUT)

  it("a 450 on the only recipient exits 75", async () => {
    const { code, stderr } = await cli(
      ["send", url, "--from", "a@example.org", "--to", "reject4@example.org"],
      "Subject: x\r\n\r\nx\r\n"
    )
    expect(code).toBe(75)
    expect(linesOf(stderr)).toEqual(["effect-smtp: Transient failure to RCPT: 450 4.2.1 Mailbox busy, try later"])
  }, TEST_TIMEOUT)

  it("a bad --from address exits 65 before anything is sent", async () => {
    const before = server.received.length
    const { code, stderr } = await cli(
      ["send", url, "--from", "not an address", "--to", "b@example.org"],
      "Subject: x\r\n\r\nx\r\n"
    )
    expect(code).toBe(65)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toMatch(/^effect-smtp: Invalid MAIL FROM address: /)
    expect(server.received.length).toBe(before)
  }, TEST_TIMEOUT)

  it("a line over 998 octets exits 65 before anything is sent", async () => {
    const { code, stderr } = await cli(
      ["send", url, "--from", "a@example.org", "--to", "long@example.org"],
      `Subject: long\r\n\r\n${"x".repeat(999)}\r\n`
    )
    expect(code).toBe(65)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toMatch(/^effect-smtp: Invalid /)
    expect(receivedBy("long@example.org")).toBeUndefined()
  }, TEST_TIMEOUT)

  it("an unreadable --file exits 66", async () => {
    const { code, stderr } = await cli([
      "send",
      url,
      "--from",
      "a@example.org",
      "--to",
      "b@example.org",
      "--file",
      join(dir, "missing.eml")
    ])
    expect(code).toBe(66)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toMatch(/^effect-smtp: Cannot read the message from .*missing\.eml/)
  }, TEST_TIMEOUT)
})

describe("effect-smtp usage errors", () => {
  it("an unknown scheme exits 64, without showing the password", async () => {
    const { code, stderr, stdout } = await cli(["probe", "http://user:hunter2@127.0.0.1:25"])
    expect(code).toBe(64)
    expect(stdout).toBe("")
    expect(linesOf(stderr)).toEqual([
      "effect-smtp: Invalid SMTP URL: unknown scheme \"http\"; use one of smtp, smtps, smtptls, esmtp, esmtps, esmtptls"
    ])
  }, TEST_TIMEOUT)

  it("a malformed URL, a missing option, a bad timeout and no command all exit 64", async () => {
    const outcomes = await Promise.all([
      cli(["probe", "smtp://"]),
      cli(["send", "smtp://127.0.0.1:1", "--from", "a@example.org"]),
      cli(["probe", "smtp://127.0.0.1:1", "--timeout", "-1"]),
      cli(["frobnicate"]),
      cli([])
    ])
    expect(outcomes.map((o) => o.code)).toEqual([64, 64, 64, 64, 64])
    for (const outcome of outcomes) {
      expect(outcome.stdout).toBe("")
      expect(outcome.stderr).not.toMatch(/\bat .*\.ts:\d+/) // no stack trace
    }
    expect(outcomes[1]?.stderr).toContain("--to")
    expect(outcomes[2]?.stderr).toContain("--timeout must be a positive number of seconds")
  }, TEST_TIMEOUT)

  it("--help exits 0", async () => {
    const { code, stdout } = await cli(["send", "--help"])
    expect(code).toBe(0)
    expect(stdout).toContain("--from ADDRESS --to ADDRESS...")
  }, TEST_TIMEOUT)

  it("a refused connection exits 75", async () => {
    const port = await closedPort()
    const { code, stderr } = await cli(["probe", `smtp://127.0.0.1:${port}`, "--timeout", "10"])
    expect(code).toBe(75)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toMatch(/^effect-smtp: Network failure during connect \(ECONNREFUSED\)/)
  }, TEST_TIMEOUT)
})

describe("effect-smtp against servers that misbehave", () => {
  /** A raw TCP server on 127.0.0.1 that does `onConnection` with every client. */
  const rawServer = async (onConnection: (socket: net.Socket) => void) => {
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.on("error", () => {})
      socket.on("close", () => sockets.delete(socket))
      onConnection(socket)
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return {
      port: (server.address() as AddressInfo).port,
      close: () =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resolve())
        })
    }
  }

  it("a server that never greets runs into --timeout: exit 75", async () => {
    const silent = await rawServer(() => {})
    try {
      const { code, stderr } = await cli(["probe", `smtp://127.0.0.1:${silent.port}`, "--timeout", "0.5"])
      expect(code).toBe(75)
      expect(linesOf(stderr)).toEqual(["effect-smtp: Timed out after 500 ms waiting for the greeting"])
    } finally {
      await silent.close()
    }
  }, TEST_TIMEOUT)

  it("a server that never answers STARTTLS runs into --timeout: exit 75", async () => {
    const stall = await rawServer((socket) => {
      socket.write("220 stall ESMTP\r\n")
      socket.on("data", (data: Buffer) => {
        if (/^EHLO /i.test(data.toString("latin1"))) socket.write("250-stall\r\n250 STARTTLS\r\n")
      })
    })
    try {
      const outcomes = await Promise.all([
        cli(["probe", `smtp://127.0.0.1:${stall.port}`, "--timeout", "0.5"]),
        cli([
          "send",
          `smtp://127.0.0.1:${stall.port}`,
          "--timeout",
          "0.5",
          "--from",
          "a@example.org",
          "--to",
          "b@x.org"
        ])
      ])
      for (const { code, stderr } of outcomes) {
        expect(code).toBe(75)
        expect(linesOf(stderr)).toEqual(["effect-smtp: Timed out after 500 ms waiting for STARTTLS"])
      }
    } finally {
      await stall.close()
    }
  }, TEST_TIMEOUT)

  it("a server that does not speak SMTP is a protocol violation: exit 76", async () => {
    const garbage = await rawServer((socket) => socket.write("HTTP/1.1 400 Bad Request\r\n\r\n"))
    try {
      const { code, stderr } = await cli(["probe", `smtp://127.0.0.1:${garbage.port}`, "--timeout", "5"])
      expect(code).toBe(76)
      expect(linesOf(stderr)).toHaveLength(1)
      expect(stderr).toMatch(/^effect-smtp: SMTP protocol violation in reply to greeting: /)
    } finally {
      await garbage.close()
    }
  }, TEST_TIMEOUT)
})

describe("effect-smtp against smtp-server with a self-signed certificate", () => {
  let starttls: Server
  let implicit: Server

  beforeAll(async () => {
    const { cert, key } = selfSigned()
    starttls = await startServer({ key, cert, disabledCommands: [] })
    implicit = await startServer({ key, cert, secure: true, disabledCommands: [] })
  }, TEST_TIMEOUT)

  afterAll(async () => {
    await starttls?.close()
    await implicit?.close()
  })

  it("probe refuses the untrusted certificate: exit 69", async () => {
    const { code, stderr, stdout } = await cli(["probe", `smtp://127.0.0.1:${starttls.port}`])
    expect(code).toBe(69)
    expect(stdout).toBe("")
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toMatch(/^effect-smtp: TLS with 127.0.0.1: the server's certificate is not trusted/)
  }, TEST_TIMEOUT)

  it("probe --insecure shows the TLS details and the capabilities before and after STARTTLS", async () => {
    const { code, stderr, stdout } = await cli(["probe", `smtp://127.0.0.1:${starttls.port}`, "--insecure"])
    expect(code).toBe(0)
    expect(linesOf(stderr)).toEqual([
      "WARNING: --insecure: TLS certificates are NOT verified; the server may not be who it claims to be"
    ])
    expect(stdout).toMatch(/^Capabilities before STARTTLS:\n(?: {2}.*\n)*  STARTTLS\n/m)
    expect(stdout).toMatch(/^TLS: +STARTTLS, TLSv1\.[23], \S+, certificate NOT verified$/m)
    expect(stdout).toMatch(/^ {2}Subject: +CN=localhost$/m)
    expect(stdout).toMatch(/^ {2}Issuer: +CN=localhost$/m)
    expect(stdout).toMatch(/^ {2}Valid: +.+ to .+$/m)
    const after = stdout.slice(stdout.indexOf("Capabilities after STARTTLS:"))
    expect(after).toMatch(/^Capabilities after STARTTLS:\n(?: {2}.*\n)*  AUTH LOGIN PLAIN\n/)
    expect(after).not.toContain("STARTTLS\n")
  }, TEST_TIMEOUT)

  it("probe --insecure --json reports TLS via STARTTLS", async () => {
    const { code, stdout } = await cli(["probe", `smtptls://127.0.0.1:${starttls.port}`, "--insecure", "--json"])
    expect(code).toBe(0)
    const report = JSON.parse(stdout)
    expect(report.tlsMode).toBe("starttls")
    expect(report.tls).toMatchObject({
      via: "starttls",
      authorized: false,
      certificate: { subject: "CN=localhost", issuer: "CN=localhost" }
    })
    expect(report.capabilities).toContainEqual({ keyword: "STARTTLS", parameters: [] })
    expect(report.capabilitiesAfterStartTls).not.toContainEqual({ keyword: "STARTTLS", parameters: [] })
    expect(report.authMechanisms).toEqual(["LOGIN", "PLAIN"])
  }, TEST_TIMEOUT)

  it("probe smtps:// --insecure uses implicit TLS", async () => {
    const { code, stdout } = await cli(["probe", `smtps://127.0.0.1:${implicit.port}`, "--insecure", "--json"])
    expect(code).toBe(0)
    const report = JSON.parse(stdout)
    expect(report.tls).toMatchObject({ via: "implicit", authorized: false })
    expect(report.capabilitiesAfterStartTls).toBeNull()
  }, TEST_TIMEOUT)

  it("send --insecure sends over STARTTLS", async () => {
    const { code, stderr, stdout } = await cli(
      ["send", `smtp://127.0.0.1:${starttls.port}`, "--insecure", "--from", "a@example.org", "--to", "tls@example.org"],
      "Subject: over TLS\r\n\r\nsecret\r\n"
    )
    expect(code).toBe(0)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stdout).toContain("1 of 1 recipient accepted")
    expect(starttls.received.find((m) => m.to.includes("tls@example.org"))?.data)
      .toBe("Subject: over TLS\r\n\r\nsecret\r\n")
  }, TEST_TIMEOUT)
})

describe("effect-smtp signs in", () => {
  /** The one password the server accepts (for "alice"); it must never appear in any output. */
  const secret = "Hunter2-s3cret"
  const base64 = (text: string) => Buffer.from(text, "utf8").toString("base64")
  /** The password as it could leak: plain, percent-encoded, or in a PLAIN or LOGIN payload. */
  const leaks = [secret, encodeURIComponent(secret), base64(secret), base64(`\0alice\0${secret}`)]
  const message = "Subject: signed in\r\n\r\nhello\r\n"
  const cleartextWarning =
    "WARNING: --allow-cleartext-auth: signing in over a connection WITHOUT TLS; anyone on the path can read or " +
    "replay the credentials"

  interface Attempt {
    readonly method: string
    readonly username: string | undefined
  }

  /**
   * smtp-server offering PLAIN, LOGIN and CRAM-MD5 that accepts "alice" with the secret, answers 454 to "busy" and
   * 535 to everything else.
   */
  const startAuthServer = async (extra: Partial<SMTPServerOptions> = {}) => {
    const attempts: Array<Attempt> = []
    const server = await startServer({
      authMethods: ["PLAIN", "LOGIN", "CRAM-MD5"],
      onAuth(
        auth: SMTPServerAuthentication,
        _session: SMTPServerSession,
        callback: (error: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void
      ) {
        attempts.push({ method: auth.method, username: auth.username })
        const ok = auth.username === "alice" &&
          (auth.method === "CRAM-MD5" ? auth.validatePassword(secret) : auth.password === secret)
        if (ok) {
          callback(null, { user: "alice" })
        } else if (auth.username === "busy") {
          callback(Object.assign(new Error("4.7.0 Temporary authentication failure"), { responseCode: 454 }))
        } else {
          callback(Object.assign(new Error("5.7.8 Authentication credentials invalid"), { responseCode: 535 }))
        }
      },
      ...extra
    })
    return { ...server, attempts }
  }

  let server: Awaited<ReturnType<typeof startAuthServer>>
  let tls: Awaited<ReturnType<typeof startAuthServer>>
  let plain: string
  let withCredentials: string

  beforeAll(async () => {
    const { cert, key } = selfSigned()
    server = await startAuthServer()
    tls = await startAuthServer({ key, cert, disabledCommands: [] })
    plain = `smtp://127.0.0.1:${server.port}`
    withCredentials = `smtp://alice:${encodeURIComponent(secret)}@127.0.0.1:${server.port}`
  }, TEST_TIMEOUT)

  afterAll(async () => {
    await server?.close()
    await tls?.close()
  })

  /** The attempts the server saw during `run`. */
  const attemptsDuring = async <A>(run: () => Promise<A>): Promise<[A, Array<Attempt>]> => {
    const before = server.attempts.length
    const result = await run()
    return [result, server.attempts.slice(before)]
  }

  const expectNoLeak = (outcome: Outcome) => {
    for (const leak of leaks) {
      expect(outcome.stdout).not.toContain(leak)
      expect(outcome.stderr).not.toContain(leak)
    }
  }

  it("URL credentials with --allow-cleartext-auth: the strongest common mechanism signs in, said loudly", async () => {
    const [outcome, attempts] = await attemptsDuring(() =>
      cli(
        ["send", withCredentials, "--allow-cleartext-auth", "--from", "a@example.org", "--to", "url@example.org"],
        message
      )
    )
    expect(outcome.code).toBe(0)
    expect(linesOf(outcome.stderr)).toEqual([cleartextWarning])
    expect(linesOf(outcome.stdout)).toEqual([
      `Sent to 127.0.0.1:${server.port}: 1 of 1 recipient accepted`,
      "  Server: 250 2.0.0 Ok: queued as TEST",
      "  Sent with DATA in 2 round trips",
      "  Signed in: as alice with CRAM-MD5",
      "  Accepted: url@example.org"
    ])
    expect(attempts).toEqual([{ method: "CRAM-MD5", username: "alice" }])
    expect(server.received.find((m) => m.to.includes("url@example.org"))?.data).toBe(message)
    expectNoLeak(outcome)
  }, TEST_TIMEOUT)

  it("--user with --password-env reads the password from the environment", async () => {
    const [outcome, attempts] = await attemptsDuring(() =>
      cli(
        [
          "send",
          plain,
          "--user",
          "alice",
          "--password-env",
          "SMTP_TEST_PASSWORD",
          "--allow-cleartext-auth",
          "--from",
          "a@example.org",
          "--to",
          "env@example.org",
          "--json"
        ],
        message,
        { SMTP_TEST_PASSWORD: secret }
      )
    )
    expect(outcome.code).toBe(0)
    expect(JSON.parse(outcome.stdout)).toMatchObject({ accepted: ["env@example.org"], authenticated: "CRAM-MD5" })
    expect(attempts).toEqual([{ method: "CRAM-MD5", username: "alice" }])
    expectNoLeak(outcome)
  }, TEST_TIMEOUT)

  it("--auth pins the mechanism (in any case)", async () => {
    for (const [pinned, expected] of [["login", "LOGIN"], ["PLAIN", "PLAIN"]] as const) {
      const [outcome, attempts] = await attemptsDuring(() =>
        cli(
          [
            "send",
            withCredentials,
            "--auth",
            pinned,
            "--allow-cleartext-auth",
            "--from",
            "a@example.org",
            "--to",
            "pinned@example.org",
            "--json"
          ],
          message
        )
      )
      expect(outcome.code).toBe(0)
      expect(JSON.parse(outcome.stdout).authenticated).toBe(expected)
      expect(attempts).toEqual([{ method: expected, username: "alice" }])
      expectNoLeak(outcome)
    }
  }, TEST_TIMEOUT)

  it(
    "--auth with a mechanism the server does not offer exits 69 without trying (and without the warning)",
    async () => {
      const [outcome, attempts] = await attemptsDuring(() =>
        cli(["probe", withCredentials, "--auth", "SCRAM-SHA-256", "--allow-cleartext-auth"])
      )
      expect(outcome.code).toBe(69)
      expect(outcome.stdout).toBe("")
      expect(linesOf(outcome.stderr)).toEqual([
        "effect-smtp: Authentication: no SASL mechanism is supported by both sides (the server does not offer AUTH " +
        "SCRAM-SHA-256; it offers PLAIN LOGIN CRAM-MD5)"
      ])
      expect(attempts).toEqual([])
    },
    TEST_TIMEOUT
  )

  it("a wrong password exits 69, a 454 exits 75, and nothing is sent", async () => {
    const before = server.received.length
    const [[wrong, busy], attempts] = await attemptsDuring(() =>
      Promise.all([
        cli(
          [
            "send",
            `smtp://alice:wrong-${encodeURIComponent(secret)}@127.0.0.1:${server.port}`,
            "--allow-cleartext-auth",
            "--from",
            "a@example.org",
            "--to",
            "wrong@example.org"
          ],
          message
        ),
        cli(
          [
            "send",
            plain,
            "--user",
            "busy",
            "--password-env",
            "SMTP_TEST_PASSWORD",
            "--allow-cleartext-auth",
            "--from",
            "a@example.org",
            "--to",
            "busy@example.org"
          ],
          message,
          { SMTP_TEST_PASSWORD: secret }
        )
      ])
    )
    expect(wrong.code).toBe(69)
    expect(wrong.stdout).toBe("")
    expect(linesOf(wrong.stderr)).toEqual([
      cleartextWarning,
      "effect-smtp: Permanent failure to AUTH: 535 5.7.8 Authentication credentials invalid"
    ])
    expect(busy.code).toBe(75)
    expect(busy.stdout).toBe("")
    expect(linesOf(busy.stderr)).toEqual([
      cleartextWarning,
      "effect-smtp: Transient failure to AUTH: 454 4.7.0 Temporary authentication failure"
    ])
    expect(attempts.map((a) => a.username).sort()).toEqual(["alice", "busy"])
    expect(server.received.length).toBe(before)
    expectNoLeak(wrong)
    expectNoLeak(busy)
  }, TEST_TIMEOUT)

  it("without --allow-cleartext-auth, signing in over a plain connection exits 69 and sends nothing", async () => {
    const [outcomes, attempts] = await attemptsDuring(() =>
      Promise.all([
        cli(["send", withCredentials, "--from", "a@example.org", "--to", "clear@example.org"], message),
        cli(["probe", withCredentials, "--json"])
      ])
    )
    for (const outcome of outcomes) {
      expect(outcome.code).toBe(69)
      expect(outcome.stdout).toBe("")
      expect(linesOf(outcome.stderr)).toEqual([
        "effect-smtp: Authentication: the connection is not encrypted, and authenticating in cleartext was not " +
        "allowed (give --allow-cleartext-auth to sign in anyway, e.g. to a test server on loopback)"
      ])
      expectNoLeak(outcome)
    }
    expect(attempts).toEqual([])
    expect(server.received.find((m) => m.to.includes("clear@example.org"))).toBeUndefined()
  }, TEST_TIMEOUT)

  it("probe signs in and says with what", async () => {
    const [[text, json], attempts] = await attemptsDuring(() =>
      Promise.all([
        cli(["probe", withCredentials, "--allow-cleartext-auth"]),
        cli(["probe", withCredentials, "--allow-cleartext-auth", "--json", "--auth", "LOGIN"])
      ])
    )
    expect(text.code).toBe(0)
    expect(linesOf(text.stderr)).toEqual([cleartextWarning])
    expect(text.stdout).toMatch(/^AUTH: +PLAIN LOGIN CRAM-MD5\nSigned in: +as alice with CRAM-MD5$/m)
    expect(json.code).toBe(0)
    expect(JSON.parse(json.stdout)).toMatchObject({
      authMechanisms: ["PLAIN", "LOGIN", "CRAM-MD5"],
      authenticated: "LOGIN"
    })
    expect(attempts).toHaveLength(2)
    expectNoLeak(text)
    expectNoLeak(json)
  }, TEST_TIMEOUT)

  it("over STARTTLS no cleartext permission is needed and nothing is said about it", async () => {
    const url = `smtp://alice:${encodeURIComponent(secret)}@127.0.0.1:${tls.port}`
    const outcomes = await Promise.all([
      cli(["probe", url, "--insecure", "--json"]),
      cli(
        ["send", url, "--insecure", "--allow-cleartext-auth", "--from", "a@example.org", "--to", "tls@example.org"],
        message
      )
    ])
    for (const outcome of outcomes) {
      expect(outcome.code).toBe(0)
      expect(linesOf(outcome.stderr)).toEqual([
        "WARNING: --insecure: TLS certificates are NOT verified; the server may not be who it claims to be"
      ])
      expectNoLeak(outcome)
    }
    expect(JSON.parse(outcomes[0]!.stdout)).toMatchObject({ tls: { via: "starttls" }, authenticated: "CRAM-MD5" })
    expect(outcomes[1]!.stdout).toContain("  Signed in: as alice with CRAM-MD5")
    expect(tls.attempts).toEqual([
      { method: "CRAM-MD5", username: "alice" },
      { method: "CRAM-MD5", username: "alice" }
    ])
  }, TEST_TIMEOUT)

  it("the password appears nowhere in --trace or --json output, only <redacted>", async () => {
    for (const mechanism of ["PLAIN", "LOGIN", "CRAM-MD5"]) {
      for (const args of [[withCredentials], [plain, "--user", "alice", "--password-env", "SMTP_TEST_PASSWORD"]]) {
        const outcome = await cli(
          [
            "send",
            ...args,
            "--auth",
            mechanism,
            "--allow-cleartext-auth",
            "--trace",
            "--json",
            "--from",
            "a@example.org",
            "--to",
            "traced@example.org"
          ],
          message,
          { SMTP_TEST_PASSWORD: secret }
        )
        expect(outcome.code).toBe(0)
        expect(JSON.parse(outcome.stdout).authenticated).toBe(mechanism)
        const lines = linesOf(outcome.stderr)
        expect(lines).toContain(cleartextWarning)
        expect(lines).toContain(mechanism === "PLAIN" ? "C: AUTH PLAIN <redacted>" : `C: AUTH ${mechanism}`)
        if (mechanism !== "PLAIN") expect(lines).toContain("C: <redacted>")
        expect(lines).toContainEqual(expect.stringMatching(/^S: 235 /))
        expectNoLeak(outcome)
      }
    }
  }, TEST_TIMEOUT * 2)

  it("credential mistakes exit 64 with one line that never shows the password", async () => {
    const send = ["--from", "a@example.org", "--to", "b@example.org"]
    const cases: ReadonlyArray<[ReadonlyArray<string>, Record<string, string>, string]> = [
      [["send", plain, "--user", "alice", ...send], {}, "--user needs --password-env VAR"],
      [["probe", plain, "--password-env", "SMTP_TEST_PASSWORD"], {}, "--password-env needs --user NAME"],
      [
        ["send", withCredentials, "--user", "alice", "--password-env", "SMTP_TEST_PASSWORD", ...send],
        { SMTP_TEST_PASSWORD: secret },
        "either in the URL or with --user and --password-env, not both"
      ],
      [
        ["probe", withCredentials, "--password-env", "SMTP_TEST_PASSWORD"],
        { SMTP_TEST_PASSWORD: secret },
        "either in the URL or with --user and --password-env, not both"
      ],
      [
        ["probe", plain, "--user", "alice", "--password-env", "SMTP_TEST_UNSET_VARIABLE"],
        {},
        "the environment variable SMTP_TEST_UNSET_VARIABLE is not set"
      ],
      [
        ["send", plain, "--user", "alice", "--password-env", "SMTP_TEST_PASSWORD", ...send],
        { SMTP_TEST_PASSWORD: "" },
        "the environment variable SMTP_TEST_PASSWORD is empty"
      ],
      [["probe", withCredentials, "--auth", "DIGEST-MD5"], {}, "--auth: unknown mechanism \"DIGEST-MD5\"; use one of"],
      [["probe", withCredentials, "--auth", "xoauth2"], {}, "--auth XOAUTH2 signs in with an OAuth access token"],
      [["probe", plain, "--auth", "PLAIN"], {}, "--auth needs credentials"]
    ]
    const [outcomes, attempts] = await attemptsDuring(() =>
      Promise.all(cases.map(([args, env]) => cli(args, message, env)))
    )
    outcomes.forEach((outcome, i) => {
      expect(outcome.code).toBe(64)
      expect(outcome.stdout).toBe("")
      expect(linesOf(outcome.stderr)).toHaveLength(1)
      expect(outcome.stderr).toMatch(/^effect-smtp: /)
      expect(outcome.stderr).toContain(cases[i]![2])
      expectNoLeak(outcome)
    })
    expect(attempts).toEqual([])
  }, TEST_TIMEOUT)
})
