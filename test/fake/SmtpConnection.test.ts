import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { mkdtempSync, rmSync } from "node:fs"
import * as net from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as tls from "node:tls"
import { SMTPServer } from "smtp-server"
import * as Capabilities from "../../src/Capabilities.js"
import * as SmtpCommand from "../../src/SmtpCommand.js"
import * as SmtpConfig from "../../src/SmtpConfig.js"
import * as SmtpConnection from "../../src/SmtpConnection.js"
import type { SmtpError } from "../../src/SmtpError.js"
import type { ScriptedSession } from "../support/fakes/scriptedServer.js"
import { answerEhlo, greet, scriptedServer, serveTransaction, wellBehaved } from "../support/fakes/scriptedServer.js"
import { smtpServer } from "../support/fakes/smtpServer.js"
import { connect } from "../support/helpers/connect.js"
import { recordingTracer } from "../support/helpers/spans.js"
import { selfSigned } from "../support/helpers/tls.js"

/** A server that greets, answers EHLO, reads one more command and never answers it. */
const stallAfterOneCommand = async (session: ScriptedSession) => {
  await greet(session)
  await answerEhlo(session)
  await session.readLine()
  await session.stall()
}

/** Reads CRLF-terminated lines from a socket until stopped. */
const lineReader = (socket: net.Socket) => {
  let buffered = ""
  const waiting: Array<(line: string) => void> = []
  const ready: Array<string> = []
  const onData = (chunk: Buffer) => {
    buffered += chunk.toString("latin1")
    let end: number
    while ((end = buffered.indexOf("\r\n")) !== -1) {
      const line = buffered.slice(0, end)
      buffered = buffered.slice(end + 2)
      const waiter = waiting.shift()
      if (waiter === undefined) ready.push(line)
      else waiter(line)
    }
  }
  socket.on("data", onData)
  return {
    next: () =>
      new Promise<string>((resolve) => {
        const line = ready.shift()
        if (line === undefined) waiting.push(resolve)
        else resolve(line)
      }),
    stop: () => socket.off("data", onData)
  }
}

/** Runs a scoped program and returns its failure, or fails the test if it succeeded. */
const failure = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.flip(Effect.scoped(effect))

describe("SmtpConnection.optionsFromUrl", () => {
  it("takes the host, port and TLS mode from the URL and keeps the other options", () => {
    const settings = Either.getOrThrow(SmtpConfig.fromUrl("smtps://mx.example.org"))
    expect(SmtpConnection.optionsFromUrl(settings, { clientName: "me.example.org" }))
      .toEqual({ clientName: "me.example.org", host: "mx.example.org", port: 465, tls: "implicit" })
  })
})

