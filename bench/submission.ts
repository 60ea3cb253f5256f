/**
 * Submission: whole SMTP sessions against real servers in other processes, our engine (`SmtpConnection.sendAll`)
 * beside Nodemailer and beside a raw pipelined client that writes pre-encoded bytes to a socket (the practical
 * limit).
 *
 * - Latency-bound: 500 messages of 5,000 octets on one connection through a proxy that adds 5 ms each way, to
 *   smtp-server (DATA) and to Postfix (BDAT and DATA). At BDAT window 64 a second raw row spins 300 µs of CPU per
 *   message, about what ours spends there: what that much client CPU costs on cores shared with Postfix.
 * - CPU: 5,000 messages straight to smtp-server, the client's CPU time per message.
 * - Memory (a group of its own, `memory`): the client's peak RSS while it streams a 1 GiB body to a sink, from a file
 *   and from a Stream, ours beside Nodemailer and the raw client.
 *
 * Every run checks what the server received and throws when it differs from what was sent.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import nodemailer from "nodemailer"
import * as DataEncoder from "../src/DataEncoder.js"
import * as SmtpConnection from "../src/SmtpConnection.js"
import * as SmtpTransport from "../src/SmtpTransport.js"
import type { PostfixServer } from "../test/support/daemons/postfix.js"
import { startPostfix } from "../test/support/daemons/postfix.js"
import type { Child } from "./child.js"
import { runChild, startChild } from "./child.js"
import * as EffectOps from "./effectOps.js"
import type { Case, Options, Result } from "./harness.js"
import { columns, fixed, measure, median } from "./harness.js"
import type { Message } from "./messages.js"
import { memoryBlock, MESSAGE_SIZE, messages, nodemailerTarget } from "./messages.js"
import * as RawClient from "./rawClient.js"
import type { Tally } from "./servers.js"
import { maildirTally, smtpServerTally } from "./servers.js"

const LATENCY_MESSAGES = 500
const LATENCY_WARMUP_MESSAGES = 50
const CPU_MESSAGES = 5_000
const CPU_WARMUP_MESSAGES = 500
/** Messages per counted batch of the Effect operations case (it sends one more batch, uncounted, first). */
const EFFECT_OPS_MESSAGES = 1_000
export const DELAY_MS = 5
const NOOPS = 20
const MEMORY_OCTETS = 2 ** 30
/** Two rounds: the latency-bound runs take 5 to 15 s each. A short warm-up round comes first (see `latency`). */
const LATENCY_OPTIONS: Options = { warmupRounds: 0, rounds: 2 }
/** The BDAT runs take 1 to 2 s and spread more (Postfix sets their pace): nine rounds of their own. */
const SHORT_OPTIONS: Options = { warmupRounds: 0, rounds: 9 }
/** Five rounds: CPU time per message on this shared machine moves by up to 2x from one run to the next. */
const CPU_OPTIONS: Options = { warmupRounds: 0, rounds: 5 }
/**
 * The CPU time per message the raw client spins in its row "+300 µs CPU/msg": about what our client spends per
 * message in BDAT at window 64 (280–380 µs in scratch runs), so that row shows what that much client CPU costs a
 * client that shares the 2 cores with Postfix and the proxy.
 */
const RAW_SPIN_MICROS = 300
/** No run of 500 or 5,000 messages takes this long unless something hangs. */
export const RUN_TIMEOUT_MS = 120_000

const SERVER_PROCESS = new URL("./serverProcess.js", import.meta.url)
const MEMORY_CLIENT = new URL("./memoryClient.js", import.meta.url)

const withDeadline = async <A>(what: string, ms: number, work: Promise<A>): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no end within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([work, expired])
  } finally {
    clearTimeout(timer)
  }
}

/** What a row is compared with: the fastest Nodemailer row and the raw row of the same server. */
interface Row {
  readonly kind: "nodemailer" | "raw" | "ours"
  /** The name of the raw case an ours row is held against. */
  readonly raw?: string | undefined
  /** A run over in 1–2 s (BDAT): measured in rounds of its own, more of them, as its figures spread more. */
  readonly short?: boolean | undefined
  readonly case: Case
}

