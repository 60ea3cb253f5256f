/**
 * The real servers with AUTH for the authentication tests, proven with raw SMTP over sockets (the SASL responses
 * computed here): aiosmtpd (PLAIN, LOGIN, CRAM-MD5), and Postfix with a private Dovecot as its SASL server (PLAIN,
 * LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256).
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as tls from "node:tls"
import {
  Aiosmtpd,
  aiosmtpdBinaries,
  aiosmtpdGreeting,
  aiosmtpdInstall,
  startAiosmtpd
} from "../support/daemons/aiosmtpd.js"
import {
  dovecotBinaries,
  dovecotInstall,
  Postfix,
  postfixGreeting,
  postfixSaslMechanisms,
  startPostfix
} from "../support/daemons/postfix.js"
import { requireServer } from "../support/daemons/servers.js"
import { connectionRefused, conversation } from "../support/daemons/smtpConversation.js"
import type { Say, SmtpConversation } from "../support/daemons/smtpConversation.js"

const aiosmtpdAvailable = requireServer("aiosmtpd", aiosmtpdBinaries, aiosmtpdInstall)
const dovecotAvailable = requireServer("Postfix with Dovecot SASL", dovecotBinaries, dovecotInstall)

const user = "alice@example.org"
const password = "correct horse battery staple"
/** A second account, in UTF-8 on both sides. */
const unicodeUser = "jörg@example.org"
const unicodePassword = "pässwörd ünd mehr"

/** Opens a conversation in the scope (the socket is destroyed when it closes) and reads the greeting. */
const open = (port: number, host = "127.0.0.1") =>
  Effect.acquireRelease(
    Effect.sync(() => conversation(net.connect(port, host))),
    (c) => Effect.sync(() => c.socket.destroy())
  ).pipe(Effect.flatMap((c) => Effect.promise(() => c.say()).pipe(Effect.map((greeting) => ({ ...c, greeting })))))

/** Says STARTTLS, upgrades the socket with `ca` as the only trusted CA, and goes on over TLS. */
const startTls = (plain: SmtpConversation, ca: string) =>
  Effect.gen(function*() {
    expect(yield* Effect.promise(() => plain.say("STARTTLS"))).toMatch(/^220 /)
    plain.detach()
    const secure = yield* Effect.acquireRelease(
      Effect.async<tls.TLSSocket, Error>((resume) => {
        const socket = tls.connect({ socket: plain.socket, ca, servername: "localhost" })
        socket.once("secureConnect", () => resume(Effect.succeed(socket)))
        socket.once("error", (error) => resume(Effect.fail(error)))
      }),
      (socket) => Effect.sync(() => socket.destroy())
    )
    expect(secure.authorized).toBe(true)
    return conversation(secure)
  })

const b64 = (text: string | Buffer) => Buffer.from(text).toString("base64")
const fromB64 = (reply: string) => Buffer.from(reply.slice(4).trim(), "base64")

/** The AUTH keyword line of an EHLO reply, as a list of mechanisms; undefined when AUTH is not offered. */
const authMechanisms = (ehlo: string): ReadonlyArray<string> | undefined =>
  /^250[ -]AUTH (.*)\r$/m.exec(ehlo)?.[1]?.split(" ")

const plainAuth = (say: Say, name: string, secret: string) =>
  Effect.promise(() => say(`AUTH PLAIN ${b64(`\0${name}\0${secret}`)}`))

const loginAuth = (say: Say, name: string, secret: string) =>
  Effect.promise(async () => {
    const first = await say("AUTH LOGIN")
    if (!first.startsWith("334 ")) return first
    const second = await say(b64(name))
    if (!second.startsWith("334 ")) return second
    return say(b64(secret))
  })

/** RFC 2195: the challenge comes base64-encoded; the answer is `user SP hex(HMAC-MD5(password, challenge))`. */
const cramMd5Auth = (say: Say, name: string, secret: string) =>
  Effect.promise(async () => {
    const challenge = await say("AUTH CRAM-MD5")
    expect(challenge).toMatch(/^334 /)
    const digest = crypto.createHmac("md5", secret).update(fromB64(challenge)).digest("hex")
    return say(b64(`${name} ${digest}`))
  })

/**
 * RFC 5802 SCRAM (no channel binding) with its server signature checked; resolves with the last reply. The names
 * and passwords used here need no SASLprep.
 */