describe("SmtpConnection against smtp-server", () => {
  it.scopedLive("greets, reads the capabilities and reports its state", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const state = yield* Effect.scoped(
        Effect.flatMap(connect({ host: "127.0.0.1", port: server.port, clientName: "client.example.org" }), (c) =>
          c.state)
      )
      expect(state.greeting.code).toBe(220)
      expect(state.extended).toBe(true)
      expect(Capabilities.pipelining(state.capabilities)).toBe(true)
      expect(Capabilities.authMechanisms(state.capabilities)).toEqual(["LOGIN", "PLAIN"])
      expect(state.secure).toBe(false)
      expect(state.endpoints.remoteAddress).toBe("127.0.0.1")
      expect(state.endpoints.remotePort).toBe(server.port)
      expect(state.closed).toBe(false)
    }))

  it.scopedLive("sends a message that arrives byte-exact, with per-recipient results", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const body = ".leading dot\r\nbare LF\nbare CR\rtrailing spaces   \r\n8-bit: Grüße\r\n" + "x".repeat(900) + "\r\n"
      const result = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* connect({ host: "127.0.0.1", port: server.port, tls: "none" })
        return yield* connection.send(
          { from: "sender@example.org", to: ["one@example.org", "reject5@example.org", "reject4@example.org"] },
          body
        )
      }))
      expect(result.accepted.map((a) => a.recipient)).toEqual(["one@example.org"])
      expect(result.rejected.map((r) => [r.recipient, r.error._tag, r.error.code])).toEqual([
        ["reject5@example.org", "SmtpPermanentError", 550],
        ["reject4@example.org", "SmtpTransientError", 450]
      ])
      expect(result.response.code).toBe(250)
      expect(result.response.text).toContain("queued as TEST")
      expect(server.received).toHaveLength(1)
      expect(server.received[0]!.to).toEqual(["one@example.org"])
      const expected = Buffer.from(body.replace(/\r\n|\r|\n/g, "\r\n"), "utf8").toString("latin1")
      expect(server.received[0]!.data).toBe(expected)
    }))

  it.scopedLive("streams a body from an Effect Stream", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const chunks = ["Subject: streamed\r\n\r\nfirst", " line\r", "\n.second line\n"].map((s) => Buffer.from(s))
      yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* connect({ host: "127.0.0.1", port: server.port })
        yield* connection.send({ from: "a@example.org", to: ["b@example.org"] }, Stream.fromIterable(chunks))
      }))
      expect(server.received[0]!.data).toBe("Subject: streamed\r\n\r\nfirst line\r\n.second line\r\n")
    }))

  it.scopedLive("fails when every recipient is refused: transient if any refusal was 4xx", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const send = (to: ReadonlyArray<string>) =>
        Effect.scoped(Effect.flatMap(
          connect({ host: "127.0.0.1", port: server.port }),
          (c) => c.send({ from: "a@example.org", to }, "hi")
        ))
      expect((yield* Effect.flip(send(["reject5@example.org", "reject4@example.org"])))._tag).toBe("SmtpTransientError")
      expect((yield* Effect.flip(send(["reject5@example.org"])))._tag).toBe("SmtpPermanentError")
      expect(server.received).toHaveLength(0)
    }))

  it.scopedLive("runs every command", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        expect((yield* c.noop()).code).toBe(250)
        expect((yield* c.noop("ping")).code).toBe(250)
        expect((yield* c.rset).code).toBe(250)
        expect((yield* c.help()).code).toBe(214)
        expect((yield* c.vrfy("postmaster")).code).toBe(252)
        expect((yield* c.helo("client.example.org")).code).toBe(250)
        expect((yield* c.state).extended).toBe(false)
        expect(Capabilities.pipelining(yield* c.ehlo("client.example.org"))).toBe(true)
        // A raw command returns its reply whatever the class; readReply reads one more reply.
        expect((yield* c.command(SmtpCommand.raw("XUNKNOWN"))).code).toBe(500)
        expect((yield* c.mail("a@example.org", { size: 100, body: "8BITMIME" })).code).toBe(250)
        expect((yield* c.rcpt("b@example.org")).code).toBe(250)
        expect((yield* c.data("Subject: x\r\n\r\nbody\r\n")).code).toBe(250)
        expect((yield* c.quit).code).toBe(221)
        expect((yield* c.state).closed).toBe(true)
        const afterQuit = yield* Effect.flip(c.noop())
        expect(afterQuit._tag).toBe("NetworkError")
      }))
      expect(server.received[0]!.data).toBe("Subject: x\r\n\r\nbody\r\n")
    }))

  it.scopedLive("keeps a transcript and usage figures", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const live: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({
          host: "127.0.0.1",
          port: server.port,
          clientName: "client.example.org",
          onTranscript: (entry) => Effect.sync(() => live.push(`${entry.direction}: ${entry.line}`))
        })
        yield* c.noop()
        const lines = yield* Stream.runCollect(Stream.take(c.transcript, 3))
        expect(Chunk.toReadonlyArray(lines).map((e) => `${e.direction}: ${e.line}`)).toEqual([
          expect.stringMatching(/^server: 220 /),
          "client: EHLO client.example.org",
          expect.stringMatching(/^server: 250-/)
        ])
        const usage = yield* c.usage
        expect(usage.bytesSent).toBe("EHLO client.example.org\r\nNOOP\r\n".length)
        expect(usage.bytesReceived).toBeGreaterThan(50)
        yield* c.resetUsage
        expect(yield* c.usage).toEqual({ bytesSent: 0, bytesReceived: 0, sendingMillis: 0, receivingMillis: 0 })
      }))
      expect(live).toContain("client: NOOP")
      expect(live.at(-2)).toBe("client: QUIT")
      expect(live.at(-1)).toMatch(/^server: 221/)
    }))

  it.scopedLive("a transcript subscriber gets every line live, a late one the last lines first; both end with QUIT", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const format = (lines: Chunk.Chunk<SmtpConnection.TranscriptEntry>) =>
        Chunk.toReadonlyArray(lines).map((e) => `${e.direction}: ${e.line.slice(0, 9)}`)
      const [early, late] = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, clientName: "client.example.org" })
        const early = yield* Effect.fork(Stream.runCollect(c.transcript))
        yield* Effect.yieldNow()
        yield* c.noop()
        const late = yield* Effect.fork(Stream.runCollect(c.transcript))
        yield* Effect.yieldNow()
        yield* c.rset
        return [early, late] as const
      }))
      // The scope is closed: both streams have ended, after QUIT and its reply.
      const earlyLines = format(yield* Fiber.join(early))
      const lateLines = format(yield* Fiber.join(late))
      expect(earlyLines).toHaveLength(lateLines.length)
      expect(earlyLines).toEqual(lateLines)
      expect(earlyLines.filter((l) => l.startsWith("client"))).toEqual([
        "client: EHLO clie",
        "client: NOOP",
        "client: RSET",
        "client: QUIT"
      ])
      expect(earlyLines[0]).toMatch(/^server: 220 /)
      expect(earlyLines.at(-1)).toMatch(/^server: 221 /)
    }))

  it.scopedLive("logs a warning when a command is slower than the threshold", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const messages: Array<string> = []
      const logger = Logger.make(({ message }) => messages.push(String(message)))
      yield* Effect.scoped(
        Effect.flatMap(
          connect({ host: "127.0.0.1", port: server.port, slowCommandThreshold: 0 }),
          (c) => c.noop()
        )
      ).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(messages.some((m) => /^SMTP NOOP took \d+ ms$/.test(m))).toBe(true)
    }))

  it.scoped("the Clock times a command: a TestClock moved while it waits makes it slow and stamps the transcript", () =>
    Effect.gen(function*() {
      let noopRead = () => {}
      const noopSeen = new Promise<void>((resolve) => (noopRead = resolve))
      let release = () => {}
      const released = new Promise<void>((resolve) => (release = resolve))
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        await session.readLine()
        noopRead()
        await released
        await session.reply("250 2.0.0 OK")
        await session.readLine()
        await session.reply("221 2.0.0 Bye")
      })
      const messages: Array<string> = []
      const logger = Logger.make(({ message }) => messages.push(String(message)))
      const entries: Array<SmtpConnection.TranscriptEntry> = []
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({
          host: "127.0.0.1",
          port: server.port,
          slowCommandThreshold: "1 second",
          onTranscript: (entry) => Effect.sync(() => entries.push(entry))
        })
        const noop = yield* Effect.fork(c.noop())
        yield* Effect.promise(() => noopSeen)
        yield* TestClock.adjust("2 seconds")
        release()
        yield* Fiber.join(noop)
      })).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      // EHLO and QUIT took no time on the test clock; NOOP took exactly the two seconds the clock was moved by.
      expect(messages.filter((m) => m.startsWith("SMTP "))).toEqual(["SMTP NOOP took 2000 ms"])
      expect(entries.map((e) => [e.direction, e.line.slice(0, 4), e.at])).toEqual([
        ["server", "220 ", 0],
        ["client", "EHLO", 0],
        ["server", "250-", 0],
        ["server", "250-", 0],
        ["server", "250-", 0],
        ["server", "250 ", 0],
        ["client", "NOOP", 0],
        ["server", "250 ", 2000],
        ["client", "QUIT", 2000],
        ["server", "221 ", 2000]
      ])
    }))

  it.scopedLive("makes each command a span with its verb, reply code and server", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const { spans, tracer: recording } = yield* recordingTracer
      yield* Effect.scoped(
        Effect.flatMap(connect({ host: "127.0.0.1", port: server.port }), (c) =>
          Effect.gen(function*() {
            yield* c.mail("a@example.org")
            yield* c.rcpt("b@example.org")
            yield* c.data("traced")
            yield* c.send({ from: "a@example.org", to: ["b@example.org"] }, "traced")
          }))
      ).pipe(Effect.withTracer(recording))
      const byName = (name: string) => spans.find((span) => span.name === name)
      expect(spans.map((span) => span.name)).toEqual(
        expect.arrayContaining([
          "smtp.greeting",
          "smtp.ehlo",
          "smtp.send",
          "smtp.mail",
          "smtp.rcpt",
          "smtp.data",
          "smtp.quit"
        ])
      )
      const rcpt = byName("smtp.rcpt")!
      expect(rcpt.attributes.get("smtp.command")).toBe("RCPT")
      expect(rcpt.attributes.get("smtp.reply.code")).toBe(250)
      expect(rcpt.attributes.get("server.address")).toBe("127.0.0.1")
      expect(rcpt.attributes.get("server.port")).toBe(server.port)
      expect(rcpt.kind).toBe("client")
      expect(byName("smtp.greeting")!.attributes.get("smtp.reply.code")).toBe(220)
      expect(byName("smtp.data")!.attributes.get("smtp.reply.code")).toBe(250)
      // A pipelined send is one span: how it went is on it, not on spans of commands that left in one write.
      const send = byName("smtp.send")!
      expect(send.attributes.get("smtp.method")).toBe("DATA")
      expect(send.attributes.get("smtp.round_trips")).toBe(2)
      expect(send.attributes.get("smtp.recipients.accepted")).toBe(1)
      expect(send.attributes.get("server.port")).toBe(server.port)
    }))

  it.scopedLive("concurrent sends on one connection run one transaction at a time", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const results = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        return yield* Effect.all(
          Array.from({ length: 20 }, (_, i) =>
            c.send({ from: "a@example.org", to: [`r${i}@example.org`] }, `message ${i}`)),
          { concurrency: "unbounded" }
        )
      })).pipe(Effect.withMaxOpsBeforeYield(16))
      expect(results.every((r) =>
        r.response.code === 250
      )).toBe(true)
      expect(server.received.map((m) => m.data).sort()).toEqual(
        Array.from({ length: 20 }, (_, i) => `message ${i}\r\n`).sort()
      )
    }))

  it.scopedLive("writes raw bytes and reads raw replies, aborts without QUIT, and tells its timeouts", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, timeouts: { rcpt: "7 seconds" } })
        expect(Duration.toMillis(c.timeouts.rcpt)).toBe(7000)
        expect(Duration.toMillis(c.timeouts.dataEnd)).toBe(600_000)
        expect(Duration.toMillis(c.timeouts.greeting)).toBe(300_000)
        yield* c.writeRaw(Buffer.from("NOOP raw\r\n"))
        expect((yield* c.readReply).code).toBe(250)
        yield* c.abort
        expect((yield* c.state).closed).toBe(true)
        expect((yield* Effect.flip(c.noop()))._tag).toBe("NetworkError")
      }))
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toMatch(/\r\nNOOP raw\r\n$/)
    }))

  it.scopedLive("reaches a server on a UNIX socket", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "effect-smtp-sock-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
      )
      const path = join(dir, "lmtp.sock")
      const received: Array<string> = []
      yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const server = new SMTPServer({
            lmtp: true,
            authOptional: true,
            disabledCommands: ["STARTTLS"],
            logger: false,
            onData(stream, _session, callback) {
              const chunks: Array<Buffer> = []
              stream.on("data", (chunk: Buffer) => chunks.push(chunk))
              stream.on("end", () => {
                received.push(Buffer.concat(chunks).toString("latin1"))
                callback(null)
              })
            }
          })
          await new Promise<void>((resolve) => server.listen(path, resolve))
          return server
        }),
        (server) => Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
      )
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "localhost", path, lmtp: true, clientName: "client.example.org" })
        expect((yield* c.state).extended).toBe(true)
        yield* c.mail("a@example.org")
        yield* c.rcpt("b@example.org")
        yield* c.data("over a UNIX socket")
      }))
      expect(received).toEqual(["over a UNIX socket\r\n"])
    }))

  it.scopedLive("rejects CR and LF in arguments before anything is sent", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, clientName: "client.example.org" })
        const injected = yield* Effect.flip(c.mail("a@example.org>\r\nRCPT TO:<victim@example.org"))
        expect(injected._tag).toBe("InvalidInputError")
        const inSend = yield* Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org", "c@x\nDATA"] }, "x"))
        expect(inSend._tag).toBe("InvalidInputError")
        expect((yield* c.noop()).code).toBe(250)
      }))
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toBe("EHLO client.example.org\r\nNOOP\r\nQUIT\r\n")
    }))
})