/** The checks every case does after its run: the client's count, then the server's. */
export const expecting = (what: string, count: number, tally: Tally) => async (accepted: number): Promise<void> => {
  if (accepted !== count) throw new Error(`${what}: ${accepted} messages accepted, sent ${count}`)
  await tally.check(count)
}

export const nodemailerCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  mode: "sequential" | "burst",
  maxConnections = 1
): Case => ({
  name,
  bytes: batch.length * MESSAGE_SIZE,
  items: batch.length,
  run: async () => {
    // A pool that never retires a connection: with the default of 1, one connection for every message.
    const transport = nodemailer.createTransport({
      ...nodemailerTarget(port),
      pool: true,
      maxConnections,
      maxMessages: Infinity
    })
    try {
      const send = async (m: Message): Promise<number> => {
        const info = await transport.sendMail({ envelope: { from: m.from, to: [m.to] }, raw: m.body })
        if (info.accepted.length !== 1 || !info.response.startsWith("250")) {
          throw new Error(`Nodemailer: ${JSON.stringify(info)}`)
        }
        return 1
      }
      const all = async (): Promise<number> => {
        if (mode === "burst") return (await Promise.all(batch.map(send))).length
        let accepted = 0
        for (const m of batch) accepted += await send(m)
        return accepted
      }
      return await withDeadline(name, RUN_TIMEOUT_MS, all())
    } finally {
      transport.close()
    }
  },
  verify: expecting(name, batch.length, tally)
})

const rawDataCase = (name: string, port: number, tally: Tally, batch: ReadonlyArray<Message>): Case => {
  const bodies = batch.map((m) => Either.getOrThrow(DataEncoder.encode(m.body)))
  return {
    name,
    bytes: batch.length * MESSAGE_SIZE,
    items: batch.length,
    run: () => RawClient.sendData(port, batch, bodies, RUN_TIMEOUT_MS),
    verify: expecting(name, batch.length, tally)
  }
}

const rawBdatCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  window: number,
  spinMicros = 0
): Case => ({
  name,
  bytes: batch.length * MESSAGE_SIZE,
  items: batch.length,
  run: () =>
    RawClient.sendBdat(
      port,
      batch,
      batch.map((m) => m.body),
      window,
      RUN_TIMEOUT_MS,
      spinMicros
    ),
  verify: expecting(name, batch.length, tally)
})

/** Round trips per message of each ours case's last run, from `SendResult.roundTrips`. */
const roundTrips = new Map<string, number>()

