/**
 * The memory case's client, in its own process so that its peak RSS is its own: one message sent, then
 * `process.resourceUsage().maxRSS`. The kinds:
 * - `ours`: our connection's `send` of an Effect `Stream` of fresh 64 KiB-ish blocks, made on the fly (never held
 *   whole);
 * - `file`: our `send` of the same blocks written to a file, through `SmtpSubmission.fileBody`, read into the
 *   connection's own reused buffer;
 * - `nodemailer` and `nodemailer-file`: Nodemailer 10 sending the same fresh blocks from a `Readable`, or the file from
 *   `fs.createReadStream`, as `raw`;
 * - `raw`: the fresh blocks through our `DataEncoder` straight to a `net.Socket` (waiting for `drain`), without Effect:
 *   what the process needs without our connection.
 *
 * `node memoryClient.js <port> <blocks> <kind> [path]`; sends `{ type: "result", ... }` to the parent and exits.
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { createReadStream } from "node:fs"
import { Readable } from "node:stream"
import * as DataEncoder from "../src/DataEncoder.js"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpSubmission from "../src/SmtpSubmission.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { fail, finish } from "./child.js"
import { memoryBlock, nodemailerTarget, SENDER } from "./messages.js"
import * as RawClient from "./rawClient.js"

const RECIPIENT = "rcpt@example.org"

const send = <E, R>(
  port: number,
  body: Effect.Effect<SmtpSubmission.Body<E, R>, E, R>
): Effect.Effect<{ readonly code: number; readonly ms: number }, unknown, R> =>
  Effect.gen(function*() {
    const connection = yield* SmtpConnection.make({ host: "127.0.0.1", port, tls: "none", clientName: "bench.example" })
    const start = performance.now()
    const result = yield* connection.send({ from: SENDER, to: [RECIPIENT] }, yield* body)
    const ms = performance.now() - start
    return { code: result.response.code, ms }
  }).pipe(
    Effect.scoped,
    Effect.provide(SmtpTransport.layerNode),
    Effect.timeoutFail({ duration: "120 seconds", onTimeout: () => new Error("the send took over 120 s") })
  )

const ours = (port: number, blocks: number, text: Buffer): Promise<{ readonly code: number; readonly ms: number }> => {
  const body = Stream.unfold(
    0,
    (i) => i < blocks ? Option.some([Buffer.from(text) as Uint8Array, i + 1] as const) : Option.none()
  )
  return Effect.runPromise(send(port, Effect.succeed(body)))
}

const file = (port: number, path: string): Promise<{ readonly code: number; readonly ms: number }> =>
  Effect.runPromise(send(port, SmtpSubmission.fileBody(path)).pipe(Effect.provide(NodeFileSystem.layer)))

const viaNodemailer = async (port: number, body: Readable): Promise<{ readonly code: number; readonly ms: number }> => {
  // Loaded only here, so that the other kinds' processes do not hold Nodemailer's modules.
  const { default: nodemailer } = await import("nodemailer")
  const transport = nodemailer.createTransport(nodemailerTarget(port))
  try {
    const start = performance.now()
    const info = await transport.sendMail({ envelope: { from: SENDER, to: [RECIPIENT] }, raw: body })
    return { code: Number(info.response.slice(0, 3)), ms: performance.now() - start }
  } finally {
    transport.close()
  }
}

/** The fresh blocks as a Node `Readable`, made as they are pulled. */
const freshBlocks = (blocks: number, text: Buffer): Readable => {
  let i = 0
  return new Readable({
    read() {
      this.push(i++ < blocks ? Buffer.from(text) : null)
    }
  })
}

const raw = async (
  port: number,
  blocks: number,
  text: Buffer
): Promise<{ readonly code: number; readonly ms: number }> => {
  const encoder = DataEncoder.make()
  let i = 0
  const next = (): Uint8Array | undefined => {
    if (i > blocks) return undefined
    const out = i++ < blocks ? encoder.push(Buffer.from(text)) : encoder.end()
    return Either.getOrThrow(out)
  }
  const start = performance.now()
  const accepted = await RawClient.streamData(port, { from: SENDER, to: RECIPIENT }, next, 120_000)
  return { code: accepted === 1 ? 250 : 0, ms: performance.now() - start }
}

const main = async (): Promise<void> => {
  const port = Number(process.argv[2])
  const blocks = Number(process.argv[3])
  const text = memoryBlock().bytes
  const kind = process.argv[4]
  const path = process.argv[5]!
  const { code, ms } = kind === "file"
    ? await file(port, path)
    : kind === "nodemailer"
    ? await viaNodemailer(port, freshBlocks(blocks, text))
    : kind === "nodemailer-file"
    ? await viaNodemailer(port, createReadStream(path))
    : await (kind === "raw" ? raw : ours)(port, blocks, text)
  finish({ type: "result", code, ms, octets: blocks * text.length, maxRssKiB: process.resourceUsage().maxRSS })
}

main().catch(fail)