describe("SmtpConnection TLS", () => {
  const tlsServer = (
    certificate: { readonly cert: string; readonly key: string },
    options: { readonly secure?: boolean } = {}
  ) =>
    smtpServer({
      secure: options.secure ?? false,
      disabledCommands: [],
      key: certificate.key,
      cert: certificate.cert
    })

  it.scopedLive("upgrades with STARTTLS, verifying the certificate, and says EHLO again", () =>
    Effect.gen(function*() {
      const certificate = selfSigned()
      const server = yield* tlsServer(certificate)
      const state = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({
          host: "localhost",
          port: server.port,
          tls: "starttls",
          tlsOptions: { ca: certificate.cert }
        })
        yield* c.send({ from: "a@example.org", to: ["b@example.org"] }, "over TLS")
        return yield* c.state
      }))
      expect(state.secure).toBe(true)
      expect(state.tls?.authorized).toBe(true)
      expect(state.tls?.protocol).toMatch(/^TLSv1\.[23]$/)
      expect(state.tls?.certificate?.subject).toContain("CN=localhost")
      expect(Capabilities.startTls(state.capabilities)).toBe(false)
      expect(server.received[0]!.data).toBe("over TLS\r\n")
    }))

  it.scopedLive("refuses an untrusted, an expired and a wrongly named certificate, saying which", () =>
    Effect.gen(function*() {
      const trusted = selfSigned()
      const expired = selfSigned({ expired: true })
      const otherName = selfSigned({ commonName: "other.example", altNames: "DNS:other.example" })
      const untrustedServer = yield* tlsServer(trusted)
      const expiredServer = yield* tlsServer(expired)
      const otherServer = yield* tlsServer(otherName)
      const attempt = (port: number, ca: string | undefined) =>
        failure(connect({ host: "localhost", port, tls: "opportunistic", tlsOptions: ca === undefined ? {} : { ca } }))
      const untrusted = yield* attempt(untrustedServer.port, undefined)
      const tooOld = yield* attempt(expiredServer.port, expired.cert)
      const misnamed = yield* attempt(otherServer.port, otherName.cert)
      expect([untrusted, tooOld, misnamed].map((e) => e._tag === "TlsError" ? e.failure : e._tag)).toEqual([
        "untrusted-certificate",
        "expired-certificate",
        "wrong-host-name"
      ])
      expect(misnamed.message).toContain("issued for another name than localhost")
    }))

  it.scopedLive("accepts any certificate only when told to", () =>
    Effect.gen(function*() {
      const server = yield* tlsServer(selfSigned())
      const state = yield* Effect.scoped(
        Effect.flatMap(
          connect({ host: "127.0.0.1", port: server.port, tlsOptions: { rejectUnauthorized: false } }),
          (c) => c.state
        )
      )
      expect(state.secure).toBe(true)
      expect(state.tls?.authorized).toBe(false)
    }))

  it.scopedLive("speaks implicit TLS from the first byte", () =>
    Effect.gen(function*() {
      const certificate = selfSigned()
      const server = yield* tlsServer(certificate, { secure: true })
      const state = yield* Effect.scoped(
        Effect.flatMap(
          connect({ host: "localhost", port: server.port, tls: "implicit", tlsOptions: { ca: certificate.cert } }),
          (c) => c.state
        )
      )
      expect(state.secure).toBe(true)
      expect(state.greeting.code).toBe(220)
    }))

  it.scopedLive("discards what the server sent after its 220 to STARTTLS (RFC 3207 §6)", () =>
    Effect.gen(function*() {
      const certificate = selfSigned()
      const server = yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const sockets = new Set<net.Socket>()
          const listener = net.createServer((plain) => {
            sockets.add(plain)
            const lines = lineReader(plain)
            void (async () => {
              plain.write("220 injector.example ESMTP\r\n")
              await lines.next()
              plain.write("250-injector.example\r\n250 STARTTLS\r\n")
              await lines.next()
              // A man in the middle's trick: a reply smuggled in after the 220, before the handshake.
              plain.write("220 Go ahead\r\n250-injector.example\r\n250 AUTH PLAIN\r\n")
              lines.stop()
              const secure = new tls.TLSSocket(plain, { isServer: true, key: certificate.key, cert: certificate.cert })
              sockets.add(secure)
              const secureLines = lineReader(secure)
              for (;;) {
                const line = await secureLines.next()
                if (line.startsWith("EHLO")) secure.write("250-injector.example\r\n250 PIPELINING\r\n")
                else if (line === "QUIT") return secure.end("221 Bye\r\n")
                else secure.write("250 Ok\r\n")
              }
            })().catch(() => plain.destroy())
          })
          await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve))
          return { listener, sockets, port: (listener.address() as net.AddressInfo).port }
        }),
        ({ listener, sockets }) =>
          Effect.promise(() => {
            for (const socket of sockets) socket.destroy()
            return new Promise<void>((resolve) => listener.close(() => resolve()))
          })
      )
      const state = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({
          host: "localhost",
          port: server.port,
          tls: "starttls",
          tlsOptions: { ca: certificate.cert }
        })
        expect((yield* c.noop()).text).toBe("Ok")
        return yield* c.state
      }))
      expect(state.secure).toBe(true)
      expect(state.capabilities.entries.map((e) => e.keyword)).toEqual(["PIPELINING"])
    }))

  it.scopedLive("fails when TLS is required and the server does not offer STARTTLS, after a QUIT", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      const error = yield* failure(connect({ host: "127.0.0.1", port: server.port, tls: "starttls" }))
      expect(error._tag === "TlsError" && error.failure).toBe("not-offered")
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toMatch(/^EHLO .*\r\nQUIT\r\n$/)
    }))
})

