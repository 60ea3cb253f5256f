/**
 * The benchmarks: `npm run bench`. Prints one table per group; see docs/benchmarks.md for what each row measures.
 * Without an argument it runs every group; `node .bench-build/bench/index.js core` runs only the sans-IO protocol
 * core (reply parsing, DATA encoding), `... submission` only the submission benchmarks (real servers and sockets),
 * `... memory` only the peak RSS of one 1 GiB message, `... method` only what DATA and BDAT cost a lone message and a
 * burst on each server (the measurements behind the engine's choice), `... pool` only the SmtpClient benchmarks (SmtpClient,
 * Nodemailer and the raw client with 1 to 8 connections to smtp-server, Postfix and Exim, on loopback and at 10 ms;
 * client CPU; `BENCH_QUICK=1` makes it a smoke test of under a minute). `... instructions` (client instructions per
 * message under valgrind's callgrind) runs only when named.
 */
import { readFileSync } from "node:fs"
import * as os from "node:os"
import * as DataEncoding from "./dataEncoding.js"
import type { Options } from "./harness.js"
import { measure, table } from "./harness.js"
import * as Instructions from "./instructions.js"
import * as Method from "./method.js"
import * as Pool from "./pool.js"
import * as ReplyParsing from "./replyParsing.js"
import * as Submission from "./submission.js"

const REPLIES = 1_000_000
const MAX_SMALL_CHUNK = 64
const TEXT_SIZE = 100_000_000
const OPTIONS: Options = { warmupRounds: 1, rounds: 5 }

const cpuModel = (): string => {
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))
    if (match?.[1] !== undefined) return match[1].trim()
  } catch {
    // Not Linux: fall back to what Node reports.
  }
  return os.cpus()[0]?.model ?? "unknown"
}

const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`

const GROUPS = ["core", "submission", "memory", "method", "pool"]
/** Groups that run only when named: they need tools beyond Node.js. */
const NAMED_ONLY = ["instructions"]

const core = async (): Promise<void> => {
  console.log(
    `${OPTIONS.warmupRounds} warm-up round, median of ${OPTIONS.rounds} rounds, cases interleaved; ` +
      "MB = 10^6 octets; \"x copy\" = MB/s over the chunked copy's MB/s;\n" +
      "the chunked copies are so fast that each of their samples times 2 to 10 runs back to back (ms are per run)\n"
  )

  const stream = ReplyParsing.generate(REPLIES, MAX_SMALL_CHUNK, 1)
  console.log(
    `Reply stream: ${stream.replies} replies, ${stream.lines} lines, ${mb(stream.bytes.length)}, ` +
      `${stream.smallChunks.length} small chunks`
  )
  const replyCases = ReplyParsing.cases(stream, MAX_SMALL_CHUNK)
  console.log(table("\nReply parsing, 64 KiB chunks", await measure(replyCases.big, OPTIONS), "replies"))
  console.log(
    table(`\nReply parsing, random 1–${MAX_SMALL_CHUNK} B chunks`, await measure(replyCases.small, OPTIONS), "replies")
  )

  const DataStream = await DataEncoding.loadNodemailer()
  const texts: ReadonlyArray<readonly [string, DataEncoding.LineEnds]> = [
    ["mixed line ends (90% CRLF, 7% LF, 3% CR)", { crlf: 90, lf: 7, cr: 3 }],
    ["CRLF only", { crlf: 1, lf: 0, cr: 0 }],
    ["LF only", { crlf: 0, lf: 1, cr: 0 }]
  ]
  for (const [label, ends] of texts) {
    const text = DataEncoding.generate(TEXT_SIZE, ends, 2)
    console.log(
      `\nDATA text, ${label}: ${mb(text.bytes.length)}, ${text.lines} lines, ${text.dotLines} leading dots, ` +
        `${text.bareLf} bare LF, ${text.bareCr} bare CR`
    )
    console.log(`  check: ${DataEncoding.verify(DataStream, text)}`)
    console.log(
      table(`DATA encoding, 64 KiB chunks, ${label}`, await measure(DataEncoding.cases(DataStream, text), OPTIONS))
    )
  }
}

const submission = async (): Promise<void> => {
  console.log(
    "\nSubmission: one connection per run, servers and proxies in their own processes; " +
      "median of the measured rounds, cases interleaved"
  )
  await Submission.run(console.log)
}

const instructions = async (): Promise<void> => {
  console.log("\nInstructions: client instructions per message under callgrind, each client in its own process")
  await Instructions.run(console.log)
}

const memory = async (): Promise<void> => {
  console.log("\nMemory: one message of 1 GiB per run, client and sink in their own processes; one run per row")
  await Submission.memory(console.log)
}

const method = async (): Promise<void> => {
  console.log("\nDATA or BDAT: a lone message and a burst on one connection, on each server, loopback and 10 ms")
  await Method.run(console.log)
}

const pool = async (): Promise<void> => {
  console.log(
    "\nSmtpClient: a pool of N connections per run on smtp-server, Postfix and Exim, on loopback and through the " +
      "proxy; smtp-server and the proxy in their own processes; median of the measured rounds, cases interleaved"
  )
  await Pool.run(console.log)
}

const main = async (): Promise<void> => {
  const only = process.argv[2]
  if (only !== undefined && !GROUPS.includes(only) && !NAMED_ONLY.includes(only)) {
    throw new Error(`unknown group ${only}: give one of ${[...GROUPS, ...NAMED_ONLY].join(", ")}, or none for all`)
  }
  const started = performance.now()
  console.log(`node ${process.version}, ${os.cpus().length} cores, ${cpuModel()}`)
  if (only === undefined || only === "core") await core()
  if (only === undefined || only === "submission") await submission()
  if (only === undefined || only === "memory") await memory()
  if (only === undefined || only === "method") await method()
  if (only === undefined || only === "pool") await pool()
  if (only === "instructions") await instructions()
  console.log(`\nTotal ${((performance.now() - started) / 1e3).toFixed(1)} s`)
}

await main()
