import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { generateKeyPairSync, randomBytes } from "node:crypto"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import * as Message from "../../src/Message.js"
import { smtpServer } from "../support/fakes/smtpServer.js"
import { connectLocal } from "../support/helpers/connect.js"
import { header, partBody, verifyDkim } from "../support/helpers/rawMessage.js"
import { tempDir } from "../support/helpers/tempDir.js"

describe("Message through SmtpConnection", () => {
  it.scopedLive("a DKIM-signed message still verifies as the server received it", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const keys = generateKeyPairSync("rsa", {
        modulusLength: 2048,
        publicKeyEncoding: { type: "spki", format: "pem" },
        privateKeyEncoding: { type: "pkcs8", format: "pem" }
      })
      const composed = yield* Message.compose({
        from: "alice@example.org",
        to: "bob@example.org",
        subject: "Signed",
        text: ".dot-stuffed on the wire\nbare LF\n",
        dkim: { domainName: "example.org", keySelector: "s1", privateKey: Redacted.make(keys.privateKey) }
      })
      yield* Effect.scoped(Effect.flatMap(
        connectLocal(server.port),
        (connection) => connection.send(composed.envelope, composed.body)
      ))
      const { bodyHash, tags, valid } = verifyDkim(server.received[0]!.data, keys.publicKey)
      expect(tags.bh).toBe(bodyHash)
      expect(valid).toBe(true)
    }))

  it.scopedLive("a composed message reaches smtp-server with its headers, attachment and every recipient", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const dir = yield* tempDir()
      const attachment = randomBytes(30_000)
      writeFileSync(join(dir, "photo.jpg"), attachment)
      const composed = yield* Message.compose({
        from: "Alice <alice@example.org>",
        to: "Bob <bob@example.org>",
        cc: "carol@example.org",
        bcc: "dave@example.org",
        subject: "Holiday pictures",
        text: ".a line starting with a dot\r\nand another",
        html: "<p>Look!</p>",
        headers: { "X-Trip": "2025" },
        attachments: [{ content: { path: join(dir, "photo.jpg") } }]
      })
      const result = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* connectLocal(server.port)
        return yield* connection.send(composed.envelope, composed.body)
      })).pipe(Effect.provide(NodeFileSystem.layer))
      expect(result.accepted.map((a) => a.recipient)).toEqual([
        "bob@example.org",
        "carol@example.org",
        "dave@example.org"
      ])
      expect(server.received).toHaveLength(1)
      const received = server.received[0]!
      expect(received.from).toBe("alice@example.org")
      expect(received.to).toEqual(["bob@example.org", "carol@example.org", "dave@example.org"])
      expect(header(received.data, "Subject")).toBe("Holiday pictures")
      expect(header(received.data, "To")).toBe("Bob <bob@example.org>")
      expect(header(received.data, "Cc")).toBe("carol@example.org")
      expect(header(received.data, "X-Trip")).toBe("2025")
      expect(header(received.data, "Message-ID")).toBe(composed.messageId)
      expect(received.data).not.toContain("dave@example.org")
      expect(partBody(received.data, "Content-Type: text/plain").toString()).toBe(
        ".a line starting with a dot\r\nand another"
      )
      expect(partBody(received.data, "filename=photo.jpg").equals(attachment)).toBe(true)
    }))

  it.scopedLive("Message.send composes and sends in one step, and returns the Message-ID with the result", () =>
    Effect.gen(function*() {
      const server = yield* smtpServer()
      const result = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* connectLocal(server.port)
        return yield* Message.send(connection, {
          from: "alice@example.org",
          to: ["bob@example.org"],
          bcc: "hidden@example.org",
          subject: "One step",
          text: "café"
        })
      }))
      expect(result.accepted.map((a) => a.recipient)).toEqual(["bob@example.org", "hidden@example.org"])
      expect(header(server.received[0]!.data, "Message-ID")).toBe(result.messageId)
      expect(server.received[0]!.data).not.toContain("hidden@example.org")
    }))
})