describe("SmtpConnection scope and faults", () => {
  const quick = { timeout: "300 millis" } as const

  it.scopedLive("sends QUIT when the scope closes after success", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      yield* Effect.scoped(connect({ host: "127.0.0.1", port: server.port }))
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toMatch(/\r\nQUIT\r\n$/)
      expect(server.openConnections()).toBe(0)
    }))

  it.scopedLive("sends QUIT when the scope closes after a failure in the program", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      const exit = yield* Effect.exit(
        Effect.scoped(Effect.flatMap(connect({ host: "127.0.0.1", port: server.port }), () => Effect.fail("boom")))
      )
      expect(Exit.isFailure(exit)).toBe(true)
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toMatch(/\r\nQUIT\r\n$/)
    }))

  it.scopedLive("a server that never answers QUIT holds the release no longer than the QUIT timeout", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(stallAfterOneCommand)
      const started = Date.now()
      yield* Effect.scoped(connect({ host: "127.0.0.1", port: server.port, timeouts: { quit: "200 millis" } }))
      expect(Date.now() - started).toBeLessThan(1500)
      yield* Effect.promise(() => server.allClosed(1000))
      expect(server.transcripts()[0]).toMatch(/\r\nQUIT\r\n$/)
    }))

  it.scopedLive("a 554 greeting is a permanent error, and the session still ends with QUIT", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session, "554 5.7.1 No SMTP service here")
        await serveTransaction(session)
      })
      const error = yield* failure(connect({ host: "127.0.0.1", port: server.port }))
      expect(error._tag).toBe("SmtpPermanentError")
      expect(error._tag === "SmtpPermanentError" && [error.command, error.code]).toEqual(["greeting", 554])
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]).toBe("QUIT\r\n")
    }))

  it.scopedLive("falls back to HELO when the server does not know EHLO, and only then", () =>
    Effect.gen(function*() {
      const helo = yield* scriptedServer(async (session) => {
        await greet(session)
        expect(await session.readLine()).toMatch(/^EHLO /)
        await session.reply("502 5.5.2 Error: command not recognized")
        await answerEhlo(session)
        await serveTransaction(session)
      })
      const state = yield* Effect.scoped(
        Effect.flatMap(connect({ host: "127.0.0.1", port: helo.port }), (c) => c.state)
      )
      expect(state.extended).toBe(false)
      expect(state.capabilities.entries).toEqual([])
      const refused = yield* scriptedServer(async (session) => {
        await greet(session)
        await session.readLine()
        await session.reply("550 5.7.1 Go away")
        await serveTransaction(session)
      })
      const error = yield* failure(connect({ host: "127.0.0.1", port: refused.port }))
      expect(error._tag === "SmtpPermanentError" && error.code).toBe(550)
      yield* Effect.promise(() => refused.allClosed())
      expect(refused.transcripts()[0]).not.toContain("HELO")
    }))

  it.scopedLive("speaks LHLO for LMTP", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session, "220 lmtp.example LMTP")
        expect(await session.readLine()).toBe("LHLO client.example.org")
        await session.reply("250-lmtp.example\r\n250 PIPELINING")
        await serveTransaction(session)
      })
      const state = yield* Effect.scoped(
        Effect.flatMap(
          connect({ host: "127.0.0.1", port: server.port, lmtp: true, clientName: "client.example.org" }),
          (c) => c.state
        )
      )
      expect(Capabilities.pipelining(state.capabilities)).toBe(true)
    }))

  it.scopedLive("LMTP: reads one reply per accepted recipient and stays in step", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session, "220 lmtp.example LMTP")
        await session.readLine()
        await session.reply("250-lmtp.example\r\n250 PIPELINING")
        await session.readLine()
        await session.reply("250 2.1.0 Ok")
        for (const answer of ["250 2.1.5 Ok", "550 5.1.1 No such user", "250 2.1.5 Ok"]) {
          await session.readLine()
          await session.reply(answer)
        }
        await session.readLine()
        await session.reply("354 Go ahead")
        await session.readData()
        await session.write("250 2.0.0 <one@example.org> delivered\r\n452 4.2.2 <three@example.org> over quota\r\n")
        await serveTransaction(session)
      })
      const result = yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, lmtp: true })
        const sent = yield* c.send(
          { from: "a@example.org", to: ["one@example.org", "two@example.org", "three@example.org"] },
          "Subject: x\r\n\r\nhi\r\n"
        )
        expect((yield* c.noop()).code).toBe(250)
        return sent
      }))
      expect(result.accepted.map((a) => a.recipient)).toEqual(["one@example.org"])
      expect(result.rejected.map((r) => [r.recipient, r.error.code])).toEqual([
        ["two@example.org", 550],
        ["three@example.org", 452]
      ])
      expect(result.response.text).toBe("<one@example.org> delivered")
    }))

  const expectFault = (
    script: (session: ScriptedSession) => Promise<void>,
    program: (c: SmtpConnection.SmtpConnection) => Effect.Effect<unknown, SmtpError>,
    check: (error: SmtpError) => void,
    wrap: <A, E, R>(open: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R> = (open) => open
  ) =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(script)
      const started = Date.now()
      const error = yield* failure(
        Effect.flatMap(wrap(connect({ host: "127.0.0.1", port: server.port, ...quick })), program)
      )
      check(error)
      // Bounded in time, and nothing left open on either side.
      expect(Date.now() - started).toBeLessThan(3000)
      yield* Effect.promise(() => server.allClosed(2000))
      expect(server.openConnections()).toBe(0)
    })

  it.scopedLive("no greeting: a timeout naming the phase", () =>
    expectFault((s) => s.stall(), () => Effect.void, (error) => {
      expect(error._tag).toBe("TimeoutError")
      expect(error._tag === "TimeoutError" && error.phase).toBe("the greeting")
    }))

  it.scopedLive("timeouts hold even when the connection is opened uninterruptibly (as an acquireRelease does)", () =>
    expectFault((s) => s.stall(), () => Effect.void, (error) => {
      expect(error._tag).toBe("TimeoutError")
    }, Effect.uninterruptible))

  it.scopedLive("a stall at MAIL, at RCPT, at DATA and at the end of data: timeouts naming each phase", () =>
    Effect.gen(function*() {
      const stallAt = (verb: string) => async (session: ScriptedSession) => {
        await greet(session)
        await answerEhlo(session)
        for (;;) {
          const line = await session.readLine()
          if (line.startsWith(verb)) await session.stall()
          if (line === "DATA") {
            await session.reply("354 go ahead")
            await session.readData()
            if (verb === "END") await session.stall()
            await session.reply("250 ok")
          } else {
            await session.reply("250 ok")
          }
        }
      }
      const send = (c: SmtpConnection.SmtpConnection) => c.send({ from: "a@example.org", to: ["b@example.org"] }, "x")
      const phases: Array<[string, boolean]> = []
      for (const verb of ["MAIL", "RCPT", "DATA", "END"]) {
        yield* expectFault(stallAt(verb), send, (error) => {
          if (error._tag !== "TimeoutError") throw error
          phases.push([error.phase, error.mayHaveBeenDelivered])
        })
      }
      expect(phases).toEqual([
        ["the reply to MAIL", false],
        ["the reply to RCPT", false],
        ["the reply to DATA", false],
        ["the reply to the end of data", true]
      ])
    }))

  it.scopedLive("a stall after STARTTLS: a timeout, and no QUIT into the pending handshake", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session, ["STARTTLS"])
        await session.readLine()
        await session.stall()
      })
      const error = yield* failure(connect({ host: "127.0.0.1", port: server.port, ...quick }))
      expect(error._tag === "TimeoutError" && error.phase).toBe("STARTTLS")
      yield* Effect.promise(() => server.allClosed(2000))
      expect(server.transcripts()[0]).toMatch(/\r\nSTARTTLS\r\n$/)
    }))

  it.scopedLive("a drop mid-DATA: a network error", () =>
    expectFault(
      async (session) => {
        await greet(session)
        await answerEhlo(session)
        for (;;) {
          const line = await session.readLine()
          if (line === "DATA") {
            await session.reply("354 go ahead")
            await session.readBytes(10)
            session.drop()
            return
          }
          await session.reply("250 ok")
        }
      },
      (c) =>
        c.send(
          { from: "a@example.org", to: ["b@example.org"] },
          Stream.repeatValue(Buffer.from(`${"a".repeat(78)}\r\n`.repeat(800)))
        ),
      (error) => expect(error._tag).toBe("NetworkError")
    ))

  it.scopedLive("garbage instead of a reply: a protocol error", () =>
    expectFault(
      (session) => session.write("HTTP/1.1 400 Bad Request\r\n"),
      () => Effect.void,
      (error) => expect(error._tag).toBe("SmtpProtocolError")
    ))

  it.scopedLive("an unending multi-line reply: a protocol error in bounded time", () =>
    expectFault(
      async (session) => {
        await greet(session)
        await session.readLine()
        for (let i = 0; i < 2000; i++) await session.write("250-more and more\r\n")
        await session.stall()
      },
      () => Effect.void,
      (error) => {
        expect(error._tag).toBe("SmtpProtocolError")
        expect(error.message).toContain("more than 1000 lines")
      }
    ))

  it.scopedLive("421 at any point closes the connection; later commands fail at once", () =>
    Effect.gen(function*() {
      for (const at of ["EHLO", "MAIL", "RCPT", "DATA"]) {
        const server = yield* scriptedServer(async (session) => {
          await greet(session)
          for (;;) {
            const line = await session.readLine()
            if (line.startsWith(at)) {
              await session.reply("421 4.3.2 Service shutting down")
              return session.drop()
            }
            await session.reply(line.startsWith("EHLO") ? "250-scripted.example\r\n250 PIPELINING" : "250 ok")
          }
        })
        const outcome = yield* Effect.scoped(Effect.gen(function*() {
          const connected = yield* Effect.either(connect({ host: "127.0.0.1", port: server.port, ...quick }))
          if (Either.isLeft(connected)) return { error: connected.left, next: undefined, closed: true }
          const c = connected.right
          const error = yield* Effect.flip(c.send({ from: "a@example.org", to: ["b@example.org"] }, "x"))
          const next = yield* Effect.either(c.noop())
          return { error, next: Either.isLeft(next) ? next.left : undefined, closed: (yield* c.state).closed }
        }))
        expect(outcome.error._tag === "SmtpTransientError" && outcome.error.code).toBe(421)
        expect(outcome.closed).toBe(true)
        if (at !== "EHLO") expect(outcome.next?._tag).toBe("NetworkError")
        yield* Effect.promise(() => server.allClosed(2000))
      }
    }))

  it.scopedLive("interrupting a command while it awaits its reply retires the connection; its release still QUITs", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(stallAfterOneCommand)
      const started = Date.now()
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port, timeouts: { quit: "200 millis" } })
        const fiber = yield* Effect.fork(c.mail("a@example.org"))
        yield* Effect.sleep("50 millis")
        yield* Fiber.interrupt(fiber)
        // Never used again: its replies are out of step with whatever would come next.
        expect((yield* c.state).closed).toBe(true)
        expect((yield* Effect.flip(c.noop()))._tag).toBe("NetworkError")
      }))
      yield* Effect.promise(() => server.allClosed(1000))
      // QUIT is legal outside a body (RFC 5321 §4.1.1.10): it goes after the MAIL, bounded by the QUIT timeout.
      expect(server.transcripts()[0]).toMatch(/MAIL FROM:<a@example\.org>\r\nQUIT\r\n$/)
      expect(Date.now() - started).toBeLessThan(1500)
    }))

  it.scopedLive("interrupting a send inside its DATA body closes the socket at once, without QUIT", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(async (session) => {
        await greet(session)
        await answerEhlo(session)
        for (let i = 0; i < 3; i++) await session.reply(`250 2.0.0 ok ${await session.readLine()}`)
        await session.reply("354 go ahead")
        await session.stall()
      })
      const body = Stream.concat(Stream.make(new TextEncoder().encode("Subject: x\r\n\r\npart")), Stream.never)
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        const fiber = yield* Effect.fork(c.send({ from: "a@example.org", to: ["b@example.org"] }, body))
        yield* Effect.sleep("100 millis")
        yield* Fiber.interrupt(fiber)
        expect((yield* c.state).closed).toBe(true)
        yield* Effect.promise(() => server.allClosed(1000))
      }))
      // Nothing after the body's first bytes (which may still sit in the client's buffer): no QUIT into the body.
      expect(server.transcripts()[0]).toMatch(/DATA\r\n(Subject: x\r\n\r\npart)?$/)
    }))

  it.scopedLive("commands from several fibers run one at a time", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      yield* Effect.scoped(Effect.gen(function*() {
        const c = yield* connect({ host: "127.0.0.1", port: server.port })
        const replies = yield* Effect.all(Array.from({ length: 20 }, (_, i) => c.noop(`n${i}`)), { concurrency: 20 })
        expect(replies.every((r) => r.code === 250)).toBe(true)
      }))
      yield* Effect.promise(() => server.allClosed())
      expect(server.transcripts()[0]!.match(/NOOP n\d+\r\n/g)).toHaveLength(20)
    }))

  it.scopedLive("a refused connection is a network error with its code", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(wellBehaved)
      const port = server.port
      yield* Effect.promise(() => server.close())
      const error = yield* failure(connect({ host: "127.0.0.1", port }))
      expect(error._tag === "NetworkError" && error.code).toBe("ECONNREFUSED")
    }))
})