const scramAuth = (say: Say, hash: "sha1" | "sha256", name: string, secret: string) =>
  Effect.promise(async () => {
    const mechanism = hash === "sha1" ? "SCRAM-SHA-1" : "SCRAM-SHA-256"
    const hmac = (key: Buffer, data: string) => crypto.createHmac(hash, key).update(data).digest()
    const clientNonce = crypto.randomBytes(18).toString("base64")
    const clientFirstBare = `n=${name.replace(/=/g, "=3D").replace(/,/g, "=2C")},r=${clientNonce}`
    const serverFirstReply = await say(`AUTH ${mechanism} ${b64(`n,,${clientFirstBare}`)}`)
    expect(serverFirstReply).toMatch(/^334 /)
    const serverFirst = fromB64(serverFirstReply).toString("utf8")
    const fields = new Map(serverFirst.split(",").map((field) => [field.slice(0, 1), field.slice(2)]))
    const nonce = fields.get("r") ?? ""
    expect(nonce.startsWith(clientNonce)).toBe(true)
    const salt = Buffer.from(fields.get("s") ?? "", "base64")
    const iterations = Number(fields.get("i"))
    const salted = crypto.pbkdf2Sync(secret, salt, iterations, hash === "sha1" ? 20 : 32, hash)
    const clientKey = hmac(salted, "Client Key")
    const storedKey = crypto.createHash(hash).update(clientKey).digest()
    const clientFinalWithoutProof = `c=${b64("n,,")},r=${nonce}`
    const authMessage = `${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`
    const signature = hmac(storedKey, authMessage)
    const proof = Buffer.from(clientKey.map((byte, i) => byte ^ signature[i]!))
    const serverFinalReply = await say(b64(`${clientFinalWithoutProof},p=${proof.toString("base64")}`))
    if (!serverFinalReply.startsWith("334 ")) return serverFinalReply
    const serverSignature = hmac(hmac(salted, "Server Key"), authMessage).toString("base64")
    expect(fromB64(serverFinalReply).toString("utf8")).toBe(`v=${serverSignature}`)
    return say("")
  })

const reply = (line?: string) => (say: Say) => Effect.promise(() => say(line))