const oursCase = (
  name: string,
  port: number,
  tally: Tally,
  batch: ReadonlyArray<Message>,
  options: { readonly window?: number; readonly chunking?: boolean },
  method: "DATA" | "BDAT"
): Case => {
  const submissions = batch.map((m) => ({ envelope: { from: m.from, to: [m.to] }, body: m.body }))
  const program = Effect.gen(function*() {
    const connection = yield* SmtpConnection.make({ host: "127.0.0.1", port, tls: "none", clientName: "bench.example" })
    const results = yield* Stream.runCollect(connection.sendAll(submissions, options))
    let accepted = 0
    let trips = 0
    let i = 0
    for (const result of results) {
      const m = batch[i++]!
      if (Either.isLeft(result)) return yield* Effect.fail(new Error(`${name}: message ${i - 1}: ${result.left}`))
      const sent = result.right
      if (
        sent.accepted.length !== 1 || sent.accepted[0]!.recipient !== m.to || sent.rejected.length !== 0 ||
        sent.response.code !== 250 || sent.method !== method
      ) {
        return yield* Effect.fail(new Error(`${name}: message ${i - 1}: unexpected result ${JSON.stringify(sent)}`))
      }
      accepted++
      trips += sent.roundTrips
    }
    roundTrips.set(name, trips / batch.length)
    return accepted
  }).pipe(
    Effect.scoped,
    Effect.provide(SmtpTransport.layerNode),
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

export const rate = (r: Result): number => r.items! / (r.medianMs / 1e3)
export const slowest = (r: Result): number => r.items! / (Math.max(...r.samples) / 1e3)
export const fastest = (r: Result): number => r.items! / (Math.min(...r.samples) / 1e3)

/** Messages/s per row, against the fastest Nodemailer row and against the row's raw case. */
const rateTable = (title: string, rows: ReadonlyArray<Row>, results: ReadonlyArray<Result>): string => {
  const byName = new Map(results.map((r) => [r.name, r]))
  const nodemailerBest = Math.max(
    ...rows.filter((r) => r.kind === "nodemailer").map((r) => rate(byName.get(r.case.name)!))
  )
  const lines = rows.map((row) => {
    const r = byName.get(row.case.name)!
    const raw = row.raw === undefined ? undefined : byName.get(row.raw)
    return [
      r.name,
      fixed(rate(r)),
      Number.isFinite(nodemailerBest) ? (rate(r) / nodemailerBest).toFixed(2) : "",
      raw === undefined ? "" : (rate(r) / rate(raw)).toFixed(3),
      `${fixed(slowest(r))}–${fixed(fastest(r))}`,
      r.medianMs.toFixed(0),
      roundTrips.has(r.name) ? roundTrips.get(r.name)!.toFixed(2) : ""
    ]
  })
  return columns(title, ["case", "msg/s", "x Nodemailer", "x raw", "msg/s range", "ms/run", "RT/msg"], lines)
}

/** The latency-bound rows of both servers, for `batch`. */
const latencyRows = (
  batch: ReadonlyArray<Message>,
  smtpServer: Tally,
  smtpProxy: number,
  postfix: Tally,
  postfixProxy: number
): { readonly smtp: ReadonlyArray<Row>; readonly postfix: ReadonlyArray<Row> } => ({
  smtp: [
    {
      kind: "nodemailer",
      case: nodemailerCase("Nodemailer, sendMail awaited in turn", smtpProxy, smtpServer, batch, "sequential")
    },
    {
      kind: "nodemailer",
      case: nodemailerCase("Nodemailer, all sendMail at once", smtpProxy, smtpServer, batch, "burst")
    },
    { kind: "raw", case: rawDataCase("raw, DATA pipelined", smtpProxy, smtpServer, batch) },
    {
      kind: "ours",
      raw: "raw, DATA pipelined",
      case: oursCase("ours, sendAll", smtpProxy, smtpServer, batch, {}, "DATA")
    }
  ],
  postfix: [
    {
      kind: "nodemailer",
      case: nodemailerCase("Nodemailer (Postfix), all sendMail at once", postfixProxy, postfix, batch, "burst")
    },
    { kind: "raw", case: rawDataCase("raw (Postfix), DATA pipelined", postfixProxy, postfix, batch) },
    {
      kind: "ours",
      raw: "raw (Postfix), DATA pipelined",
      case: oursCase(
        "ours (Postfix), sendAll, chunking: false",
        postfixProxy,
        postfix,
        batch,
        { chunking: false },
        "DATA"
      )
    },
    ...[16, 64].flatMap((window): ReadonlyArray<Row> => [
      {
        kind: "raw",
        short: true,
        case: rawBdatCase(`raw (Postfix), BDAT, window ${window}`, postfixProxy, postfix, batch, window)
      },
      ...(window === 64
        ? [{
          kind: "raw" as const,
          short: true,
          raw: `raw (Postfix), BDAT, window ${window}`,
          case: rawBdatCase(
            `raw (Postfix), BDAT, window ${window}, +${RAW_SPIN_MICROS} µs CPU/msg`,
            postfixProxy,
            postfix,
            batch,
            window,
            RAW_SPIN_MICROS
          )
        }]
        : []),
      {
        kind: "ours",
        short: true,
        raw: `raw (Postfix), BDAT, window ${window}`,
        case: oursCase(
          `ours (Postfix), sendAll, BDAT, window ${window}`,
          postfixProxy,
          postfix,
          batch,
          { window },
          "BDAT"
        )
      }
    ])
  ]
})

const latency = async (
  log: (line: string) => void,
  smtpServer: Tally,
  smtpProxy: number,
  postfix: Tally,
  postfixProxy: number
) => {
  // The warm-up round sends a tenth of the messages: a full one would add minutes, and the JIT needs far less.
  const warmup = latencyRows(messages(LATENCY_WARMUP_MESSAGES), smtpServer, smtpProxy, postfix, postfixProxy)
  await measure([...warmup.smtp, ...warmup.postfix].map((row) => row.case), { warmupRounds: 0, rounds: 1 })
  const rows = latencyRows(messages(LATENCY_MESSAGES), smtpServer, smtpProxy, postfix, postfixProxy)
  const all = [...rows.smtp, ...rows.postfix]
  const results = [
    ...await measure(all.filter((row) => !row.short).map((row) => row.case), LATENCY_OPTIONS),
    ...await measure(all.filter((row) => row.short).map((row) => row.case), SHORT_OPTIONS)
  ]
  const title = (server: string) =>
    `\n${server} through the ${2 * DELAY_MS} ms proxy, ${LATENCY_MESSAGES} messages of ${MESSAGE_SIZE} octets, ` +
    "one connection"
  log(rateTable(title("smtp-server"), rows.smtp, results))
  log(rateTable(title("Postfix"), rows.postfix, results))
}

/** CPU time (µs) of one run. */
export interface CpuSample {
  readonly user: number
  readonly system: number
}

/** Records the process's CPU time (user and system, µs) of every run of `c`. */
export const withCpu = (c: Case, samples: Array<CpuSample>): Case => ({
  ...c,
  run: async () => {
    const start = process.cpuUsage()
    const result = await c.run()
    const used = process.cpuUsage(start)
    samples.push(used)
    return result
  }
})

/**
 * Client CPU per message of each case, from the CPU samples of its runs (`samples[i]` for `results[i]`), against the
 * cheapest of the Nodemailer cases (`nodemailer`, indices into `results`).
 */
export const cpuTable = (
  title: string,
  results: ReadonlyArray<Result>,
  samples: ReadonlyArray<ReadonlyArray<CpuSample>>,
  nodemailer: ReadonlyArray<number>
): string => {
  const perMessage = results.map((r, i) => median(samples[i]!.map((u) => (u.user + u.system) / r.items!)))
  const nodemailerBest = Math.min(...nodemailer.map((i) => perMessage[i]!))
  const rows = results.map((r, i) => {
    const s = samples[i]!
    const n = r.items!
    return [
      r.name,
      perMessage[i]!.toFixed(1),
      median(s.map((u) => u.user / n)).toFixed(1),
      median(s.map((u) => u.system / n)).toFixed(1),
      (perMessage[i]! / nodemailerBest).toFixed(2),
      `${Math.min(...s.map((u) => (u.user + u.system) / n)).toFixed(1)}–${
        Math.max(...s.map((u) => (u.user + u.system) / n)).toFixed(1)
      }`,
      fixed(rate(r)),
      r.medianMs.toFixed(0)
    ]
  })
  return columns(
    title,
    ["case", "CPU µs/msg", "user", "system", "x Nodemailer", "CPU µs/msg range", "msg/s", "ms/run"],
    rows
  )
}

const cpu = async (log: (line: string) => void, smtpServer: Tally, port: number) => {
  const cases = (batch: ReadonlyArray<Message>): ReadonlyArray<Case> => [
    nodemailerCase("Nodemailer, sendMail awaited in turn", port, smtpServer, batch, "sequential"),
    nodemailerCase("Nodemailer, all sendMail at once", port, smtpServer, batch, "burst"),
    oursCase("ours, sendAll", port, smtpServer, batch, {}, "DATA")
  ]
  await measure(cases(messages(CPU_WARMUP_MESSAGES)), { warmupRounds: 0, rounds: 1 })
  const batch = messages(CPU_MESSAGES)
  const plain = cases(batch)
  const samples = plain.map(() => [] as Array<CpuSample>)
  const results = await measure(plain.map((c, i) => withCpu(c, samples[i]!)), CPU_OPTIONS)
  log(
    cpuTable(
      `\nsmtp-server on loopback (no proxy), ${batch.length} messages of ${MESSAGE_SIZE} octets, one connection: client CPU`,
      results,
      samples,
      [0, 1]
    )
  )
}

interface MemoryRun {
  readonly name: string
  readonly octets: number
  readonly ms: number
  readonly maxRssKiB: number
  readonly how: string
}

type MemoryClient = "ours" | "file" | "nodemailer" | "nodemailer-file" | "raw"

/**
 * One message of `blocks` blocks from a client in a child process (node flags `execArgv`) to a sink in another
 * child; a `file` kind reads the blocks from `path`.
 */
const memoryRun = async (
  name: string,
  client: MemoryClient,
  chunking: boolean,
  blocks: number,
  path: string,
  execArgv: ReadonlyArray<string> = []
): Promise<MemoryRun> => {
  const block = memoryBlock()
  const sink = await startChild(SERVER_PROCESS, ["sink", chunking ? "bdat" : "data"])
  try {
    const args = [String(sink.ready.port), String(blocks), client, path]
    const result = await runChild(MEMORY_CLIENT, args, 180_000, execArgv)
    const stats = await sink.request("stats")
    const octets = blocks * block.bytes.length
    // DATA: every leading dot doubled and the terminating .CRLF; BDAT: the octets as they are.
    const expected = stats.bdatMessages === 1 ? octets : blocks * (block.bytes.length + block.dotLines) + 3
    if (result.code !== 250 || stats.messages !== 1 || stats.octets !== expected) {
      throw new Error(`${name}: client ${JSON.stringify(result)}, sink ${JSON.stringify(stats)}, expected ${expected}`)
    }
    const how = stats.bdatMessages === 1 ? `BDAT, ${stats.bdatChunks} chunks` : "DATA"
    return { name, octets, ms: Number(result.ms), maxRssKiB: Number(result.maxRssKiB), how }
  } finally {
    await sink.close()
  }
}

/** The 1 GiB file the file rows send: the memory block `blocks` times, written to a temporary folder. */
const withMemoryFile = async <A>(blocks: number, f: (path: string) => Promise<A>): Promise<A> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "effect-smtp-bench-"))
  try {
    const file = path.join(dir, "message.eml")
    const fd = fs.openSync(file, "w")
    try {
      const block = memoryBlock().bytes
      for (let i = 0; i < blocks; i++) fs.writeSync(fd, block)
    } finally {
      fs.closeSync(fd)
    }
    return await f(file)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** V8's young generation capped at 1 MiB per semi-space, for the rows that show what the default's growth costs. */
const SMALL_YOUNG_GENERATION = ["--max-semi-space-size=1"]

/** The memory group: peak RSS of one 1 GiB message, per client and body kind; needs no server but its own sink. */
export const memory = async (log: (line: string) => void) => {
  const blockSize = memoryBlock().bytes.length
  const blocks = Math.ceil(MEMORY_OCTETS / blockSize)
  const runs = await withMemoryFile(blocks, async (file) => {
    const run = (name: string, client: MemoryClient, chunking: boolean, n: number, execArgv?: ReadonlyArray<string>) =>
      memoryRun(name, client, chunking, n, file, execArgv)
    const small = SMALL_YOUNG_GENERATION.join(" ")
    return [
      await run("ours, send, one block", "ours", false, 1),
      await run("ours, send, 1 GiB file (fileBody), DATA sink", "file", false, blocks),
      await run("ours, send, 1 GiB file (fileBody), BDAT sink", "file", true, blocks),
      await run("ours, send, 1 GiB Stream, DATA sink", "ours", false, blocks),
      await run("ours, send, 1 GiB Stream, BDAT sink", "ours", true, blocks),
      await run("Nodemailer, one block", "nodemailer", false, 1),
      await run("Nodemailer, 1 GiB file (createReadStream)", "nodemailer-file", false, blocks),
      await run("Nodemailer, 1 GiB Readable", "nodemailer", false, blocks),
      await run("raw, DataEncoder + socket, one block", "raw", false, 1),
      await run("raw, DataEncoder + socket, 1 GiB, DATA sink", "raw", false, blocks),
      await run(`ours, 1 GiB file, DATA sink, ${small}`, "file", false, blocks, SMALL_YOUNG_GENERATION),
      await run(`ours, 1 GiB file, BDAT sink, ${small}`, "file", true, blocks, SMALL_YOUNG_GENERATION),
      await run(`Nodemailer, 1 GiB file, ${small}`, "nodemailer-file", false, blocks, SMALL_YOUNG_GENERATION)
    ]
  })
  const mib = (kib: number): string => (kib / 1024).toFixed(1)
  log(
    columns(
      `\nOne message streamed to a sink (client in its own process, ${blockSize}-octet blocks): peak RSS`,
      ["case", "octets", "sent as", "MB/s", "s", "peak RSS MiB"],
      runs.map((
        r
      ) => [
        r.name,
        String(r.octets),
        r.how,
        fixed(r.octets / 1e6 / (r.ms / 1e3)),
        (r.ms / 1e3).toFixed(2),
        mib(r.maxRssKiB)
      ])
    )
  )
}

/** The proxy's round trip, as 20 NOOPs one after another see it. */
export const roundTrip = async (log: (line: string) => void, name: string, port: number, direct: number) => {
  const proxied = await RawClient.noopRoundTrips(port, NOOPS)
  const straight = await RawClient.noopRoundTrips(direct, NOOPS)
  const m = median(proxied)
  log(
    `${name}: ${NOOPS} NOOPs in turn, median round trip ${m.toFixed(2)} ms through the proxy ` +
      `(${Math.min(...proxied).toFixed(2)}–${Math.max(...proxied).toFixed(2)}), ${
        median(straight).toFixed(2)
      } ms direct`
  )
  if (m < 2 * DELAY_MS || m > 2 * DELAY_MS + 5) throw new Error(`${name}: the proxy's round trip is ${m} ms`)
}

const group = async (log: (line: string) => void, postfix: PostfixServer): Promise<void> => {
  const children: Array<Child> = []
  const child = async (args: ReadonlyArray<string>): Promise<Child> => {
    const started = await startChild(SERVER_PROCESS, args)
    children.push(started)
    return started
  }
  try {
    const smtpServer = await child(["smtp-server"])
    const smtpPort = Number(smtpServer.ready.port)
    const smtpProxy = Number((await child(["proxy", String(smtpPort), String(DELAY_MS)])).ready.port)
    const postfixProxy = Number((await child(["proxy", String(postfix.ports.plain), String(DELAY_MS)])).ready.port)
    const smtpTally = smtpServerTally(smtpServer)
    const postfixTally = maildirTally("Postfix", path.join(postfix.directory, "mail", "inbox"), postfix.log)

    await roundTrip(log, "smtp-server", smtpProxy, smtpPort)
    await roundTrip(log, "Postfix", postfixProxy, postfix.ports.plain)
    await latency(log, smtpTally, smtpProxy, postfixTally, postfixProxy)
    await cpu(log, smtpTally, smtpPort)
    await EffectOps.run(log, smtpPort, messages(EFFECT_OPS_MESSAGES))
    await smtpTally.check(2 * EFFECT_OPS_MESSAGES)
  } finally {
    for (const c of children.reverse()) await c.close()
  }
}

/** Runs the whole group: starts Postfix, the servers and proxies, prints the tables, and stops everything. */
export const run = (log: (line: string) => void): Promise<void> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.flatMap(startPostfix(), (postfix) =>
        Effect.tryPromise({
          try: () => group(log, postfix),
          catch: (error) => error instanceof Error ? error : new Error(String(error))
        }))
    )
  )
