import { describe, expect, layer } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { execFile } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import * as Capabilities from "../../src/Capabilities.js"
import * as SmtpCommand from "../../src/SmtpCommand.js"
import * as SmtpReply from "../../src/SmtpReply.js"
import { Postfix, postfixBinaries, postfixInstall } from "../support/daemons/postfix.js"
import type { PostfixServer } from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"
import { connect } from "../support/helpers/connect.js"

const available = requireServer("Postfix", postfixBinaries, postfixInstall)

/** The message as Postfix stored it, without the headers Postfix put on top (Return-Path, X-Original-To, Delivered-To,
 * Received). */
const storedBody = (raw: string): string => {
  const lines = raw.split("\n")
  let i = 0
  while (i < lines.length && /^(Return-Path|X-Original-To|Delivered-To|Received):|^\s/.test(lines[i]!)) i++
  return lines.slice(i).join("\n")
}

/** The tricky message: leading dots, bare CR and LF, 8-bit UTF-8, trailing spaces, a 900-octet line. */
const tricky = [
  "From: Sender <sender@example.org>",
  "To: Receiver <rcpt@example.org>",
  "Subject: tricky",
  "Date: Mon, 23 Nov 2026 10:00:00 +0000",
  "Message-ID: <tricky-MARK@example.org>",
  "",
  ".leading dot",
  "..two leading dots",
  "bare LF follows\nbare CR follows\rtrailing spaces   ",
  "8-bit: Grüße, 日本語",
  "x".repeat(900),
  "."
].join("\r\n")

/**
 * What the message must read as in the Maildir: Postfix stores LF line ends. (The test messages carry From, Date and
 * Message-ID, so Postfix adds none of its own.)
 */
const expectedStored = (message: string) => {
  const lines = message.replace(/\r\n|\r|\n/g, "\n")
  return lines.endsWith("\n") ? lines : `${lines}\n`
}

