/**
 * The SmtpClient benchmark (issue 13): `SmtpClient.send` over a pool of N connections beside Nodemailer's pool of N
 * and beside the raw pipelined client (rawClient.ts) on N connections at once, in one run, on smtp-server, Postfix and
 * Exim (servers.ts), each on loopback and through the delay proxy (a 10 ms round trip), for N = 1, 2, 4 and 8.
 *
 * - SmtpClient: a fresh `SmtpClient.layer` per run with `pool: { maxConnections: N }` and no retries, every `send`
 *   started at once (`Effect.forEach` with unbounded concurrency); the client's pool and its cap on concurrent
 *   transactions queue them. SmtpClient.sendAll: the same layer, the batch given to `SmtpClient.sendAll` as one
 *   iterable. Nodemailer: a pool of N, every `sendMail` started at once. Raw: N pipelined sessions at
 *   once, each taking the next message of the batch when it has room for one: DATA to smtp-server (no CHUNKING),
 *   BDAT with 16 transactions in flight per session to Postfix and Exim. Through the proxy, BDAT made 2 to 4 times
 *   the rate of DATA (which waits a round trip per message) on those two; windows of 16 and 64, and a fixed slice of
 *   the batch per session instead of the shared one, came out within the noise of each other in scratch runs, except
 *   that with 8 sessions at window 64 the first sessions to connect take the whole of a loopback batch. The row names
 *   the mode.
 * - Every case of a cell (server, route, N) sends the same batch of 5,000-octet messages (messages.ts): through the
 *   proxy 80 × N (Nodemailer's two round trips a message make that about 2 s a run; the raw client's BDAT runs are
 *   over in a few hundred ms), on loopback a fixed count per server, about 1 s for the slowest client. The servers
 *   set the pace on loopback: Postfix and Exim take a few hundred messages per second on 2 cores, and Postfix not
 *   many more through the proxy either; the raw client's scaling shows where a server stops every client. Per server
 *   and route, a warm-up round with a fifth of the messages, then 3 interleaved rounds; each row is the median. The
 *   whole group takes about 7 minutes on 2 cores.
 * - Loopback runs also record the client process's CPU time (user and system): CPU per message per row, and a
 *   table per server for the pool of 4.
 * - Every run checks the server's count of messages (smtp-server's tally, Postfix's Maildir deliveries, the messages
 *   in Exim's queue: see servers.ts) and throws when it differs from what was sent. It also checks the connections the
 *   run opened where something counts them (smtp-server on both routes, the proxy in front of Postfix and Exim; not
 *   Postfix and Exim on loopback): between 1 and N, exactly N for the raw client.
 * - Each table has "x Nodemailer" and "x raw" (over those clients with the same N in the same run) and "scaling"
 *   (the rate at N over N times the same client's rate at 1 connection: 1.00 is linear). A last table sets issue 13's
 *   goals beside the ratios found; nothing is asserted.
 * - The run writes docs/pool-scaling.svg (poolChart.ts): msg/s against N, one line per server and client, through the
 *   proxy and on loopback.
 *
 * `BENCH_QUICK=1` shrinks every batch (10 × N messages through the proxy, 200 on loopback) and runs one round without
 * warm-up: a smoke test of the whole group in under a minute, whose figures mean little. Its chart goes to
 * .bench-build/pool-scaling.svg, not to docs.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as DataEncoder from "../src/DataEncoder.js"
import * as SmtpClient from "../src/SmtpClient.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import type { Case, Options, Result } from "./harness.js"
import { columns, fixed, measure, median } from "./harness.js"
import type { Message } from "./messages.js"
import { MESSAGE_SIZE, messages } from "./messages.js"
import type { Series } from "./poolChart.js"
import { scalingChart } from "./poolChart.js"
import * as RawClient from "./rawClient.js"
import type { BenchServer, ServerName, Tally } from "./servers.js"
import { startServer } from "./servers.js"
import type { CpuSample } from "./submission.js"
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
  withCpu
} from "./submission.js"

const QUICK = process.env.BENCH_QUICK === "1"
const CONNECTIONS: ReadonlyArray<number> = [1, 2, 4, 8]
const SERVERS: ReadonlyArray<ServerName> = ["smtp-server", "Postfix", "Exim"]
const CLIENTS = ["Nodemailer", "raw", "SmtpClient", "SmtpClient.sendAll"] as const
type Client = typeof CLIENTS[number]
type Route = "proxy" | "loopback"
const ROUTES: ReadonlyArray<Route> = ["proxy", "loopback"]
/** The pool of the CPU tables. */
const CPU_CONNECTIONS = 4