describe.skipIf(!aiosmtpdAvailable)("aiosmtpd test harness", () => {
  layer(Aiosmtpd.make({ user, password }), { timeout: 30_000, excludeTestServices: true })((it) => {
    it.scoped("greets, offers AUTH CRAM-MD5 LOGIN PLAIN in cleartext and PIPELINING, no STARTTLS", () =>
      Effect.gen(function*() {
        const server = yield* Aiosmtpd
        const c = yield* open(server.port)
        expect(c.greeting).toBe(`${aiosmtpdGreeting}\r\n`)
        const ehlo = yield* reply("EHLO client.example.org")(c.say)
        expect(ehlo).toMatch(/^250-localhost\r\n/)
        expect(authMechanisms(ehlo)).toEqual(["CRAM-MD5", "LOGIN", "PLAIN"])
        for (const keyword of ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE"]) {
          expect(ehlo).toMatch(new RegExp(`^250[ -]${keyword}\\b`, "m"))
        }
        expect(ehlo).not.toMatch(/STARTTLS/)
      }))

    it.scoped("AUTH PLAIN: 235 for the right password, 535 for a wrong one or user", () =>
      Effect.gen(function*() {
        const server = yield* Aiosmtpd
        const c = yield* open(server.port)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* plainAuth(c.say, user, "wrong")).toMatch(/^535 5\.7\.8 /)
        expect(yield* plainAuth(c.say, "bob@example.org", password)).toMatch(/^535 /)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^235 2\.7\.0 /)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^503 /)
      }))

    it.scoped("AUTH LOGIN: 235 for the right password, 535 for a wrong one", () =>
      Effect.gen(function*() {
        const server = yield* Aiosmtpd
        const c = yield* open(server.port)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* loginAuth(c.say, user, "wrong")).toMatch(/^535 /)
        expect(yield* loginAuth(c.say, user, password)).toMatch(/^235 /)
      }))

    it.scoped("AUTH CRAM-MD5: 235 for the right HMAC-MD5, 535 for a wrong one, 501 when cancelled", () =>
      Effect.gen(function*() {
        const server = yield* Aiosmtpd
        const c = yield* open(server.port)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* cramMd5Auth(c.say, user, "wrong")).toMatch(/^535 /)
        expect(yield* reply("AUTH CRAM-MD5")(c.say)).toMatch(/^334 /)
        expect(yield* reply("*")(c.say)).toMatch(/^501 /)
        expect(yield* cramMd5Auth(c.say, user, password)).toMatch(/^235 /)
      }))

    it.scoped("records a pipelined message with its envelope and the authenticated user", () =>
      Effect.gen(function*() {
        const server = yield* Aiosmtpd
        const before = (yield* server.messages()).length
        const c = yield* open(server.port)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^235 /)
        // One write: MAIL, RCPT, RCPT, DATA; then the replies in order.
        c.socket.write("MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@x.test>\r\n")
        const replies = yield* Effect.promise(async () => [
          await c.say(),
          await c.say(),
          await c.say("DATA"),
          await c.say(),
          await c.say("Subject: pipelined\r\n\r\n..dot\r\nGrüße\r\n.")
        ])
        expect(replies.map((r) => r.slice(0, 3))).toEqual(["250", "250", "250", "354", "250"])
        const messages = yield* server.messages()
        expect(messages.length).toBe(before + 1)
        const message = messages[messages.length - 1]!
        expect(message).toMatchObject({
          mailFrom: "a@example.org",
          rcptTos: ["b@example.net", "c@x.test"],
          mailOptions: ["BODY=8BITMIME"],
          login: user,
          tls: false,
          helo: "client.example.org"
        })
        expect(message.raw).toBe("Subject: pipelined\r\n\r\n.dot\r\nGrüße\r\n")
        expect(server.log()).toContain("AUTH PLAIN for b'alice@example.org': accepted")
      }))
  })

  it.scopedLive("with starttls: AUTH only after STARTTLS (538 before), then PLAIN and CRAM-MD5", () =>
    Effect.gen(function*() {
      const server = yield* startAiosmtpd({ user: unicodeUser, password: unicodePassword, starttls: true })
      expect(server.certificatePem).toBeDefined()
      const c = yield* open(server.port)
      const ehlo = yield* reply("EHLO client.example.org")(c.say)
      expect(ehlo).toMatch(/^250-STARTTLS\r$/m)
      expect(authMechanisms(ehlo)).toBeUndefined()
      expect(yield* plainAuth(c.say, unicodeUser, unicodePassword)).toMatch(/^538 5\.7\.11 /)
      const secure = yield* startTls(c, server.certificatePem!)
      const after = yield* reply("EHLO client.example.org")(secure.say)
      expect(after).not.toMatch(/STARTTLS/)
      expect(authMechanisms(after)).toEqual(["CRAM-MD5", "LOGIN", "PLAIN"])
      expect(yield* plainAuth(secure.say, unicodeUser, "wrong")).toMatch(/^535 /)
      expect(yield* cramMd5Auth(secure.say, unicodeUser, unicodePassword)).toMatch(/^235 /)
      const replies = yield* Effect.promise(async () => [
        await secure.say("MAIL FROM:<>"),
        await secure.say("RCPT TO:<b@example.org>"),
        await secure.say("DATA"),
        await secure.say("Subject: over TLS\r\n\r\nHello.\r\n.")
      ])
      expect(replies.map((r) => r.slice(0, 3))).toEqual(["250", "250", "354", "250"])
      const [message] = yield* server.messages()
      expect(message).toMatchObject({ mailFrom: "", rcptTos: ["b@example.org"], login: unicodeUser, tls: true })
    }))

  it.live("stops aiosmtpd and removes its folder when the scope closes", () =>
    Effect.gen(function*() {
      const server = yield* Effect.scoped(startAiosmtpd({ user, password }))
      expect(fs.existsSync(server.directory)).toBe(false)
      expect(yield* connectionRefused(server.port, server.host)).toBe(true)
    }))
})

