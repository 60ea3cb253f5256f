/**
 * The SmtpClient pool: `SmtpClient.send` over a pool of N connections beside Nodemailer's pool of N. Nodemailer gets
 * every `sendMail` at once, and ours every `send` at once (`Effect.forEach` with unbounded concurrency): the client's
 * pool and its cap on concurrent transactions queue them.
 *
 * - Scaling: 150 × N messages of 5,000 octets through the 10 ms delay proxy to smtp-server, N = 1, 2, 4, 8.
 * - CPU: 5,000 messages straight to smtp-server with a pool of 4, the client's CPU time per message.
 *
 * smtp-server and the proxy run in child processes. Every run checks the server's own count of messages, octets and
 * connections opened, and throws when it differs from what was sent or when a pool opened more than N connections.
 * The run also writes docs/pool-scaling.svg, a chart of the scaling medians.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as fs from "node:fs"
import * as SmtpClient from "../src/SmtpClient.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import type { Child } from "./child.js"
import { startChild } from "./child.js"
import type { Case, Options, Result } from "./harness.js"
import { columns, fixed, measure } from "./harness.js"
import type { Message } from "./messages.js"
import { MESSAGE_SIZE, messages } from "./messages.js"
import type { CpuSample, Tally } from "./submission.js"
import {
  cpuTable,
  DELAY_MS,
  expecting,
  fastest,
  nodemailerCase,
  rate,
  roundTrip,
  RUN_TIMEOUT_MS,
  slowest,
  smtpServerTally,
  withCpu
} from "./submission.js"

const CONNECTIONS: ReadonlyArray<number> = [1, 2, 4, 8]
/** Two round trips of about 12 ms a message, N at a time: about 3.7 s a run for every N. */
const SCALING_MESSAGES_PER_CONNECTION = 150
const SCALING_WARMUP_MESSAGES_PER_CONNECTION = 20
/** Three rounds of eight runs of about 3.7 s: a median of three per row, in about 90 s. */
const SCALING_OPTIONS: Options = { warmupRounds: 0, rounds: 3 }
const CPU_CONNECTIONS = 4
const CPU_MESSAGES = 5_000
const CPU_WARMUP_MESSAGES = 500
/** Five rounds, as the submission group's CPU table: CPU time per message moves by up to 2x on this machine. */
const CPU_OPTIONS: Options = { warmupRounds: 0, rounds: 5 }

const SERVER_PROCESS = new URL("./serverProcess.js", import.meta.url)
const CHART = new URL("../../docs/pool-scaling.svg", import.meta.url)

/**
 * smtp-server's count of connections opened, read after every run: a run must open between 1 and its pool's
 * maximum. Keeps the counts of each case's runs.
 */
interface Connections {
  readonly check: (name: string, max: number) => Promise<void>
  readonly opened: (name: string) => ReadonlyArray<number>
}

const connectionCount = async (server: Child): Promise<Connections> => {
  let seen = Number((await server.request("stats")).connections)
  const runs = new Map<string, Array<number>>()
  return {
    check: async (name, max) => {
      const now = Number((await server.request("stats")).connections)
      const opened = now - seen
      seen = now
      if (opened < 1 || opened > max) throw new Error(`${name}: ${opened} connections opened, the pool allows ${max}`)
      runs.set(name, [...(runs.get(name) ?? []), opened])
    },
    opened: (name) => runs.get(name) ?? []
  }
}

/** A case that also checks the connections its run opened. */
const counting = (c: Case, connections: Connections, max: number): Case => ({
  ...c,
  verify: async (accepted) => {
    await c.verify(accepted)
    await connections.check(c.name, max)
  }
})

/**
 * Ours: a fresh `SmtpClient` layer per run (a pool of `maxConnections`, no retries), the messages given to
 * `Effect.forEach` with unbounded concurrency, as Nodemailer gets them. Every result must be one
 * accepted recipient (the right one), none refused, a 250, in one attempt.
 */
const oursCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  maxConnections: number
): Case => {
  const layer = SmtpClient.layer({
    connection: { host: "127.0.0.1", port, tls: "none", clientName: "bench.example" },
    pool: { maxConnections, maxMessagesPerConnection: 1_000_000 },
    retry: false
  }).pipe(Layer.provide(SmtpTransport.layerNode))
  const program = Effect.flatMap(SmtpClient.SmtpClient, (smtp) => {
    let accepted = 0
    return Effect.map(
      Effect.forEach(
        batch,
        (m, i) =>
          Effect.flatMap(Effect.either(smtp.send({ from: m.from, to: [m.to] }, m.body)), (result) => {
            if (Either.isLeft(result)) return Effect.fail(new Error(`${name}: message ${i}: ${result.left}`))
            const sent = result.right
            if (
              sent.accepted.length !== 1 || sent.accepted[0]!.recipient !== m.to || sent.rejected.length !== 0 ||
              sent.response.code !== 250 || sent.attempts !== 1
            ) {
              return Effect.fail(new Error(`${name}: message ${i}: unexpected result ${JSON.stringify(sent)}`))
            }
            accepted++
            return Effect.void
          }),
        { concurrency: "unbounded", discard: true }
      ),
      () => accepted
    )
  }).pipe(
    Effect.provide(layer),
    Effect.timeoutFail({ duration: RUN_TIMEOUT_MS, onTimeout: () => new Error(`${name}: no end within the timeout`) })
  )
  return {
    name,
    bytes: batch.length * MESSAGE_SIZE,
    items: batch.length,
    run: () => Effect.runPromise(program),
    verify: expecting(name, batch.length, tally)
  }
}