describe.skipIf(!available)("SmtpConnection against Postfix", () => {
  // Live services: the clock is real, so timeouts and waits behave as in production.
  layer(Postfix.Default, { timeout: 30_000, excludeTestServices: true })((it) => {
    const modes = (server: PostfixServer) =>
      [
        ["plain", { port: server.ports.plain, tls: "none" }],
        ["STARTTLS", { port: server.ports.starttls, tls: "starttls" }],
        ["implicit TLS", { port: server.ports.smtps, tls: "implicit" }]
      ] as const

    it.effect("reads the capabilities on every port, before and after STARTTLS", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const base = { host: server.servername, tlsOptions: { ca: server.certificatePem } }
        const plain = yield* Effect.scoped(
          Effect.flatMap(connect({ ...base, port: server.ports.plain, tls: "none" }), (c) => c.state)
        )
        expect(plain.secure).toBe(false)
        expect(Capabilities.startTls(plain.capabilities)).toBe(false)
        for (const keyword of ["PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "DSN", "ENHANCEDSTATUSCODES"]) {
          expect(Capabilities.has(plain.capabilities, keyword)).toBe(true)
        }
        expect(Capabilities.sizeLimit(plain.capabilities)._tag).toBe("Some")
        const upgraded = yield* Effect.scoped(Effect.gen(function*() {
          const c = yield* connect({ ...base, port: server.ports.starttls, tls: "none" })
          expect(Capabilities.startTls((yield* c.state).capabilities)).toBe(true)
          const details = yield* c.startTls()
          expect(details.authorized).toBe(true)
          return yield* c.state
        }))
        expect(upgraded.secure).toBe(true)
        expect(Capabilities.startTls(upgraded.capabilities)).toBe(false)
        expect(upgraded.tls?.certificate?.subject).toContain("CN=localhost")
        const implicit = yield* Effect.scoped(
          Effect.flatMap(connect({ ...base, port: server.ports.smtps, tls: "implicit" }), (c) => c.state)
        )
        expect(implicit.secure).toBe(true)
        expect(implicit.greeting.code).toBe(220)
      }))

    it.effect("runs every command", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        yield* Effect.scoped(Effect.gen(function*() {
          const c = yield* connect({ host: server.host, port: server.ports.plain, tls: "none" })
          expect((yield* c.noop()).code).toBe(250)
          expect((yield* c.rset).enhancedCode).toBe("2.0.0")
          expect((yield* c.vrfy("rcpt@example.org")).code).toBe(252)
          const expn = yield* Effect.either(c.expn("staff"))
          expect(expn._tag === "Left" ? expn.left._tag : "accepted").toBe("SmtpPermanentError")
          // Postfix does not implement HELP: a permanent error, and the session goes on.
          const help = yield* Effect.flip(c.help())
          expect(help._tag).toBe("SmtpPermanentError")
          expect((yield* c.helo("client.example.org")).code).toBe(250)
          expect(Capabilities.chunking(yield* c.ehlo("client.example.org"))).toBe(true)
          // A raw command gets its reply back whatever its class.
          expect(SmtpReply.isPermanentNegative(yield* c.command(SmtpCommand.raw("XNOTACOMMAND")))).toBe(true)
          expect((yield* c.mail("sender@example.org", { size: 100, body: "8BITMIME" })).enhancedCode).toBe("2.1.0")
          const refused = yield* Effect.flip(c.rcpt("someone@elsewhere.invalid"))
          expect(refused._tag === "SmtpPermanentError" && refused.code).toBeGreaterThanOrEqual(550)
          expect((yield* c.rcpt("rcpt@example.org")).enhancedCode).toBe("2.1.5")
          expect((yield* c.bdat(new TextEncoder().encode("Subject: bdat\r\n\r\nvia BDAT\r\n"), true)).code).toBe(250)
          expect((yield* c.quit).code).toBe(221)
        }))
      }))

    it.effect("delivers the tricky message byte-exact over plain, STARTTLS and implicit TLS", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const before = (yield* server.messages()).length
        for (const [name, mode] of modes(server)) {
          const message = tricky.replace("MARK", name.replace(/\s/g, "-"))
          const result = yield* Effect.scoped(Effect.flatMap(
            connect({ host: server.servername, ...mode, tlsOptions: { ca: server.certificatePem } }),
            (c) => c.send({ from: "sender@example.org", to: ["rcpt@example.org"] }, message)
          ))
          expect(result.response.text).toMatch(/queued as/)
        }
        // Waited for by their marks, not by count: a message of an earlier test may still be on its way to the
        // Maildir (local delivery is asynchronous) and would otherwise take one of the three places.
        const marks = modes(server).map(([name]) => `tricky-${name.replace(/\s/g, "-")}@`)
        yield* server.waitForMessages(before + 3)
        const messages = yield* server.messages().pipe(
          Effect.filterOrFail(
            (all) => marks.every((mark) => all.some((m) => m.raw.includes(mark))),
            () => new Error("not yet")
          ),
          Effect.retry(Schedule.spaced("25 millis")),
          Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`not delivered:\n${server.log()}`) }),
          Effect.withClock(Clock.make())
        )
        for (const [name] of modes(server)) {
          const stored = messages.find((m) => m.raw.includes(`tricky-${name.replace(/\s/g, "-")}@`))
          expect(stored, name).toBeDefined()
          expect(storedBody(stored!.raw)).toBe(expectedStored(tricky.replace("MARK", name.replace(/\s/g, "-"))))
          expect(stored!.returnPath).toBe("sender@example.org")
        }
      }))

    it.effect("a message with smuggling sequences arrives as one intact message", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const before = (yield* server.messages()).length
        const smuggled = "From: sender@example.org\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n" +
          "Subject: smuggle\r\nMessage-ID: <smuggle@example.org>\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.org>\r\n" +
          ".\r\rRCPT TO:<rcpt@example.org>\r\n.\nDATA\r\nafter\r\n"
        yield* Effect.scoped(Effect.flatMap(
          connect({ host: server.host, port: server.ports.plain, tls: "none" }),
          (c) => c.send({ from: "sender@example.org", to: ["rcpt@example.org"] }, smuggled)
        ))
        const stored = yield* server.waitForMessages(before + 1)
        // Give a smuggled second message time to show up, then check there is none.
        yield* Effect.sleep("500 millis")
        const after = (yield* server.messages()).slice(before)
        expect(after).toHaveLength(1)
        expect(storedBody(stored.at(-1)!.raw)).toBe(expectedStored(smuggled))
      }))

    it.effect("the CLI probes Postfix over STARTTLS and sends through it", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const cli = (args: ReadonlyArray<string>) =>
          Effect.promise(() =>
            promisify(execFile)(process.execPath, ["--import", "tsx", "src/bin/effect-smtp.ts", ...args], {
              timeout: 30_000
            }).then(
              ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
              (error: { code: number; stdout: string; stderr: string }) => error
            )
          )
        const probe = yield* cli(["probe", `smtp://localhost:${server.ports.starttls}`, "--insecure", "--json"])
        expect(probe.code).toBe(0)
        const report = JSON.parse(probe.stdout) as {
          tls: { protocol: string }
          capabilitiesAfterStartTls: Array<unknown>
        }
        expect(report.tls.protocol).toMatch(/^TLSv1\.[23]$/)
        expect(report.capabilitiesAfterStartTls.length).toBeGreaterThan(3)
        expect(probe.stderr).toMatch(/NOT verified/i)
        const untrusted = yield* cli(["probe", `smtptls://localhost:${server.ports.starttls}`])
        expect(untrusted.code).toBe(69)
        const refused = yield* cli([
          "send",
          `smtp://127.0.0.1:${server.ports.plain}`,
          "--from",
          "sender@example.org",
          "--to",
          "nobody@elsewhere.invalid",
          "--file",
          "README.md",
          "--json"
        ])
        expect(refused.code).toBe(69)
        // Postfix offers CHUNKING, and a message this small goes as MAIL, RCPT and BDAT LAST in one write: one round
        // trip. (A lone one over 4 KiB would go as DATA: as BDAT, Postfix would answer it about 40 ms late.)
        const file = path.join(mkdtempSync(path.join(tmpdir(), "effect-smtp-cli-")), "message.eml")
        writeFileSync(file, "Subject: via the CLI\r\n\r\nhello\r\n")
        const sent = yield* cli([
          "send",
          `smtp://127.0.0.1:${server.ports.plain}`,
          "--from",
          "sender@example.org",
          "--to",
          "rcpt@example.org",
          "--file",
          file,
          "--json"
        ])
        expect(sent.code).toBe(0)
        const sentReport = JSON.parse(sent.stdout) as { method: string; roundTrips: number; accepted: Array<string> }
        expect(sentReport).toMatchObject({ method: "BDAT", roundTrips: 1, accepted: ["rcpt@example.org"] })
      }))
  })
})
