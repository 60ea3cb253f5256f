/**
 * The memory case's client, in its own process so that its peak RSS is its own: one `send` through our connection
 * of a body made on the fly as an Effect `Stream` of fresh 64 KiB-ish blocks (never held whole), then
 * `process.resourceUsage().maxRSS`. For comparison, `raw` sends the same blocks through our `DataEncoder` straight
 * to a `net.Socket` (waiting for `drain`), without Effect: what the process needs without our connection.
 *
 * `node memoryClient.js <port> <blocks> ours|raw`; sends `{ type: "result", ... }` to the parent and exits.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as DataEncoder from "../src/DataEncoder.js"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { fail, finish } from "./child.js"
import { memoryBlock, SENDER } from "./messages.js"
import * as RawClient from "./rawClient.js"

const RECIPIENT = "rcpt@example.org"

const ours = (port: number, blocks: number, text: Buffer): Promise<{ readonly code: number; readonly ms: number }> => {
  const body = Stream.unfold(
    0,
    (i) => i < blocks ? Option.some([Buffer.from(text) as Uint8Array, i + 1] as const) : Option.none()
  )
  const program = Effect.gen(function*() {
    const connection = yield* SmtpConnection.make({ host: "127.0.0.1", port, tls: "none", clientName: "bench.example" })
    const start = performance.now()
    const result = yield* connection.send({ from: SENDER, to: [RECIPIENT] }, body)
    const ms = performance.now() - start
    return { code: result.response.code, ms }
  }).pipe(
    Effect.scoped,
    Effect.provide(SmtpTransport.layerNode),
    Effect.timeoutFail({ duration: "120 seconds", onTimeout: () => new Error("the send took over 120 s") })
  )
  return Effect.runPromise(program)
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
  const client = process.argv[4] === "raw" ? raw : ours
  const text = memoryBlock().bytes
  const { code, ms } = await client(port, blocks, text)
  finish({ type: "result", code, ms, octets: blocks * text.length, maxRssKiB: process.resourceUsage().maxRSS })
}

main().catch(fail)