/** Both clients with a pool of `n`, Nodemailer first. */
const pair = (
  port: number,
  tally: Tally,
  connections: Connections,
  batch: ReadonlyArray<Message>,
  n: number
): ReadonlyArray<Case> => [
  counting(
    nodemailerCase(`Nodemailer, pool of ${n}`, port, tally, batch, "burst", n),
    connections,
    n
  ),
  counting(oursCase(`ours, SmtpClient pool of ${n}`, port, tally, batch, n), connections, n)
]

/** One point of the chart: the median msg/s of both clients with a pool of `connections`. */
interface Point {
  readonly connections: number
  readonly nodemailer: number
  readonly ours: number
}

/** A step for the y axis: 1, 2 or 5 times a power of ten, giving about five grid lines up to `max`. */
const niceStep = (max: number): number => {
  const raw = max / 5
  const power = 10 ** Math.floor(Math.log10(raw))
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw)!
}

/** A grouped bar chart, msg/s against connections, both clients side by side with their figures on top. */
export const scalingChart = (title: string, subtitle: string, points: ReadonlyArray<Point>): string => {
  const width = 640
  const height = 400
  const left = 70
  const right = 20
  const top = 84
  const bottom = 60
  const plotWidth = width - left - right
  const plotHeight = height - top - bottom
  const highest = Math.max(...points.flatMap((p) => [p.nodemailer, p.ours]))
  const step = niceStep(highest * 1.1)
  const yMax = Math.ceil((highest * 1.1) / step) * step
  const y = (value: number): number => top + plotHeight - (value / yMax) * plotHeight
  const group = plotWidth / points.length
  const bar = group * 0.3
  const series = [
    { label: "Nodemailer 10.6 pool", color: "#e07b39", value: (p: Point) => p.nodemailer },
    { label: "ours, SmtpClient pool", color: "#2f6db5", value: (p: Point) => p.ours }
  ]
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${title}</text>`,
    `<text x="${width / 2}" y="42" text-anchor="middle" font-size="12" fill="#555555">${subtitle}</text>`
  ]
  for (let value = 0; value <= yMax + step / 2; value += step) {
    const at = y(value).toFixed(1)
    out.push(
      `<line x1="${left}" y1="${at}" x2="${width - right}" y2="${at}" stroke="#dddddd"/>`,
      `<text x="${left - 8}" y="${at}" text-anchor="end" dominant-baseline="middle">${value}</text>`
    )
  }
  points.forEach((p, i) => {
    const center = left + group * (i + 0.5)
    series.forEach((s, j) => {
      const value = s.value(p)
      const x = center + (j === 0 ? -bar - 2 : 2)
      out.push(
        `<rect x="${x.toFixed(1)}" y="${y(value).toFixed(1)}" width="${bar.toFixed(1)}" ` +
          `height="${(top + plotHeight - y(value)).toFixed(1)}" fill="${s.color}"/>`,
        `<text x="${(x + bar / 2).toFixed(1)}" y="${(y(value) - 5).toFixed(1)}" text-anchor="middle" ` +
          `font-size="12">${fixed(value)}</text>`
      )
    })
    out.push(
      `<text x="${center.toFixed(1)}" y="${top + plotHeight + 20}" text-anchor="middle">${p.connections}</text>`
    )
  })
  out.push(
    `<line x1="${left}" y1="${top + plotHeight}" x2="${width - right}" y2="${top + plotHeight}" stroke="#333333"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="#333333"/>`,
    `<text x="${left + plotWidth / 2}" y="${height - 16}" text-anchor="middle">connections in the pool</text>`,
    `<text transform="translate(20 ${top + plotHeight / 2}) rotate(-90)" text-anchor="middle">` +
      "messages per second (median)</text>"
  )
  series.forEach((s, j) => {
    const x = left + 16 + j * 200
    out.push(
      `<rect x="${x}" y="${top - 22}" width="14" height="14" fill="${s.color}"/>`,
      `<text x="${x + 20}" y="${top - 15}" dominant-baseline="middle">${s.label}</text>`
    )
  })
  out.push("</svg>", "")
  return out.join("\n")
}

/** Messages/s per row, against Nodemailer with the same pool and against the same client with one connection. */
const scalingTable = (
  title: string,
  results: ReadonlyArray<Result>,
  connections: Connections
): string => {
  const rows = results.map((r, i) => {
    const n = CONNECTIONS[i >> 1]!
    const nodemailer = results[i & ~1]!
    const single = results[i & 1]!
    const opened = connections.opened(r.name)
    return [
      r.name,
      fixed(rate(r)),
      (rate(r) / rate(nodemailer)).toFixed(2),
      (rate(r) / rate(single)).toFixed(2),
      (rate(r) / rate(single) / n).toFixed(2),
      `${fixed(slowest(r))}–${fixed(fastest(r))}`,
      r.medianMs.toFixed(0),
      `${Math.min(...opened)}–${Math.max(...opened)}`
    ]
  })
  return columns(
    title,
    ["case", "msg/s", "x Nodemailer", "x 1 conn", "per conn / 1 conn", "msg/s range", "ms/run", "conns"],
    rows
  )
}

const scaling = async (
  log: (line: string) => void,
  tally: Tally,
  connections: Connections,
  proxy: number
): Promise<void> => {
  const cases = (perConnection: number) =>
    CONNECTIONS.flatMap((n) => pair(proxy, tally, connections, messages(perConnection * n), n))
  // The warm-up round sends 20 messages per connection: enough for the JIT, a few seconds in all.
  await measure(cases(SCALING_WARMUP_MESSAGES_PER_CONNECTION), { warmupRounds: 0, rounds: 1 })
  const results = await measure(cases(SCALING_MESSAGES_PER_CONNECTION), SCALING_OPTIONS)
  const title = `smtp-server through the ${2 * DELAY_MS} ms proxy, ${SCALING_MESSAGES_PER_CONNECTION} × N messages ` +
    `of ${MESSAGE_SIZE} octets, a pool of N connections; every message given at once to either client`
  log(scalingTable(`\n${title}`, results, connections))
  const points = CONNECTIONS.map((n, i) => ({
    connections: n,
    nodemailer: rate(results[2 * i]!),
    ours: rate(results[2 * i + 1]!)
  }))
  fs.writeFileSync(
    CHART,
    scalingChart(
      `Pool scaling through a ${2 * DELAY_MS} ms proxy to smtp-server (higher is better)`,
      `${SCALING_MESSAGES_PER_CONNECTION} × N messages of ${MESSAGE_SIZE} octets per run, ` +
        `median of ${SCALING_OPTIONS.rounds} rounds`,
      points
    )
  )
  log(`chart written to docs/pool-scaling.svg`)
}

const cpu = async (log: (line: string) => void, tally: Tally, server: Child, port: number) => {
  // A count of its own: the scaling runs have cases of the same names.
  const connections = await connectionCount(server)
  await measure(pair(port, tally, connections, messages(CPU_WARMUP_MESSAGES), CPU_CONNECTIONS), {
    warmupRounds: 0,
    rounds: 1
  })
  const plain = pair(port, tally, connections, messages(CPU_MESSAGES), CPU_CONNECTIONS)
  const samples = plain.map(() => [] as Array<CpuSample>)
  const results = await measure(plain.map((c, i) => withCpu(c, samples[i]!)), CPU_OPTIONS)
  log(
    cpuTable(
      `\nsmtp-server on loopback (no proxy), ${CPU_MESSAGES} messages of ${MESSAGE_SIZE} octets, a pool of ` +
        `${CPU_CONNECTIONS} connections, every message given at once: client CPU`,
      results,
      samples,
      [0]
    )
  )
  const opened = results.map((r) => {
    const counts = connections.opened(r.name)
    return `${r.name} ${Math.min(...counts)}–${Math.max(...counts)}`
  })
  log(`connections opened per run, warm-up included: ${opened.join("; ")}`)
}

/** Runs the whole group: starts smtp-server and the proxy, prints the tables, writes the chart, stops them. */
export const run = async (log: (line: string) => void): Promise<void> => {
  const children: Array<Child> = []
  try {
    const server = await startChild(SERVER_PROCESS, ["smtp-server"])
    children.push(server)
    const port = Number(server.ready.port)
    const proxy = await startChild(SERVER_PROCESS, ["proxy", String(port), String(DELAY_MS)])
    children.push(proxy)
    const proxyPort = Number(proxy.ready.port)
    await roundTrip(log, "smtp-server", proxyPort, port)
    const tally = smtpServerTally(server)
    await scaling(log, tally, await connectionCount(server), proxyPort)
    await cpu(log, tally, server, port)
  } finally {
    for (const c of children.reverse()) await c.close()
  }
}