describe.skipIf(!dovecotAvailable)("Postfix with Dovecot SASL test harness", () => {
  const sasl = { users: [{ user, password }, { user: unicodeUser, password: unicodePassword }] }
  layer(Postfix.make({ sasl }), { timeout: 30_000, excludeTestServices: true })((it) => {
    it.scoped("plain port: offers AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256 without TLS", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const c = yield* open(server.ports.plain)
        expect(c.greeting).toBe(`${postfixGreeting}\r\n`)
        const ehlo = yield* reply("EHLO client.example.org")(c.say)
        expect(ehlo).toMatch(/^250-AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256\r$/m)
        expect(authMechanisms(ehlo)).toEqual(postfixSaslMechanisms)
        expect(ehlo).not.toMatch(/STARTTLS/)
      }))

    it.scoped("plain port: AUTH PLAIN 235 for the right password, 535 for a wrong one or an unknown user", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const c = yield* open(server.ports.plain)
        yield* reply("EHLO client.example.org")(c.say)
        const started = Date.now()
        expect(yield* plainAuth(c.say, user, "wrong")).toMatch(/^535 5\.7\.8 /)
        expect(yield* plainAuth(c.say, "nobody@example.org", password)).toMatch(/^535 5\.7\.8 /)
        expect(yield* plainAuth(c.say, user.toUpperCase(), password)).toMatch(/^535 5\.7\.8 /)
        // No failure delay, no penalty for repeated failures.
        expect(Date.now() - started).toBeLessThan(1_000)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^235 2\.7\.0 /)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^503 /)
        // Authenticated, and still only example.org is accepted.
        expect(yield* reply("MAIL FROM:<a@example.org>")(c.say)).toMatch(/^250 /)
        expect(yield* reply("RCPT TO:<b@example.net>")(c.say)).toMatch(/^554 /)
        expect(yield* reply("RCPT TO:<b@example.org>")(c.say)).toMatch(/^250 /)
      }))

    it.scoped("plain port: a UTF-8 user and password, with PLAIN and LOGIN", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const c = yield* open(server.ports.plain)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* loginAuth(c.say, unicodeUser, "pässwörd")).toMatch(/^535 /)
        expect(yield* plainAuth(c.say, unicodeUser, unicodePassword)).toMatch(/^235 /)
        const other = yield* open(server.ports.plain)
        yield* reply("EHLO client.example.org")(other.say)
        expect(yield* loginAuth(other.say, unicodeUser, unicodePassword)).toMatch(/^235 /)
      }))

    it.scoped("plain port: CRAM-MD5 235 and 535", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const c = yield* open(server.ports.plain)
        yield* reply("EHLO client.example.org")(c.say)
        expect(yield* cramMd5Auth(c.say, user, "wrong")).toMatch(/^535 /)
        expect(yield* cramMd5Auth(c.say, user, password)).toMatch(/^235 /)
      }))

    for (const hash of ["sha1", "sha256"] as const) {
      it.scoped(`plain port: SCRAM-${hash.toUpperCase().replace("SHA", "SHA-")} 235 (server signature checked) and 535`, () =>
        Effect.gen(function*() {
          const server = yield* Postfix
          const c = yield* open(server.ports.plain)
          yield* reply("EHLO client.example.org")(c.say)
          expect(yield* scramAuth(c.say, hash, user, "wrong")).toMatch(/^535 /)
          expect(yield* scramAuth(c.say, hash, user, password)).toMatch(/^235 /)
        }))
    }

    it.scoped("STARTTLS port: no AUTH before STARTTLS (503), all mechanisms after it", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const c = yield* open(server.ports.starttls)
        const ehlo = yield* reply("EHLO client.example.org")(c.say)
        expect(ehlo).toMatch(/^250-STARTTLS\r$/m)
        expect(authMechanisms(ehlo)).toBeUndefined()
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^503 /)
        const secure = yield* startTls(c, server.certificatePem)
        const after = yield* reply("EHLO client.example.org")(secure.say)
        expect(authMechanisms(after)).toEqual(postfixSaslMechanisms)
        expect(yield* plainAuth(secure.say, user, "wrong")).toMatch(/^535 /)
        expect(yield* scramAuth(secure.say, "sha256", user, password)).toMatch(/^235 /)
      }))

    it.scoped("implicit TLS port: offers AUTH", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        const socket = yield* Effect.acquireRelease(
          Effect.sync(() =>
            tls.connect({
              host: server.host,
              port: server.ports.smtps,
              ca: server.certificatePem,
              servername: server.servername
            })
          ),
          (socket) => Effect.sync(() => socket.destroy())
        )
        const c = conversation(socket)
        expect(yield* reply()(c.say)).toBe(`${postfixGreeting}\r\n`)
        expect(authMechanisms(yield* reply("EHLO client.example.org")(c.say))).toEqual(postfixSaslMechanisms)
        expect(yield* plainAuth(c.say, user, password)).toMatch(/^235 /)
      }))

    it.effect("the log shows Dovecot's side", () =>
      Effect.gen(function*() {
        const server = yield* Postfix
        expect(server.log()).toMatch(/--- dovecot ---\n[^]*starting up without any protocols/)
      }))
  })

  it.live("stops Dovecot with Postfix and removes the folder when the scope closes", () =>
    Effect.gen(function*() {
      const server = yield* Effect.scoped(startPostfix({ sasl: { users: [{ user, password }] } }))
      expect(fs.existsSync(server.directory)).toBe(false)
      const leftovers = fs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).filter((pid) => {
        try {
          return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(server.directory)
        } catch {
          return false
        }
      })
      expect(leftovers).toEqual([])
    }))
})
