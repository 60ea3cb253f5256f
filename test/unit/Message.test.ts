import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import type { PlatformError } from "@effect/platform/Error"
import type * as FileSystem from "@effect/platform/FileSystem"
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import { generateKeyPairSync, randomBytes } from "node:crypto"
import { closeSync, openSync, writeFileSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { expectTypeOf } from "vitest"
import * as Message from "../../src/Message.js"
import { header, partBody, verifyDkim } from "../support/helpers/rawMessage.js"
import { tempDir } from "../support/helpers/tempDir.js"

// -----------------------------------------------------------------------------
// Reading composed messages back
// -----------------------------------------------------------------------------

/** Runs a body and returns it as latin1, one character per octet. */
const collect = <E, R>(body: Stream.Stream<Uint8Array, E, R>) =>
  Effect.map(Stream.runCollect(body), (chunks) => Buffer.concat(Chunk.toArray(chunks)).toString("latin1"))

/** Composes a message and reads its body. */
const composeAndRead = <M extends Message.Message<unknown, unknown>>(message: M) =>
  Effect.flatMap(
    Message.compose(message),
    (composed) => Effect.map(collect(composed.body), (raw) => ({ composed, raw }))
  )

const failureOf = <M extends Message.Message<unknown, unknown>>(message: M) => Effect.flip(Message.compose(message))

// -----------------------------------------------------------------------------

class StreamFailure extends Data.TaggedError("StreamFailure")<{ readonly detail: string }> {}

describe("Message.compose", () => {
  it.effect("text and html become a multipart/alternative with both parts", () =>
    Effect.gen(function*() {
      const { raw } = yield* composeAndRead({
        from: "Alice <alice@example.org>",
        to: "bob@example.org",
        subject: "Hello",
        text: "Plain Grüße",
        html: "<p>Rich <b>Grüße</b></p>"
      })
      expect(header(raw, "Content-Type")).toMatch(/^multipart\/alternative; boundary=/)
      expect(header(raw, "From")).toBe("Alice <alice@example.org>")
      expect(header(raw, "To")).toBe("bob@example.org")
      expect(header(raw, "Subject")).toBe("Hello")
      expect(header(raw, "MIME-Version")).toBe("1.0")
      expect(partBody(raw, "Content-Type: text/plain").toString("utf8")).toBe("Plain Grüße")
      expect(partBody(raw, "Content-Type: text/html").toString("utf8")).toBe("<p>Rich <b>Grüße</b></p>")
      expect(raw.replace(/\r\n/g, "")).not.toMatch(/[\r\n]/)
    }))

  it.effect("attachments come from bytes, an Effect Stream and a file", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir()
      const fileBytes = randomBytes(200_000)
      writeFileSync(join(dir, "report.pdf"), fileBytes)
      const bytes = Uint8Array.from([0, 1, 2, 255, 13, 10, 46])
      const streamed = ["first chunk, ", "second chunk"].map((s) => new TextEncoder().encode(s))
      const { raw } = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        text: "See attached.",
        attachments: [
          { filename: "bytes.bin", content: bytes },
          { filename: "streamed.txt", content: Stream.fromIterable(streamed), contentType: "text/plain" },
          { content: { path: join(dir, "report.pdf") } }
        ]
      })
      expect(header(raw, "Content-Type")).toMatch(/^multipart\/mixed/)
      expect([...partBody(raw, "filename=bytes.bin")]).toEqual([...bytes])
      expect(partBody(raw, "filename=streamed.txt").toString()).toBe("first chunk, second chunk")
      expect(raw).toContain("Content-Type: application/pdf; name=report.pdf")
      expect(partBody(raw, "filename=report.pdf").equals(fileBytes)).toBe(true)
    }).pipe(Effect.provide(NodeFileSystem.layer), Effect.scoped))

  it.effect("an inline image with a cid sits next to the html that refers to it", () =>
    Effect.gen(function*() {
      const png = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
      const { raw } = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        html: "<img src=\"cid:logo@example.org\">",
        attachments: [{ filename: "logo.png", content: png, cid: "logo@example.org" }]
      })
      expect(header(raw, "Content-Type")).toMatch(/^multipart\/related/)
      expect(raw).toContain("Content-ID: <logo@example.org>")
      expect(raw).toMatch(/Content-Disposition: inline; filename=logo\.png/)
      expect(partBody(raw, "Content-Type: text/html").toString()).toBe("<img src=\"cid:logo@example.org\">")
      expect([...partBody(raw, "Content-ID: <logo@example.org>")]).toEqual([...png])
    }))

  it.effect("custom headers are written, non-ASCII values as encoded words", () =>
    Effect.gen(function*() {
      const { raw } = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        text: "hi",
        headers: { "X-Campaign": "spring-2025", "X-Note": "Grüße" }
      })
      expect(header(raw, "X-Campaign")).toBe("spring-2025")
      expect(header(raw, "X-Note")).toBe("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=")
    }))

  it.effect("Bcc is in the envelope but never in the headers", () =>
    Effect.gen(function*() {
      const { composed, raw } = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        bcc: "Secret <hidden@example.org>",
        text: "hi"
      })
      expect(composed.envelope.to).toEqual(["bob@example.org", "hidden@example.org"])
      expect(header(raw, "Bcc")).toBeUndefined()
      expect(raw).not.toContain("hidden@example.org")
    }))

  it.effect("the derived envelope: sender over from, to + cc + bcc deduplicated in order", () =>
    Effect.gen(function*() {
      const composed = yield* Message.compose({
        from: "Alice <alice@example.org>",
        to: ["b@example.org", { name: "Carol", address: "c@example.org" }],
        cc: "C@EXAMPLE.ORG, d@example.org, b@Example.org",
        bcc: ["e@example.org", "d@example.org"],
        text: "hi"
      })
      expect(composed.envelope).toEqual({
        from: "alice@example.org",
        to: ["b@example.org", "c@example.org", "C@EXAMPLE.ORG", "d@example.org", "e@example.org"]
      })
      const withSender = yield* Message.compose({
        from: ["a1@example.org", "a2@example.org"],
        sender: "Secretary <sec@example.org>",
        to: "b@example.org"
      })
      expect(withSender.envelope.from).toBe("sec@example.org")
    }))

  it.effect("an explicit envelope replaces the derived one", () =>
    Effect.gen(function*() {
      const { composed, raw } = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        envelope: { from: "bounces@example.org", to: ["list-a@example.net", "list-b@example.net"] },
        text: "hi"
      })
      expect(composed.envelope).toEqual({
        from: "bounces@example.org",
        to: ["list-a@example.net", "list-b@example.net"]
      })
      expect(header(raw, "To")).toBe("bob@example.org")
      expect(header(raw, "From")).toBe("alice@example.org")
    }))

  it.effect("Message-ID and Date are always present; a given Message-ID and Date are used", () =>
    Effect.gen(function*() {
      const generated = yield* composeAndRead({ from: "alice@example.org", to: "bob@example.org", text: "hi" })
      expect(generated.composed.messageId).toMatch(/^<[0-9a-f-]+@example\.org>$/)
      expect(header(generated.raw, "Message-ID")).toBe(generated.composed.messageId)
      expect(header(generated.raw, "Date")).toMatch(/^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000$/)

      const given = yield* composeAndRead({
        from: "alice@example.org",
        to: "bob@example.org",
        messageId: "unique-42@mail.example.org",
        date: new Date("2024-05-06T07:08:09Z"),
        text: "hi"
      })
      expect(given.composed.messageId).toBe("<unique-42@mail.example.org>")
      expect(header(given.raw, "Message-ID")).toBe("<unique-42@mail.example.org>")
      expect(header(given.raw, "Date")).toBe("Mon, 06 May 2024 07:08:09 +0000")
    }))

  it.effect("running the body twice gives the same headers, so a retry sends the same message", () =>
    Effect.gen(function*() {
      const composed = yield* Message.compose({ from: "alice@example.org", to: "bob@example.org", text: "hi" })
      const first = yield* collect(composed.body)
      const second = yield* collect(composed.body)
      expect(header(second, "Message-ID")).toBe(header(first, "Message-ID"))
      expect(header(second, "Date")).toBe(header(first, "Date"))
    }))

  it.effect("the body's types name only what its parts need", () =>
    Effect.gen(function*() {
      const plain = yield* Message.compose({ from: "alice@example.org", to: "bob@example.org", text: "hi" })
      expectTypeOf(plain.body).toEqualTypeOf<Stream.Stream<Uint8Array, Message.ComposeError>>()
      const parts = yield* Message.compose(Message.make({
        from: "alice@example.org",
        to: "bob@example.org",
        text: { path: "/dev/null" },
        attachments: [{ content: Stream.fail(new StreamFailure({ detail: "x" })) }]
      }))
      expectTypeOf(parts.body).toEqualTypeOf<
        Stream.Stream<Uint8Array, Message.ComposeError | PlatformError | StreamFailure, FileSystem.FileSystem>
      >()
    }))

  describe("refuses header injection, naming the field", () => {
    const base = { from: "alice@example.org", to: "bob@example.org", text: "hi" }
    it.effect("CR/LF in the subject", () =>
      Effect.gen(function*() {
        const error = yield* failureOf({ ...base, subject: "Hi\r\nBcc: victim@example.org" })
        expect(error._tag).toBe("InvalidInputError")
        expect(error.field).toBe("subject")
      }))

    it.effect("CR/LF in a header value", () =>
      Effect.gen(function*() {
        const error = yield* failureOf({ ...base, headers: { "X-Tag": "a\nBcc: victim@example.org" } })
        expect(error.field).toBe("X-Tag header")
      }))

    it.effect("CR/LF or NUL in a header name, and a header the message owns", () =>
      Effect.gen(function*() {
        expect((yield* failureOf({ ...base, headers: { "X-Bad\r\nBcc": "x" } })).field).toBe(
          "header name \"X-Bad\\r\\nBcc\""
        )
        expect((yield* failureOf({ ...base, headers: { "X-Nul": "a\0b" } })).field).toBe("X-Nul header")
        const owned = yield* failureOf({ ...base, headers: { bcc: "hidden@example.org" } })
        expect(owned.field).toBe("header name \"bcc\"")
        expect(owned.reason).toContain("`bcc` field")
      }))

    it.effect("CR/LF in an address", () =>
      Effect.gen(function*() {
        expect((yield* failureOf({ ...base, to: { address: "bob@example.org\r\nBcc: x@example.org" } })).field).toBe(
          "to address"
        )
        expect((yield* failureOf({ ...base, cc: "carol@example.org\nX-Evil: 1" })).field).toBe("cc address")
        expect((yield* failureOf({ ...base, from: "not an address" })).field).toBe("from address")
      }))

    it.effect("CR/LF in a display name", () =>
      Effect.gen(function*() {
        const error = yield* failureOf({
          ...base,
          from: { name: "Alice\r\nBcc: x@example.org", address: "a@example.org" }
        })
        expect(error.field).toBe("from display name")
        expect((yield* failureOf({ ...base, replyTo: { name: "R\n", address: "r@example.org" } })).field).toBe(
          "reply-to display name"
        )
      }))

    it.effect("CR/LF in an attachment's filename or header", () =>
      Effect.gen(function*() {
        const filename = yield* failureOf({ ...base, attachments: [{ filename: "a\r\n.txt", content: "x" }] })
        expect(filename.field).toBe("attachment 1 filename")
        const attachmentHeader = yield* failureOf({
          ...base,
          attachments: [{ content: "x" }, { content: "y", headers: { "X-Part": "a\rb" } }]
        })
        expect(attachmentHeader.field).toBe("attachment 2 X-Part header")
      }))

    it.effect("no recipient at all, or a bad envelope address", () =>
      Effect.gen(function*() {
        expect((yield* failureOf({ from: "alice@example.org", text: "hi" })).field).toBe("envelope recipients")
        expect(
          (yield* failureOf({ ...base, envelope: { from: "alice@example.org", to: ["bad address"] } })).field
        ).toBe("envelope recipient")
        expect((yield* failureOf({ ...base, messageId: "no-at-sign" })).field).toBe("Message-ID")
      }))
  })

  describe("DKIM", () => {
    const keys = generateKeyPairSync("rsa", {
      modulusLength: 2048,
      publicKeyEncoding: { type: "spki", format: "pem" },
      privateKeyEncoding: { type: "pkcs8", format: "pem" }
    })

    it.effect("signs the message with a DKIM-Signature whose body hash and signature verify", () =>
      Effect.gen(function*() {
        const { raw } = yield* composeAndRead({
          from: "Alice <alice@example.org>",
          to: "bob@example.org",
          subject: "Signed  message ",
          text: "Line one  \r\nLine\ttwo\r\n\r\n\r\n",
          attachments: [{ filename: "data.bin", content: randomBytes(5000) }],
          dkim: { domainName: "example.org", keySelector: "mail2025", privateKey: Redacted.make(keys.privateKey) }
        })
        expect(raw.startsWith("DKIM-Signature: ")).toBe(true)
        const { bodyHash, tags, valid } = verifyDkim(raw, keys.publicKey)
        expect(tags).toMatchObject({ v: "1", a: "rsa-sha256", c: "relaxed/relaxed", d: "example.org", s: "mail2025" })
        expect(tags.h!.split(":")).toEqual(expect.arrayContaining(["from", "to", "subject", "date", "message-id"]))
        expect(tags.bh).toBe(bodyHash)
        expect(valid).toBe(true)
        // A tampered header no longer verifies.
        expect(verifyDkim(raw.replace("Subject: Signed", "Subject: Forged"), keys.publicKey).valid).toBe(false)
      }))

    it.effect("bare CR and LF become CRLF before signing, so the signed body is the sent body", () =>
      Effect.gen(function*() {
        const { raw } = yield* composeAndRead({
          from: "alice@example.org",
          to: "bob@example.org",
          text: Stream.make(new TextEncoder().encode("one\ntwo\rthree\r"), new TextEncoder().encode("\nfour")),
          dkim: { domainName: "example.org", keySelector: "s1", privateKey: Redacted.make(keys.privateKey) }
        })
        expect(raw.replace(/\r\n/g, "")).not.toMatch(/[\r\n]/)
        expect(partBody(raw, "Content-Type: text/plain").toString()).toBe("one\r\ntwo\r\nthree\r\nfour\r\n")
        const { bodyHash, tags, valid } = verifyDkim(raw, keys.publicKey)
        expect(tags.bh).toBe(bodyHash)
        expect(valid).toBe(true)
      }))

    it.effect("an unusable private key is refused before anything is composed, without showing it", () =>
      Effect.gen(function*() {
        const error = yield* failureOf({
          from: "alice@example.org",
          to: "bob@example.org",
          dkim: { domainName: "example.org", keySelector: "s1", privateKey: Redacted.make("not a key") }
        })
        expect(error.field).toBe("DKIM private key")
        expect(error.message).not.toContain("not a key")
      }))
  })

  describe("content that fails", () => {
    it.effect("a file that cannot be read fails the body with a PlatformError naming the file", () =>
      Effect.gen(function*() {
        const path = join(tmpdir(), `effect-smtp-missing-${process.pid}.bin`)
        const composed = yield* Message.compose({
          from: "alice@example.org",
          to: "bob@example.org",
          text: "hi",
          attachments: [{ content: { path } }]
        })
        const error = yield* Effect.flip(collect(composed.body))
        expect(error._tag).toBe("SystemError")
        expect(error.message).toContain(path)
      }).pipe(Effect.provide(NodeFileSystem.layer)))

    it.effect("a content stream's own error comes out of the body as it is", () =>
      Effect.gen(function*() {
        const composed = yield* Message.compose({
          from: "alice@example.org",
          to: "bob@example.org",
          text: "hi",
          attachments: [{
            filename: "broken.bin",
            content: Stream.concat(
              Stream.make(new Uint8Array(10)),
              Stream.fail(new StreamFailure({ detail: "disk on fire" }))
            )
          }]
        })
        const error = yield* Effect.flip(collect(composed.body))
        expect(error).toEqual(new StreamFailure({ detail: "disk on fire" }))
      }))
  })

  it.live("the body pulls a part's content only as fast as it is read, and releases it when it is dropped", () =>
    Effect.gen(function*() {
      const released = yield* Deferred.make<void>()
      let pulled = 0
      const endless = Stream.repeatEffect(Effect.sync(() => {
        pulled += 64 * 1024
        return new Uint8Array(64 * 1024)
      })).pipe(Stream.ensuring(Deferred.succeed(released, undefined)))
      const composed = yield* Message.compose({
        from: "alice@example.org",
        to: "bob@example.org",
        attachments: [{ filename: "endless.bin", content: endless }]
      })
      let read = 0
      yield* composed.body.pipe(
        Stream.takeWhile(() => read < 1024 * 1024),
        Stream.runForEach((chunk) => Effect.sync(() => read += chunk.length))
      )
      yield* Deferred.await(released).pipe(Effect.timeout("5 seconds"))
      // Node streams buffer up to their high-water marks between the stages; nothing like the endless whole.
      expect(pulled).toBeLessThan(8 * 1024 * 1024)
    }))

  it.live("a 50 MB file attachment composes in constant memory", () =>
    Effect.gen(function*() {
      setFlagsFromString("--expose-gc")
      const gc = runInNewContext("gc") as () => void
      const dir = yield* tempDir()
      const path = join(dir, "big.bin")
      const size = 50 * 1024 * 1024
      const block = randomBytes(1024 * 1024)
      const fd = openSync(path, "w")
      for (let written = 0; written < size; written += block.length) writeSync(fd, block)
      closeSync(fd)

      const composed = yield* Message.compose({
        from: "alice@example.org",
        to: "bob@example.org",
        text: "big one",
        attachments: [{ filename: "big.bin", content: { path } }]
      })
      gc()
      const before = process.memoryUsage()
      let peakHeap = 0
      let peakTotal = 0
      let bytes = 0
      let sinceSample = 0
      yield* Stream.runForEach(composed.body, (chunk) =>
        Effect.sync(() => {
          bytes += chunk.length
          sinceSample += chunk.length
          if (sinceSample >= 4 * 1024 * 1024) {
            sinceSample = 0
            // Collected first, so the sample is what is held, not garbage waiting for the collector.
            gc()
            const now = process.memoryUsage()
            peakHeap = Math.max(peakHeap, now.heapUsed - before.heapUsed)
            peakTotal = Math.max(peakTotal, now.heapUsed + now.arrayBuffers - before.heapUsed - before.arrayBuffers)
          }
        }))
      // base64 makes 4 octets of 3, plus line breaks.
      expect(bytes).toBeGreaterThan(size * 4 / 3)
      expect(peakHeap).toBeLessThan(40 * 1024 * 1024)
      // Buffers live outside the V8 heap; counting them too shows the file is not held either.
      expect(peakTotal).toBeLessThan(40 * 1024 * 1024)
    }).pipe(Effect.provide(NodeFileSystem.layer), Effect.scoped), 120_000)
})
