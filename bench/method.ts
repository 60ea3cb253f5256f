/**
 * DATA or BDAT: what each costs on each server, the measurements behind the engine's choice (internal/plan.ts: BDAT
 * only when another message follows at once, or commands are not pipelined). One connection (`SmtpConnection`), on
 * loopback and through the 10 ms delay proxy, to smtp-server and aiosmtpd (no CHUNKING: DATA only), Postfix and Exim:
 *
 * - lone: 30 messages sent in turn, each awaited before the next, as DATA (`chunking: false`) and as BDAT
 *   (`chunking: true`), at 1,000 and 5,000 octets; the median time per message.
 * - burst: 16 messages of 5,000 octets given to `sendAll` at once, all as DATA, all as BDAT, and as the engine
 *   chooses; the median time per burst over 5 bursts.
 *
 * Every run checks each result (250, and the method asked for).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as SmtpConnection from "../src/SmtpConnection.js"
import type * as SmtpSubmission from "../src/SmtpSubmission.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import { startAiosmtpd } from "../test/support/daemons/aiosmtpd.js"
import { startChild } from "./child.js"
import { columns, median } from "./harness.js"
import { message, SENDER } from "./messages.js"
import type { ServerName } from "./servers.js"
import { startServer } from "./servers.js"
import { DELAY_MS } from "./submission.js"

const LONE_MESSAGES = 30
const BURST = 16
const BURSTS = 5
const SERVER_PROCESS = new URL("./serverProcess.js", import.meta.url)

/** A message of `size` octets (the bench message, cut to size with a CRLF at its end). */
const sized = (i: number, size: number): Uint8Array => {
  const body = message(i).body
  if (size >= body.length) return body
  return Buffer.concat([body.subarray(0, size - 2), Buffer.from("\r\n")])
}

type Mode = "DATA" | "BDAT" | "rule"

const chunkingOf = (mode: Mode): boolean | undefined => mode === "DATA" ? false : mode === "BDAT" ? true : undefined

const check = (result: Either.Either<SmtpSubmission.SendResult, unknown>, mode: Mode) => {
  if (Either.isLeft(result)) throw new Error(`method: a send failed: ${String(result.left)}`)
  if (result.right.response.code !== 250) throw new Error(`method: reply ${result.right.response.code}`)
  if (mode !== "rule" && result.right.method !== mode) {
    throw new Error(`method: sent ${result.right.method}, not ${mode}`)
  }
}

/** Milliseconds per lone message and per burst, on one connection to `port`. */
const measureOn = (port: number, modes: ReadonlyArray<Mode>) =>
  Effect.gen(function*() {
    const connection = yield* SmtpConnection.make({
      host: "127.0.0.1",
      port,
      tls: "none",
      clientName: "bench.example",
      timeout: "30 seconds"
    })
    const lone: Record<string, number> = {}
    for (const size of [1_000, 5_000]) {
      for (const mode of modes.filter((m) => m !== "rule")) {
        const times: Array<number> = []
        for (let i = 0; i < LONE_MESSAGES; i++) {
          const started = performance.now()
          const result = yield* Effect.either(
            connection.send({ from: SENDER, to: [`rcpt${i}@example.org`] }, sized(i, size), {
              chunking: chunkingOf(mode)
            })
          )
          times.push(performance.now() - started)
          check(result, mode)
        }
        lone[`${mode} ${size}`] = median(times)
      }
    }
    const burst: Record<string, number> = {}
    for (const mode of modes) {
      const times: Array<number> = []
      for (let b = 0; b < BURSTS; b++) {
        const submissions = Array.from({ length: BURST }, (_, i) => ({
          envelope: { from: SENDER, to: [`rcpt${i}@example.org`] },
          body: sized(i, 5_000)
        }))
        const started = performance.now()
        const results = yield* Stream.runCollect(
          connection.sendAll(submissions, { chunking: chunkingOf(mode), window: BURST })
        )
        times.push(performance.now() - started)
        for (const result of results) check(result, mode)
      }
      burst[mode] = median(times)
    }
    return { lone, burst }
  }).pipe(Effect.scoped, Effect.provide(SmtpTransport.layerNode))

const fmt = (ms: number | undefined): string => ms === undefined ? "—" : `${ms.toFixed(1)} ms`

export const run = async (log: (line: string) => void): Promise<void> => {
  const rows: Array<ReadonlyArray<string>> = []
  const servers: ReadonlyArray<ServerName | "aiosmtpd"> = ["smtp-server", "aiosmtpd", "Postfix", "Exim"]
  for (const name of servers) {
    const chunking = name === "Postfix" || name === "Exim"
    const modes: ReadonlyArray<Mode> = chunking ? ["DATA", "BDAT", "rule"] : ["DATA"]
    let port: number
    let proxy: number
    let close: () => Promise<void>
    if (name === "aiosmtpd") {
      // The harness runs its Python script from beside its compiled module: the bench's build does not copy it there.
      const script = "test/support/daemons/aiosmtpd_server.py"
      fs.copyFileSync(new URL(`../../${script}`, import.meta.url), new URL(`../${script}`, import.meta.url))
      const scope = Effect.runSync(Scope.make())
      const server = await Effect.runPromise(
        Scope.extend(startAiosmtpd({ user: "unused", password: "unused" }), scope)
      )
      const delay = await startChild(SERVER_PROCESS, ["proxy", String(server.port), String(DELAY_MS)])
      port = server.port
      proxy = Number(delay.ready.port)
      close = async () => {
        await delay.close()
        await Effect.runPromise(Scope.close(scope, Exit.void))
      }
    } else {
      const server = await startServer(name, DELAY_MS)
      port = server.port
      proxy = server.proxy
      close = server.close
    }
    try {
      for (const [where, target] of [["loopback", port], ["10 ms", proxy]] as const) {
        const { burst, lone } = await Effect.runPromise(measureOn(target, modes))
        rows.push([
          name,
          where,
          fmt(lone["DATA 1000"]),
          fmt(lone["BDAT 1000"]),
          fmt(lone["DATA 5000"]),
          fmt(lone["BDAT 5000"]),
          fmt(burst["DATA"]),
          fmt(burst["BDAT"]),
          fmt(burst["rule"])
        ])
      }
    } finally {
      await close()
    }
  }
  log(
    columns(
      `\nDATA or BDAT, one connection: a lone message (median of ${LONE_MESSAGES}, each awaited) and a burst of ${BURST} ` +
        `messages of 5,000 octets given to sendAll (median of ${BURSTS})`,
      [
        "server",
        "RTT",
        "lone DATA 1 kB",
        "lone BDAT 1 kB",
        "lone DATA 5 kB",
        "lone BDAT 5 kB",
        "burst DATA",
        "burst BDAT",
        "burst, engine's choice"
      ],
      rows
    )
  )
}