/** How the raw client talks to a server: DATA pipelined, or BDAT with `window` transactions in flight. */
type RawMode = { readonly kind: "DATA" } | { readonly kind: "BDAT"; readonly window: number }

interface Plan {
  readonly raw: RawMode
  /** Messages per run on loopback, whatever N: the clients are bound by the CPU there, not by round trips. */
  readonly loopback: number
  /** Messages per run and connection through the proxy. */
  readonly perConnection: number
}

const PLANS: Readonly<Record<ServerName, Plan>> = {
  "smtp-server": { raw: { kind: "DATA" }, loopback: 1_500, perConnection: 80 },
  Postfix: { raw: { kind: "BDAT", window: 16 }, loopback: 400, perConnection: 80 },
  Exim: { raw: { kind: "BDAT", window: 16 }, loopback: 300, perConnection: 80 }
}

const OPTIONS: Options = QUICK ? { warmupRounds: 0, rounds: 1 } : { warmupRounds: 0, rounds: 3 }
/** The warm-up round sends a fifth of each batch: enough for the JIT and the servers' processes. */
const WARMUP_FRACTION = 5

const batchSize = (plan: Plan, route: Route, n: number): number =>
  route === "loopback" ? (QUICK ? 200 : plan.loopback) : (QUICK ? 10 : plan.perConnection) * n

const routeName = (route: Route): string => route === "proxy" ? `${2 * DELAY_MS} ms RTT` : "loopback"

const conns = (n: number): string => `${n} conn${n === 1 ? "" : "s"}`

const rawName = (mode: RawMode): string =>
  mode.kind === "DATA" ? "raw, DATA pipelined" : `raw, BDAT window ${mode.window}`

/**
 * The raw client on `n` connections at once, one pipelined session each, every session taking the next message of
 * the batch when it has room for one (a shared cursor), as a pool hands a message to the connection that is free.
 * Returns the messages accepted over all of them.
 */
const rawCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  n: number,
  mode: RawMode
): Case => {
  const bodies = batch.map((m) => mode.kind === "DATA" ? Either.getOrThrow(DataEncoder.encode(m.body)) : m.body)
  const session = (cursor: RawClient.Cursor): Promise<number> =>
    mode.kind === "DATA"
      ? RawClient.sendData(port, batch, bodies, RUN_TIMEOUT_MS, cursor)
      : RawClient.sendBdat(port, batch, bodies, mode.window, RUN_TIMEOUT_MS, 0, cursor)
  return {
    name,
    bytes: batch.length * MESSAGE_SIZE,
    items: batch.length,
    run: async () => {
      const cursor = { next: 0 }
      const accepted = await Promise.all(Array.from({ length: n }, () => session(cursor)))
      return accepted.reduce((a, b) => a + b, 0)
    },
    verify: expecting(name, batch.length, tally)
  }
}

/**
 * SmtpClient: a fresh layer per run (a pool of `maxConnections`, no retries), the messages given to `Effect.forEach`
 * with unbounded concurrency, as Nodemailer gets them; or, `batched`, to `SmtpClient.sendAll` as one iterable (which
 * keeps enough sends under way to fill every connection's window). Every result must be one accepted recipient (the
 * right one), none refused, a 250, in one attempt.
 */
const smtpClientCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  maxConnections: number,
  batched: boolean
): Case => {
  const layer = SmtpClient.layer({
    connection: { host: "127.0.0.1", port, tls: "none", clientName: "bench.example" },
    pool: { maxConnections, maxMessagesPerConnection: 1_000_000 },
    retry: false
  }).pipe(Layer.provide(SmtpTransport.layerNode))
  const program = Effect.flatMap(SmtpClient.SmtpClient, (smtp) => {
    let accepted = 0
    const check = (
      result: Either.Either<SmtpClient.SendResult, SmtpClient.SendError>,
      i: number
    ): Effect.Effect<void, Error> => {
      const m = batch[i]!
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
    }
    const sent = batched
      ? Stream.runForEach(
        Stream.zipWithIndex(smtp.sendAll(batch.map((m) => ({ envelope: { from: m.from, to: [m.to] }, body: m.body })))),
        ([result, i]) => check(result, i)
      )
      : Effect.forEach(
        batch,
        (m, i) => Effect.flatMap(Effect.either(smtp.send({ from: m.from, to: [m.to] }, m.body)), (r) => check(r, i)),
        { concurrency: "unbounded", discard: true }
      )
    return Effect.map(sent, () => accepted)
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

/** One row of a table: a client with a pool (or a number of sessions) of `n`. */
interface Row {
  readonly client: Client
  readonly n: number
  readonly case: Case
}

/** Connections a case's run must open: the pools between 1 and N, the raw client exactly N. */
const allowed = (row: Row): readonly [number, number] => [row.client === "raw" ? row.n : 1, row.n]

/**
 * The connections opened by each run of each row, from `count` (connections opened so far, as the server or the
 * proxy counts them), read after every run; throws when a run opened fewer or more than its row allows.
 */
const counting = (rows: ReadonlyArray<Row>, count: () => Promise<number>) => {
  const runs = rows.map((): Array<number> => [])
  let seen: number | undefined
  const wrap = (row: Row, i: number): Row => ({
    ...row,
    case: {
      ...row.case,
      verify: async (accepted) => {
        await row.case.verify(accepted)
        const now = await count()
        const opened = now - seen!
        seen = now
        const [min, max] = allowed(row)
        if (opened < min || opened > max) {
          throw new Error(`${row.case.name}: ${opened} connections opened, expected ${min}–${max}`)
        }
        runs[i]!.push(opened)
      }
    }
  })
  return {
    start: async () => {
      seen = await count()
    },
    rows: rows.map(wrap),
    opened: runs as ReadonlyArray<ReadonlyArray<number>>
  }
}

/** The rows of one server and route, grouped by N: Nodemailer, raw, SmtpClient. */
const rows = (server: BenchServer, route: Route, fraction: number): ReadonlyArray<Row> => {
  const plan = PLANS[server.name]
  const port = route === "proxy" ? server.proxy : server.port
  return CONNECTIONS.flatMap((n) => {
    const batch = messages(Math.max(n, Math.floor(batchSize(plan, route, n) / fraction)))
    return [
      {
        client: "Nodemailer" as const,
        n,
        case: nodemailerCase(`Nodemailer pool, ${conns(n)}`, port, server.tally, batch, "burst", n)
      },
      {
        client: "raw" as const,
        n,
        case: rawCase(`${rawName(plan.raw)}, ${conns(n)}`, port, server.tally, batch, n, plan.raw)
      },
      {
        client: "SmtpClient" as const,
        n,
        case: smtpClientCase(`SmtpClient, ${conns(n)}`, port, server.tally, batch, n, false)
      },
      {
        client: "SmtpClient.sendAll" as const,
        n,
        case: smtpClientCase(`SmtpClient.sendAll, ${conns(n)}`, port, server.tally, batch, n, true)
      }
    ]
  })
}

/** What one server and route measured: the rows, their results, and on loopback the client CPU of every run. */
interface Block {
  readonly server: ServerName
  readonly route: Route
  readonly rows: ReadonlyArray<Row>
  readonly results: ReadonlyArray<Result>
  readonly cpu: ReadonlyArray<ReadonlyArray<CpuSample>> | undefined
  readonly opened: ReadonlyArray<ReadonlyArray<number>> | undefined
  readonly seconds: number
}

const measureBlock = async (server: BenchServer, route: Route): Promise<Block> => {
  const started = performance.now()
  const count = server.opened(route === "proxy")
  if (!QUICK) await measure(rows(server, route, WARMUP_FRACTION).map((r) => r.case), { warmupRounds: 0, rounds: 1 })
  const plain = rows(server, route, 1)
  const cpu = route === "loopback" ? plain.map((): Array<CpuSample> => []) : undefined
  const timed = cpu === undefined ? plain : plain.map((r, i) => ({ ...r, case: withCpu(r.case, cpu[i]!) }))
  const counted = count === undefined ? undefined : counting(timed, count)
  await counted?.start()
  const results = await measure((counted?.rows ?? timed).map((r) => r.case), OPTIONS)
  return {
    server: server.name,
    route,
    rows: plain,
    results,
    cpu,
    opened: counted?.opened,
    seconds: (performance.now() - started) / 1e3
  }
}

/** The result of `client` with `n` connections in `block`. */
const resultOf = (block: Block, client: Client, n: number): Result =>
  block.results[block.rows.findIndex((r) => r.client === client && r.n === n)]!

const cpuPerMessage = (samples: ReadonlyArray<CpuSample>, items: number): number =>
  median(samples.map((u) => (u.user + u.system) / items))

/** msg/s per row, over Nodemailer and raw with the same N, and over the same client's rate at one connection. */
const blockTable = (block: Block): string => {
  const loopback = block.cpu !== undefined
  const lines = block.rows.map((row, i) => {
    const r = block.results[i]!
    const opened = block.opened?.[i] ?? []
    const cpu = (j: number): number => cpuPerMessage(block.cpu![j]!, block.results[j]!.items!)
    const nodemailer = block.rows.findIndex((x) => x.client === "Nodemailer" && x.n === row.n)
    return [
      r.name,
      fixed(rate(r)),
      (rate(r) / rate(resultOf(block, "Nodemailer", row.n))).toFixed(2),
      (rate(r) / rate(resultOf(block, "raw", row.n))).toFixed(2),
      (rate(r) / (row.n * rate(resultOf(block, row.client, 1)))).toFixed(2),
      `${fixed(slowest(r))}–${fixed(fastest(r))}`,
      r.medianMs.toFixed(0),
      opened.length === 0 ? "" : `${Math.min(...opened)}–${Math.max(...opened)}`,
      ...(loopback ? [cpu(i).toFixed(1), (cpu(i) / cpu(nodemailer)).toFixed(2)] : [])
    ]
  })
  const first = block.results[0]!.items!
  const size = block.route === "proxy" ? `${first} × N` : String(first)
  return columns(
    `\n${block.server}, ${routeName(block.route)}: ${size} messages of ${MESSAGE_SIZE} octets per run, the median of ` +
      `${OPTIONS.rounds} rounds (${block.seconds.toFixed(0)} s with the warm-up)`,
    [
      "case",
      "msg/s",
      "x Nodemailer",
      "x raw",
      "scaling",
      "msg/s range",
      "ms/run",
      "conns",
      ...(loopback ? ["CPU µs/msg", "CPU x Nodemailer"] : [])
    ],
    lines
  )
}

/** Client CPU per message with the pool of 4 on loopback, from the samples of the loopback block. */
const cpuBlockTable = (block: Block): string => {
  const picked = CLIENTS.map((client) => block.rows.findIndex((r) => r.client === client && r.n === CPU_CONNECTIONS))
  return cpuTable(
    `\n${block.server}, loopback, ${block.results[picked[0]!]!.items} messages of ${MESSAGE_SIZE} octets, a pool of ` +
      `${CPU_CONNECTIONS} connections (raw: ${CPU_CONNECTIONS} sessions), every message given at once: client CPU`,
    picked.map((i) => block.results[i]!),
    picked.map((i) => block.cpu![i]!),
    [0]
  )
}

/** Issue 13's goals beside what this run found, one column per server: the ratio, and whether it meets the goal. */
const goalsTable = (blocks: ReadonlyArray<Block>): string => {
  const find = (server: ServerName, route: Route): Block =>
    blocks.find((b) => b.server === server && b.route === route)!
  const ratio = (block: Block, client: Client, n: number, over: Client, m = n): number =>
    rate(resultOf(block, client, n)) / rate(resultOf(block, over, m))
  const lowest = (block: Block): number =>
    Math.min(...CONNECTIONS.map((n) => ratio(block, "SmtpClient", n, "Nodemailer")))
  const cpu = (block: Block, client: Client): number => {
    const i = block.rows.findIndex((r) => r.client === client && r.n === CPU_CONNECTIONS)
    return cpuPerMessage(block.cpu![i]!, block.results[i]!.items!)
  }
  const last = CONNECTIONS[CONNECTIONS.length - 1]!
  const goals: ReadonlyArray<readonly [string, "at least" | "at most", number, (server: ServerName) => number]> = [
    [
      `SmtpClient / raw, 1 conn, ${routeName("proxy")}`,
      "at least",
      0.9,
      (server) => ratio(find(server, "proxy"), "SmtpClient", 1, "raw")
    ],
    [
      `SmtpClient / Nodemailer, lowest over N, ${routeName("proxy")}`,
      "at least",
      1,
      (server) => lowest(find(server, "proxy"))
    ],
    ["SmtpClient / Nodemailer, lowest over N, loopback", "at least", 1, (server) => lowest(find(server, "loopback"))],
    [
      `SmtpClient scaling 1 -> ${last} conns, ${routeName("proxy")}`,
      "at least",
      0.9,
      (server) => ratio(find(server, "proxy"), "SmtpClient", last, "SmtpClient", 1) / last
    ],
    [
      `SmtpClient / Nodemailer CPU per message, pool of ${CPU_CONNECTIONS}, loopback`,
      "at most",
      1,
      (server) => cpu(find(server, "loopback"), "SmtpClient") / cpu(find(server, "loopback"), "Nodemailer")
    ]
  ]
  const lines = goals.map(([goal, bound, target, found]) => [
    goal,
    `${bound === "at least" ? ">=" : "<="} ${target.toFixed(2)}`,
    ...SERVERS.map((server) => {
      const value = found(server)
      return `${value.toFixed(2)} ${(bound === "at least" ? value >= target : value <= target) ? "met" : "not met"}`
    })
  ])
  // What the server lets any client reach: where the raw client does not scale either, the server sets the limit.
  const rawScaling = [
    `for reference: raw scaling 1 -> ${last} conns, ${routeName("proxy")}`,
    "",
    ...SERVERS.map((server) => (ratio(find(server, "proxy"), "raw", last, "raw", 1) / last).toFixed(2))
  ]
  return columns("\nIssue 13's goals against this run's ratios", ["goal", "target", ...SERVERS], [...lines, rawScaling])
}

const CLIENT_COLORS: Readonly<Record<Client, string>> = {
  Nodemailer: "#e07b39",
  raw: "#888888",
  SmtpClient: "#2f6db5",
  "SmtpClient.sendAll": "#2a9d5c"
}
const SERVER_DASHES: Readonly<Record<ServerName, string>> = { "smtp-server": "", Postfix: "7 4", Exim: "2 3" }

const chart = (blocks: ReadonlyArray<Block>): string => {
  const panel = (route: Route) => ({
    title: route === "proxy" ? `Through the ${2 * DELAY_MS} ms proxy` : "Loopback",
    connections: CONNECTIONS,
    series: SERVERS.flatMap((server) =>
      CLIENTS.map((client): Series => {
        const block = blocks.find((b) => b.server === server && b.route === route)!
        return {
          label: `${client === "raw" ? rawName(PLANS[server].raw) : client}, ${server}`,
          color: CLIENT_COLORS[client],
          dash: SERVER_DASHES[server],
          rates: CONNECTIONS.map((n) => rate(resultOf(block, client, n)))
        }
      })
    )
  })
  const proxy = PLANS["smtp-server"].perConnection
  return scalingChart(
    "SmtpClient, Nodemailer and a raw pipelined client, pool of N connections (higher is better)",
    `5,000-octet messages; ${proxy} × N per run through the proxy, a fixed count on loopback; ` +
      `median of ${OPTIONS.rounds} rounds`,
    [panel("proxy"), panel("loopback")]
  )
}

/** The chart of a quick run goes beside the build instead: its figures mean little. */
const CHART = new URL(QUICK ? "../pool-scaling.svg" : "../../docs/pool-scaling.svg", import.meta.url)

/** Runs the whole group: each server in turn, both routes, the tables, the chart. */
export const run = async (log: (line: string) => void): Promise<void> => {
  if (QUICK) log("BENCH_QUICK=1: small batches, one round, no warm-up; the chart goes to .bench-build/")
  const blocks: Array<Block> = []
  for (const name of SERVERS) {
    const server = await startServer(name, DELAY_MS)
    try {
      await roundTrip(log, name, server.proxy, server.port)
      for (const route of ROUTES) {
        const block = await measureBlock(server, route)
        blocks.push(block)
        log(blockTable(block))
      }
    } finally {
      await server.close()
    }
  }
  for (const block of blocks) if (block.cpu !== undefined) log(cpuBlockTable(block))
  log(goalsTable(blocks))
  fs.writeFileSync(CHART, chart(blocks))
  log(`chart written to ${QUICK ? ".bench-build" : "docs"}/pool-scaling.svg`)
}
